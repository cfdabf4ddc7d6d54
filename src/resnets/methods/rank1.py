"""Rank-1 BNN (Dusenberry et al. 2020): BatchEnsemble's rank-1 factors made Bayesian.

Member i of M uses W_i = W ∘ (gamma_i alpha_iᵀ) as in BatchEnsemble (the r, s of
batchensemble.py are alpha, gamma here, and the layers are BatchEnsemble's), but alpha_i and
gamma_i are random: a mean-field Gaussian or Cauchy posterior with a trainable location (the
BatchEnsemble factor, random-sign initialised) and a trainable scale softplus(rho) + 1e-7.
Every forward pass draws one alpha and gamma per example (clipped to [-10, 10]), in training and
at test time alike, as uncertainty-baselines' ResNet-50 does with edward2's Conv2DRank1 and
DenseRank1 (baselines/imagenet/rank1_bnn.py, models/resnet50_rank1.py, models/rank1_bnn_utils.py).
Unlike UB's BatchEnsemble ResNet-50, the stem convolution is rank-1 too, as in resnet50_rank1.py;
BatchNorm stays shared (UB: ensemble_batchnorm with use_tpu, one BN for all members).

The loss adds KL(q || prior) of every factor (prior N(1, prior_stddev) or Cauchy(1, prior_stddev);
the Gaussian KL in closed form, the Cauchy one as edward2's one-sample estimate) divided by the
training-set size, times min(1, step / (steps_per_epoch · kl_annealing_epochs)) with the 1-based
step being taken (UB's optimizer.iterations + 1) — through the generic `Method.extra_loss` hook.

At test time each member's probabilities are the mean of `eval_samples` sampled forward passes
(UB's num_eval_samples) and the prediction is the mean over members. The noise comes from torch's
global generator, which training seeds and checkpoints and `resnets eval --seed` seeds, as for MC
dropout. `resnets export` traces the deterministic mean network (every factor at its location).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Method, Prediction
from .batchensemble import BatchEnsemble, BatchEnsembleConv2d, BatchEnsembleLinear, _by_member, _convert

POSTERIORS = ("normal", "cauchy")
# edward2 constraints.Softplus: softplus(w) + tf.keras.backend.epsilon().
SCALE_EPSILON = 1e-7
# edward2 Conv2DRank1 / DenseRank1: min_perturbation_value -10, max_perturbation_value 10.
PERTURBATION_CLIP = 10.0
# rank1_bnn_utils.make_initializer('trainable_normal'): the scale's raw value starts
# TruncatedNormal(mean=softplus⁻¹(sqrt(p / (1 - p))), stddev=0.1), Keras' truncation at 2 stddevs.
RHO_INIT_STDDEV = 0.1


def _softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


class _Rank1Factors:
    """What the rank-1 conv and linear layers add to BatchEnsemble's: scales and sampling."""

    posterior: str
    deterministic: bool

    def _make_scales(self, posterior: str, random_sign_init: float, dropout_rate: float) -> None:
        self.posterior = posterior
        self.deterministic = False  # set while a serving graph is traced: the factors at their locations
        for name in ("r", "s"):
            loc = getattr(self, name)
            init_sign_(loc, random_sign_init)
            rho = nn.Parameter(torch.empty_like(loc))
            init_rho_(rho, posterior, dropout_rate)
            setattr(self, f"{name}_rho", rho)

    def scale(self, name: str) -> torch.Tensor:
        return F.softplus(getattr(self, f"{name}_rho")) + SCALE_EPSILON

    def factor(self, name: str, examples: int, dtype: torch.dtype) -> torch.Tensor:
        """M × examples × C draws of factor r (alpha) or s (gamma), one per example; M × 1 × C means."""
        loc = getattr(self, name)
        if self.deterministic:
            return loc.unsqueeze(1).to(dtype)
        scale = self.scale(name)
        shape = (loc.shape[0], examples, loc.shape[1])
        if self.posterior == "normal":
            noise = torch.randn(shape, device=loc.device, dtype=loc.dtype)
        else:  # Cauchy by inverse CDF: tan(pi (u - 1/2))
            noise = torch.tan(math.pi * (torch.rand(shape, device=loc.device, dtype=loc.dtype) - 0.5))
        sample = loc.unsqueeze(1) + scale.unsqueeze(1) * noise
        return sample.clamp(-PERTURBATION_CLIP, PERTURBATION_CLIP).to(dtype)

    def kl(self, prior_stddev: float) -> torch.Tensor:
        """KL(q || prior) of this layer's alpha and gamma, summed (edward2's regularizers)."""
        total = torch.zeros((), device=self.r.device)
        for name in ("r", "s"):
            loc, scale = getattr(self, name).float(), self.scale(name).float()
            if self.posterior == "normal":
                total = total + normal_kl(loc, scale, 1.0, prior_stddev).sum()
            else:
                total = total + cauchy_kl_estimate(loc, scale, 1.0, prior_stddev).sum()
        return total


def normal_kl(loc: torch.Tensor, scale: torch.Tensor, prior_loc: float, prior_scale: float) -> torch.Tensor:
    """KL(N(loc, scale²) || N(prior_loc, prior_scale²)) elementwise, in closed form."""
    ratio = scale / prior_scale
    return 0.5 * (ratio.square() + ((loc - prior_loc) / prior_scale).square() - 1.0) - torch.log(ratio)


def _cauchy_log_prob(x: torch.Tensor, loc, scale: torch.Tensor) -> torch.Tensor:
    z = (x - loc) / scale
    return -math.log(math.pi) - torch.log(scale) - torch.log1p(z * z)


def cauchy_kl_estimate(loc: torch.Tensor, scale: torch.Tensor, prior_loc: float, prior_scale: float) -> torch.Tensor:
    """edward2's CauchyKLDivergence: log q(x) − log p(x) at one reparameterized draw x ~ q."""
    x = loc + scale * torch.tan(math.pi * (torch.rand_like(loc) - 0.5))
    prior = torch.full_like(x, prior_scale)
    return _cauchy_log_prob(x, loc, scale) - _cauchy_log_prob(x, prior_loc, prior)


def init_sign_(t: torch.Tensor, random_sign_init: float) -> None:
    """rank1_bnn_utils._make_sign_initializer: > 0 is RandomSign(P(+1) = value), < 0 is N(1, -value)."""
    with torch.no_grad():
        if random_sign_init > 0:
            t.bernoulli_(random_sign_init).mul_(2).sub_(1)
        else:
            t.normal_(1.0, -random_sign_init)


def init_rho_(t: torch.Tensor, posterior: str, dropout_rate: float) -> None:
    mean = _softplus_inverse(math.sqrt(dropout_rate / (1.0 - dropout_rate)))
    with torch.no_grad():
        if posterior == "normal":
            nn.init.trunc_normal_(t, mean, RHO_INIT_STDDEV, mean - 2 * RHO_INIT_STDDEV, mean + 2 * RHO_INIT_STDDEV)
        else:  # trainable_cauchy: Constant(stddev_init)
            t.fill_(mean)


class Rank1Conv2d(_Rank1Factors, BatchEnsembleConv2d):
    """edward2's Conv2DRank1 on BatchEnsemble's conv: y = (W ∗ (x ∘ alpha)) ∘ gamma per example."""

    def __init__(self, conv: nn.Conv2d, members: int, posterior: str, random_sign_init: float, dropout_rate: float):
        BatchEnsembleConv2d.__init__(self, conv, members, "normal")
        self._make_scales(posterior, random_sign_init, dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        xs = _by_member(x, m)
        n = xs.shape[1]
        x = (xs * self.factor("r", n, x.dtype)[..., None, None]).flatten(0, 1)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        y = _by_member(y, m) * self.factor("s", n, y.dtype)[..., None, None]
        if self.bias is not None:
            y = y + self.bias.view(1, 1, -1, 1, 1).to(y.dtype)
        return y.flatten(0, 1)


class Rank1Linear(_Rank1Factors, BatchEnsembleLinear):
    """edward2's DenseRank1 on BatchEnsemble's linear layer, with its per-member (ensemble) bias."""

    def __init__(self, linear: nn.Linear, members: int, posterior: str, random_sign_init: float,
                 dropout_rate: float):
        BatchEnsembleLinear.__init__(self, linear, members, "normal")
        self._make_scales(posterior, random_sign_init, dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        xs = _by_member(x, m)
        n = xs.shape[1]
        y = F.linear(xs * self.factor("r", n, x.dtype), self.weight) * self.factor("s", n, x.dtype)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1).to(y.dtype)
        return y.flatten(0, 1)


def rank1_layers(model: nn.Module) -> list[_Rank1Factors]:
    return [m for m in model.modules() if isinstance(m, _Rank1Factors)]


def kl_scale(step: int, steps_per_epoch: int, annealing_epochs: float) -> float:
    """UB's kl_scale: min(1, step / (steps_per_epoch · kl_annealing_epochs)) for the 1-based step."""
    if annealing_epochs <= 0:
        return 1.0
    return min(1.0, step / (steps_per_epoch * annealing_epochs))


class Rank1Mean(BatchEnsemble):
    """The deterministic stand-in a serving graph traces: every factor at its location."""
    name = "rank1-mean"
    title = "Rank-1 BNN (posterior means)"

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        layers = rank1_layers(model)
        for layer in layers:
            layer.deterministic = True
        try:
            return super().predict(model, x)
        finally:
            for layer in layers:
                layer.deterministic = False


class Rank1(BatchEnsemble):
    name = "rank1"
    title = "Rank-1 BNN"
    sized_by_ensemble_size = True

    @classmethod
    def from_config(cls, cfg) -> "Rank1":
        return cls(ensemble_size=cfg.ensemble_size, posterior=cfg.rank1_posterior,
                   prior_stddev=cfg.rank1_prior_stddev, random_sign_init=cfg.rank1_random_sign_init,
                   dropout_rate=cfg.rank1_dropout_rate, kl_annealing_epochs=cfg.kl_annealing_epochs,
                   eval_samples=cfg.rank1_eval_samples, fast_weight_lr_mult=cfg.fast_weight_lr_mult)

    def __init__(self, ensemble_size: int = 4, posterior: str = "normal", prior_stddev: float = 0.05,
                 random_sign_init: float = 0.75, dropout_rate: float = 1e-3, kl_annealing_epochs: float = 90,
                 eval_samples: int = 1, fast_weight_lr_mult: float = 1.0):
        for value, flag, what in ((ensemble_size, "--ensemble-size", "members of the mixture posterior"),
                                  (eval_samples, "--rank1-eval-samples", "sampled forward passes per member")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"rank1 option {flag} must be a whole number >= 1 ({what}), got {value!r}.")
        if posterior not in POSTERIORS:
            raise UserError(f"rank1 option --rank1-posterior must be one of {', '.join(POSTERIORS)} (the "
                            f"distribution of the rank-1 factors), got {posterior!r}.")
        if not prior_stddev > 0:
            raise UserError(f"rank1 option --rank1-prior-stddev must be a number > 0 (the scale of the prior "
                            f"around 1), got {prior_stddev!r}.")
        if not (random_sign_init != 0 and -math.inf < random_sign_init <= 1):
            raise UserError(f"rank1 option --rank1-random-sign-init must be in (0, 1] (the probability of a +1 "
                            f"random-sign location) or < 0 (locations N(1, -value)), got {random_sign_init!r}.")
        if not 0 < dropout_rate < 1:
            raise UserError(f"rank1 option --rank1-dropout-rate must be in (0, 1) (the scales start at "
                            f"sqrt(p / (1 - p))), got {dropout_rate!r}.")
        if not kl_annealing_epochs >= 0:
            raise UserError(f"rank1 option --kl-annealing-epochs must be a number >= 0 (epochs over which the "
                            f"KL weight rises linearly to 1; 0: full weight at once), got {kl_annealing_epochs!r}.")
        if not fast_weight_lr_mult > 0:
            raise UserError(f"rank1 option --fast-weight-lr-mult must be a number > 0, got {fast_weight_lr_mult!r}.")
        self.members = ensemble_size
        self.init = "normal"  # unused: the locations get the random-sign init below
        self.fast_weight_lr_mult = float(fast_weight_lr_mult)
        self.posterior, self.prior_stddev = posterior, float(prior_stddev)
        self.random_sign_init, self.dropout_rate = float(random_sign_init), float(dropout_rate)
        self.kl_annealing_epochs, self.eval_samples = float(kl_annealing_epochs), eval_samples

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if any(isinstance(m, (BatchEnsembleConv2d, BatchEnsembleLinear)) for m in model.modules()):
            raise ValueError("the model is already converted to BatchEnsemble or rank-1")
        options = (self.posterior, self.random_sign_init, self.dropout_rate)
        if _convert(model, self.members, *options, conv=Rank1Conv2d, linear=Rank1Linear) == 0:
            raise UserError("rank1 found no Conv2d or Linear layer to convert in the model; "
                            "it needs a convolutional network such as the zoo's ResNets.")
        return model

    def kl(self, model: nn.Module) -> torch.Tensor:
        """The sum of every factor's KL(q || prior), before dividing by the dataset size."""
        return torch.stack([layer.kl(self.prior_stddev) for layer in rank1_layers(model)]).sum()

    def extra_loss(self, model: nn.Module, iteration: int, steps_per_epoch: int, train_size: int) -> torch.Tensor:
        # UB: kl = sum(model.losses) / APPROX_IMAGENET_TRAIN_IMAGES; kl_scale uses iterations + 1.
        scale = kl_scale(iteration + 1, steps_per_epoch, self.kl_annealing_epochs)
        return self.kl(model) * (scale / train_size)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        tiled = self.tile(x)
        logits = torch.stack([model(tiled).float().unflatten(0, (self.members, x.shape[0]))
                              for _ in range(self.eval_samples)])  # S × M × N × C
        member_probs = logits.softmax(-1).mean(0)
        return Prediction(member_probs.mean(0), member_probs, logits.mean((0, 1)))

    def export_rule(self) -> tuple[Method, str, str | None]:
        mean = Rank1Mean(ensemble_size=self.members)
        return (mean, "rank1 mean (every rank-1 factor at its posterior location)",
                f"rank1: the graph is the {self.members}-member network with each factor alpha, gamma at its "
                f"posterior location (a BatchEnsemble); the sampled factors and the {self.eval_samples} sample(s) "
                f"per member that `resnets eval` averages are not in it.")
