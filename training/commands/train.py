"""``rerender train``: staged training (or a baseline) of one aligned dataset into a run folder and a model bundle.

Run folder ``RUN/``: ``checkpoint.pt`` (atomic, every --checkpoint-every steps and on Ctrl+C or SIGTERM, what farm
schedulers send), ``log.jsonl`` (losses),
``validation/*.png`` (EMA output | photo), ``train_config.json``, ``run.json``, ``style_distances.pt`` (stage 1
cache) and, at the end, ``bundle/`` (or --bundle). Several GPUs:
``torchrun --nproc-per-node 8 -m rerender.cli train --dataset D --out RUN`` (rank 0 logs and writes files).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("rerender.train")


def configure(parser: argparse.ArgumentParser) -> None:
    from rerender.training.phases import DEFAULT_METHOD, METHODS, STAGE_CHOICES, method_help, stage_help
    parser.add_argument("--dataset", type=Path, required=True, help="aligned dataset folder D/ (`rerender dataset`)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, bundle)")
    parser.add_argument("--stage", default="all", choices=STAGE_CHOICES, help=stage_help())
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help=f"the paper's method or an ablation baseline: {method_help()}")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint, with its stored train_config.json")
    parser.add_argument("--time", metavar="DURATION",
                        help="train within this wall-clock budget (e.g. 15m, 2h, 90s): network size, resolution and "
                             "step counts are chosen by timing a few steps on this device; ends with a bundle")
    parser.add_argument("--no-estimate", action="store_true",
                        help="with explicit settings, skip timing a few steps for the ETA warning")
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


def requested_settings(args: argparse.Namespace) -> dict:
    """The settings the user gave explicitly (--config file, then --set, then --vgg-weights), as JSON values."""
    from rerender.training.config import ConfigError
    data: dict = {}
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
    return data


def build_config(args: argparse.Namespace):
    from rerender.training.config import TrainConfig
    data = TrainConfig().to_json()
    data.update(requested_settings(args))
    return TrainConfig.from_json(data)


def resumed_config(args: argparse.Namespace):
    """The run's stored settings; an explicit setting that differs from them is refused by name."""
    from rerender.training.config import ConfigError, TrainConfig
    stored_path = args.out / "train_config.json"
    if not stored_path.is_file():
        raise ConfigError(f"--resume: {stored_path} does not exist; start the run without --resume")
    stored = TrainConfig.load(stored_path)
    stored_json = stored.to_json()
    requested = requested_settings(args)
    TrainConfig.from_json({**stored_json, **requested})  # unknown or invalid names fail here, by name
    conflicts = [f"{k}={json.dumps(v)} (the run has {json.dumps(stored_json[k])})" for k, v in requested.items()
                 if json.dumps(v) != json.dumps(stored_json[k])]
    if conflicts:
        raise ConfigError(f"--resume continues the run with its stored settings ({stored_path}); these differ: "
                          f"{', '.join(conflicts)}. Drop them, or start a new run in another --out")
    return stored


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the Ctrl+C path so the trainer checkpoints the same way."""


def _sigterm_checkpoints() -> None:
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one checkpoint: a second SIGTERM must not interrupt it
        raise _Terminated()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): the caller handles its own signals
        pass


def _warn_if_long(args, config, ctx) -> None:
    """Time a few steps of these settings and warn, with the ETA, when the run would take more than a few hours."""
    from rerender.training.budget import WARN_SECONDS, estimate_seconds, format_seconds, measure_steps
    from rerender.training.phases import PHASE_NAMES
    slowest_step = 120.0  # seconds: more than the paper's settings take per step on a laptop CPU
    if estimate_seconds(config, {p: slowest_step for p in PHASE_NAMES}, args.method) < WARN_SECONDS:
        return  # so few steps that no device takes hours: not worth timing
    per_step = measure_steps(args.dataset, config, args.method, ctx, repeats=1)
    eta = estimate_seconds(config, per_step, args.method)
    main = per_step.get("rerender", per_step.get("bicycle", 0.0))
    text = (f"estimated training time on {ctx.device.type}: {format_seconds(eta)} ({main:.2f} s per stage-2 step, "
            f"measured)")
    if eta > WARN_SECONDS:
        log.warning("%s; that is more than %s: use `--time 15m` (or another budget) to let rerender choose sizes "
                    "that fit, or smaller settings (docs/training.md has a CPU recipe)", text,
                    format_seconds(WARN_SECONDS))
    else:
        print(text)


def run(args: argparse.Namespace) -> int:
    from rerender.training.native_output import warnings_once
    with warnings_once(not getattr(args, "verbose", 0)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from rerender.training.budget import features_for, parse_duration, plan_for_budget, run_within
    from rerender.training.config import ConfigError
    from rerender.training.data import DatasetError, read_manifest
    from rerender.training.distributed import cleanup, init_from_env
    from rerender.training.export import export_bundle
    from rerender.training.trainer import Trainer, TrainingError
    from rerender.training.vgg import VGGWeightsError

    from rerender.training.budget import process_age
    started = time.monotonic() - process_age()  # a time budget counts from the process's start
    _sigterm_checkpoints()
    ctx = trainer = None
    try:
        try:
            budget = parse_duration(args.time) if args.time else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        ctx = init_from_env(args.device)
        if args.resume:
            config = resumed_config(args)
        elif budget is not None:
            _, records = read_manifest(args.dataset)
            smallest = min((min(r.width, r.height) for r in records if r.split == "train"), default=None)
            plan = plan_for_budget(args.dataset, budget - (time.monotonic() - started), method=args.method, ctx=ctx,
                                   overrides=requested_settings(args), max_load=smallest)
            if ctx.is_main:
                print(plan.to_text(), flush=True)
            config = plan.config
        else:
            config = build_config(args)
            if not args.no_estimate and ctx.is_main:
                _warn_if_long(args, config, ctx)
        trainer = Trainer(args.dataset, args.out, config, method=args.method, stage=args.stage,
                          resume=args.resume, ctx=ctx, progress=budget is None, vgg=features_for(config))
        if not args.no_verify and ctx.is_main:
            trainer.train_set.verify(progress=budget is None)
            trainer.val_set.verify(progress=budget is None)
        if budget is not None:
            # the final checkpoint and the export, whose gallery encodes every training photo once (forward only:
            # about a third of a stage-1 step's cost per photo, batch-normalised; doubled for safety)
            per_photo = (plan.seconds_per_step["appearance"] / config.batch_size / 3) if not args.resume else 0.05
            reserve = max(10.0, 0.05 * budget, 5.0 + 2 * per_photo * len(trainer.train_set))
            run_within(trainer, started + budget, None if args.resume else plan.seconds_per_step, reserve=reserve,
                       progress=ctx.is_main)
        else:
            trainer.run()
        if ctx.is_main and not args.no_export:
            path = args.bundle or args.out / "bundle"
            bundle = export_bundle(trainer, path)
            took = f" after {time.monotonic() - started:.0f} s" if budget is not None else ""
            print(f"bundle written to {path} ({len(bundle.gallery)} appearances){took}")
        return 0
    except (ConfigError, DatasetError, TrainingError, VGGWeightsError) as exc:
        print(f"rerender train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        if trainer is not None and (args.out / "checkpoint.pt").is_file():
            print(f"rerender train: {what} at step {trainer.global_step}; checkpoint saved in "
                  f"{args.out / 'checkpoint.pt'}. Continue with: rerender train --resume --dataset {args.dataset} "
                  f"--out {args.out}", file=sys.stderr)
        else:
            print(f"rerender train: {what} before the first checkpoint", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if ctx is not None:
            cleanup(ctx)
