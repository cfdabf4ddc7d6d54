"""Heteroscedastic classifier (Collier et al. 2021): logits with an input-dependent covariance.

The head replaces the classifier as uncertainty-baselines' ResNet-50 does (baselines/imagenet/
heteroscedastic.py with models/resnet50_heteroscedastic.py and edward2's MCSoftmaxDenseFA):
latent logits u ~ N(mu(x), V(x) V(x)ᵀ + diag(d(x)²)), with mu a linear layer (the model's own
fc, so its init and bias options apply), V(x) a linear map to classes × num_factors and
d(x) = softplus(linear(x)) + 1e-3. The prediction is the MC average of softmax(u / temperature)
over num_mc_samples draws u = mu + V eps_R + d ∘ eps_K, the standard-normal eps shared across
the batch (UB's share_samples_across_batch), in training and at test time alike.

The head outputs log of the averaged probabilities, clipped below at 1e-5 (UB's eps), as
edward2 does: then the loop's unchanged cross-entropy, log_softmax of these "logits" at the
label, is exactly the NLL of the MC-averaged softmax that UB trains with (its loss is the same
cross-entropy from logits on the same output), so no loss hook is needed; softmax of them gives
back the averaged probabilities for `predict`.

The noise comes from torch's global generator, which training seeds (and checkpoints) and
`resnets eval --seed` seeds, as for MC dropout. `resnets export` traces the deterministic mean
head softmax(mu / temperature) instead (see `export_rule`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Method, Prediction

# edward2 heteroscedastic.py: MIN_SCALE_MONTE_CARLO, added to the softplus diagonal scale.
MIN_SCALE = 1e-3
# UB models/resnet50_heteroscedastic.py: eps=1e-5, the floor of the averaged probabilities.
PROB_FLOOR = 1e-5


class HeteroscedasticHead(nn.Module):
    def __init__(self, loc: nn.Linear, num_factors: int, temperature: float, mc_samples: int):
        super().__init__()
        self.num_classes, self.num_factors = loc.out_features, num_factors
        self.temperature, self.mc_samples = float(temperature), mc_samples
        self.loc = loc
        kwargs = dict(device=loc.weight.device, dtype=loc.weight.dtype)
        self.scale = nn.Linear(loc.in_features, self.num_classes * num_factors, **kwargs)
        self.diag = nn.Linear(loc.in_features, self.num_classes, **kwargs)
        for layer in (self.scale, self.diag):  # Keras Dense defaults (glorot_uniform, zero bias), as edward2's
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        # Set by the export rule while a serving graph is traced: the mean logits, no sampling.
        self.deterministic = False

    def noise(self, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard-normal draws S × num_factors and S × classes, shared by the batch."""
        eps_r = torch.randn(samples, self.num_factors, device=x.device)
        eps_k = torch.randn(samples, self.num_classes, device=x.device)
        return eps_r, eps_k

    def sample_logits(self, x: torch.Tensor, eps_r: torch.Tensor, eps_k: torch.Tensor) -> torch.Tensor:
        """Latent logits u (N × S × classes) for the given standard-normal draws."""
        mu = self.loc(x)
        factors = self.scale(x).unflatten(-1, (self.num_classes, self.num_factors))  # N × K × R
        diag = F.softplus(self.diag(x)) + MIN_SCALE  # N × K
        eps_r, eps_k = eps_r.to(factors.dtype), eps_k.to(diag.dtype)
        return (mu.unsqueeze(1) + torch.einsum("nkr,sr->nsk", factors, eps_r)
                + diag.unsqueeze(1) * eps_k.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deterministic:
            return self.loc(x) / self.temperature
        u = self.sample_logits(x, *self.noise(x, self.mc_samples))
        probs = torch.softmax(u.float() / self.temperature, dim=-1).mean(1)
        return probs.clamp_min(PROB_FLOOR).log()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_factors={self.num_factors}, "
                f"temperature={self.temperature}, mc_samples={self.mc_samples}")


def heteroscedastic_heads(model: nn.Module) -> list[HeteroscedasticHead]:
    return [m for m in model.modules() if isinstance(m, HeteroscedasticHead)]


class HeteroscedasticMean(Method):
    """The deterministic stand-in a serving graph traces: softmax(mu(x) / temperature)."""
    name = "heteroscedastic-mean"
    title = "Heteroscedastic (mean logits)"

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        heads = heteroscedastic_heads(model)
        for head in heads:
            head.deterministic = True
        try:
            return super().predict(model, x)
        finally:
            for head in heads:
                head.deterministic = False


class Heteroscedastic(Method):
    name = "heteroscedastic"
    title = "Heteroscedastic"

    @classmethod
    def from_config(cls, cfg) -> "Heteroscedastic":
        return cls(num_factors=cfg.het_num_factors, temperature=cfg.het_temperature, mc_samples=cfg.het_mc_samples)

    def __init__(self, num_factors: int = 15, temperature: float = 1.5, mc_samples: int = 5000):
        for value, flag, what in ((num_factors, "--het-num-factors", "the rank of the low-rank covariance"),
                                  (mc_samples, "--het-mc-samples", "MC samples of the logits")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"heteroscedastic option {flag} must be a whole number >= 1 ({what}), "
                                f"got {value!r}.")
        if not temperature > 0:
            raise UserError(f"heteroscedastic option --het-temperature must be a number > 0 (the softmax "
                            f"temperature), got {temperature!r}.")
        self.num_factors, self.temperature, self.mc_samples = num_factors, float(temperature), mc_samples

    def prepare_model(self, model: nn.Module) -> nn.Module:
        head = getattr(model, "fc", None)
        if not isinstance(head, nn.Linear):
            raise UserError("heteroscedastic needs a model whose classifier is a linear layer named fc (the zoo's "
                            f"ResNets); this model's fc is {type(head).__name__}.")
        if self.num_factors > head.out_features:
            # edward2's MCSoftmaxDenseFA asserts num_factors <= num_classes: more factors than
            # classes add parameters but no rank.
            raise UserError(f"heteroscedastic option --het-num-factors {self.num_factors} is more than the "
                            f"{head.out_features} classes: give at most {head.out_features}.")
        model.fc = HeteroscedasticHead(head, self.num_factors, self.temperature, self.mc_samples)
        return model

    def export_rule(self) -> tuple[Method, str, str | None]:
        return (HeteroscedasticMean(), "heteroscedastic mean (softmax of the mean logits / temperature)",
                f"heteroscedastic: the graph is softmax(mu(x) / {self.temperature}), the deterministic mean of the "
                f"logit distribution; the {self.mc_samples} MC samples of the logits `resnets eval` averages "
                f"are not in it.")
