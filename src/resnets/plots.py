"""PNG figures: reliability diagrams and training curves.

matplotlib is imported inside the functions, and only its object-oriented API with the Agg
canvas is used (no pyplot): plotting then needs no display, costs nothing at import time, and
never changes the backend of a user's interactive session.

Every function returns the matplotlib ``Figure`` it drew (and writes it as a PNG when given a
path), so a caller can embed it elsewhere (:func:`png_bytes`) and a test can read back the
data of what was drawn.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, writable_path
from .metrics import calibration_bins

__all__ = ["reliability_diagram", "reliability_diagram_from_bins", "training_curves", "training_figure",
           "Series", "aggregate_seeds", "png_bytes", "save_figure"]

BANDS = ("minmax", "std")
# matplotlib stamps its name and web address into every PNG; the figures carry neither.
_PNG_METADATA = {"Software": None}


def _check_writable(path: str | os.PathLike) -> Path:
    return writable_path(path, "plot file", "a .png file path")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    try:
        fig.savefig(path, format="png", metadata=_PNG_METADATA)
    except OSError as error:
        raise UserError(f"cannot write the plot to {str(path)!r}: {error.strerror or error}.") from error


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write `fig` as a PNG at `path` (UserError naming the path when it cannot be written)."""
    path = _check_writable(path)
    _save(fig, path)
    return path


def png_bytes(fig) -> bytes:
    """The PNG of `fig`, in memory (for a data: URI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata=_PNG_METADATA)
    return buffer.getvalue()


# ---------------------------------------------------------------- reliability diagrams

def reliability_diagram(
    probs: torch.Tensor,
    labels: torch.Tensor,
    path: str | os.PathLike | None = None,
    num_bins: int = 15,
    title: str | None = None,
):
    """A reliability diagram of top-label confidence; written as a PNG at ``path`` when given.

    Top panel: accuracy per confidence bin (bars) against the diagonal of perfect calibration,
    and each bin's gap between accuracy and mean confidence as a narrower translucent bar
    drawn over it, so the bar's top stays visible on both sides. Bottom panel: how many samples
    fall in each bin. The ECE is in the title. Bins are those of
    :func:`resnets.metrics.calibration_bins`. Returns the figure. Raises UserError when the
    folder of ``path`` is missing or not writable.
    """
    if path is not None:
        _check_writable(path)  # before the work, so a typo in the path fails fast
    bin_conf, bin_acc, bin_count = calibration_bins(probs, labels, num_bins)
    return reliability_diagram_from_bins(bin_conf, bin_acc, bin_count, path, title=title)


def _count_text(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def reliability_diagram_from_bins(
    bin_confidence: torch.Tensor,
    bin_accuracy: torch.Tensor,
    bin_count: torch.Tensor,
    path: str | os.PathLike | None = None,
    title: str | None = None,
):
    """:func:`reliability_diagram` from precomputed bins, e.g. ``ClassificationMetrics.calibration_bins()``,
    so a streaming evaluation need not keep every probability. Returns the figure."""
    if path is not None:
        path = _check_writable(path)
    conf = torch.as_tensor(bin_confidence, dtype=torch.float64).cpu().numpy()
    acc = torch.as_tensor(bin_accuracy, dtype=torch.float64).cpu().numpy()
    count = torch.as_tensor(bin_count, dtype=torch.float64).cpu().numpy()
    num_bins = len(count)
    total = count.sum()
    ece_value = float((abs(acc - conf) * count).sum() / total) if total > 0 else float("nan")
    accuracy = float((acc * count).sum() / total) if total > 0 else float("nan")

    width = 1.0 / num_bins
    left = np.arange(num_bins) * width
    filled = count > 0

    fig = _new_figure(5.2, 6.4)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1.1), hspace=0.08)
    top = fig.add_subplot(grid[0])
    bottom = fig.add_subplot(grid[1], sharex=top)

    top.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1, label="perfect calibration", zorder=4)
    top.bar(left[filled], acc[filled], width=width, align="edge", color="#4c8cc9", edgecolor="#1d3f66",
            linewidth=0.8, label="accuracy", zorder=2)
    # The gap runs from a bin's accuracy to its mean confidence (not to the bin centre), so its
    # area is exactly what the ECE sums. Narrower than the bin and translucent: the accuracy
    # bar's top edge shows on both sides whether the bin is over- or under-confident.
    gap_bottom = np.minimum(acc, conf)[filled]
    gap_height = np.abs(conf - acc)[filled]
    top.bar(left[filled] + 0.2 * width, gap_height, bottom=gap_bottom, width=0.6 * width, align="edge",
            color="#e0483e", alpha=0.45, edgecolor="#a01c14", linewidth=0.8,
            label="gap to mean confidence", zorder=3)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.grid(True, alpha=0.25, zorder=0)
    top.legend(loc="upper left", fontsize=8, framealpha=0.9)
    top.tick_params(labelbottom=False)
    summary = f"ECE = {100 * ece_value:.2f}%  (accuracy {100 * accuracy:.1f}%, {total:.0f} samples, {num_bins} bins)"
    if title:
        top.set_title(f"{title}\n{summary}", fontsize=9)
    else:
        top.set_title(f"Reliability diagram\n{summary}", fontsize=9)

    # Counts: a log axis when one bin dwarfs the others (a well-trained model puts most samples
    # in the top bin), with each bin's count written above its bar.
    nonzero = count[filled]
    log = bool(len(nonzero)) and nonzero.max() / nonzero.min() > 50
    bottom.bar(left, count, width=width, align="edge", color="0.65", edgecolor="0.2", linewidth=0.6)
    if log:
        bottom.set_yscale("log")
        bottom.set_ylim(0.7, nonzero.max() * 8)
    elif len(nonzero):
        bottom.set_ylim(0, nonzero.max() * 1.3)
    for x, n in zip(left[filled], nonzero):
        bottom.text(x + width / 2, n * (1.15 if log else 1.0), _count_text(n), ha="center", va="bottom",
                    fontsize=6 if num_bins > 10 else 7, color="0.15")
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("samples" + (" (log)" if log else ""))
    bottom.set_xlim(0, 1)
    fig.subplots_adjust(left=0.14, right=0.97, top=0.91, bottom=0.08)
    if path is not None:
        _save(fig, path)
    return fig


# ---------------------------------------------------------------- training curves

@dataclass
class Series:
    """One line of a training-curve panel: a value against iterations, the mean over `seeds`
    runs, with the band [low, high] around it when there are several.

    `dense` series have a point every log interval and are drawn as lines; evaluation series
    (one point per evaluation) are drawn with markers, so a run evaluated once still shows
    its point."""

    label: str
    steps: list[int]
    mean: list[float]
    low: list[float] | None = None
    high: list[float] | None = None
    seeds: int = 1
    dense: bool = True
    color: str | None = None


def aggregate_seeds(per_seed: Sequence[Iterable[tuple[int, float]]], band: str = "minmax"):
    """(steps, mean, low, high, seeds) of one value over several runs' (step, value) points.

    Steps are the union of the runs' steps; at each, the mean is over the runs that have a point
    there. The band is the min–max over those runs, or the mean ± sample standard deviation
    (`band="std"`); low and high are None for a single run. A step logged twice in one run (a
    resumed run) keeps its last value."""
    if band not in BANDS:
        raise UserError(f"band {band!r}: expected one of {', '.join(BANDS)}.")
    runs = []
    for points in per_seed:
        by_step: dict[int, float] = {}
        for step, value in points:
            if value is not None and math.isfinite(float(value)):
                by_step[int(step)] = float(value)
        if by_step:
            runs.append(by_step)
    steps = sorted(set().union(*runs)) if runs else []
    mean, low, high = [], [], []
    for step in steps:
        values = np.array([r[step] for r in runs if step in r])
        m = float(values.mean())
        mean.append(m)
        if band == "std":
            s = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            low.append(m - s)
            high.append(m + s)
        else:
            low.append(float(values.min()))
            high.append(float(values.max()))
    if len(runs) <= 1:
        return steps, mean, None, None, len(runs)
    return steps, mean, low, high, len(runs)


def _draw_series(ax, series: Series) -> None:
    if not series.steps:
        return
    steps = np.asarray(series.steps)
    mean = np.asarray(series.mean)
    if series.dense and len(steps) > 1:
        (line,) = ax.plot(steps, mean, linewidth=1.4, color=series.color, label=series.label, zorder=3)
    else:
        # Evaluation points: markers, joined when there are several.
        (line,) = ax.plot(steps, mean, marker="o", markersize=5 if len(steps) > 1 else 7,
                          linestyle="-" if len(steps) > 1 else "none", linewidth=1.2, color=series.color,
                          label=series.label, zorder=4)
    if series.low is not None and series.high is not None and len(steps) > 0:
        color = line.get_color()
        if len(steps) > 1:
            ax.fill_between(steps, series.low, series.high, color=color, alpha=0.2, linewidth=0, zorder=2)
        else:
            ax.errorbar(steps, mean, yerr=[[mean[0] - series.low[0]], [series.high[0] - mean[0]]], fmt="none",
                        ecolor=color, capsize=4, zorder=4)


def _wants_log(series: Sequence[Series]) -> bool:
    values = [v for s in series for v in (s.low or []) + s.mean + (s.high or [])]
    positive = [v for v in values if v > 0]
    return bool(values) and len(positive) == len(values) and max(positive) / min(positive) > 20


def training_figure(
    panels: Mapping[str, Sequence[Series]],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    subtitle: str | None = None,
    xlabel: str = "iteration",
    log_panels: Iterable[str] = (),
):
    """Training curves of one experiment: a panel (shared x axis) per `panels` entry that has
    points, each with its series. Panels named in `log_panels` get a log y axis when all their
    values are positive and span more than a factor of 20. Returns the figure; written as a PNG
    at `path` when given."""
    if path is not None:
        path = _check_writable(path)
    shown = [(name, [s for s in series if s.steps]) for name, series in panels.items()]
    shown = [(name, series) for name, series in shown if series]
    log_panels = set(log_panels)
    n = max(len(shown), 1)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig = _new_figure(5.0 * cols + 0.6, 3.3 * rows + (0.9 if title else 0.3))
    from matplotlib.ticker import MaxNLocator

    axes = []
    for i, (name, series) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1, sharex=axes[0] if axes else None)
        axes.append(ax)
        for s in series:
            _draw_series(ax, s)
        if name in log_panels and _wants_log(series):
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    if not shown:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no logged points", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    if title:
        fig.suptitle(title if subtitle is None else f"{title}\n{subtitle}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    if path is not None:
        _save(fig, path)
    return fig


def training_curves(
    series: dict[str, list[tuple[int, float]]],
    path: str | os.PathLike | None,
    ylabel: str,
    xlabel: str = "iteration",
    title: str | None = None,
):
    """Plot one line per named run, each a list of (step, value) points, as a PNG at ``path``.

    Points are sorted by step; runs with no points are left out of the plot (and the legend).
    Returns the figure. Raises UserError when the folder of ``path`` is missing or not writable.
    """
    if path is not None:
        path = _check_writable(path)
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in series.items():
        if not points:
            continue
        points = sorted((int(step), float(value)) for step, value in points)
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2, label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(series.values()):
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def risk_coverage_plot(probs: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike | None = None,
                       title: str | None = None):
    """The risk–coverage curve (selective risk against coverage, confidence = max prob) of
    :func:`resnets.metrics.risk_coverage`, with the AURC in the legend; a PNG at ``path`` when given."""
    from .metrics import risk_coverage, selective_metrics

    if path is not None:
        path = _check_writable(path)
    coverage, risk, generalized = risk_coverage(probs, labels)
    values = selective_metrics(probs, labels)
    fig = _new_figure(5.2, 4.2)
    ax = fig.add_subplot()
    ax.step(np.r_[0, coverage], np.r_[risk[0], risk], where="post", color="#1d3f66",
            label=f"selective risk (AURC {values['aurc']:.4f})")
    ax.step(np.r_[0, coverage], np.r_[0, generalized], where="post", color="#c9704c",
            label=f"generalized risk (AUGRC {values['augrc']:.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage")
    ax.set_ylabel("risk")
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    if path is not None:
        _save(fig, path)
    return fig
