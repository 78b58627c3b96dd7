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
                        help="folder with the ADE20K model's encoder_epoch_20.pth and decoder_epoch_20.pth, or an "
                             "ESPNet checkpoint file/folder (default: ~/.cache/rerender/segmentation)")
    parser.add_argument("--segmenter", default="auto", choices=["auto", "ade20k", "espnet_p2_q8", "espnetc_p2_q8"],
                        help="auto (default): the ADE20K scene parser where its weights are, else ESPNet "
                             "(Cityscapes street scenes)")
    parser.add_argument("--segmenter-sha256", default=None, metavar="ENC,DEC",
                        help="SHA-256 of the ADE20K encoder and decoder files: lets them be downloaded into the "
                             "cache and checked (the authors publish no checksums)")
    parser.add_argument("--remap", action="append", default=[], metavar="CLASS=CLASS",
                        help="relabel a class in every segmentation, e.g. --remap car=building when the landmark "
                             "was labelled as a car (repeatable; reruns label and render again)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rerender.training.class_shares import RemapError, parse_remap
    from rerender.training.dataset_builder import DatasetError, DatasetOptions, build_dataset
    from rerender.training.native_output import warnings_once
    from rerender.training.segmentation import SegmentationError

    try:
        opt = DatasetOptions(max_size=args.max_size, min_size=args.min_size, min_coverage=args.min_coverage,
                             val_count=args.val_count, seed=args.seed, splat_px=args.splat_px,
                             segmenter_weights=str(args.segmenter_weights) if args.segmenter_weights else None,
                             segmenter_checkpoint=args.segmenter, segmenter_sha256=args.segmenter_sha256,
                             remap=parse_remap(args.remap), quiet=not getattr(args, "verbose", 0))
        with warnings_once(not getattr(args, "verbose", 0)):
            report = build_dataset(args.workspace, args.out, opt, progress=not args.no_progress)
    except (DatasetError, SegmentationError, RemapError) as exc:
        print(f"rerender dataset: {exc}", file=sys.stderr)
        return 2
    print(report.to_text())
    print(f"manifest: {report.manifest}" + ("" if getattr(args, "verbose", 0) else
                                            f" (Blender's output: {args.out / 'work' / 'native.log'})"))
    return 0 if report.kept else 1
