"""The `resnets` command: one subcommand per job.

`train` takes one flag per TrainConfig field (config.py), read by train.py under the same
name; `eval`, `bench` and `report` define their flags in the module that reads them.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from .config import TrainConfig
from .errors import UserError


def _flag_type(field_name: str) -> type:
    """The argparse type of a TrainConfig field from its annotation ('int | None' -> int)."""
    hint = typing.get_type_hints(TrainConfig)[field_name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    return args[0]


def add_train_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are None so that only given flags override."""
    group = parser.add_argument_group("recipe (any preset field can be overridden)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_type(f.name)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=kind.__name__.upper(),
                               help=help_text)


def _given_overrides(args: argparse.Namespace) -> dict:
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "preset"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _train(args: argparse.Namespace) -> int:
    from .presets import PRESETS, get_preset
    from .train import resume_config, train, train_deep_ensemble

    if args.list_presets:
        for name, values in PRESETS.items():
            print(f"{name:<40} {values.get('model')} x{values.get('width', 1)} on {values.get('data')}, "
                  f"batch {values.get('batch_size')}, {values.get('iters')} iters, {values.get('precision', 'auto')}")
        return 0
    given = _given_overrides(args)
    if args.resume:
        cfg = resume_config(args.resume, given)
    else:
        # With no preset and no other dataset, the bundled digits recipe runs (offline, ~1 min on a CPU).
        preset = args.preset or ("digits-resnet20" if given.get("data", "digits") == "digits" else None)
        values = get_preset(preset) if preset else {}
        values.update(given)
        values["preset"] = preset
        cfg = TrainConfig.from_dict(values)
    run = train_deep_ensemble if cfg.method == "ensemble" else train
    results = run(cfg, resume=bool(args.resume))
    _print_summary(results)
    return 0


def _print_summary(results: dict) -> None:
    if not results:  # ranks other than 0 under torchrun
        return
    def fmt(key, digits=4):
        value = results.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    print(f"val/acc {fmt('val/acc')}  tst/acc {fmt('tst/acc')}  tst/nll {fmt('tst/nll')}  tst/ece {fmt('tst/ece')}")
    print(f"{results['iter_per_min']:.0f} iter/min  {results['params']:,} params  "
          f"{results['train_hours'] * 3600:.1f} s wall  nan-grad steps {results['nan_grad_steps']}  "
          f"on {results['device']}")
    print(f"run directory: {results['run_dir']}")


def _zoo(args: argparse.Namespace) -> int:
    from .zoo import format_zoo, zoo_rows

    print(format_zoo(zoo_rows(args.num_classes)))
    print("GFLOPs count a multiply-add as 2 (torch.utils.flop_counter); GMACs = GFLOPs / 2.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnets", description="Train, evaluate and benchmark ResNet-family "
                                     "image classifiers with calibrated uncertainty.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (no arguments: ResNet-20 on the bundled digits)")
    train.add_argument("--preset", help="a named recipe (see --list-presets); other flags override its fields")
    train.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or stopped run exactly")
    add_train_config_flags(train)
    train.set_defaults(func=_train)

    # These commands keep their flags next to the code that reads them.
    from . import bench, evaluate, report

    evaluation = sub.add_parser("eval", help="evaluate finished runs (one, or several as a deep ensemble)")
    evaluate.add_arguments(evaluation)
    evaluation.set_defaults(func=evaluate.run)
    benchmark = sub.add_parser("bench", help="time training and inference steps (img/s, latency, memory)")
    bench.add_arguments(benchmark)
    benchmark.set_defaults(func=bench.run)
    reporting = sub.add_parser("report", help="regenerate the seed tables from finished runs")
    report.add_arguments(reporting)
    reporting.set_defaults(func=report.run)

    zoo = sub.add_parser("zoo", help="list every model with parameters and FLOPs")
    zoo.add_argument("--num-classes", type=int, default=None,
                     help="classes of the head (default: 10 for CIFAR-style models, else 1000)")
    zoo.set_defaults(func=_zoo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"resnets {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt:
        print(f"resnets {args.command}: interrupted", file=sys.stderr)
        return 130
