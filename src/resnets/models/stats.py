"""Parameter and FLOP counts, measured on the module itself rather than counted by hand."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """FLOPs of one forward pass of one image (a multiply-add counts as 2), via torch's counter.

    The forward runs on the meta device when the model is there, so even ResNet-RS-420 at
    320 px costs no compute; torchvision's model docs quote half of this figure (MACs).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops()
