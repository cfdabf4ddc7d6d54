"""PNG figures: reliability diagrams and training curves.

matplotlib is imported inside the functions, and only its object-oriented API with the Agg
canvas is used (no pyplot): plotting then needs no display, costs nothing at import time, and
never changes the backend of a user's interactive session.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError
from .metrics import calibration_bins

__all__ = ["reliability_diagram", "reliability_diagram_from_bins", "training_curves"]


def _check_writable(path: str | os.PathLike) -> Path:
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UserError(f"cannot write the plot to {str(path)!r}: it is a folder; give a file name ending in .png.")
    if not folder.is_dir():
        raise UserError(
            f"cannot write the plot to {str(path)!r}: {str(folder)!r} is not an existing folder; "
            "create it first or choose a path inside an existing folder."
        )
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(
            f"cannot write the plot to {str(path)!r}: permission denied; choose a path in a folder you can write to."
        )
    return path


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    try:
        fig.savefig(path, format="png")
    except OSError as error:
        raise UserError(f"cannot write the plot to {str(path)!r}: {error.strerror or error}.") from error


def reliability_diagram(
    probs: torch.Tensor,
    labels: torch.Tensor,
    path: str | os.PathLike,
    num_bins: int = 15,
    title: str | None = None,
) -> None:
    """Write a reliability diagram of top-label confidence as a PNG at ``path``.

    Top panel: accuracy per confidence bin (bars) against the diagonal of perfect calibration,
    with the gap to each bin's mean confidence shaded and the ECE in the legend. Bottom panel:
    how many samples fall in each bin. Bins are those of :func:`resnets.metrics.calibration_bins`.
    Raises UserError when the folder of ``path`` is missing or not writable.
    """
    _check_writable(path)  # before the work, so a typo in the path fails fast
    bin_conf, bin_acc, bin_count = calibration_bins(probs, labels, num_bins)
    reliability_diagram_from_bins(bin_conf, bin_acc, bin_count, path, title=title)


def reliability_diagram_from_bins(
    bin_confidence: torch.Tensor,
    bin_accuracy: torch.Tensor,
    bin_count: torch.Tensor,
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """:func:`reliability_diagram` from precomputed bins, e.g. ``ClassificationMetrics.calibration_bins()``,
    so a streaming evaluation need not keep every probability."""
    path = _check_writable(path)
    conf = torch.as_tensor(bin_confidence, dtype=torch.float64).cpu().numpy()
    acc = torch.as_tensor(bin_accuracy, dtype=torch.float64).cpu().numpy()
    count = torch.as_tensor(bin_count, dtype=torch.float64).cpu().numpy()
    num_bins = len(count)
    total = count.sum()
    ece_value = float((abs(acc - conf) * count).sum() / total) if total > 0 else float("nan")

    width = 1.0 / num_bins
    left = [b * width for b in range(num_bins)]
    filled = count > 0

    fig = _new_figure(5.0, 6.0)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    top = fig.add_subplot(grid[0])
    bottom = fig.add_subplot(grid[1], sharex=top)

    top.plot([0, 1], [0, 1], linestyle="--", color="0.4", linewidth=1, label="perfect calibration")
    top.bar([x for x, f in zip(left, filled) if f], acc[filled], width=width, align="edge",
            color="tab:blue", edgecolor="black", linewidth=0.6, label="accuracy")
    # The gap is drawn from a bin's accuracy to its mean confidence (not to the bin centre), so
    # its area is exactly what the ECE sums.
    gap_bottom = [min(a, c) for a, c in zip(acc[filled], conf[filled])]
    gap_height = [abs(c - a) for a, c in zip(acc[filled], conf[filled])]
    top.bar([x for x, f in zip(left, filled) if f], gap_height, bottom=gap_bottom, width=width,
            align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", linewidth=0.6,
            label=f"gap (ECE = {100 * ece_value:.2f}%)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_aspect("auto")
    top.legend(loc="upper left", fontsize=8)
    top.tick_params(labelbottom=False)
    top.set_title(title if title is not None else f"Reliability diagram (ECE = {100 * ece_value:.2f}%)")

    bottom.bar(left, count, width=width, align="edge", color="0.6", edgecolor="black", linewidth=0.6)
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("samples")
    bottom.set_xlim(0, 1)
    fig.subplots_adjust(left=0.15, right=0.97, top=0.93, bottom=0.09)
    _save(fig, path)


def training_curves(
    series: dict[str, list[tuple[int, float]]],
    path: str | os.PathLike,
    ylabel: str,
    xlabel: str = "iteration",
    title: str | None = None,
) -> None:
    """Plot one line per named run, each a list of (step, value) points, as a PNG at ``path``.

    Points are sorted by step; runs with no points are left out of the plot (and the legend).
    Raises UserError when the folder of ``path`` is missing or not writable.
    """
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
    _save(fig, path)
