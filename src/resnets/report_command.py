"""`resnets report`'s flags and what runs them: the tables (report.py), then the figures and the page.

A module of its own so that imports run one way: it uses report.py and html_report.py, and
html_report.py uses report.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import plots
from .errors import UserError
from .html_report import write_html
from .report import TABLES, find_runs, load_runs, make_report, report_figures, write_plots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_root", metavar="RUNS_ROOT", help="folder searched (recursively) for results.json files")
    parser.add_argument("--format", default="markdown", choices=["markdown", "csv"], help="default: markdown")
    parser.add_argument("--table", default="auto", choices=["auto", *TABLES],
                        help="table shape of seed 001 (depth/width sweeps), 000 (methods) or 003 (ResNet-RS); "
                             "auto: 003 for ResNet-RS runs only, 000 when a non-deterministic method is "
                             "present, else 001")
    parser.add_argument("--plot", default=None, metavar="DIR",
                        help="also write, per configuration (seeds together), training curves and a reliability "
                             "diagram (where runs saved predictions) as PNGs into DIR")
    parser.add_argument("--html", default=None, metavar="FILE",
                        help="also write one self-contained HTML page (tables, curves, reliability diagrams, "
                             "eval.json results; images embedded, nothing fetched) to FILE")
    parser.add_argument("--band", default="minmax", choices=list(plots.BANDS),
                        help="spread drawn around the mean curve of several seeds: minmax (default) or std "
                             "(mean ± sample standard deviation)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the report to FILE (links relative to it) instead of stdout")


def run(args: argparse.Namespace) -> int:
    run_dirs = find_runs(args.runs_root)
    link_base = Path(args.out).parent if args.out else Path(".")
    text = make_report(run_dirs, table=args.table, fmt=args.format, link_base=link_base)
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write the report there ({e.strerror}).") from None
    else:
        sys.stdout.write(text)
    figures = None
    if args.plot or getattr(args, "html", None):
        figures = report_figures(load_runs(run_dirs), args.runs_root, getattr(args, "band", "minmax"))
    if args.plot:
        written = write_plots(run_dirs, args.plot, root=args.runs_root, figures=figures)
        print(f"wrote {len(written)} plot(s) to {args.plot}", file=sys.stderr)
    if getattr(args, "html", None):
        path = write_html(args.html, run_dirs, root=args.runs_root, table=args.table,
                          band=getattr(args, "band", "minmax"), figures=figures)
        print(f"wrote the report page {path}", file=sys.stderr)
    return 0
