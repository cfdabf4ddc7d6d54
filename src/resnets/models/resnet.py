"""One configurable ResNet for the whole family: CIFAR-style, ImageNet-style and ResNet-RS.

A model is a table of block counts plus a few choices: the block (basic or bottleneck),
the stem (3x3 for small images, 7x7 + max-pool, or the ResNet-D deep stem), the
downsampling shortcut (strided 1x1 conv, or ResNet-D average pool then 1x1 conv),
squeeze-and-excitation, stochastic depth and dropout before the head.

Module names follow torchvision's (`layer1`, `conv1`, `bn1`, `downsample`, `fc`) so that
imported state dicts map onto this model with a short, explicit renaming table.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

BlockKind = Literal["basic", "bottleneck"]
StemKind = Literal["cifar", "small", "imagenet", "deep"]
ShortcutKind = Literal["conv", "avgpool"]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class SqueezeExcite(nn.Module):
    """Channel gating: global mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(self.act(self.fc1(scale)))
        return x * scale.sigmoid()


class StochasticDepth(nn.Module):
    """Drops the residual branch per sample while training, scaling survivors by 1/keep."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Downsample(nn.Module):
    """Projection shortcut: optional 2x2 average pool (ResNet-D), 1x1 conv, BN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kind: ShortcutKind):
        super().__init__()
        # ResNet-D moves the stride into an average pool so the 1x1 conv sees every pixel.
        self.pool = (
            nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
            if kind == "avgpool" and stride > 1
            else nn.Identity()
        )
        self.conv = conv1x1(in_ch, out_ch, 1 if kind == "avgpool" else stride)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))


class ResidualBlock(nn.Module):
    """What every block shares: relu(drop_path(se(residual(x))) + shortcut(x)).

    Subclasses define the residual branch and name its last BN (zero-initialised so that
    each block starts as the identity).
    """

    expansion = 1

    def __init__(self, out_ch: int, downsample: nn.Module | None, se_channels: int, drop_path_rate: float):
        super().__init__()
        self.se = SqueezeExcite(out_ch, se_channels) if se_channels else None
        self.drop_path = StochasticDepth(drop_path_rate) if drop_path_rate else None
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        # The projection runs last so that its output is not held through the whole branch;
        # the add is in place since `out` is a fresh activation no backward function needs.
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class BasicBlock(ResidualBlock):
    """3x3 -> BN-ReLU -> 3x3 -> BN (ResNet-18/34 and the CIFAR-style ResNets)."""

    def __init__(self, in_ch: int, width: int, stride: int, downsample: nn.Module | None,
                 se_channels: int = 0, drop_path_rate: float = 0.0):
        super().__init__(width, downsample, se_channels, drop_path_rate)
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """1x1 reduce -> 3x3 (carries the stride, as in torchvision's "ResNet v1.5") -> 1x1 expand x4."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, downsample: nn.Module | None,
                 se_channels: int = 0, drop_path_rate: float = 0.0):
        super().__init__(width * self.expansion, downsample, se_channels, drop_path_rate)
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class Stem(nn.Module):
    """The layers before the first stage; which ones exist depends on `kind`.

    cifar/small: conv3x3 s1 -> BN -> ReLU (32/64 px inputs keep their resolution).
    imagenet: conv7x7 s2 -> BN -> ReLU -> maxpool 3x3 s2.
    deep (ResNet-D, as in ResNet-RS): three conv3x3 (the first s2) with BN-ReLU, and the
    max-pool replaced by a strided conv3x3 -> BN -> ReLU.
    """

    def __init__(self, kind: StemKind, out_ch: int, deep_width: int = 32, in_ch: int = 3):
        super().__init__()
        self.kind = kind
        self.relu = nn.ReLU(inplace=True)
        if kind in ("cifar", "small"):
            self.conv = conv3x3(in_ch, out_ch)
            self.bn = nn.BatchNorm2d(out_ch)
        elif kind == "imagenet":
            self.conv = nn.Conv2d(in_ch, out_ch, 7, stride=2, padding=3, bias=False)
            self.bn = nn.BatchNorm2d(out_ch)
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        elif kind == "deep":
            self.conv1 = conv3x3(in_ch, deep_width, 2)
            self.bn1 = nn.BatchNorm2d(deep_width)
            self.conv2 = conv3x3(deep_width, deep_width)
            self.bn2 = nn.BatchNorm2d(deep_width)
            self.conv3 = conv3x3(deep_width, out_ch)
            self.bn3 = nn.BatchNorm2d(out_ch)
            self.pool_conv = conv3x3(out_ch, out_ch, 2)
            self.pool_bn = nn.BatchNorm2d(out_ch)
        else:
            raise ValueError(f"unknown stem {kind!r}: expected 'cifar', 'small', 'imagenet' or 'deep'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "deep":
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
            return self.relu(self.pool_bn(self.pool_conv(x)))
        x = self.relu(self.bn(self.conv(x)))
        return self.pool(x) if self.kind == "imagenet" else x


def init_conv_(conv: nn.Conv2d) -> None:
    """The zoo's convolution init (torchvision's ResNet): He normal over the fan-out."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_head_(fc: nn.Linear, head_init: str) -> None:
    """--head-init: zero, normal (std 0.01, the TF recipes') or default (nn.Linear's own)."""
    if head_init == "zero":
        nn.init.zeros_(fc.weight)
    elif head_init == "normal":
        nn.init.normal_(fc.weight, std=0.01)
    if head_init != "default" and fc.bias is not None:
        nn.init.zeros_(fc.bias)


def stage_drop_path_rates(layers: Sequence[int], rate: float, rule: str) -> list[list[float]]:
    """Stochastic-depth rate of every block.

    'tf' (ResNet-RS, tensorflow/tpu): rate x stage_index / 5 with stage indices 2..5, the
    same for every block of a stage. 'linear' (timm): rises linearly over all blocks from 0.
    """
    if rule == "tf":
        return [[rate * (i + 2) / 5] * n for i, n in enumerate(layers)]
    if rule == "linear":
        total = sum(layers)
        flat = [rate * b / max(total - 1, 1) for b in range(total)]
        out, start = [], 0
        for n in layers:
            out.append(flat[start:start + n])
            start += n
        return out
    raise ValueError(f"unknown stochastic depth rule {rule!r}: expected 'tf' or 'linear'")


class ResNet(nn.Module):
    def __init__(
        self,
        block: BlockKind,
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        num_classes: int = 1000,
        stem: StemKind = "imagenet",
        stem_width: int = 64,
        deep_stem_width: int = 32,
        shortcut: ShortcutKind = "conv",
        se_ratio: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_path_rule: str = "tf",
        dropout: float = 0.0,
        head_bias: bool = True,
        head_init: Literal["default", "zero", "normal"] = "default",
        zero_init_last_bn: bool = True,
        in_chans: int = 3,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} must have the same length")
        block_cls = Bottleneck if block == "bottleneck" else BasicBlock
        self.stem = Stem(stem, stem_width, deep_stem_width, in_chans)
        drop_rates = stage_drop_path_rates(layers, drop_path_rate, drop_path_rule)

        in_ch = stem_width
        self.stage_names: list[str] = []
        for index, (num_blocks, width) in enumerate(zip(layers, widths)):
            first_stride = 1 if index == 0 else 2
            out_ch = width * block_cls.expansion
            blocks = []
            for b in range(num_blocks):
                stride = first_stride if b == 0 else 1
                downsample = None
                if stride != 1 or in_ch != out_ch:
                    downsample = Downsample(in_ch, out_ch, stride, shortcut)
                blocks.append(block_cls(in_ch, width, stride, downsample,
                                        se_channels=int(out_ch * se_ratio),
                                        drop_path_rate=drop_rates[index][b]))
                in_ch = out_ch
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)

        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes, bias=head_bias)
        self.head_init = head_init  # how a method that rebuilds the head (MIMO) initializes it
        self._init_weights(head_init, zero_init_last_bn)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                # PyTorch's convention: running = (1 - momentum) * running + momentum * batch.
                m.momentum = bn_momentum

    def _init_weights(self, head_init: str, zero_init_last_bn: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last_bn:
            # Each residual block starts as the identity, which makes deep nets train at high LR.
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    nn.init.zeros_(m.last_bn.weight)
        init_head_(self.fc, head_init)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))
