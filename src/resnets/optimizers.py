"""Large-batch optimizers: LAMB (You et al. 2019, arXiv:1904.00962) and LARS (You et al. 2017,
arXiv:1708.03888), as small torch.optim.Optimizer subclasses.

Their semantics follow timm's (the test oracle), read in timm/optim/lamb.py (`Lamb`,
`_single_tensor_lamb`, `_lamb_trust_ratio`) and timm/optim/lars.py (`Lars`,
`_single_tensor_lars`, `_lars_trust_ratio`): the same defaults, bias correction, global gradient
clipping, trust ratio, trust_clip and always_adapt. A group without weight decay (BN and biases
by our parameter_groups) gets no layer-wise adaptation unless always_adapt, as in timm.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

__all__ = ["Lamb", "Lars"]


def _trust_ratio(numerator: torch.Tensor, w_norm: torch.Tensor, g_norm: torch.Tensor) -> torch.Tensor:
    """numerator / (the update's norm term), or 1 where the weight or update norm is zero (timm's rule)."""
    one = torch.ones_like(w_norm)
    return torch.where((w_norm > 0) & (g_norm > 0), numerator, one)


class Lamb(Optimizer):
    """LAMB: Adam moments with bias correction, coupled weight decay added to the Adam update, and
    the update scaled per tensor by ||w|| / ||update|| (clamped at 1 with trust_clip).

    Before the step every gradient is divided by max(1, global_norm / max_grad_norm), the global
    norm over all groups (timm's default max_grad_norm=1.0); p.grad itself is left unchanged.
    Defaults as timm.optim.Lamb: betas (0.9, 0.999), eps 1e-6, weight_decay 0.01.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, bias_correction: bool = True, max_grad_norm: float | None = 1.0,
                 trust_clip: bool = False, always_adapt: bool = False):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Lamb: lr, eps and weight_decay must be >= 0 (got {lr}, {eps}, {weight_decay})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction, max_grad_norm=max_grad_norm,
                                      trust_clip=trust_clip, always_adapt=always_adapt))

    def _clip_divisor(self) -> torch.Tensor | None:
        max_norm = self.defaults["max_grad_norm"]
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if max_norm is None or not grads:
            return None
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return (norm / max_norm).clamp_(min=1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        divisor = self._clip_divisor()
        for group in self.param_groups:
            # The step count is the group's (as timm's): it advances even for a group with no gradients.
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            if group["bias_correction"]:
                correction1, correction2 = 1 - beta1 ** group["step"], 1 - beta2 ** group["step"]
            else:
                correction1 = correction2 = 1.0
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if divisor is None else p.grad / divisor
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / correction2 ** 0.5).add_(group["eps"])
                update = (exp_avg / correction1).div_(denom)
                if wd != 0:
                    update.add_(p, alpha=wd)
                if wd != 0 or group["always_adapt"]:
                    w_norm, u_norm = p.norm(2.0), update.norm(2.0)
                    ratio = _trust_ratio(w_norm / u_norm, w_norm, u_norm)
                    if group["trust_clip"]:
                        ratio = ratio.clamp(max=1.0)
                    update.mul_(ratio)
                p.add_(update, alpha=-lr)
        return loss


class Lars(Optimizer):
    """LARS (and LARC with trust_clip): SGD with momentum whose gradient plus coupled weight decay is
    first scaled per tensor by trust_coeff * ||w|| / (||g|| + wd * ||w|| + eps); with trust_clip the
    ratio is divided by the LR and clamped at 1 (NVIDIA apex LARC). Defaults as timm.optim.Lars:
    trust_coeff 0.001, eps 1e-8, momentum 0.
    """

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, trust_coeff: float = 0.001, eps: float = 1e-8,
                 trust_clip: bool = False, always_adapt: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Lars: lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, {weight_decay})")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Lars: Nesterov momentum needs a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, trust_coeff=trust_coeff, eps=eps, trust_clip=trust_clip,
                                      always_adapt=always_adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if wd != 0 or group["always_adapt"]:
                    w_norm, g_norm = p.norm(2.0), grad.norm(2.0)
                    ratio = _trust_ratio(group["trust_coeff"] * w_norm / (g_norm + w_norm * wd + group["eps"]),
                                         w_norm, g_norm)
                    if group["trust_clip"]:
                        ratio = (ratio / lr).clamp(max=1.0)
                    grad = grad.add(p, alpha=wd).mul_(ratio)  # a new tensor: p.grad stays as it was
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(grad, alpha=-lr)
        return loss
