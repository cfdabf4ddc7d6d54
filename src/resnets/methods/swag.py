"""Stochastic weight averaging (Izmailov et al. 2018) and SWAG (Maddox et al. 2019).

Both collect snapshots of the weights along the end of the trajectory, every
`collect_every` steps once a fraction `start` of training is done, optionally at a constant
learning rate `lr`. SWA predicts with the mean of the snapshots; SWAG fits a Gaussian to
them (diagonal variance plus a low-rank part from the last `rank` deviations from the mean)
and averages the predictions of `samples` weight samples.

The statistics live as flat float32 vectors on the model's device and in `state_dict()`, so
a resumed run continues exactly. Only parameters are averaged: BatchNorm running statistics
of an averaged or sampled network are recomputed from training batches, because the mean of
the snapshots' statistics is not the statistics of the mean network.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..errors import UserError
from .base import Method


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    # reshape rather than view: a channels_last parameter is not contiguous, and reshape
    # flattens it in logical (N, C, H, W) order, the order `assign_parameters` writes back.
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


@torch.no_grad()
def assign_parameters(model: nn.Module, vector: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.copy_(vector[offset:offset + n].view(p.shape))
        offset += n
    if offset != vector.numel():
        raise ValueError(f"the weight vector has {vector.numel()} values but the model has {offset}")


def recompute_bn(model: nn.Module, batches: Iterable, limit: int | None) -> int:
    """Re-estimate BatchNorm statistics as an equal-weight average over `limit` batches."""
    seen = 0

    def counted():
        nonlocal seen
        for batch in batches if limit is None else itertools.islice(batches, limit):
            seen += 1
            yield batch

    update_bn(counted(), model)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and seen == 0:
        raise UserError("SWA/SWAG needs training batches to recompute BatchNorm statistics, but the training "
                        "data gave none; check the training data set.")
    return seen


def _reiterable(batches: Iterable, limit: int | None) -> Iterable:
    # SWAG goes over the BN batches once per sample; a one-shot iterator would be empty the
    # second time and silently leave BN at its reset statistics, so keep its first batches.
    if iter(batches) is batches:
        return list(batches if limit is None else itertools.islice(batches, limit))
    return batches


class SWA(Method):
    name = "swa"
    title = "SWA"
    finalizes = True
    averages_weights = True
    stateful = True

    @classmethod
    def from_config(cls, cfg) -> "SWA":
        return cls(start=cfg.swa_start, collect_every=cfg.swa_every, lr=cfg.swa_lr)

    def __init__(self, start: float = 0.75, collect_every: int = 100, lr: float | None = None,
                 bn_batches: int | None = 50):
        if not 0.0 <= start < 1.0:
            raise UserError(f"{self.name} option start (--swa-start) must be a fraction in [0, 1) of the "
                            f"training iterations after which weights are collected, got {start!r}.")
        if isinstance(collect_every, bool) or not isinstance(collect_every, int) or collect_every < 1:
            raise UserError(f"{self.name} option collect_every (--swa-every) must be a whole number >= 1 "
                            f"(optimizer steps between weight snapshots, e.g. the steps per epoch), "
                            f"got {collect_every!r}.")
        if lr is not None and not lr > 0:
            raise UserError(f"{self.name} option lr (--swa-lr) must be a learning rate > 0 (held constant "
                            f"after start), or left out to keep the schedule, got {lr!r}.")
        if bn_batches is not None and (isinstance(bn_batches, bool) or not isinstance(bn_batches, int)
                                       or bn_batches < 1):
            raise UserError(f"{self.name} option bn_batches must be a whole number >= 1 (training batches used "
                            f"to recompute BatchNorm statistics) or left out for all, got {bn_batches!r}.")
        self.start = float(start)
        self.collect_every = collect_every
        self.lr = None if lr is None else float(lr)
        self.bn_batches = bn_batches
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._checked_total: int | None = None
        self._bn_source: Iterable | None = None

    def start_iteration(self, total_iters: int) -> int:
        return math.floor(self.start * total_iters)

    def adjust_lr(self, lr: float, iteration: int, total_iters: int) -> float:
        if self.lr is not None and iteration >= self.start_iteration(total_iters):
            return self.lr
        return lr

    def _check_schedule(self, total_iters: int) -> None:
        first = self.start_iteration(total_iters)
        if total_iters - first < self.collect_every:
            raise UserError(
                f"{self.name} would collect no weights: it starts after step {first} of {total_iters} "
                f"(--swa-start {self.start}) and collects every {self.collect_every} steps (--swa-every); "
                f"lower either of them, or train longer (--iters)."
            )
        self._checked_total = total_iters

    def after_step(self, model: nn.Module, iteration: int, total_iters: int) -> None:
        if self._checked_total != total_iters:
            self._check_schedule(total_iters)
        first = self.start_iteration(total_iters)
        if iteration > first and (iteration - first) % self.collect_every == 0:
            self.collect(model)

    @torch.no_grad()
    def collect(self, model: nn.Module) -> None:
        """Add the model's current weights as one snapshot."""
        w = flatten_parameters(model)
        if self.mean is None:
            self.mean = torch.zeros_like(w)
        self.mean = self.mean.to(w.device)
        self.count += 1
        self.mean += (w - self.mean) / self.count
        self._collect_extra(w)

    def _collect_extra(self, w: torch.Tensor) -> None:
        pass

    def finalize(self, model: nn.Module, train_batches: Iterable) -> None:
        """Load the mean weights and recompute BatchNorm statistics.

        Safe to call again, e.g. to evaluate a loaded checkpoint: a separate evaluation must call
        it (SWAG keeps `train_batches` for its per-sample BN updates, so pass a re-iterable such
        as a DataLoader; a one-shot iterator has its first `bn_batches` batches kept).
        """
        if self.count == 0:
            warnings.warn(f"{self.name} collected no weights; the final model is the last iterate", stacklevel=2)
            return
        self._bn_source = _reiterable(train_batches, self.bn_batches)
        assign_parameters(model, self.mean)
        recompute_bn(model, self._bn_source, self.bn_batches)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.mean = state["mean"]


class SWAG(SWA):
    name = "swag"
    title = "SWAG"
    single_pass = False

    @classmethod
    def from_config(cls, cfg) -> "SWAG":
        return cls(start=cfg.swa_start, collect_every=cfg.swa_every, lr=cfg.swa_lr, rank=cfg.swag_rank,
                   samples=cfg.swag_samples)

    def __init__(self, start: float = 0.75, collect_every: int = 100, lr: float | None = None,
                 bn_batches: int | None = 50, rank: int = 20, samples: int = 30, scale: float = 0.5,
                 seed: int = 0):
        super().__init__(start, collect_every, lr, bn_batches)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise UserError(f"swag option rank (--swag-rank) must be a whole number >= 0 (deviation columns "
                            f"of the low-rank covariance; 0 = diagonal only), got {rank!r}.")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise UserError(f"swag option samples (--swag-samples) must be a whole number >= 1 (weight "
                            f"samples averaged at test time), got {samples!r}.")
        if not scale >= 0:
            raise UserError(f"swag option scale must be a number >= 0 (the covariance scale; 0.5 as in Maddox "
                            f"et al. 2019), got {scale!r}.")
        self.rank = rank
        self.samples = samples
        self.scale = float(scale)
        self.seed = int(seed)
        self.sq_mean: torch.Tensor | None = None
        # A ring buffer of the last `rank` deviations: row (k mod rank) holds the k-th one.
        self.deviations: torch.Tensor | None = None
        self.num_deviations = 0
        # The BatchNorm statistics of each weight sample, recomputed on the first pass over the
        # samples and reused after: the samples (a seeded generator) and the BN batches (a pure
        # function of the run's seed) are the same every time, and an evaluation with corruptions
        # goes over the samples once per corrupted set (16x the BN work on digits, 76x on ImageNet-C).
        self._sample_buffers: tuple[tuple, list[dict[str, torch.Tensor]]] | None = None

    def _collect_extra(self, w: torch.Tensor) -> None:
        if self.sq_mean is None:
            self.sq_mean = torch.zeros_like(w)
        self.sq_mean = self.sq_mean.to(w.device)
        self.sq_mean += (w * w - self.sq_mean) / self.count
        if self.rank == 0:
            return
        if self.deviations is None:
            self.deviations = w.new_zeros(self.rank, w.numel())
        self.deviations = self.deviations.to(w.device)
        # The deviation from the mean that includes this snapshot, as in Maddox et al.
        self.deviations[self.num_deviations % self.rank] = w - self.mean
        self.num_deviations += 1

    def deviation_matrix(self) -> torch.Tensor | None:
        """The stored deviations (K×D, K ≤ rank; order of the rows does not matter)."""
        if self.deviations is None:
            return None
        return self.deviations[:min(self.num_deviations, self.rank)]

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None, scale: float | None = None) -> torch.Tensor:
        """θ = μ + √scale · (σ ∘ z₁ + D z₂ / √(K−1)), z₁ ~ N(0, I_D), z₂ ~ N(0, I_K).

        With scale 0.5 this is the paper's ½Σ_diag + ½DDᵀ/(K−1) covariance.
        """
        if self.mean is None:
            raise RuntimeError("SWAG has collected no weights to sample from")
        scale = self.scale if scale is None else scale
        if scale == 0:
            return self.mean.clone()
        var = (self.sq_mean - self.mean * self.mean).clamp_min(1e-30)
        z1 = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        noise = var.sqrt() * z1
        dev = self.deviation_matrix()
        if dev is not None and dev.shape[0] > 1:
            z2 = torch.randn(dev.shape[0], generator=generator, device=self.mean.device)
            noise += (z2 @ dev) / math.sqrt(dev.shape[0] - 1)
        return self.mean + math.sqrt(scale) * noise

    def finalize(self, model: nn.Module, train_batches: Iterable) -> None:
        super().finalize(model, train_batches)
        self._sample_buffers = None  # the BN batches may have changed

    def eval_passes(self, model: nn.Module) -> Iterator[None]:
        """One pass per weight sample once finalized; before that (mid-training), the current weights."""
        if self._bn_source is None or self.count == 0:
            yield
            return
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        generator = torch.Generator(device=self.mean.device).manual_seed(self.seed)
        key = (id(model), self.count, self.num_deviations, self.samples, self.scale, self.seed, self.bn_batches)
        cached = self._sample_buffers[1] if self._sample_buffers and self._sample_buffers[0] == key else None
        computed = []
        try:
            for index in range(self.samples):
                assign_parameters(model, self.sample(generator))
                if cached is None:
                    recompute_bn(model, self._bn_source, self.bn_batches)
                    computed.append({name: b.detach().clone() for name, b in model.named_buffers()})
                else:
                    with torch.no_grad():
                        for name, b in model.named_buffers():
                            b.copy_(cached[index][name])
                model.eval()
                yield
            if cached is None:
                self._sample_buffers = (key, computed)
        finally:
            model.load_state_dict(saved)

    def state_dict(self) -> dict:
        return dict(super().state_dict(), sq_mean=self.sq_mean, deviations=self.deviations,
                    num_deviations=self.num_deviations)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sq_mean = state["sq_mean"]
        self.deviations = state["deviations"]
        self.num_deviations = int(state["num_deviations"])
