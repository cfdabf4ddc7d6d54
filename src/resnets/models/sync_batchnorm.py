"""Batch normalization whose statistics span every process, on any device.

torch.nn.SyncBatchNorm only runs on GPUs; on CPUs (gloo) this module does the same job with
a differentiable all-reduce of per-channel sums, so N processes that each see 1/N of a
batch compute the same normalization, running statistics and gradients as one process that
sees it all.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward pass sums the gradients too: every process's loss
    depends on every process's statistics."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        x32 = x.float()
        count = torch.full((1,), x.numel() // channels, dtype=torch.float32, device=x.device)
        local = torch.cat([x32.sum((0, 2, 3)), (x32 * x32).sum((0, 2, 3)), count])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            shift = self.bias - mean * scale * self.weight
            scale = scale * self.weight
        else:
            shift = -mean * scale
        return (x32 * scale[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


def convert_to_cross_process_bn(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for CrossProcessBatchNorm2d in place, keeping parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                                  child.track_running_stats, device=child.weight.device
                                                  if child.affine else None)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            convert_to_cross_process_bn(child)
    return module
