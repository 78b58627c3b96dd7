"""``rerender synth``: generate a synthetic wild photo collection of a procedural landmark, with ground truth."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/ and ground_truth/)")
    parser.add_argument("--count", type=int, required=True, help="number of photos")
    parser.add_argument("--size", type=_size, default=(640, 480), help="photo size WxH (default 640x480)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same collection)")
    parser.add_argument("--quality", choices=("final", "preview"), default="final",
                        help="render settings: final (SfM-grade, default) or preview (fast, for tests)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing collection in --out")


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        print(f"rerender synth: --count must be at least 1, got {args.count}", file=sys.stderr)
        return 2
    from tqdm import tqdm  # noqa: PLC0415

    from ..synthetic import generate_collection  # noqa: PLC0415  (imports bpy only when run)

    width, height = args.size
    with tqdm(total=args.count, unit="photo", desc="rendering") as bar:
        def progress(done: int, total: int, name: str, seconds: float) -> None:
            bar.set_postfix_str(f"{name} {seconds:.1f} s")
            bar.n = done
            bar.refresh()

        try:
            info = generate_collection(args.out, count=args.count, width=width, height=height, seed=args.seed,
                                       progress=progress, quality=args.quality, overwrite=args.overwrite)
        except (FileExistsError, ValueError) as exc:
            print(f"rerender synth: {exc}", file=sys.stderr)
            return 2
    times = info.seconds_per_photo
    if times:
        print(f"{len(times)} photos rendered, {sum(times) / len(times):.1f} s per photo; collection in {args.out}")
    else:
        print(f"all {args.count} photos were already there; collection in {args.out}")
    return 0
