"""`rerender reconstruct PHOTOS --out WS`: photos -> COLMAP workspace (see rerender.training.reconstruct)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", type=Path, help="folder with the photos (jpg/png/tif; searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="COLMAP workspace to write (created if missing)")
    parser.add_argument("--matcher", default="auto", choices=["auto", "exhaustive", "vocabtree", "spatial", "sequential"],
                        help="feature matching; auto = exhaustive up to 200 photos, else vocabtree (default: auto)")
    parser.add_argument("--vocab-tree", type=Path, default=None, help="COLMAP vocabulary tree file for --matcher vocabtree")
    parser.add_argument("--camera-mode", default="per_image", choices=["per_image", "single"],
                        help="per_image for photos from many cameras (default), single for one camera")
    parser.add_argument("--max-image-size", type=int, default=3200, help="long side used for SIFT (default 3200)")
    parser.add_argument("--dense", default="auto", choices=["auto", "on", "off"],
                        help="dense cloud with COLMAP patch-match stereo; needs CUDA (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import pycolmap

    from rerender.training.native_output import native_output_to
    from rerender.training.reconstruct import ReconstructionError, reconstruct

    verbose = getattr(args, "verbose", 0)
    if not verbose:
        pycolmap.logging.minloglevel = 1  # COLMAP's per-image INFO lines drown the progress bar; -v shows them
    native_log = None if verbose else args.out / "rerender" / "colmap.log"
    try:
        # COLMAP's and Ceres' warnings (dozens per mapping) go to the log file; -v shows them
        with native_output_to(native_log, (1, 2)):
            summary = reconstruct(args.photos, args.out, matcher=args.matcher, vocab_tree=args.vocab_tree,
                                  camera_mode=args.camera_mode, max_image_size=args.max_image_size,
                                  dense=args.dense, progress=not args.no_progress)
    except ReconstructionError as exc:
        print(f"rerender reconstruct: {exc}", file=sys.stderr)
        return 2
    print(summary.to_text())
    print(f"workspace: {args.out} (summary in {args.out / 'rerender' / 'reconstruction.json'}"
          + (f", COLMAP's log in {native_log})" if native_log else ")"))
    return 0
