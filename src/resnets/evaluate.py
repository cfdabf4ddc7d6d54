"""Predict a whole evaluation set with an uncertainty method and score the predictions.

A method may need several passes over the data (SWAG samples, deep-ensemble members): the
predictive distribution is the mean of the passes' probabilities and the passes are the
members. A single pass may still have members of its own (BatchEnsemble, MC dropout).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .methods.base import Method
from .metrics import ClassificationMetrics

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EvalOutput:
    metrics: dict[str, float]  # ClassificationMetrics.compute()
    probs: torch.Tensor | None  # N×C on the CPU; None when predictions were not kept
    labels: torch.Tensor  # N on the CPU (kept even when streaming: it is only N integers)
    member_probs: torch.Tensor | None  # M×N×C on the CPU, or None (no members, or not kept)


def _autocast(precision: str, device: torch.device):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _single_pass(method: Method) -> bool:
    # The base class's eval_passes yields exactly once; an override may yield any number of
    # times, and whether a second pass comes is only known after the first one ends.
    return type(method).eval_passes is Method.eval_passes


@torch.no_grad()
def _run_pass(model: nn.Module, method: Method, batches: Iterable, precision: str,
              metrics: ClassificationMetrics | None, keep: bool):
    """Predict every batch, streaming metrics; returns (probs, members, labels, batch sizes) with
    probs/members as CPU tensors when `keep`, else None."""
    probs, members, labels, sizes = [], [], [], []
    for x, y in batches:
        with _autocast(precision, x.device):
            pred = method.predict(model, x)
        p = pred.probs.float()
        mp = None if pred.member_probs is None else pred.member_probs.float()
        if metrics is not None:
            metrics.update(p, y, mp)
        labels.append(y.detach().cpu())
        sizes.append(y.shape[0])
        if keep:
            probs.append(p.cpu())
            if mp is not None:
                members.append(mp.cpu())
    if not labels:
        raise UserError("the evaluation data gave no batches; check the evaluation split is not empty.")
    return (torch.cat(probs) if keep else None,
            torch.cat(members, dim=1) if keep and members else None,
            torch.cat(labels), sizes)


def predict_dataset(model: nn.Module, method: Method,
                    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], num_classes: int,
                    precision: str = "fp32", keep_predictions: bool = True) -> EvalOutput:
    """Evaluate `model` with `method` on the data that `batches()` yields.

    `batches()` must return a fresh iterator over (normalized x, y) on the model's device, in
    the same order every call. With `keep_predictions=False` a single-pass method only streams
    metrics (probs and member_probs come back None); a multi-pass method still keeps every
    pass's probabilities on the CPU, which averaging the passes needs.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not supported for evaluation: expected one of "
                        f"{', '.join(PRECISIONS)}.")
    was_training = model.training
    model.eval()
    single = _single_pass(method)
    metrics = ClassificationMetrics(num_classes)
    passes: list[torch.Tensor] = []
    first_members = labels = sizes = None
    generator = method.eval_passes(model)
    try:
        for index, _ in enumerate(generator):
            # The first pass streams its metrics, which stand if no second pass follows; with
            # several passes their mean is scored at the end instead.
            keep = keep_predictions or not single
            probs, members, pass_labels, pass_sizes = _run_pass(
                model, method, batches(), precision, metrics if index == 0 else None, keep)
            if index == 0:
                labels, sizes, first_members = pass_labels, pass_sizes, members
            elif not torch.equal(pass_labels, labels):
                raise ValueError("batches() gave different labels on two evaluation passes; it must return "
                                 "the same data in the same order on every call")
            if probs is not None:
                passes.append(probs)
    finally:
        generator.close()
        model.train(was_training)

    if labels is None:
        raise RuntimeError(f"{type(method).__name__}.eval_passes yielded no pass; it must yield at least once")
    if len(passes) <= 1:
        probs = passes[0] if passes and keep_predictions else None
        member_probs = first_members if keep_predictions else None
        return EvalOutput(metrics.compute(), probs, labels, member_probs)

    # Several passes: the passes are the members (a pass's own members are averaged into it).
    metrics = ClassificationMetrics(num_classes)
    stacked = None
    if keep_predictions:
        stacked = torch.stack(passes)
        passes.clear()
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        chunk = stacked[:, rows] if stacked is not None else torch.stack([p[rows] for p in passes])
        metrics.update(chunk.mean(0), labels[rows], chunk)
        start += size
    mean = stacked.mean(0) if stacked is not None else None
    return EvalOutput(metrics.compute(), mean, labels, stacked)


def save_predictions(path: str | Path, out: EvalOutput) -> None:
    """Write `probs`, `labels` and (if any) `member_probs` to an .npz file at exactly `path`."""
    if out.probs is None:
        raise ValueError("this EvalOutput has no predictions: evaluate with keep_predictions=True to save them")
    arrays = {"probs": out.probs.float().numpy(), "labels": out.labels.long().numpy()}
    if out.member_probs is not None:
        arrays["member_probs"] = out.member_probs.float().numpy()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # An open file keeps numpy from appending '.npz' to a path that lacks it.
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as error:
        raise UserError(f"cannot write predictions to {str(path)!r}: {error.strerror or error}; expected a "
                        f"writable file path.") from None
