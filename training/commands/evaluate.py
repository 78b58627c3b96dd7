"""``rerender evaluate``: Table 1 metrics (VGG, L1, PSNR, SSIM) of a bundle on a dataset's validation photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--dataset", type=Path, required=True, help="aligned dataset folder D/")
    parser.add_argument("--out", type=Path, help="where to write metrics.json, metrics.md, contact_sheet.png "
                                                  "(default BUNDLE/evaluation)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--vgg-weights", type=Path, help="torchvision's vgg19-dcbb9e9d.pth")
    parser.add_argument("--limit", type=int, help="evaluate only the first N validation views")


def run(args: argparse.Namespace) -> int:
    from rerender.backend.bundle import BundleError
    from rerender.training.data import DatasetError
    from rerender.training.evaluate import evaluate
    from rerender.training.vgg import VGGWeightsError

    out = args.out or args.bundle / "evaluation"
    try:
        result = evaluate(args.bundle, args.dataset, out, device=args.device, vgg_weights=args.vgg_weights,
                          limit=args.limit)
    except (BundleError, DatasetError, VGGWeightsError) as exc:
        print(f"rerender evaluate: {exc}", file=sys.stderr)
        return 2
    print(result.markdown())
    print(f"written to {out}/metrics.json, metrics.md, contact_sheet.png")
    return 0
