"""`rerender dataset WS --out D`: COLMAP workspace -> aligned training dataset (see rerender.training.dataset_builder)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workspace", type=Path, help="COLMAP workspace (images/, sparse/0, optional dense/fused.ply)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write (reruns resume)")
    parser.add_argument("--max-size", type=int, default=1024, help="long side of buffers and photos (default 1024)")
    parser.add_argument("--min-size", type=int, default=450,
                        help="drop photos whose shorter side is below this many pixels (default 450)")
    parser.add_argument("--min-coverage", type=float, default=0.15,
                        help="drop views with at most this fraction of non-empty buffer pixels (default 0.15)")
    parser.add_argument("--val-count", type=int, default=None,
                        help="validation photos (default 100, or 10%% for small sets)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    parser.add_argument("--splat-px", type=float, default=None,
                        help="point splat radius in pixels (default: estimated from the point density)")
    parser.add_argument("--segmenter-weights", type=Path, default=None,
                        help="ESPNet checkpoint file or folder (default: ~/.cache/rerender/segmentation, "
                             "downloaded from github.com/sacmehta/ESPNet on first use)")
    parser.add_argument("--segmenter", default="espnet_p2_q8", choices=["espnet_p2_q8", "espnetc_p2_q8"],
                        help="which ESPNet checkpoint (default: full ESPNet p=2 q=8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rerender.training.dataset_builder import DatasetError, DatasetOptions, build_dataset
    from rerender.training.segmentation import SegmentationError

    opt = DatasetOptions(max_size=args.max_size, min_size=args.min_size, min_coverage=args.min_coverage,
                         val_count=args.val_count, seed=args.seed, splat_px=args.splat_px,
                         segmenter_weights=str(args.segmenter_weights) if args.segmenter_weights else None,
                         segmenter_checkpoint=args.segmenter)
    try:
        report = build_dataset(args.workspace, args.out, opt, progress=not args.no_progress)
    except (DatasetError, SegmentationError) as exc:
        print(f"rerender dataset: {exc}", file=sys.stderr)
        return 2
    print(report.to_text())
    print(f"manifest: {report.manifest}")
    return 0 if report.kept else 1
