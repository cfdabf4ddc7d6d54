"""SNGP (Liu et al. 2020): spectral-normalized convolutions and a Gaussian-process output layer.

Two changes to the one ResNet, as uncertainty-baselines' ResNet-50 SNGP makes them
(baselines/imagenet/sngp.py, models/resnet50_sngp.py, edward2's layers):

- Every convolution of the residual stages bounds its spectral norm: the kernel is scaled by
  min(1, bound / sigma), sigma estimated by power iteration (one step per training forward).
  The stem's input convolution is left as it is, as there. sigma is the largest singular value
  of the kernel reshaped to out × (in·kh·kw) (Miyato et al. 2018, torch's spectral_norm);
  edward2's SpectralNormalizationConv2D instead iterates on the convolution as an operator on
  one input shape (Gouk et al. 2018). The reshaped kernel's norm needs no input shape and
  costs one small mat-vec per layer and step; it is a different (smaller) constant than the
  operator norm, so the same bound is a looser constraint here.
- The classifier becomes a random-feature GP: phi(x) = cos(W x / sqrt(scale) + b) with W, b
  frozen (orthogonal random features of stddev 0.05, b ~ U(0, 2pi), unscaled, as UB's model
  asks edward2 for), logits = phi beta + bias. Its Laplace posterior (Gaussian likelihood, so
  one covariance shared by the classes) has precision P = ridge·I + sum phi phiᵀ over the
  training forwards of the current epoch: `on_epoch_start` resets it (UB's
  gp_cov_discount_factor -1), or with a factor m in (0, 1) it is a moving average instead.
  In eval mode the layer returns the mean-field logits logits / sqrt(1 + lambda·var),
  var = ridge · phiᵀ P⁻¹ phi (lambda = UB's gp_mean_field_factor; -1 gives the raw logits).

P, W, b and the power-iteration vectors are buffers of the model, so checkpoints, resume,
the best-val weights, `resnets eval`, predict and export carry them with no method state.
Under DDP the buffers follow rank 0 (DDP broadcasts them each forward), so P accumulates rank
0's share of each batch, as UB's precision variable aggregates ONLY_FIRST_REPLICA.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Method

RANDOM_FEATURES = ("orf", "rff")
# UB's models/resnet50_sngp.py (make_random_feature_initializer): stddev 0.05, the default of
# Keras' RandomNormal, for both the orthogonal and the i.i.d. random features.
RANDOM_FEATURE_STDDEV = 0.05
# UB's gp_output_imagenet_initializer: the GP output weights start N(0, 0.01), like its dense head.
OUTPUT_INIT_STDDEV = 0.01


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


class SpectralNormConv2d(nn.Module):
    """A Conv2d whose kernel is scaled by min(1, bound / sigma) before every convolution.

    The kernel keeps the name `weight` (a deterministic checkpoint's conv weights load by
    name); u (out) and v (in·kh·kw) are the power-iteration vectors, advanced only in
    training mode, so evaluation uses the sigma estimated by the last training step.
    """

    def __init__(self, conv: nn.Conv2d, bound: float, iterations: int):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"SNGP supports zero-padded convolutions only, got {conv.padding_mode!r}")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.bound, self.iterations = float(bound), int(iterations)
        self.weight = conv.weight
        self.bias = conv.bias
        w = conv.weight.detach().flatten(1).float()
        self.register_buffer("u", F.normalize(torch.randn(w.shape[0], device=w.device), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(w.shape[1], device=w.device), dim=0))

    def sigma(self) -> torch.Tensor:
        """The estimate of the reshaped kernel's largest singular value (differentiable in the kernel)."""
        with _no_autocast(self.weight.device):
            w = self.weight.float().flatten(1)
            if self.training:
                with torch.no_grad():
                    u, v = self.u, self.v
                    for _ in range(self.iterations):
                        v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
                        u = F.normalize(w @ v, dim=0, eps=1e-12)
                    self.u.copy_(u)
                    self.v.copy_(v)
            # Clones: the next forward updates u, v in place while this graph may still need them.
            return torch.dot(self.u.clone(), w @ self.v.clone())

    def normalized_weight(self) -> torch.Tensor:
        scale = (self.bound / self.sigma()).clamp(max=1.0)
        return self.weight * scale.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bound={self.bound}, iterations={self.iterations}")


def orthogonal_random_features(rows: int, cols: int, stddev: float, device=None) -> torch.Tensor:
    """rows × cols frequencies of orthogonal random features (Yu et al. 2016).

    Stacked blocks of a random orthogonal matrix (QR of a Gaussian one) whose rows are given the
    lengths of Gaussian vectors (chi with `cols` degrees of freedom), times `stddev`: each row
    has the distribution of an i.i.d. N(0, stddev²) row, and rows within a block are orthogonal.
    """
    blocks = []
    for _ in range(math.ceil(rows / cols)):
        q, r = torch.linalg.qr(torch.randn(cols, cols, device=device))
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar-distributed
        norms = torch.randn(cols, cols, device=device).norm(dim=1, keepdim=True)
        blocks.append(q.t() * norms)
    return torch.cat(blocks)[:rows] * stddev


class RandomFeatureGP(nn.Module):
    """The GP output layer: random Fourier features, a trained linear map, a Laplace posterior."""

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 1024, scale: float = 1.0,
                 bias: float = 0.0, random_features: str = "orf", ridge_penalty: float = 1.0,
                 cov_discount_factor: float = -1.0, mean_field_factor: float = 1.0, device=None):
        super().__init__()
        self.in_features, self.num_classes, self.hidden_dim = in_features, num_classes, hidden_dim
        self.input_scale = 1.0 / math.sqrt(scale)
        self.ridge_penalty, self.cov_discount_factor = float(ridge_penalty), float(cov_discount_factor)
        self.mean_field_factor = float(mean_field_factor)
        if random_features == "orf":
            w = orthogonal_random_features(hidden_dim, in_features, RANDOM_FEATURE_STDDEV, device)
        else:
            w = torch.randn(hidden_dim, in_features, device=device) * RANDOM_FEATURE_STDDEV
        self.register_buffer("feature_weight", w)
        self.register_buffer("feature_bias", torch.rand(hidden_dim, device=device) * (2 * math.pi))
        self.weight = nn.Parameter(torch.randn(num_classes, hidden_dim, device=device) * OUTPUT_INIT_STDDEV)
        self.register_buffer("logit_bias", torch.full((num_classes,), float(bias), device=device))
        self.register_buffer("precision", self.ridge_penalty * torch.eye(hidden_dim, device=device))
        # ridge · P⁻¹, recomputed when P changes (not saved: it is a function of P).
        self.register_buffer("covariance", torch.empty(0, device=device), persistent=False)
        self._covariance_of: tuple | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(F.linear(x * self.input_scale, self.feature_weight.to(x.dtype),
                                  self.feature_bias.to(x.dtype)))

    @torch.no_grad()
    def reset_precision(self) -> None:
        self.precision.copy_(self.ridge_penalty * torch.eye(self.hidden_dim, device=self.precision.device))

    @torch.no_grad()
    def _accumulate(self, phi: torch.Tensor) -> None:
        with _no_autocast(phi.device):
            phi = phi.detach().float()
            batch = phi.T @ phi
            if self.cov_discount_factor > 0:
                m = self.cov_discount_factor
                self.precision.mul_(m).add_(batch / phi.shape[0], alpha=1 - m)
            else:
                self.precision.add_(batch)

    @torch.no_grad()
    def refresh_covariance(self) -> None:
        key = (self.precision.data_ptr(), self.precision._version, self.precision.device)
        if key != self._covariance_of or self.covariance.numel() == 0:
            p = self.precision.double()
            cov = torch.cholesky_inverse(torch.linalg.cholesky(p)) * self.ridge_penalty
            self.covariance = cov.to(self.precision.dtype)
            self._covariance_of = (self.precision.data_ptr(), self.precision._version, self.precision.device)

    def train(self, mode: bool = True) -> "RandomFeatureGP":
        super().train(mode)
        if not mode:  # ready before any eval forward (and before an export traces one)
            self.refresh_covariance()
        return self

    def variance(self, phi: torch.Tensor) -> torch.Tensor:
        """Posterior predictive variance ridge · phiᵀ P⁻¹ phi of each row of random features."""
        if not torch.jit.is_tracing():
            self.refresh_covariance()
        with _no_autocast(phi.device):
            phi = phi.float()
            return ((phi @ self.covariance) * phi).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)
        logits = F.linear(phi, self.weight.to(phi.dtype)) + self.logit_bias.to(phi.dtype)
        if self.training:
            self._accumulate(phi)
            return logits
        if self.mean_field_factor < 0:
            return logits
        return logits.float() / torch.sqrt(1.0 + self.mean_field_factor * self.variance(phi)).unsqueeze(-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, hidden_dim={self.hidden_dim}, "
                f"ridge={self.ridge_penalty}, discount={self.cov_discount_factor}, "
                f"mean_field_factor={self.mean_field_factor}")


def gp_layers(model: nn.Module) -> list[RandomFeatureGP]:
    return [m for m in model.modules() if isinstance(m, RandomFeatureGP)]


def _normalize_convs(module: nn.Module, bound: float, iterations: int) -> int:
    converted = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, SpectralNormConv2d(child, bound, iterations))
            converted += 1
        else:
            converted += _normalize_convs(child, bound, iterations)
    return converted


class SNGP(Method):
    name = "sngp"
    title = "SNGP"

    @classmethod
    def from_config(cls, cfg) -> "SNGP":
        return cls(spec_norm_bound=cfg.spec_norm_bound, spec_norm_iterations=cfg.spec_norm_iterations,
                   gp_hidden_dim=cfg.gp_hidden_dim, gp_scale=cfg.gp_scale, gp_bias=cfg.gp_bias,
                   gp_random_features=cfg.gp_random_features, gp_ridge_penalty=cfg.gp_ridge_penalty,
                   gp_cov_discount_factor=cfg.gp_cov_discount_factor,
                   gp_mean_field_factor=cfg.gp_mean_field_factor)

    def __init__(self, spec_norm_bound: float = 6.0, spec_norm_iterations: int = 1, gp_hidden_dim: int = 1024,
                 gp_scale: float = 1.0, gp_bias: float = 0.0, gp_random_features: str = "orf",
                 gp_ridge_penalty: float = 1.0, gp_cov_discount_factor: float = -1.0,
                 gp_mean_field_factor: float = 1.0):
        def whole(value, flag, what):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"SNGP option {flag} must be a whole number >= 1 ({what}), got {value!r}.")

        whole(spec_norm_iterations, "--spec-norm-iterations", "power iterations per training step")
        whole(gp_hidden_dim, "--gp-hidden-dim", "random features of the GP layer")
        for value, flag, what in ((spec_norm_bound, "--spec-norm-bound", "the bound on each conv's spectral norm"),
                                  (gp_scale, "--gp-scale", "the RBF kernel's length-scale"),
                                  (gp_ridge_penalty, "--gp-ridge-penalty", "the ridge of the GP precision")):
            if not value > 0:
                raise UserError(f"SNGP option {flag} must be a number > 0 ({what}), got {value!r}.")
        if gp_random_features not in RANDOM_FEATURES:
            raise UserError(f"SNGP option --gp-random-features must be one of {', '.join(RANDOM_FEATURES)}, "
                            f"got {gp_random_features!r}.")
        if not (gp_cov_discount_factor == -1 or 0 < gp_cov_discount_factor < 1):
            raise UserError(f"SNGP option --gp-cov-discount-factor must be -1 (the exact precision of each epoch) "
                            f"or a number in (0, 1) (a moving average), got {gp_cov_discount_factor!r}.")
        if not (gp_mean_field_factor == -1 or gp_mean_field_factor >= 0):
            raise UserError(f"SNGP option --gp-mean-field-factor must be -1 (raw logits) or a number >= 0, "
                            f"got {gp_mean_field_factor!r}.")
        self.spec_norm_bound, self.spec_norm_iterations = float(spec_norm_bound), spec_norm_iterations
        self.gp = dict(hidden_dim=gp_hidden_dim, scale=float(gp_scale), bias=float(gp_bias),
                       random_features=gp_random_features, ridge_penalty=float(gp_ridge_penalty),
                       cov_discount_factor=float(gp_cov_discount_factor),
                       mean_field_factor=float(gp_mean_field_factor))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        head = getattr(model, "fc", None)
        if not isinstance(head, nn.Linear):
            raise UserError("sngp needs a model whose classifier is a linear layer named fc (the zoo's ResNets); "
                            f"this model's fc is {type(head).__name__}.")
        if gp_layers(model) or any(isinstance(m, SpectralNormConv2d) for m in model.modules()):
            raise ValueError("the model is already converted to SNGP")
        # UB normalizes every conv but the input layer (its TODO: "apply SpectralNormalization to
        # input layer as well"): here, every conv outside the stem.
        converted = sum(_normalize_convs(child, self.spec_norm_bound, self.spec_norm_iterations)
                        for name, child in model.named_children() if name != "stem")
        if converted == 0:
            raise UserError("sngp found no convolution outside the stem to normalize; it needs a convolutional "
                            "network such as the zoo's ResNets.")
        model.fc = RandomFeatureGP(head.in_features, head.out_features, device=head.weight.device, **self.gp)
        return model

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        # UB (sngp.py's train step): reset the covariance estimator at step 0 of every epoch, so
        # the posterior is that of the latest epoch's features (gp_cov_discount_factor -1 only).
        if self.gp["cov_discount_factor"] < 0:
            for layer in gp_layers(model):
                layer.reset_precision()
