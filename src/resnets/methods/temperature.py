"""Temperature scaling (Guo et al. 2017): one scalar T that divides the log-probabilities.

Fit on held-out data by minimising the NLL. Dividing log-probabilities and dividing logits
give the same distribution (they differ by a per-row constant that softmax removes), so an
ensemble is calibrated by passing the log of its mean probabilities.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0] or scores.shape[0] == 0:
        raise ValueError(f"expected N×C scores and N labels with N > 0, got {tuple(scores.shape)} "
                         f"and {tuple(labels.shape)}")


def fit_temperature(log_probs_or_logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of softmax(scores / T) on (scores, labels)."""
    _check(log_probs_or_logits, labels)
    # float64 on the CPU: a scalar fit over at most a few million values is cheap, and the
    # extra precision keeps LBFGS's line search from stalling on flat NLL surfaces.
    # A probability of exactly 0 gives log -inf; a large finite floor keeps gradients finite.
    scores = torch.nan_to_num(log_probs_or_logits.detach().double().cpu(), neginf=-1e4, posinf=1e4)
    labels = labels.detach().long().cpu()
    # Optimise log T so the search is unconstrained and symmetric in over/under-confidence.
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(scores / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    t = math.exp(log_t.item())
    if not math.isfinite(t) or t <= 0:
        raise RuntimeError(f"temperature fit diverged (T = {t})")
    return t


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T) over the last dimension (works for N×C and M×N×C)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    dtype = torch.promote_types(probs.dtype, torch.float32)
    # log 0 = -inf stays -inf after dividing by T > 0, so impossible classes stay impossible.
    return (probs.to(dtype).log() / temperature).softmax(-1)
