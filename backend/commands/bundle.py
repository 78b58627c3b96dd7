"""``rerender bundle init|info``: create a bundle with fresh weights (to check a pipeline before training) or
describe an existing one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..bundle import GALLERY_NAMES, Bundle, BundleError, init_bundle


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="write a bundle with freshly initialised (untrained) weights",
                          description="Write a model bundle with freshly initialised weights and a small gallery "
                                      "of random appearances: for tests and for checking a pipeline before training.")
    init.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    init.add_argument("--name", default="untrained", help="bundle name shown to the artist (default: untrained)")
    init.add_argument("--base-channels", type=int, default=32, help="U-Net width at full resolution (paper: 32)")
    init.add_argument("--depth", type=int, default=6, help="U-Net stages; frames are padded to 2**depth (paper: 6)")
    init.add_argument("--max-channels", type=int, default=512, help="U-Net channel cap (paper: 512)")
    init.add_argument("--latent-size", type=int, default=8, help="appearance latent length; 0 = no appearance (8)")
    init.add_argument("--num-classes", type=int, default=19, help="semantic classes (Cityscapes: 19)")
    init.add_argument("--encoder-channels", type=int, default=64, help="appearance encoder width (paper: 64)")
    init.add_argument("--encoder-blocks", type=int, default=3, help="appearance encoder residual blocks (3)")
    init.add_argument("--no-semantics", action="store_true", help="rerenderer without label input channels")
    init.add_argument("--label-encoding", choices=("color", "onehot"), default="color",
                      help="label channels: class palette as 3 channels (authors) or one-hot (default: color)")
    init.add_argument("--near", type=float, default=1.0, help="depth mapped to +1 (scene units)")
    init.add_argument("--far", type=float, default=100.0, help="depth mapped to -1 (scene units)")
    init.add_argument("--gallery-size", type=int, default=len(GALLERY_NAMES), help="random appearances to add")
    init.add_argument("--seed", type=int, default=0, help="random seed for weights and gallery")
    init.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    info = sub.add_parser("info", help="print what a bundle holds", description="Print what a model bundle holds.")
    info.add_argument("path", type=Path, help="bundle directory")
    info.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    try:
        if args.bundle_command == "init":
            return _init(args)
        return _info(args)
    except BundleError as exc:
        print(f"rerender bundle: {exc}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        print(f"rerender bundle init: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    try:
        bundle = init_bundle(
            args.out, base_channels=args.base_channels, depth=args.depth, max_channels=args.max_channels,
            latent_size=args.latent_size, num_classes=args.num_classes, encoder_channels=args.encoder_channels,
            encoder_blocks=args.encoder_blocks, use_semantics=not args.no_semantics, label_mode=args.label_encoding,
            near=args.near, far=args.far, name=args.name, seed=args.seed, gallery_size=args.gallery_size)
    except ValueError as exc:
        print(f"rerender bundle init: {exc}", file=sys.stderr)
        return 1
    print(f"wrote untrained bundle {bundle.config.name!r} to {args.out} "
          f"({_parameters(bundle) / 1e6:.2f} M parameters)")
    return 0


def _parameters(bundle: Bundle) -> int:
    return sum(p.numel() for m in bundle.modules().values() for p in m.parameters())


def _info(args: argparse.Namespace) -> int:
    bundle = Bundle.load(args.path)
    c = bundle.config
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in bundle.modules().items()}
    if args.json:
        print(json.dumps({"path": str(args.path), "config": c.to_json(), "parameters": params,
                          "gallery": [{"name": a.name, "latent": a.latent.tolist(),
                                       "thumbnail": list(a.thumbnail.shape)} for a in bundle.gallery]}, indent=2))
        return 0
    e = c.encoding
    lines = [
        f"bundle      {args.path}",
        f"name        {c.name}",
        f"created     {c.created}",
        f"format      version {c.format_version}",
        f"rerenderer  U-Net base {c.base_channels}, depth {c.depth} (frames padded to multiples of {c.multiple}), "
        f"max {c.max_channels} channels, {params['rerenderer'] / 1e6:.2f} M parameters",
        "appearance  " + (f"latent {c.latent_size}, encoder width {c.encoder_channels} x {c.encoder_blocks} blocks, "
                           f"{params['encoder'] / 1e6:.2f} M parameters" if c.latent_size else "none (I2I variant)"),
        f"semantic    {params['semantic'] / 1e6:.2f} M parameters; rerenderer "
        f"{'uses' if c.use_semantics else 'ignores'} labels",
        f"input       {e.channels(c.use_semantics)} channels: color 3, depth 1 ({e.depth_mode}, near {e.near:g}, "
        f"far {e.far:g})" + (f", labels {e.label_channels()} ({e.label_mode})" if c.use_semantics else "")
        + (", mask 1" if e.mask_channel else ""),
        f"classes     {c.num_classes}: " + ", ".join(cl.name for cl in c.classes),
        f"training    {c.training_resolution[0]}x{c.training_resolution[1]}"
        + (f"; notes {json.dumps(c.notes)}" if c.notes else ""),
        f"gallery     {len(bundle.gallery)} appearances" + (": " + ", ".join(a.name for a in bundle.gallery)
                                                            if bundle.gallery else ""),
    ]
    print("\n".join(lines))
    return 0
