"""BatchEnsemble (Wen, Tran & Ba 2020): M members that share every weight matrix.

Member i uses W_i = W ∘ (s_i r_iᵀ) for a shared ("slow") weight W and its own rank-1
("fast") factors r_i (input channels) and s_i (output channels), which is computed without
ever forming W_i as y = (W (x ∘ r_i)) ∘ s_i. The classifier head also gets one bias per
member. BatchNorm stays shared, as in uncertainty-baselines' ResNet-50.

A converted model expects its batch tiled member-major: rows i·B … (i+1)·B − 1 go through
member i. The scaling is a reshape and a broadcast multiply, so one forward runs all members
with no Python loop over them (which keeps torch.compile graphs and DDP buckets unchanged).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Method, Prediction

_INITS = ("normal", "random_sign")


def _init_fast_(t: torch.Tensor, init: str) -> None:
    with torch.no_grad():
        if init == "normal":
            # N(1, 0.5): the spread uncertainty-baselines uses (random_sign_init=0.5), large
            # enough that members start apart but each one stays close to the shared weight.
            t.normal_(1.0, 0.5)
        else:
            t.bernoulli_(0.5).mul_(2).sub_(1)


def _by_member(x: torch.Tensor, members: int) -> torch.Tensor:
    if x.shape[0] % members:
        raise ValueError(
            f"a BatchEnsemble model with {members} members needs a batch tiled member-major "
            f"(a multiple of {members} rows), got {x.shape[0]} rows; use BatchEnsemble.train_batch"
        )
    return x.unflatten(0, (members, -1))


class BatchEnsembleConv2d(nn.Module):
    """A Conv2d whose weight (and bias, if any) is shared and whose r, s are per member.

    The shared tensors keep the names `weight` and `bias` so a deterministic checkpoint's
    conv weights load by name.
    """

    def __init__(self, conv: nn.Conv2d, members: int, init: str):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"BatchEnsemble supports zero-padded convolutions only, got {conv.padding_mode!r}")
        self.members = members
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.weight = conv.weight
        self.bias = conv.bias
        w = conv.weight
        self.r = nn.Parameter(torch.empty(members, conv.in_channels, device=w.device, dtype=w.dtype))
        self.s = nn.Parameter(torch.empty(members, conv.out_channels, device=w.device, dtype=w.dtype))
        _init_fast_(self.r, init)
        _init_fast_(self.s, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        x = (_by_member(x, m) * self.r.view(m, 1, -1, 1, 1).to(x.dtype)).flatten(0, 1)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        y = _by_member(y, m) * self.s.view(m, 1, -1, 1, 1).to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.view(1, 1, -1, 1, 1).to(y.dtype)
        return y.flatten(0, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"members={self.members}, bias={self.bias is not None}")


class BatchEnsembleLinear(nn.Module):
    """A Linear layer with a shared weight, per-member r, s and a per-member bias (M×out).

    Per-member biases follow uncertainty-baselines' DenseBatchEnsemble: they cost M×classes
    parameters and let members disagree on class priors.
    """

    def __init__(self, linear: nn.Linear, members: int, init: str):
        super().__init__()
        self.members = members
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight
        self.weight = w
        self.r = nn.Parameter(torch.empty(members, linear.in_features, device=w.device, dtype=w.dtype))
        self.s = nn.Parameter(torch.empty(members, linear.out_features, device=w.device, dtype=w.dtype))
        _init_fast_(self.r, init)
        _init_fast_(self.s, init)
        if linear.bias is None:
            self.register_parameter("bias", None)
        else:
            # Every member starts from the original bias, so a converted pretrained head
            # predicts what it did before when r = s = 1.
            self.bias = nn.Parameter(linear.bias.detach().clone().expand(members, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        x = _by_member(x, m) * self.r.unsqueeze(1).to(x.dtype)
        y = F.linear(x, self.weight) * self.s.unsqueeze(1).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1).to(y.dtype)
        return y.flatten(0, 1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, members={self.members}, " \
               f"bias={self.bias is not None}"


def _convert(module: nn.Module, members: int, *options, conv: type = BatchEnsembleConv2d,
             linear: type = BatchEnsembleLinear) -> int:
    """Replace every Conv2d and Linear by `conv(child, members, *options)` / `linear(...)` (rank1.py
    passes its own subclasses); the number replaced."""
    converted = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, conv(child, members, *options))
            converted += 1
        elif isinstance(child, nn.Linear):
            setattr(module, name, linear(child, members, *options))
            converted += 1
        else:
            converted += _convert(child, members, *options, conv=conv, linear=linear)
    return converted


def fast_weight_names(model: nn.Module) -> tuple[set[str], set[str]]:
    """Names of (r/s factors, per-member biases) in a converted model.

    The factors are every per-member parameter of a layer but its shared weight and its bias
    (BatchEnsemble's r and s; rank-1 BNN's adds the scales r_rho and s_rho).
    """
    factors, biases = set(), set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, (BatchEnsembleConv2d, BatchEnsembleLinear)):
            factors.update(prefix + n for n, _ in mod.named_parameters(recurse=False) if n not in ("weight", "bias"))
        if isinstance(mod, BatchEnsembleLinear) and mod.bias is not None:
            biases.add(prefix + "bias")
    return factors, biases


class BatchEnsemble(Method):
    name = "batchensemble"
    title = "BatchEnsemble"
    sized_by_ensemble_size = True

    @classmethod
    def from_config(cls, cfg) -> "BatchEnsemble":
        return cls(ensemble_size=cfg.ensemble_size, init=cfg.be_init, fast_weight_lr_mult=cfg.fast_weight_lr_mult)

    def __init__(self, ensemble_size: int = 4, init: str = "normal", fast_weight_lr_mult: float = 0.25):
        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise UserError(f"BatchEnsemble option ensemble_size (--ensemble-size) must be a whole number "
                            f">= 1 (members per model), got {ensemble_size!r}.")
        if init not in _INITS:
            raise UserError(f"BatchEnsemble option init (--be-init) must be one of {', '.join(_INITS)} "
                            f"(how the rank-1 fast weights start), got {init!r}.")
        if not fast_weight_lr_mult > 0:
            raise UserError(f"BatchEnsemble option fast_weight_lr_mult (--fast-weight-lr-mult) must be a "
                            f"number > 0 (the fast weights' learning rate relative to the schedule), "
                            f"got {fast_weight_lr_mult!r}.")
        self.members = ensemble_size
        self.init = init
        self.fast_weight_lr_mult = float(fast_weight_lr_mult)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if any(isinstance(m, (BatchEnsembleConv2d, BatchEnsembleLinear)) for m in model.modules()):
            raise ValueError("the model is already converted to BatchEnsemble")
        if _convert(model, self.members, self.init) == 0:
            raise UserError("batchensemble found no Conv2d or Linear layer to convert in the model; "
                            "it needs a convolutional network such as the zoo's ResNets.")
        return model

    def param_groups(self, model: nn.Module, base: list[dict]) -> list[dict]:
        """Move fast weights into groups whose LR is scaled by `fast_weight_lr_mult`.

        As in uncertainty-baselines, the multiplier applies to everything that is per member:
        r, s and the head's per-member bias. The r/s factors also get no weight decay there
        (decay would pull them from 1 towards 0); the per-member bias keeps its group's decay.
        uncertainty-baselines also scales the BatchNorm scales and shifts (its rule is "every
        variable whose name has neither 'batch_norm' nor 'kernel'", and its ResNet-50 names its BN
        layers bn2a_branch2a...; baselines/imagenet/batchensemble.py with
        models/resnet50_batchensemble.py), so they get it here too, with their group's decay.
        Every other key of a base group (its weight decay, an existing lr_mult) carries over.
        """
        factor_names, bias_names = fast_weight_names(model)
        factor_ids = {id(p) for n, p in model.named_parameters() if n in factor_names}
        bias_ids = {id(p) for n, p in model.named_parameters() if n in bias_names}
        bias_ids |= {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                     for p in m.parameters(recurse=False)}
        groups = []
        for group in base:
            params = list(group["params"])
            options = {k: v for k, v in group.items() if k != "params"}
            fast_mult = options.get("lr_mult", 1.0) * self.fast_weight_lr_mult
            slow = [p for p in params if id(p) not in factor_ids and id(p) not in bias_ids]
            biases = [p for p in params if id(p) in bias_ids]
            factors = [p for p in params if id(p) in factor_ids]
            if slow:
                groups.append(dict(options, params=slow))
            if biases:
                groups.append(dict(options, params=biases, lr_mult=fast_mult))
            if factors:
                groups.append(dict(options, params=factors, lr_mult=fast_mult, weight_decay=0.0))
        return groups

    def tile(self, x: torch.Tensor) -> torch.Tensor:
        """Member-major copies of a batch: [x; x; …; x] (cat keeps a channels_last layout, repeat does not)."""
        return torch.cat([x] * self.members) if self.members > 1 else x

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tile(x), self.tile(y)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        logits = model(self.tile(x)).float().unflatten(0, (self.members, x.shape[0]))
        member_probs = logits.softmax(-1)
        return Prediction(member_probs.mean(0), member_probs, logits.mean(0))
