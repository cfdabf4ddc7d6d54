"""Monte Carlo dropout (Gal & Ghahramani 2016): keep dropout on at test time and average.

Only the dropout modules are switched to training mode while predicting; BatchNorm keeps
using (and never updates) its running statistics, so a prediction has no side effects.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from ..errors import UserError
from .base import Method, Prediction


def dropout_modules(model: nn.Module) -> list[_DropoutNd]:
    return [m for m in model.modules() if isinstance(m, _DropoutNd)]


class MCDropout(Method):
    name = "mcdropout"
    title = "MC Dropout"

    @classmethod
    def from_config(cls, cfg) -> "MCDropout":
        return cls(samples=cfg.mc_samples)

    def __init__(self, samples: int = 10, rate: float | None = None):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise UserError(f"MC dropout option samples (--mc-samples) must be a whole number >= 1 "
                            f"(stochastic forward passes per prediction), got {samples!r}.")
        if rate is not None and not 0.0 < rate < 1.0:
            raise UserError(f"MC dropout option rate must be a number in (0, 1) (the probability of dropping a "
                            f"feature), got {rate!r}.")
        self.samples = samples
        self.rate = rate

    def prepare_model(self, model: nn.Module) -> nn.Module:
        modules = dropout_modules(model)
        if self.rate is not None:
            for m in modules:
                m.p = float(self.rate)
        if not any(m.p > 0 for m in modules):
            raise UserError(
                "mcdropout needs dropout in the model, but it has no dropout layer with a rate above 0: "
                "build the model with dropout (--dropout 0.1, or the model override dropout=0.1) or give the "
                "mcdropout option rate."
            )
        return model

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        modules = [m for m in dropout_modules(model) if m.p > 0]
        modes = [m.training for m in modules]
        for m in modules:
            m.train()
        try:
            logits = torch.stack([model(x).float() for _ in range(self.samples)])
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        member_probs = logits.softmax(-1)
        return Prediction(member_probs.mean(0), member_probs, logits.mean(0))

    def export_rule(self) -> tuple[Method, str, str | None]:
        return (Method(), "deterministic (MC dropout's mean network)",
                f"MC dropout: the graph is the network with dropout off (the weight-scaling approximation of "
                f"the MC average); the {self.samples} stochastic samples `resnets eval` averages are not in it.")
