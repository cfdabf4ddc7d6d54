"""MIMO (Havasi et al. 2021): M subnetworks in one network, M images in and M predictions out.

As uncertainty-baselines' ImageNet ResNet-50 (baselines/imagenet/mimo.py with
models/resnet50_mimo.py and edward2's DenseMultihead):
- the stem convolution takes the M images stacked on the channels, 3·M of them, ordered as
  Keras' Permute([2, 3, 4, 1]) + Reshape lays them out: channel c·M + m is channel c of image m;
- the head is one linear layer with M·C outputs, read as M heads of C (output m·C + k is head m's
  class k); the converted model returns them as N·M rows of C, row n·M + m for head m of sample n;
- a training batch of B images becomes B·R rows (R = batch repetitions): every image appears R
  times in a shuffled order; the first (1 − p)·B·R rows (p = input repetition probability) are
  shuffled again independently for each input, so there each input sees another image, and the
  last rows give every input the same one. Each head's row is labelled with its own input's label;
- the loss is the sum over heads of their mean cross-entropy (UB: reduce_sum over the heads of
  the per-head losses, then the mean over the batch), which is M times the loop's mean over rows,
  so `loss_scale` is M;
- at test time the same image goes to every input and the heads are the members: the prediction
  is the mean of their softmaxes.

The shuffles use torch's global generator on the CPU, which training seeds and checkpoints, so
batch i is still a function of (seed, i) and a resume is exact.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..models.resnet import init_conv_, init_head_
from .base import Method, Prediction


def stack_inputs(images: torch.Tensor) -> torch.Tensor:
    """N × M × C × H × W images as N × (C·M) × H × W, channel c·M + m being image m's channel c."""
    n, m, c, h, w = images.shape
    return images.transpose(1, 2).reshape(n, c * m, h, w)


class MultiHead(nn.Module):
    """A linear layer of M·C outputs whose output is N·M rows of C (row n·M + m: head m, sample n)."""

    def __init__(self, linear: nn.Linear, heads: int):
        super().__init__()
        self.heads, self.num_classes = heads, linear.out_features // heads
        self.linear = linear

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).unflatten(-1, (self.heads, self.num_classes)).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, num_classes={self.num_classes}"


def _stem_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The stem's first convolution (the zoo's ResNets: stem.conv, or stem.conv1 for the deep stem)."""
    stem = getattr(model, "stem", None)
    for name in ("conv", "conv1"):
        conv = getattr(stem, name, None)
        if isinstance(conv, nn.Conv2d):
            return stem, name, conv
    raise UserError("mimo needs one of the zoo's ResNets (a stem whose first convolution takes the images); "
                    f"this model has no stem.conv or stem.conv1 ({type(model).__name__}).")


class MIMO(Method):
    name = "mimo"
    title = "MIMO"
    sized_by_ensemble_size = True

    @classmethod
    def from_config(cls, cfg) -> "MIMO":
        return cls(ensemble_size=cfg.ensemble_size, input_repetition=cfg.mimo_input_repetition,
                   batch_repetitions=cfg.mimo_batch_repetitions, pretrained=bool(cfg.pretrained))

    def __init__(self, ensemble_size: int = 2, input_repetition: float = 0.6, batch_repetitions: int = 2,
                 pretrained: bool = False):
        for value, flag, what in ((ensemble_size, "--ensemble-size", "inputs and heads"),
                                  (batch_repetitions, "--mimo-batch-repetitions", "times each image is in a batch")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"mimo option {flag} must be a whole number >= 1 ({what}), got {value!r}.")
        if isinstance(input_repetition, bool) or not 0.0 <= input_repetition <= 1.0:
            raise UserError(f"mimo option --mimo-input-repetition must be a number from 0 to 1 (the fraction of a "
                            f"batch whose rows give every input the same image), got {input_repetition!r}.")
        self.members = ensemble_size
        self.input_repetition = float(input_repetition)
        self.batch_repetitions = batch_repetitions
        # With --pretrained the new layers start from the loaded ones (below), not from a fresh init.
        self.pretrained = pretrained
        # UB sums the heads' losses: M times the loop's mean cross-entropy over the N·M rows.
        self.loss_scale = float(ensemble_size)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        m = self.members
        stem, name, conv = _stem_conv(model)
        head = getattr(model, "fc", None)
        if not isinstance(head, nn.Linear):
            raise UserError("mimo needs a model whose classifier is a linear layer named fc (the zoo's ResNets); "
                            f"this model's fc is {type(head).__name__}.")
        kwargs = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        wide = nn.Conv2d(conv.in_channels * m, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, **kwargs)
        heads = nn.Linear(head.in_features, head.out_features * m, head.bias is not None, **kwargs)
        with torch.no_grad():
            if self.pretrained:
                # Each input gets the loaded filters / M, so M copies of one image give the loaded
                # stem's output (timm's adapt_input_conv does the same for other channel counts);
                # every head starts as the loaded head.
                wide.weight.copy_(conv.weight.repeat_interleave(m, dim=1) / m)
                if conv.bias is not None:
                    wide.bias.copy_(conv.bias)
                heads.weight.copy_(head.weight.repeat(m, 1))
                if head.bias is not None:
                    heads.bias.copy_(head.bias.repeat(m))
            else:
                # Fresh, by the zoo's own rules (each head drawn on its own, as UB's RandomNormal).
                init_conv_(wide)
                init_head_(heads, getattr(model, "head_init", "default"))
        wide.weight.requires_grad_(conv.weight.requires_grad)
        setattr(stem, name, wide)
        model.fc = MultiHead(heads, m)
        return model

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B images as B·R rows of M stacked inputs, and their N·M labels (module doc)."""
        rows = self.rows(x.shape[0]).to(x.device, non_blocking=True)  # (B·R) × M image indices
        stacked = stack_inputs(x[rows])
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        return stacked, y[rows.flatten()]

    def rows(self, batch: int) -> torch.Tensor:
        """The (B·R) × M indices of the images each row gives each input (UB's shuffle_indices)."""
        total = batch * self.batch_repetitions
        main = torch.arange(batch).repeat(self.batch_repetitions)[torch.randperm(total)]
        shuffled = int(total * (1.0 - self.input_repetition))
        return torch.stack([torch.cat([main[:shuffled][torch.randperm(shuffled)], main[shuffled:]])
                            for _ in range(self.members)], dim=1)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        n = x.shape[0]
        same = x.unsqueeze(1).expand(n, self.members, *x.shape[1:])
        logits = model(stack_inputs(same)).float().unflatten(0, (n, self.members)).transpose(0, 1)
        member_probs = logits.softmax(-1)  # M × N × C
        return Prediction(member_probs.mean(0), member_probs, logits.mean(0))
