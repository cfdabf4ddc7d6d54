"""Prediction: a whole dataset through a model and an uncertainty method, scored as it streams.

Used by the training loop (periodic and final evaluation) and by `resnets eval`. Read
`predict_dataset` first: a method may need several passes over the data (SWAG samples,
deep-ensemble members); the predictive distribution is the mean of the passes' probabilities
and the passes are the members. A single pass may still have members of its own
(BatchEnsemble, MC dropout). `Predictor` binds a model, a method and the input pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .data import Normalize, eval_batches
from .devices import PRECISIONS, Runtime, autocast
from .errors import UserError
from .methods.base import Method
from .metrics import ClassificationMetrics


@dataclass
class EvalOutput:
    metrics: dict[str, float]  # ClassificationMetrics.compute()
    probs: torch.Tensor | None  # N×C on the CPU; None when predictions were not kept
    labels: torch.Tensor  # N on the CPU (kept even when streaming: it is only N integers)
    member_probs: torch.Tensor | None  # M×N×C on the CPU, or None (no members, or not kept)
    # N×C on the CPU where the method gives logits and predictions were kept (several passes:
    # the mean of the passes' logits), else None.
    logits: torch.Tensor | None = None


@torch.no_grad()
def _run_pass(model: nn.Module, method: Method, batches: Iterable, precision: str,
              metrics: ClassificationMetrics | None, keep: bool):
    """Predict every batch, streaming metrics; returns (probs, members, labels, batch sizes,
    logits) with probs/members/logits as CPU tensors when `keep`, else None."""
    probs, members, labels, sizes, logits = [], [], [], [], []
    for x, y in batches:
        with autocast(x.device, precision):
            pred = method.predict(model, x)
        p = pred.probs.float()
        mp = None if pred.member_probs is None else pred.member_probs.float()
        if metrics is not None:
            metrics.update(p, y, mp)
        labels.append(y.detach())  # moved to the CPU once, after the pass: no sync per batch
        sizes.append(y.shape[0])
        if keep:
            probs.append(p.cpu())
            if mp is not None:
                members.append(mp.cpu())
            if pred.logits is not None:
                logits.append(pred.logits.float().cpu())
    if not labels:
        raise UserError("the evaluation data gave no batches; check the evaluation split is not empty.")
    return (torch.cat(probs) if keep else None,
            torch.cat(members, dim=1) if keep and members else None,
            torch.cat(labels).cpu(), sizes, torch.cat(logits) if keep and len(logits) == len(probs) else None)


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
    single = method.single_pass
    metrics = ClassificationMetrics(num_classes)
    passes: list[torch.Tensor] = []
    first_members = labels = sizes = None
    logit_sum, logit_passes = None, 0
    generator = method.eval_passes(model)
    try:
        for index, _ in enumerate(generator):
            # The first pass streams its metrics, which stand if no second pass follows; with
            # several passes their mean is scored at the end instead.
            keep = keep_predictions or not single
            probs, members, pass_labels, pass_sizes, logits = _run_pass(
                model, method, batches(), precision, metrics if index == 0 else None, keep)
            if index == 0:
                labels, sizes, first_members = pass_labels, pass_sizes, members
            elif not torch.equal(pass_labels, labels):
                raise ValueError("batches() gave different labels on two evaluation passes; it must return "
                                 "the same data in the same order on every call")
            if probs is not None:
                passes.append(probs)
            if logits is not None:
                logit_sum = logits if logit_sum is None else logit_sum + logits
                logit_passes += 1
    finally:
        generator.close()
        model.train(was_training)

    if labels is None:
        raise RuntimeError(f"{type(method).__name__}.eval_passes yielded no pass; it must yield at least once")
    logits = logit_sum / logit_passes if logit_sum is not None and logit_passes == len(passes) else None
    if len(passes) <= 1:
        probs = passes[0] if passes and keep_predictions else None
        member_probs = first_members if keep_predictions else None
        return EvalOutput(metrics.compute(), probs, labels, member_probs, logits if keep_predictions else None)

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
    return EvalOutput(metrics.compute(), mean, labels, stacked, logits if keep_predictions else None)


def save_predictions(path: str | Path, out: EvalOutput, extra: dict[str, Any] | None = None) -> None:
    """Write `probs`, `labels` and (if any) `member_probs` to an .npz file at exactly `path`.

    `extra` adds more arrays (e.g. the temperature and the uncalibrated probabilities).
    """
    if out.probs is None:
        raise ValueError("this EvalOutput has no predictions: evaluate with keep_predictions=True to save them")
    arrays = {"probs": out.probs.float().numpy(), "labels": out.labels.long().numpy()}
    if out.member_probs is not None:
        arrays["member_probs"] = out.member_probs.float().numpy()
    if out.logits is not None:
        arrays["logits"] = out.logits.float().numpy()
    for key, value in (extra or {}).items():
        arrays[key] = value.float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # An open file keeps numpy from appending '.npz' to a path that lacks it.
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as error:
        raise UserError(f"cannot write predictions to {str(path)!r}: {error.strerror or error}; expected a "
                        f"writable file path.") from None


class Restartable:
    """An iterable that starts the stream afresh on every pass. SWAG re-estimates BN once per
    weight sample; a one-shot iterator would make it keep its BN batches (normalized, on the
    device: ~30 GB for 50 ImageNet batches of 1024), where regenerating them costs only time."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


@dataclass
class Predictor:
    """A model and its method, fed through the evaluation pipeline with the training
    normalization; `seed` fixes MC-dropout draws and corruption noise per evaluation."""
    model: nn.Module
    method: Method
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    runtime: Runtime
    batch_size: int
    seed: int = 0

    def batches(self, split, image_hook=None, zero_labels: bool = False) -> Callable[[], Iterable]:
        """A maker of fresh (x, y) streams over `split`; `image_hook(uint8 images, indices)` may
        change the images before normalization (e.g. corruptions)."""
        def make():
            stream = Normalize(self.mean, self.std, self.runtime.device).batches(eval_batches(
                split, batch_size=self.batch_size, device=self.runtime.device, image_size=self.image_size,
                channels_last=self.runtime.channels_last, num_workers=self.runtime.num_workers,
                image_hook=image_hook))
            # OOD labels mean nothing to this model (and may exceed its classes).
            return ((x, torch.zeros_like(y)) for x, y in stream) if zero_labels else stream
        return make

    def predict(self, batches, keep: bool) -> EvalOutput:
        # Reseeded per evaluation: MC-dropout draws do not depend on which other evaluations ran.
        torch.manual_seed(self.seed)
        return predict_dataset(self.model, self.method, batches, self.num_classes, self.runtime.precision, keep)
