"""`resnets report`: the results of many run directories as the tables of the seed documents.

Three table shapes are offered, one per seed document: seed 001's per-dataset tables of
depth/width sweeps, seed 000's method comparison (train/test NLL and accuracy, runtimes and
checkpoints) and seed 003's model/input-size/latency table. Runs that share a configuration
except for the seed are one row: mean ± sample standard deviation over the seeds, with the
number of seeds shown, so that a difference between rows can be read against the spread
within one.

`--plot DIR` writes, per configuration (its seeds together), the training curves (the dense
points of train_metrics.jsonl and the evaluations of metrics.jsonl; the mean over seeds with a
min–max or ±std band) and a reliability diagram where its runs saved predictions. `--html FILE`
writes all of it as one self-contained page (html_report.py, which builds on this module).
The command's flags are in report_command.py.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from . import plots, runs as run_files
from .config import EXECUTION_FIELDS
from .errors import UserError
from .methods import METHODS, Method
from .models import list_models

TABLES = ("seed001", "seed000", "seed003")

# Configuration fields that say how a run was executed, not what it computed: runs differing
# only in these (and the seed) are repeats of one experiment.
_NOT_IDENTITY = set(EXECUTION_FIELDS) | {"seed", "name", "out", "runs_root", "progress"}
# results.json keys that describe the configuration; they override config.yaml's unresolved
# values ("auto" precision, "48k" iterations, image_size None).
_RESULT_CONFIG_KEYS = ("model", "width", "data", "image_size", "batch_size", "iters", "precision",
                       "method", "ensemble_size", "preset")


def _method_title(name: Any) -> str:
    method = METHODS.get(str(name))
    return method.title if method is not None else str(name)


def _is_deterministic(name: Any) -> bool:
    return name is None or METHODS.get(str(name)) is Method


# ---------------------------------------------------------------- loading runs

@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        value = self.results.get(key)
        return self.config.get(key) if value is None else value

    def number(self, key: str) -> float | None:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    def identity(self) -> tuple:
        """What the run computed, minus the seed: equal for repeats of one experiment."""
        values = {k: v for k, v in self.config.items() if k not in _NOT_IDENTITY}
        for key in _RESULT_CONFIG_KEYS:
            if self.results.get(key) is not None:
                values[key] = self.results[key]
        return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in values.items()))

    def file(self, key: str, default_name: str) -> Path | str | None:
        """A file of the run: the path results.json names (relative to the run) or the default."""
        named = self.results.get(key)
        if isinstance(named, str) and "://" in named:
            return named
        candidates = [Path(named)] if named else []
        if named and not Path(named).is_absolute():
            candidates.insert(0, self.path / named)
        if default_name:
            candidates.append(self.path / default_name)
        for candidate in candidates:
            if candidate.exists():
                return candidate
        return None


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every folder under `root` (itself included) that holds a results.json, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"RUNS_ROOT {str(root)!r} is not a folder: expected the folder that holds the run "
                        "directories written by `resnets train` (each with a results.json).")
    runs = sorted(p.parent for p in root.rglob(run_files.RESULTS_FILE) if p.is_file())
    if not runs:
        raise UserError(f"RUNS_ROOT {str(root)!r} holds no runs: no results.json was found in it or below it. "
                        "Point it at the folder `resnets train` wrote runs into (its --runs-root).")
    return runs


def load_run(path: str | os.PathLike) -> Run:
    """A run's results.json and the TrainConfig fields of its config.yaml (empty if it has none)."""
    path = Path(path)
    results = run_files.read_results(path).to_json()
    config = run_files.read_config(path).config if (path / run_files.CONFIG_FILE).is_file() else {}
    return Run(path, results, config)


def load_runs(run_dirs: Iterable[str | os.PathLike]) -> list[Run]:
    return [load_run(d) for d in run_dirs]


def group_seeds(runs: Sequence[Run]) -> list[list[Run]]:
    """Repeats of one configuration together, in order of first appearance, sorted by seed."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.identity(), []).append(run)
    return [sorted(g, key=_seed_order) for g in groups.values()]


def _seed_order(run: Run) -> tuple:
    seed = run.get("seed")
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


# ---------------------------------------------------------------- statistics and formats

def stat(group: Sequence[Run], value: str | Callable[[Run], float | None]) -> tuple[float, float | None, int] | None:
    """(mean, sample std or None for one value, count) over the runs that have the value."""
    getter = (lambda r: r.number(value)) if isinstance(value, str) else value
    values = [v for v in (getter(r) for r in group) if v is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def _fixed(decimals: int, scale: float = 1.0, suffix: str = "") -> Callable[[float], str]:
    return lambda v: f"{v * scale:.{decimals}f}{suffix}"


def fmt_stat(group: Sequence[Run], value: str | Callable[[Run], float | None],
             fmt: Callable[[float], str], missing: str = "", spread: bool = True) -> str:
    """mean ± std over the group's runs, formatted by `fmt`; `missing` when no run has it."""
    s = stat(group, value)
    if s is None:
        return missing
    mean, std, _ = s
    text = fmt(mean)
    if std is None or not spread or not math.isfinite(mean):
        return text
    # A unit (%, M) is written once, after the spread: 76.5 ± 0.2%.
    unit = re.search(r"[^\d.]*$", text).group(0)
    return f"{text[:len(text) - len(unit)]} ± {fmt(std)}"


def model_title(name: str | None, width: Any = 1) -> str:
    """resnet50 -> ResNet-50, resnetrs50 -> ResNet-RS-50 (x2 for wider models)."""
    if not name:
        return "?"
    match = re.fullmatch(r"resnet(rs)?(\d+)", str(name))
    title = f"ResNet-{'RS-' if match.group(1) else ''}{match.group(2)}" if match else str(name)
    return f"{title} (x{width} wide)" if width not in (None, 1) else title


def _seed_list(group: Sequence[Run]) -> str:
    return f"{len(group)} seeds"


def _link(target: Path | str | None, label: str, base: Path) -> str:
    if target is None:
        return ""
    if isinstance(target, str):  # a URL (gs://, https://) is linked as it is
        return f"[{label}]({target})"
    rel = Path(os.path.relpath(Path(target).resolve(), base.resolve())).as_posix()
    if not rel.startswith("."):
        rel = "./" + rel
    return f"[{label}]({quote(rel, safe='/.-_~')})"


def _links(group: Sequence[Run], key: str, default_name: str, label: str, base: Path) -> str:
    if len(group) == 1:
        return _link(group[0].file(key, default_name), label, base)
    links = [_link(r.file(key, default_name), f"{label} s{r.get('seed')}", base) for r in group]
    return " ".join(link for link in links if link)


# ---------------------------------------------------------------- tables

@dataclass
class Table:
    """One markdown table with its heading; cells are markdown text."""

    heading: str | None
    columns: list[str]
    align: list[str]  # "r", "c" or "l" per column
    rows: list[list[str]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)  # before the table, as in seed 001
    footnotes: list[str] = field(default_factory=list)  # after it, numbered, as in seed 000
    section: str | None = None  # a "## ..." heading over this and the following tables
    repeats: bool = False  # some row is the mean of several seeds

    def drop_empty_columns(self, names: Iterable[str]) -> None:
        """Leave out these columns, together, when no row has a value in any of them."""
        indices = [self.columns.index(n) for n in names if n in self.columns]
        if any(row[i] for row in self.rows for i in indices):
            return
        for i in sorted(indices, reverse=True):
            for seq in (self.columns, self.align, *self.rows):
                del seq[i]


def _model_order(name: Any) -> tuple:
    names = list_models()
    return (names.index(name), "") if name in names else (len(names), str(name))


_PRECISION_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2}


def _row_order(group: Sequence[Run]) -> tuple:
    r = group[0]
    return (_model_order(r.get("model")), r.number("width") or 1, _PRECISION_ORDER.get(r.get("precision"), 3),
            not _is_deterministic(r.get("method")), str(r.get("method") or ""), r.number("ensemble_size") or 0, r.number("batch_size") or 0,
            r.number("iters") or 0, r.identity())


def _dataset_key(run: Run) -> tuple:
    size = run.number("image_size")
    return (size if size is not None else math.inf, str(run.get("data") or "?"))


def _by_dataset(runs: Sequence[Run]) -> list[tuple[tuple, list[list[Run]]]]:
    datasets: dict[tuple, list[Run]] = {}
    for run in runs:
        datasets.setdefault(_dataset_key(run), []).append(run)
    return [(key, sorted(group_seeds(members), key=_row_order)) for key, members in sorted(datasets.items())]


def _iters_text(iters: float) -> str:
    return f"{iters / 1000:g}k" if iters >= 1000 and iters % 100 == 0 else f"{iters:g}"


def _common(groups: Sequence[Sequence[Run]], key: str) -> Any:
    values = {json.dumps(r.get(key), default=str) for g in groups for r in g}
    return json.loads(values.pop()) if len(values) == 1 else None


def _size_text(size: float) -> str:
    return "?" if size == math.inf else f"{size:g}"


def seed001_tables(runs: Sequence[Run], link_base: str | os.PathLike = ".") -> list[Table]:
    """Seed 001's shape: per dataset and input size, Depth | Width | # Params | val/acc | tst/acc |
    tst/nll | misc | log link; repeats of one config are mean ± std over seeds."""
    base = Path(link_base)
    tables, last_size = [], None
    for (size, data), groups in _by_dataset(runs):
        table = Table(f"{data}_x{_size_text(size)}",
                      ["Depth", "Width", "# Params", "val/acc", "tst/acc", "tst/nll", "misc", ""],
                      ["r", "r", "r", "c", "c", "c", "l", "l"])
        if size != last_size:
            table.section = f"Results for {_size_text(size)}x{_size_text(size)} images"
            last_size = size
        table.bullets = _setup_bullets(groups)
        previous = None
        for group in groups:
            first = group[0]
            model = str(first.get("model") or "")
            depth = model.removeprefix("resnet") if re.fullmatch(r"resnet\d+", model) else model
            width = first.get("width")
            head = [depth, "" if width is None else str(width),
                    fmt_stat(group, "params", _fixed(2, 1e-6, " M"), spread=False)]
            # Variants of the model on the line above (fp16, another method) leave these blank.
            shown = list(head) if head != previous else ["", "", ""]
            previous = head
            misc = []
            ipm = stat(group, "iter_per_min")
            if ipm is not None:
                misc.append(f"`{ipm[0]:4.0f} iter/min`")
            precision = first.get("precision")
            if precision and precision != "fp32":
                misc.append(f"`{precision}`")
            if any((r.number("nan_grad_steps") or 0) > 0 for r in group):
                misc.append("`nan-grads`")
            method = first.get("method")
            if not _is_deterministic(method):
                sized = getattr(METHODS.get(str(method)), "sized_by_ensemble_size", False)
                size_text = f" x{first.get('ensemble_size')}" if first.get("ensemble_size") and sized else ""
                misc.append(f"`{method}{size_text}`")
            if len(group) > 1:
                misc.append(f"`{_seed_list(group)}`")
            table.rows.append(shown + [
                fmt_stat(group, "val/acc", _fixed(3)),
                fmt_stat(group, "tst/acc", _fixed(3)),
                fmt_stat(group, "tst/nll", _fixed(3)),
                " ".join(misc),
                _links(group, "log_path", run_files.LOG_FILE, "`*.log`", base),
            ])
        # Seed 001's ImageNet tables have no test split and leave its columns out.
        table.drop_empty_columns(["tst/acc", "tst/nll"])
        table.repeats = any(len(g) > 1 for g in groups)
        tables.append(table)
    return tables


def _setup_bullets(groups: Sequence[Sequence[Run]]) -> list[str]:
    bullets = []
    iters, batch = _common(groups, "iters"), _common(groups, "batch_size")
    if isinstance(iters, (int, float)) and isinstance(batch, (int, float)):
        bullets.append(f"The optimization terminates after {_iters_text(iters)} iterations "
                       f"with a mini-batch size of {batch:g}.")
    devices = sorted({str(r.get("device")) for g in groups for r in g if r.get("device")})
    if devices:
        bullets.append(f"Training runs are done on {' / '.join(devices)}.")
    return bullets


def seed000_tables(runs: Sequence[Run], link_base: str | os.PathLike = ".") -> list[Table]:
    """Seed 000's shape, one table per model and dataset: Method | Train/Test NLL | Train/Test
    Top-1 | Train/Test Top-5 | Train Runtime (hours) | # Parameters | Test runtime (ms/example)
    | Checkpoint. A missing half of a train/test pair is '-', as in the seed."""
    base = Path(link_base)
    by_model: dict[tuple, list[Run]] = {}
    for run in runs:
        key = (_model_order(run.get("model")), run.number("width") or 1, _dataset_key(run))
        by_model.setdefault(key, []).append(run)
    tables = []
    for (_, width, (size, data)), members in sorted(by_model.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        first = members[0]
        # Our Train columns are a clean pass over the train split after training (--eval-train);
        # uncertainty-baselines' are running means over the last epoch's augmented batches (for
        # BatchEnsemble, of the tiled members' logits), which read higher NLL and lower accuracy.
        train = "Train<sup>1</sup>"
        table = Table(f"{model_title(first.get('model'), first.get('width'))} on {data} ({_size_text(size)} px)",
                      ["Method", f"{train}/Test NLL", f"{train}/Test Top-1 Accuracy", f"{train}/Test Top-5 Accuracy",
                       "Train Runtime (hours)", "# Parameters", "Test runtime (ms/example)", "Checkpoint"],
                      ["l"] * 8)
        table.footnotes.append("Train: one pass over the training split after training, without augmentation "
                               "(seed 000's train figures are running means over its last epoch's augmented "
                               "batches). Test: the dataset's test split, or its official validation set where "
                               "it ships no test set (ImageNet).")
        for group in sorted(group_seeds(members), key=_row_order):
            r = group[0]
            method = str(r.get("method") or Method.name)
            title = _method_title(method)
            details = []
            if getattr(METHODS.get(method), "sized_by_ensemble_size", False) and r.get("ensemble_size"):
                details.append(f"{r.get('ensemble_size')} members")
            if r.get("precision") and r.get("precision") != "fp32":
                details.append(str(r.get("precision")))
            if len(group) > 1:
                details.append(_seed_list(group))
            if details:
                title += f" ({', '.join(details)})"
            member = stat(group, "member/acc")
            if member is not None:
                table.footnotes.append(f"Each {title.split(' (')[0]} member achieves {100 * member[0]:.1f}% "
                                       "test top-1 accuracy on average.")
                title += f"<sup>{len(table.footnotes)}</sup>"
            pct = _fixed(1, 100, "%")
            hours = stat(group, "train_hours")
            runtime = "-"
            if hours is not None:
                runtime = fmt_stat(group, "train_hours", _fixed(2 if hours[0] < 1 else 1))
                devices = sorted({str(x.get("device")) for x in group if x.get("device")})
                if devices:
                    runtime += f" ({' / '.join(devices)})"
            table.rows.append([
                title,
                _pair(group, "trn/nll", "tst/nll", _fixed(3)),
                _pair(group, "trn/acc", "tst/acc", pct),
                _pair(group, "trn/top5", "tst/top5", pct),
                runtime,
                fmt_stat(group, "params", _params_text, missing="-", spread=False),
                fmt_stat(group, "test_ms_per_example", _fixed(3), missing="-"),
                _links(group, "checkpoint", "", "ckpt", base) or "-",
            ])
            table.repeats |= len(group) > 1
        tables.append(table)
    return tables


def _pair(group: Sequence[Run], train_key: str, test_key: str, fmt: Callable[[float], str]) -> str:
    if stat(group, test_key) is None:  # no test set (ImageNet): its official validation set is the test
        test_key = "val/" + test_key.split("/", 1)[1]
    train = fmt_stat(group, train_key, fmt, missing="-")
    test = fmt_stat(group, test_key, fmt, missing="-")
    return "-" if train == test == "-" else f"{train} / {test}"


def _params_text(count: float) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    return f"{count / 1e6:.1f}M" if count >= 1e7 else f"{count / 1e6:.2f}M"


def _step_seconds(run: Run) -> float | None:
    ipm = run.number("iter_per_min")
    return 60.0 / ipm if ipm else None


def _top1(run: Run) -> float | None:
    value = run.number("tst/acc")
    return run.number("val/acc") if value is None else value


def seed003_tables(runs: Sequence[Run], link_base: str | os.PathLike = ".") -> list[Table]:
    """Seed 003's shape, per dataset: Model | Input Size | Latency | Top-1 Accuracy | Config |
    Checkpoint. Latency is the run's training step in seconds (at its own batch size)."""
    base = Path(link_base)
    by_data: dict[str, list[Run]] = {}
    for run in runs:
        by_data.setdefault(str(run.get("data") or "?"), []).append(run)
    tables = []
    for data, members in sorted(by_data.items()):
        groups = sorted(group_seeds(members), key=lambda g: (_row_order(g)[0], g[0].number("image_size") or 0,
                                                             _row_order(g)))
        devices = sorted({str(r.get("device")) for r in members if r.get("device")})
        table = Table(data, ["Model", "Input Size", "Latency (s/step)", "Top-1 Accuracy", "Config", "Checkpoint"],
                      ["l", "c", "r", "r", "l", "l"])
        table.bullets = [
            "Latency: seconds per training step at the run's own batch size"
            + (f", on {' / '.join(devices)}" if devices else "") + ". `resnets bench --batch-size auto` "
            "measures seed 003's protocol (batch 128, halved until a step fits).",
            "Top-1 accuracy is on the test split (the validation split where a run has no test split), in %.",
        ]
        for group in groups:
            r = group[0]
            size = r.number("image_size")
            name = model_title(r.get("model"), r.get("width"))
            extra = [str(r.get("precision"))] if r.get("precision") not in (None, "fp32") else []
            if not _is_deterministic(r.get("method")):
                extra.append(_method_title(r.get("method")))
            if len(group) > 1:
                extra.append(_seed_list(group))
            table.rows.append([
                name + (f" ({', '.join(extra)})" if extra else ""),
                "" if size is None else f"{size:g}x{size:g}",
                fmt_stat(group, _step_seconds, _fixed(3)),
                fmt_stat(group, _top1, _fixed(1, 100)),
                _links(group, "config_path", run_files.CONFIG_FILE, "config", base),
                _links(group, "checkpoint", "", "ckpt", base),
            ])
        table.repeats = any(len(g) > 1 for g in groups)
        tables.append(table)
    return tables


def choose_table(runs: Sequence[Run]) -> str:
    """auto: seed 003 for ResNet-RS runs only, seed 000 when any run uses an uncertainty
    method other than the deterministic baseline, seed 001 otherwise."""
    if runs and all(str(r.get("model") or "").startswith("resnetrs") for r in runs):
        return "seed003"
    if any(not _is_deterministic(r.get("method")) for r in runs):
        return "seed000"
    return "seed001"


_BUILDERS = {"seed001": seed001_tables, "seed000": seed000_tables, "seed003": seed003_tables}


def build_tables(run_dirs: Iterable[str | os.PathLike], table: str = "auto",
                 link_base: str | os.PathLike = ".") -> list[Table]:
    """The tables for these run directories; links are relative to `link_base`."""
    runs = load_runs(run_dirs)
    if table == "auto":
        table = choose_table(runs)
    if table not in _BUILDERS:
        raise UserError(f"--table {table!r}: expected auto or one of {', '.join(TABLES)}.")
    return _BUILDERS[table](runs, link_base)


# ---------------------------------------------------------------- rendering

def _escape(cell: str) -> str:
    # A bare | would end the cell early; one already escaped with a backslash stays as it is.
    return re.sub(r"(?<!\\)\|", r"\\|", cell)


def _line(cells: Sequence[str], widths: Sequence[int], align: Sequence[str]) -> str:
    padded = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)]
    return "| " + " | ".join(padded) + " |"


def render_markdown(tables: Sequence[Table]) -> str:
    out: list[str] = []
    for table in tables:
        if table.section:
            out += [f"## {table.section}", ""]
        if table.heading:
            out += [f"### {table.heading}", ""]
        if table.bullets:
            out += [f"* {b}" for b in table.bullets] + [""]
        rows = [[_escape(c) for c in row] for row in table.rows]
        widths = [max([len(table.columns[i]), 3] + [len(row[i]) for row in rows]) for i in range(len(table.columns))]
        rule = {"r": lambda w: "-" * (w - 1) + ":", "c": lambda w: ":" + "-" * (w - 2) + ":",
                "l": lambda w: ":" + "-" * (w - 1)}

        out.append(_line(table.columns, widths, table.align))
        out.append("| " + " | ".join(rule[a](w) for a, w in zip(table.align, widths)) + " |")
        out += [_line(row, widths, table.align) for row in rows]
        if table.footnotes:
            out.append("")
            out += [f"{i}. {note}" for i, note in enumerate(table.footnotes, 1)]
        out.append("")
    if any(table.repeats for table in tables):
        out.append("Rows marked with a number of seeds show mean ± sample standard deviation over those seeds.")
    return "\n".join(out).rstrip("\n") + "\n"


def _plain(cell: str) -> str:
    cell = re.sub(r"\[([^\]]*)\]\(([^)]*)\)", r"\2", cell)
    cell = re.sub(r"<sup>.*?</sup>", "", cell)
    return cell.replace("`", "").replace("\\|", "|").strip()


def render_csv(tables: Sequence[Table]) -> str:
    """The same rows as the markdown as one CSV: a `table` column (the heading) first, then
    every column any table has, blank where a table left it out; markdown is stripped."""
    columns: list[str] = []
    for table in tables:
        for i, name in enumerate(table.columns):
            if name not in columns:
                # Next to its left neighbour, so a column one table dropped keeps its place.
                at = columns.index(table.columns[i - 1]) + 1 if i and table.columns[i - 1] in columns else len(columns)
                columns.insert(at, name)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table"] + [c or "links" for c in columns])
    for table in tables:
        for row in table.rows:
            cells = dict(zip(table.columns, row))
            writer.writerow([table.heading or ""] + [_plain(cells.get(c, "")) for c in columns])
    return buffer.getvalue()


def make_report(run_dirs: Iterable[str | os.PathLike], *, table: str = "auto", fmt: str = "markdown",
                link_base: str | os.PathLike = ".") -> str:
    tables = build_tables(run_dirs, table, link_base)
    if fmt == "markdown":
        return render_markdown(tables)
    if fmt == "csv":
        return render_csv(tables)
    raise UserError(f"--format {fmt!r}: expected markdown or csv.")


# ---------------------------------------------------------------- plots

def curves(rows: Sequence[dict[str, Any]], keep: Callable[[str], bool]) -> dict[str, list[tuple[int, float]]]:
    """(iteration, value) points per key of metrics rows, for the keys `keep` accepts (finite numbers only)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        step = row.get("iter")
        if not isinstance(step, (int, float)):
            continue
        for key, value in row.items():
            if keep(key) and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                series.setdefault(key, []).append((int(step), float(value)))
    return series


def train_rows(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The dense training points of a run (train_metrics.jsonl: one row every --log-every
    iterations); none for runs written before that file existed."""
    reader = getattr(run_files, "read_train_metrics", None)
    if reader is None:
        return []
    return [row for row in reader(run_dir) if row.get("kind", "train") == "train"]


# Panels of the training figure: (title, keys of the evaluation rows, keys of the dense rows).
_CURVE_PANELS = (
    ("loss / NLL", ("val/nll", "tst/nll"), ("trn/loss",)),
    ("accuracy", ("val/acc", "tst/acc"), ("trn/acc",)),
    ("ECE", ("val/ece", "tst/ece"), ()),
    ("learning rate", (), ("lr",)),
)
_COLORS = {"trn": "tab:blue", "val": "tab:orange", "tst": "tab:green", "lr": "tab:purple"}


def curve_panels(run_dirs: Sequence[str | os.PathLike], band: str = "minmax") -> dict[str, list[plots.Series]]:
    """The training-curve series of one configuration's runs (its seeds): the training loss,
    accuracy and LR at every log point (train_metrics.jsonl) and the val/test metrics at every
    evaluation (metrics.jsonl); each the mean over the runs, with a `band` (minmax or std)
    when there are several. Runs without dense points fall back to the training values
    logged with each evaluation."""
    evals = [run_files.read_metrics(d) for d in run_dirs]
    dense = [train_rows(d) for d in run_dirs]
    have_dense = any(dense)
    panels: dict[str, list[plots.Series]] = {}
    for title, eval_keys, dense_keys in _CURVE_PANELS:
        series = []
        for key in dense_keys:
            sources = dense if have_dense else evals
            per_seed = [curves(rows, lambda k: k == key).get(key, []) for rows in sources]
            steps, mean, low, high, seeds = plots.aggregate_seeds(per_seed, band)
            label = key if have_dense else f"{key} (at evaluations)"
            series.append(plots.Series(label, steps, mean, low, high, seeds, dense=have_dense,
                                       color=_COLORS.get(key.split("/")[0])))
        for key in eval_keys:
            per_seed = [curves(rows, lambda k: k == key).get(key, []) for rows in evals]
            steps, mean, low, high, seeds = plots.aggregate_seeds(per_seed, band)
            series.append(plots.Series(key, steps, mean, low, high, seeds, dense=False,
                                       color=_COLORS.get(key.split("/")[0])))
        panels[title] = [s for s in series if s.steps]
    return panels


def _plot_name(run: Path, root: Path | None) -> str:
    try:
        rel = run.resolve().relative_to(root.resolve()) if root is not None else Path(run.name)
    except ValueError:
        rel = Path(run.name)
    name = "__".join(rel.parts) or run.resolve().name
    return re.sub(r"[^\w.+-]", "_", name)


def _relative_parts(run: Path, root: Path | None) -> tuple[str, ...]:
    try:
        return run.resolve().relative_to(root.resolve()).parts if root is not None else (run.name,)
    except ValueError:
        return (run.name,)


def group_name(group: Sequence[Run], root: Path | None = None) -> str:
    """A file-name stem for a configuration's plots: the run's path under `root` for one run;
    for several seeds, the path their runs share plus the number of seeds."""
    if len(group) == 1:
        return _plot_name(group[0].path, root)
    parts = [_relative_parts(r.path, root) for r in group]
    common: list[str] = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    stem = "__".join(common) if common else _plot_name(group[0].path, root) + "_and_more"
    return re.sub(r"[^\w.+-]", "_", f"{stem}__{len(group)}_seeds")


def group_title(group: Sequence[Run]) -> str:
    """'ResNet-20 on digits (16 px), Deterministic, 3 seeds': what the configuration is."""
    first = group[0]
    size = first.number("image_size")
    parts = [f"{model_title(first.get('model'), first.get('width'))} on {first.get('data') or '?'}"
             + (f" ({size:g} px)" if size is not None else "")]
    parts.append(_method_title(first.get("method") or Method.name))
    precision = first.get("precision")
    if precision and precision != "fp32":
        parts.append(str(precision))
    if len(group) > 1:
        seeds = ", ".join(str(r.get("seed")) for r in group)
        parts.append(f"{len(group)} seeds ({seeds})")
    elif first.get("seed") is not None:
        parts.append(f"seed {first.get('seed')}")
    return ", ".join(parts)


_BAND_TEXT = {"minmax": "band: min–max over seeds", "std": "band: mean ± sample std over seeds"}


@dataclass
class ReportFigure:
    """A figure of the report: `kind` is 'curves' or 'reliability'; `name` is its file stem."""
    name: str
    kind: str
    title: str
    figure: Any
    runs: list[Path]


def read_eval(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's eval.json (written by `resnets eval`), or None when it has none or it cannot be
    read (with a warning: the report goes on without it)."""
    path = Path(run_dir) / run_files.EVAL_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"resnets report: warning: {path} is left out: it cannot be read as JSON ({error}).", file=sys.stderr)
        return None
    return data if isinstance(data, dict) else None


def _existing(run_dir: Path, named: Any) -> Path | None:
    """A file eval.json names: as written, else relative to the run, else by name in the run."""
    if not isinstance(named, str) or not named:
        return None
    path = Path(named)
    for candidate in (path, run_dir / path, run_dir / path.name):
        if candidate.is_file():
            return candidate
    return None


def prediction_files(run: Run) -> list[tuple[Path, dict[str, Any] | None]]:
    """The run's own saved predictions: predictions.npz in the run, or the file its eval.json
    names when that evaluation was of this run alone; with the eval.json that wrote it."""
    evaluation = read_eval(run.path)
    found: list[tuple[Path, dict[str, Any] | None]] = []
    if evaluation is not None and len(evaluation.get("runs") or [None]) == 1:
        named = _existing(run.path, evaluation.get("predictions"))
        if named is not None:
            found.append((named, evaluation))
    default = run.path / "predictions.npz"
    if default.is_file() and not any(p.resolve() == default.resolve() for p, _ in found):
        found.append((default, None))
    return found[:1]


def read_predictions(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path) as npz:
            return torch.from_numpy(npz["probs"]), torch.from_numpy(npz["labels"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path} cannot be read ({e}): expected an .npz with arrays "
                        "'probs' (N x C) and 'labels' (N).") from None


def report_figures(runs: Sequence[Run], root: str | os.PathLike | None = None,
                   band: str = "minmax") -> list[ReportFigure]:
    """The report's figures: per configuration (its seeds together) the training curves, and a
    reliability diagram of the predictions its runs saved (pooled over seeds), so several
    methods give one diagram each; then one per deep-ensemble evaluation that saved predictions."""
    root_path = Path(root) if root is not None else None
    figures: list[ReportFigure] = []
    used: set[str] = set()

    def unique(name: str) -> str:
        stem, i = name, 2
        while name in used:
            name, i = f"{stem}_{i}", i + 1
        used.add(name)
        return name

    for group in sorted(group_seeds(runs), key=_row_order):
        name, title = unique(group_name(group, root_path)), group_title(group)
        dirs = [r.path for r in group]
        panels = curve_panels(dirs, band)
        if any(panels.values()):
            seeds = max((s.seeds for series in panels.values() for s in series), default=1)
            subtitle = f"mean of {seeds} seeds, {_BAND_TEXT[band]}" if seeds > 1 else None
            fig = plots.training_figure(panels, title=title, subtitle=subtitle, log_panels=("loss / NLL",))
            figures.append(ReportFigure(name, "curves", title, fig, dirs))
        pooled = [(path, evaluation) for r in group for path, evaluation in prediction_files(r)]
        if pooled:
            loaded = [read_predictions(path) for path, _ in pooled]
            probs = torch.cat([p for p, _ in loaded]) if len(loaded) > 1 else loaded[0][0]
            labels = torch.cat([y for _, y in loaded]) if len(loaded) > 1 else loaded[0][1]
            label = title + (f"\npredictions of {len(pooled)} seeds pooled" if len(pooled) > 1 else "")
            scaled = [e["temperature"] for _, e in pooled if e and e.get("temperature") is not None]
            if len(scaled) == len(pooled) == 1:
                label += f" (temperature-scaled, T = {scaled[0]:.3f})"
            elif scaled:
                label += f" ({len(scaled)} of {len(pooled)} temperature-scaled)"
            fig = plots.reliability_diagram(probs, labels, title=label)
            figures.append(ReportFigure(name, "reliability", label, fig, dirs))

    # Deep ensembles evaluated with `resnets eval RUN1 RUN2 ...`: eval.json in the first run.
    seen: set[Path] = set()
    for run in runs:
        evaluation = read_eval(run.path)
        if evaluation is None or len(evaluation.get("runs") or []) < 2:
            continue
        path = _existing(run.path, evaluation.get("predictions"))
        if path is None or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        probs, labels = read_predictions(path)
        title = (f"Deep ensemble of {len(evaluation['runs'])} runs ({_method_title(evaluation.get('base_method'))}) "
                 f"on {evaluation.get('data')}/{evaluation.get('split')}")
        if evaluation.get("temperature") is not None:
            title += f" (T = {evaluation['temperature']:.3f})"
        fig = plots.reliability_diagram(probs, labels, title=title)
        figures.append(ReportFigure(unique(_plot_name(run.path, root_path) + "__ensemble"), "reliability", title,
                                    fig, [run.path]))
    return figures


def write_plots(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                root: str | os.PathLike | None = None, band: str = "minmax",
                figures: Sequence[ReportFigure] | None = None) -> list[Path]:
    """The report's figures (see `report_figures`) as PNGs in `out_dir`: NAME_curves.png and
    NAME_reliability.png per configuration. Returns the paths written."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--plot {str(out_dir)!r}: cannot create the folder ({e.strerror}).") from None
    if figures is None:
        figures = report_figures(load_runs(run_dirs), root, band)
    return [plots.save_figure(f.figure, out_dir / f"{f.name}_{f.kind}.png") for f in figures]
