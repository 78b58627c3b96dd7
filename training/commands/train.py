"""``rerender train``: staged training (or a baseline) of one aligned dataset into a run folder and a model bundle.

Run folder ``RUN/``: ``checkpoint.pt`` (atomic, every --checkpoint-every steps and on Ctrl+C), ``log.jsonl`` (losses),
``validation/*.png`` (EMA output | photo), ``train_config.json``, ``run.json``, ``style_distances.pt`` (stage 1
cache) and, at the end, ``bundle/`` (or --bundle). Several GPUs:
``torchrun --nproc-per-node 8 -m rerender.cli train --dataset D --out RUN`` (rank 0 logs and writes files).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("rerender.train")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="aligned dataset folder D/ (`rerender dataset`)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, bundle)")
    parser.add_argument("--stage", default="all", choices=("all", "1", "2", "3", "semantic"),
                        help="staged method: 1 = appearance pretraining, 2 = rerenderer with the encoder frozen, "
                             "3 = both finetuned; semantic = the semantic predictor S; all = every phase in order")
    parser.add_argument("--method", default="staged", choices=("staged", "i2i", "sem", "bicycle"),
                        help="staged (+Sem+StagedApp, the paper's method) or an ablation baseline: i2i, sem "
                             "(+Sem), bicycle (+Sem+BaseApp)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--config", type=Path, help="JSON file of training settings (TrainConfig fields) "
                                                     "overriding the paper's defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, VALUE in JSON (e.g. --set batch_size=4 --set lr=5e-4)")
    parser.add_argument("--bundle", type=Path, help="where to export the model bundle (default RUN/bundle)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: one GPU per process)")
    parser.add_argument("--vgg-weights", type=Path, help="torchvision's vgg19-dcbb9e9d.pth (default: torch hub "
                                                          "cache, else download)")
    parser.add_argument("--no-verify", action="store_true", help="skip decoding every view before training")
    parser.add_argument("--no-export", action="store_true", help="do not export a bundle at the end")


def build_config(args: argparse.Namespace):
    from rerender.training.config import ConfigError, TrainConfig
    data = TrainConfig().to_json()
    if args.config:
        try:
            data.update(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--config {args.config}: not a readable JSON file ({exc})") from exc
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: use KEY=VALUE")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    if args.vgg_weights:
        data["vgg_weights"] = str(args.vgg_weights)
    return TrainConfig.from_json(data)


def run(args: argparse.Namespace) -> int:
    from rerender.training.config import ConfigError
    from rerender.training.data import DatasetError
    from rerender.training.distributed import cleanup, init_from_env
    from rerender.training.export import export_bundle
    from rerender.training.trainer import Trainer, TrainingError
    from rerender.training.vgg import VGGWeightsError

    ctx = None
    try:
        config = build_config(args)
        ctx = init_from_env(args.device)
        trainer = Trainer(args.dataset, args.out, config, method=args.method, stage=args.stage,
                          resume=args.resume, ctx=ctx)
        if not args.no_verify and ctx.is_main:
            trainer.train_set.verify(progress=True)
            trainer.val_set.verify(progress=True)
        trainer.run()
        if ctx.is_main and not args.no_export:
            path = args.bundle or args.out / "bundle"
            bundle = export_bundle(trainer, path)
            print(f"bundle written to {path} ({len(bundle.gallery)} appearances)")
        return 0
    except (ConfigError, DatasetError, TrainingError, VGGWeightsError) as exc:
        print(f"rerender train: {exc}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None:
            cleanup(ctx)
