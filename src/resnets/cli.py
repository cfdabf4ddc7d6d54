"""The `resnets` command: one subcommand per job, each flag defined here or in the module it feeds."""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def _zoo(args: argparse.Namespace) -> int:
    from .zoo import format_zoo, zoo_rows

    print(format_zoo(zoo_rows(args.num_classes)))
    print("GFLOPs count a multiply-add as 2 (torch.utils.flop_counter); GMACs = GFLOPs / 2.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    except KeyboardInterrupt:
        print(f"resnets {args.command}: interrupted", file=sys.stderr)
        return 130
