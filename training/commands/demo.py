"""``rerender demo --out results/demo``: generated photos → SfM → dataset → training → bundle → Blender
shot → rendered frames, GIF, contact sheet and evaluation, in one resumable results folder (docs/demo.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from rerender.training.demo.presets import PRESETS
    from rerender.training.demo.pipeline import STAGES

    parser.add_argument("--out", type=Path, default=Path("results/demo"),
                        help="results folder (default results/demo); rerunning resumes, finished stages are skipped")
    parser.add_argument("--size", default="small", choices=tuple(PRESETS),
                        help="tiny (CI smoke run, minutes), small (default, ~15 min on a 2-core CPU), "
                             "medium / large (GPU)")
    parser.add_argument("--gpu", action="store_true", help="train, evaluate and serve on CUDA (same as --device cuda)")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda", "auto"),
                        help="device for training, evaluation and the backend (default cpu; auto = cuda if present)")
    parser.add_argument("--photos", type=int, default=None, help="override the preset's number of generated photos")
    parser.add_argument("--frames", type=int, default=None, help="override the preset's number of rendered frames")
    parser.add_argument("--eval-size", type=int, default=None, dest="eval_pairs",
                        help="held-out views (appearance-transfer pairs) of the ground-truth evaluation")
    parser.add_argument("--val-count", type=int, default=None,
                        help="held-out views of the dataset (default: the preset's); the Table 1 views")
    parser.add_argument("--baseline", action="store_true",
                        help="also train the I2I baseline and put it in the Table 1 comparison (the larger evaluation)")
    parser.add_argument("--segmenter", default="truth", choices=("truth", "espnet"),
                        help="label the photos with the generator's exact segmentation (default) or run ESPNet "
                             "like on real photos")
    parser.add_argument("--segmenter-weights", type=Path, default=None, help="ESPNet weights (with --segmenter espnet)")
    parser.add_argument("--poses", default=None, choices=("sfm", "known"),
                        help="sfm: full pycolmap SfM as for real photos (default, except tiny); known: pycolmap "
                             "features, matching and triangulation with the generator's true cameras")
    parser.add_argument("--seed", type=int, default=0, help="collection seed (default 0)")
    parser.add_argument("--redo", action="append", default=[], choices=STAGES, metavar="STAGE",
                        help=f"run a finished stage again (one of {', '.join(STAGES)}); repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rerender.training.demo import Demo, DemoError, DemoOptions, preset

    device = "cuda" if args.gpu else (args.device or "cpu")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("rerender demo: --gpu/--device cuda asked for, but torch sees no CUDA device; run without --gpu "
                  "(CPU) or install a CUDA build of torch", file=sys.stderr)
            return 2
    for name, flag, least in (("photos", "--photos", 3), ("frames", "--frames", 2), ("eval_pairs", "--eval-size", 1),
                              ("val_count", "--val-count", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            print(f"rerender demo: {flag} {value} is too small (at least {least})", file=sys.stderr)
            return 2
    p = preset(args.size, photos=args.photos, frames=args.frames, eval_pairs=args.eval_pairs, poses=args.poses,
               val_count=args.val_count)
    if p.val_count > p.photos - 3:
        print(f"rerender demo: --val-count {p.val_count} leaves no training photos of {p.photos} (appearance "
              f"pretraining needs at least 3); hold out fewer or generate more (--photos)", file=sys.stderr)
        return 2
    try:
        demo = Demo(DemoOptions(out=args.out, preset=p, device=device, seed=args.seed, segmenter=args.segmenter,
                                segmenter_weights=str(args.segmenter_weights) if args.segmenter_weights else None,
                                baseline=args.baseline, progress=not args.no_progress, redo=tuple(args.redo)))
        result = demo.run()
    except DemoError as exc:
        print(f"rerender demo: {exc}", file=sys.stderr)
        return 1
    print(f"results: {result.out} (README.md, contact_sheet.png, camera_path.gif, rerender_demo.blend, "
          f"evaluation/evaluation.md)")
    return 0
