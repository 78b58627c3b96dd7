"""The ``rerender`` command: one subcommand per job, each implemented in the part that owns it.

Subcommands are imported lazily so that ``rerender serve`` never pays for importing bpy or pycolmap, and
``rerender dataset`` never imports the server. Each subcommand module provides
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args: argparse.Namespace) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# name -> (module, one-line help). The module owns its options.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("rerender.backend.commands.serve", "serve a model bundle to Blender over ZeroMQ"),
    "bundle": ("rerender.backend.commands.bundle", "create or inspect a model bundle"),
    "keys": ("rerender.backend.commands.keys", "CURVE key pairs for a backend reached over a network"),
    "reconstruct": ("rerender.training.commands.reconstruct", "photos -> COLMAP workspace (pycolmap SfM)"),
    "dataset": ("rerender.training.commands.dataset", "COLMAP workspace -> aligned training dataset"),
    "train": ("rerender.training.commands.train", "staged training (and baselines) -> model bundle"),
    "evaluate": ("rerender.training.commands.evaluate", "the paper's Table 1 metrics on held-out photos"),
    "synth": ("rerender.training.commands.synth", "generate a wild photo collection with ground truth"),
    "demo": ("rerender.training.commands.demo", "the whole pipeline end to end on a generated landmark"),
}


def _build_parser(only: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerender",
        description="Rerender: film a real place from its photo collection (Neural Rerendering in the Wild).",
    )
    parser.add_argument("--version", action="version", version=f"rerender {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            module = importlib.import_module(module_name)
            module.configure(sp)
            sp.set_defaults(_run=module.run)
    return parser


def _chosen_subcommand(argv: list[str]) -> str | None:
    for arg in argv:
        if arg in SUBCOMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = _chosen_subcommand(argv)
    try:
        parser = _build_parser(only)
    except ModuleNotFoundError as exc:
        print(f"rerender {only}: a required package is missing ({exc.name}). "
              f"Install the full stack: pip install -e '.[training]'", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
