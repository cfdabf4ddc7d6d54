"""The `resnets` command: one subcommand per job.

`train` takes one flag per TrainConfig field (config.py), read by train.py under the same
name; `eval`, `bench`, `predict`, `export` and `prepare` define their flags in the module that reads them, `report` in report_command.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

import yaml
from pathlib import Path

from . import bench, evaluate, export, predict, prepare, report_command
from .config import TrainConfig, describe_duration, field_type, load_config_file
from .data import DATASETS
from .errors import UserError
from .methods import method_class
from .presets import PRESETS, get_preset
from .runs import TENSORBOARD_DIR, RunResults
from .train import STOPPED_EXIT_STATUS, TrainingStopped, resume_config, train, train_deep_ensemble
from .zoo import format_zoo, zoo_rows


def add_train_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are None so that only given flags override."""
    group = parser.add_argument_group("recipe (any preset field can be overridden)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(typing.get_type_hints(TrainConfig)[f.name])
        help_text = f.metadata.get("help", "")
        if f.name == "data":
            help_text = "dataset: " + "; ".join(f"{spec.name} ({spec.help})" for spec in DATASETS.values())
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            # A field may parse its flag itself (--grad-accum-steps auto); the value keeps the field's type.
            group.add_argument(flag, dest=f.name, type=f.metadata.get("parse", kind), default=None,
                               metavar=kind.__name__.upper(),
                               help=help_text)


def _given_overrides(args: argparse.Namespace) -> dict:
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "preset"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _train(args: argparse.Namespace) -> int:
    if args.list_presets:
        for name, values in PRESETS.items():
            print(f"{name:<40} {values.get('model')} x{values.get('width', 1)} on {values.get('data')}, "
                  f"batch {values.get('batch_size')}, {describe_duration(values.get('iters'))}, "
                  f"{values.get('precision', 'auto')}")
        return 0
    given = _given_overrides(args)
    if args.resume:
        cfg = resume_config(args.resume, given)
    else:
        # A preset, then a config file, then the flags: each overrides the one before.
        from_file = load_config_file(args.config) if args.config else {}
        preset = args.preset or from_file.get("preset")
        if preset is None and not args.config and given.get("data", "digits") == "digits":
            preset = "digits-resnet20"  # the bundled recipe: offline, on a CPU
        values = get_preset(preset) if preset else {}
        values.update(from_file)
        values.update(given)
        values["preset"] = preset
        cfg = TrainConfig.from_dict(values, source=args.config or "the flags")
        if args.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
    run = train_deep_ensemble if method_class(cfg.method).separate_runs else train
    try:
        results = run(cfg, resume=bool(args.resume))
    except TrainingStopped as stopped:  # the trainer has said where it stopped and how to continue
        return stopped.exit_status
    if results is not None:  # None on the processes of a torchrun other than the main one
        _print_summary(results)
    return 0


def _print_summary(results: RunResults) -> None:
    def fmt(key, digits=4):
        value = results.metrics.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    print(f"val/acc {fmt('val/acc')}  tst/acc {fmt('tst/acc')}  tst/nll {fmt('tst/nll')}  tst/ece {fmt('tst/ece')}")
    print(f"{results.iter_per_min:.0f} iter/min  {results.params:,} params  "
          f"{results.train_hours * 3600:.1f} s wall  nan-grad steps {results.nan_grad_steps}  "
          f"on {results.device}")
    print(f"run directory: {results.run_dir}")
    if (Path(results.run_dir) / TENSORBOARD_DIR).is_dir():
        print(f"curves: tensorboard --logdir {Path(results.run_dir) / TENSORBOARD_DIR}")


def _zoo(args: argparse.Namespace) -> int:
    print(format_zoo(zoo_rows(args.num_classes)))
    print("GFLOPs count a multiply-add as 2 (torch.utils.flop_counter); GMACs = GFLOPs / 2.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnets", description="Train, evaluate and benchmark ResNet-family "
                                     "image classifiers with calibrated uncertainty.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train a model (no arguments: ResNet-20 on the bundled digits)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"""\
preemption and restarts:
  SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 stop the run at the end of the current step: it writes
  a checkpoint, logs where it stopped and the command that continues it (stderr, train.log)
  and exits with status {STOPPED_EXIT_STATUS} (EX_TEMPFAIL); a second Ctrl-C quits at once (status 130),
  keeping the checkpoints written before. Under torchrun the processes agree on the step to stop at.
  Checkpoints are written at every evaluation and every --checkpoint-every (default 30min);
  checkpoints/last.pt and previous.pt each have a .sha256 file, and a resume continues from
  previous.pt when last.pt is damaged. Running the same command again with the same --out
  continues the run (a finished one only prints its results), so torchrun --max-restarts and a
  requeued Slurm job resume by themselves.

exit status: 0 finished (or already finished), {STOPPED_EXIT_STATUS} stopped by a signal with a checkpoint,
  2 a problem with the input or a full disk (the message says which), 130 stopped at once.""")
    train.add_argument("--preset", help="a named recipe (see --list-presets); other flags override its fields")
    train.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    train.add_argument("--config", metavar="FILE.yaml",
                       help="recipe fields from a YAML file (as --print-config writes; a run's config.yaml works "
                            "too); --preset comes first, then the file, then the other flags")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved recipe as YAML (for --config) and exit without training")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or stopped run exactly, from its "
                       "newest intact checkpoint (a finished run is not trained again)")
    add_train_config_flags(train)
    train.set_defaults(func=_train)

    # These commands keep their flags next to the code that reads them.
    evaluation = sub.add_parser("eval", help="evaluate finished runs (one, or several as a deep ensemble)")
    evaluate.add_arguments(evaluation)
    evaluation.set_defaults(func=evaluate.run)
    benchmark = sub.add_parser("bench", help="time training and inference steps (img/s, latency, memory)")
    bench.add_arguments(benchmark)
    benchmark.set_defaults(func=bench.run)
    reporting = sub.add_parser("report", help="regenerate the seed tables from finished runs")
    report_command.add_arguments(reporting)
    reporting.set_defaults(func=report_command.run)
    predicting = sub.add_parser("predict", help="predict image files or folders with finished runs (top-k classes "
                                "and uncertainty per image)")
    predict.add_arguments(predicting)
    predicting.set_defaults(func=predict.run)
    exporting = sub.add_parser("export", help="write finished runs as one ONNX or TorchScript graph for serving")
    export.add_arguments(exporting)
    exporting.set_defaults(func=export.run)

    preparing = sub.add_parser("prepare", help="write imagenet or an image folder once into shards that train and "
                               "eval read by index, from local disk or s3:// / gs://")
    prepare.add_arguments(preparing)
    preparing.set_defaults(func=prepare.run)

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
