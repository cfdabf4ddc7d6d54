"""`resnets report RUNS --html FILE`: the report as one self-contained HTML page.

The page needs nothing but itself: the figures are PNGs embedded as base64 data: URIs, the
style sheet is inline, and there is no script and no web font. A Content-Security-Policy
in the page forbids loading anything else, so a browser opening it from disk fetches nothing.
It holds the seed tables (report's `Table` objects as HTML tables), the training curves of
each configuration, reliability diagrams where runs saved predictions, and the evaluation,
corruption, shift and OOD results of the eval.json files `resnets eval` wrote into the runs.
Every piece of text from the runs is escaped.
"""
from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import plots, report
from . import runs as run_files
from .errors import UserError
from .report import ReportFigure, Run, Table

__all__ = ["build_html", "write_html", "eval_tables", "table_html", "cell_html"]

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1b1f24; background: #fff; margin: 0 auto; padding: 24px 32px 48px; max-width: 1480px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 16px; margin: 22px 0 6px; }
h4 { font-size: 14px; margin: 18px 0 6px; }
p.meta, p.note, figcaption { color: #57606a; font-size: 13px; }
nav a { margin-right: 14px; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.c, th.c { text-align: center; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
code { font: 12px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; background: #eff1f3; padding: 1px 4px;
       border-radius: 4px; }
ul.bullets { margin: 4px 0 6px; padding-left: 22px; }
ol.footnotes { font-size: 13px; color: #3d444d; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; background: #fff; }
figure img { display: block; max-width: 100%; height: auto; }
figure.curves img { width: 820px; }
figure.reliability img { width: 420px; }
"""

# Only these URL schemes become links; anything else (gs://, javascript:) is shown as text.
_LINK_SCHEMES = ("", "http", "https", "file")
_CELL_TOKENS = re.compile(r"`([^`]*)`|\[([^\]]*)\]\(([^)\s]*)\)|<sup>(\d+)</sup>|\\\|")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def cell_html(markdown: str) -> str:
    """One table cell of report's markdown (`code`, [label](link), <sup>n</sup>, \\|) as HTML;
    all other text is escaped."""
    out, at = [], 0
    for match in _CELL_TOKENS.finditer(markdown):
        out.append(_e(markdown[at:match.start()]))
        code, label, target, sup = match.group(1), match.group(2), match.group(3), match.group(4)
        if code is not None:
            out.append(f"<code>{_e(code)}</code>")
        elif label is not None:
            inner = cell_html(label)
            if urlsplit(target).scheme.lower() in _LINK_SCHEMES:
                out.append(f'<a href="{_e(target)}">{inner}</a>')
            else:
                out.append(f"{inner} (<code>{_e(target)}</code>)")
        elif sup is not None:
            out.append(f"<sup>{_e(sup)}</sup>")
        else:
            out.append("|")
        at = match.end()
    out.append(_e(markdown[at:]))
    return "".join(out)


def table_html(table: Table, css_class: str = "seed-table", level: int = 3) -> str:
    """A report `Table` as HTML: its section and heading, bullets, the table and its footnotes."""
    parts = []
    if table.section:
        parts.append(f"<h{level}>{_e(table.section)}</h{level}>")
    if table.heading:
        parts.append(f"<h{level + 1}>{_e(table.heading)}</h{level + 1}>")
    if table.bullets:
        parts.append('<ul class="bullets">' + "".join(f"<li>{cell_html(b)}</li>" for b in table.bullets) + "</ul>")
    align = [a if a in ("l", "c", "r") else "l" for a in table.align]
    head = "".join(f'<th class="{a}">{_e(c)}</th>' for c, a in zip(table.columns, align))
    body = "".join("<tr>" + "".join(f'<td class="{a}">{cell_html(c)}</td>' for c, a in zip(row, align)) + "</tr>"
                   for row in table.rows)
    parts.append(f'<table class="{_e(css_class)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    if table.footnotes:
        parts.append('<ol class="footnotes">' + "".join(f"<li>{cell_html(n)}</li>" for n in table.footnotes)
                     + "</ol>")
    return "\n".join(parts)


# ---------------------------------------------------------------- eval.json tables

def _num(value: Any, digits: int = 4, scale: float = 1.0) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return f"{value * scale:.{digits}f}"


def _pct(value: Any) -> str:
    return _num(value, 2, 100.0)


def _run_label(evaluation: dict[str, Any], run: Run, root: Path | None) -> str:
    names = evaluation.get("runs") or [str(run.path)]
    label = _relative(run.path, root)
    if len(names) > 1:
        return f"ensemble of {len(names)}: " + ", ".join(_relative(Path(n), root) for n in names)
    return label


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def eval_tables(runs: Sequence[Run], root: str | os.PathLike | None = None) -> list[Table]:
    """Tables of the eval.json files in the runs: the evaluation metrics (one row per file), the
    corruptions of each file that has them (accuracy per severity), the shifted test sets and
    the OOD detection results. Cells are report markdown, like the seed tables'."""
    root_path = Path(root) if root is not None else None
    found: list[tuple[str, dict[str, Any]]] = []
    seen: set[Path] = set()
    for run in runs:
        evaluation = report.read_eval(run.path)
        path = (run.path / run_files.EVAL_FILE).resolve()
        if evaluation is None or path in seen or not isinstance(evaluation.get("metrics"), dict):
            continue
        seen.add(path)
        found.append((_run_label(evaluation, run, root_path), evaluation))
    if not found:
        return []

    tables = []
    main = Table("Evaluation (resnets eval)",
                 ["Run", "Method", "Weights", "Data / split", "Images", "NLL", "Top-1 %", "Top-5 %", "ECE %",
                  "Brier", "T", "NLL (T)", "ECE % (T)"],
                 ["l", "l", "l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r"])
    main.section = "Evaluation results"
    for label, ev in found:
        m = ev["metrics"]
        main.rows.append([f"`{label}`", report._method_title(ev.get("method")), str(ev.get("weights") or ""),
                          f"{ev.get('data')}/{ev.get('split')}", str(ev.get("count") or ""),
                          _num(m.get("nll")), _pct(m.get("acc")), _pct(m.get("top5")), _pct(m.get("ece")),
                          _num(m.get("brier")), _num(m.get("temperature"), 3), _num(m.get("ts/nll")),
                          _pct(m.get("ts/ece"))])
    main.drop_empty_columns(["T", "NLL (T)", "ECE % (T)"])
    main.drop_empty_columns(["Top-5 %"])
    tables.append(main)

    for label, ev in found:
        corruptions = ev.get("corruptions")
        if not isinstance(corruptions, dict) or not isinstance(corruptions.get("results"), dict):
            continue
        severities = [str(s) for s in corruptions.get("severities") or []]
        table = Table(f"Corruptions: {label} on {ev.get('data')}/{ev.get('split')}",
                      ["Corruption"] + [f"acc % s{s}" for s in severities] + ["mean acc %", "mean NLL", "mean ECE %"],
                      ["l"] + ["r"] * (len(severities) + 3))
        table.bullets = [f"Top-1 accuracy per severity; means over the severities. Clean accuracy "
                         f"{_pct(ev['metrics'].get('acc'))}%; parameters: {corruptions.get('param_set')}."]
        for name, by_severity in corruptions["results"].items():
            entries = [by_severity.get(s) or {} for s in severities]
            mean = lambda key: _mean([e.get(key) for e in entries])  # noqa: E731
            table.rows.append([str(name)] + [_pct(e.get("acc")) for e in entries]
                              + [_pct(mean("acc")), _num(mean("nll")), _pct(mean("ece"))])
        means = corruptions.get("mean") or {}
        table.rows.append(["all (mean)"] + [""] * len(severities)
                          + [_pct(means.get("corrupted/mean_acc")), _num(means.get("corrupted/mean_nll")),
                             _pct(means.get("corrupted/mean_ece"))])
        tables.append(table)

    shifted = [(label, ev) for label, ev in found if isinstance(ev.get("shift"), dict)]
    if shifted:
        table = Table("Shifted test sets", ["Run", "Shift data / split", "Images", "NLL", "Top-1 %", "Top-5 %",
                                            "ECE %", "Brier"], ["l", "l", "r", "r", "r", "r", "r", "r"])
        for label, ev in shifted:
            s = ev["shift"]
            m = s.get("metrics") or {}
            table.rows.append([f"`{label}`", f"{s.get('data')}/{s.get('split')}", str(s.get("count") or ""),
                               _num(m.get("nll")), _pct(m.get("acc")), _pct(m.get("top5")), _pct(m.get("ece")),
                               _num(m.get("brier"))])
        tables.append(table)

    selective = [(label, ev) for label, ev in found if "selective/aurc" in ev["metrics"]]
    if selective:
        table = Table("Selective prediction and conformal sets",
                      ["Run", "Data / split", "AURC", "AUGRC", "Risk @80% cov.", "Cov. @5% risk", "alpha",
                       "THR cov.", "THR size", "APS cov.", "APS size", "RAPS cov.", "RAPS size"],
                      ["l", "l"] + ["r"] * 11)
        table.bullets = ["Confidence = max prob. Conformal sets calibrated on the run's val split, scored on the "
                         "evaluated split (coverage and mean set size)."]
        for label, ev in selective:
            m, alpha = ev["metrics"], (ev.get("conformal") or {}).get("alpha")
            sets = [_num(m.get(f"conformal/{kind}/{key}"), 3) for kind in ("thr", "aps", "raps")
                    for key in ("coverage", "set_size")]
            table.rows.append([f"`{label}`", f"{ev.get('data')}/{ev.get('split')}"]
                              + [_num(m.get(f"selective/{k}")) for k in ("aurc", "augrc", "risk_at_80_coverage",
                                                                         "coverage_at_5_risk")]
                              + [_num(alpha, 2) if "conformal/thr/coverage" in m else ""] + sets)
        tables.append(table)

    detected = [(label, ev) for label, ev in found if isinstance(ev.get("ood"), dict)]
    if detected:
        table = Table("Out-of-distribution detection", ["Run", "OOD data / split", "In-distribution", "Images",
                                                        "Score", "AUROC", "AUPR-in", "AUPR-out", "FPR95"],
                      ["l", "l", "l", "r", "l", "r", "r", "r", "r"])
        for label, ev in detected:
            o = ev["ood"]
            for kind, values in (o.get("scores") or {}).items():
                if not isinstance(values, dict):
                    continue
                table.rows.append([f"`{label}`", f"{o.get('data')}/{o.get('split')}",
                                   f"{ev.get('data')}/{o.get('in_split')}", str(o.get("count") or ""), str(kind),
                                   _num(values.get("auroc")), _num(values.get("aupr_in")),
                                   _num(values.get("aupr_out")), _num(values.get("fpr95"))])
        tables.append(table)
    return tables


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(numbers) / len(numbers) if numbers else None


# ---------------------------------------------------------------- the page

def _figure_html(figure: ReportFigure, root: Path | None) -> str:
    data = base64.b64encode(plots.png_bytes(figure.figure)).decode("ascii")
    runs = ", ".join(_relative(p, root) for p in figure.runs)
    return (f'<figure class="{_e(figure.kind)}" id="{_e(figure.name + "_" + figure.kind)}">'
            f'<img src="data:image/png;base64,{data}" alt="{_e(figure.kind)}: {_e(figure.title)}">'
            f"<figcaption>{_e(runs)}</figcaption></figure>")


def build_html(run_dirs: Iterable[str | os.PathLike], *, root: str | os.PathLike | None = None,
               table: str = "auto", link_base: str | os.PathLike = ".", band: str = "minmax",
               figures: Sequence[ReportFigure] | None = None, title: str = "resnets report") -> str:
    """The report page for these run directories; links to run files are relative to `link_base`
    (the folder the page is written to)."""
    run_dirs = [Path(d) for d in run_dirs]
    runs = report.load_runs(run_dirs)
    kind = report.choose_table(runs) if table == "auto" else table
    if kind not in report._BUILDERS:
        raise UserError(f"--table {table!r}: expected auto or one of {', '.join(report.TABLES)}.")
    seed_tables = report._BUILDERS[kind](runs, link_base)
    if figures is None:
        figures = report.report_figures(runs, root, band)
    root_path = Path(root) if root is not None else None
    evaluations = eval_tables(runs, root_path)

    curves = [f for f in figures if f.kind == "curves"]
    reliability = [f for f in figures if f.kind == "reliability"]
    sections = [("tables", "Results")]
    if curves:
        sections.append(("curves", "Training curves"))
    if reliability:
        sections.append(("reliability", "Reliability diagrams"))
    if evaluations:
        sections.append(("evaluation", "Evaluation"))

    where = f" under {_e(root_path.as_posix())}" if root_path is not None else ""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing outside the page may load: images only from data: URIs, styles only inline.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="meta">{len(runs)} run(s){where}, seed {_e(kind[4:])} table layout; generated '
        f"{_e(datetime.now().strftime('%Y-%m-%d %H:%M'))} by <code>resnets report</code>.</p>",
        "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in sections) + "</nav></header>",
        '<section id="tables"><h2>Results</h2>',
    ]
    out += [table_html(t, "seed-table") for t in seed_tables]
    if any(t.repeats for t in seed_tables):
        out.append('<p class="note">Rows marked with a number of seeds show mean ± sample standard deviation '
                   "over those seeds.</p>")
    out.append("</section>")
    if curves:
        band_text = "min–max" if band == "minmax" else "mean ± sample standard deviation"
        out.append('<section id="curves"><h2>Training curves</h2>')
        out.append(f'<p class="note">Lines: training loss, accuracy and learning rate at every log point; markers: '
                   f"validation and test metrics at every evaluation. Several seeds of one configuration: "
                   f"their mean, with a {_e(band_text)} band.</p>")
        out.append('<div class="figures">' + "".join(_figure_html(f, root_path) for f in curves) + "</div></section>")
    if reliability:
        out.append('<section id="reliability"><h2>Reliability diagrams</h2>')
        out.append('<p class="note">Accuracy per confidence bin (blue) and its gap to the bin\'s mean confidence '
                   "(red); sample counts per bin below.</p>")
        out.append('<div class="figures">' + "".join(_figure_html(f, root_path) for f in reliability)
                   + "</div></section>")
    if evaluations:
        out.append('<section id="evaluation"><h2>Evaluation</h2>')
        for t in evaluations:
            t.section = None  # the section heading is the h2 above
            out.append(table_html(t, "eval-table"))
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_html(path: str | os.PathLike, run_dirs: Iterable[str | os.PathLike], *,
               root: str | os.PathLike | None = None, table: str = "auto", band: str = "minmax",
               figures: Sequence[ReportFigure] | None = None) -> Path:
    """Write the page to `path` (its folder created); links are relative to that folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--html {str(path)!r}: cannot create its folder ({e.strerror}).") from None
    text = build_html(run_dirs, root=root, table=table, link_base=path.parent, band=band, figures=figures)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"--html {str(path)!r}: cannot write the page there ({e.strerror or e}).") from None
    return path
