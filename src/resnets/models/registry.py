"""The zoo: every named model is a row of block counts and options for the one ResNet."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .resnet import ResNet


@dataclass(frozen=True)
class ModelSpec:
    block: str
    layers: tuple[int, ...]
    family: str  # "cifar", "imagenet" or "resnetrs"
    default_image_size: int
    options: dict[str, Any] = field(default_factory=dict)


_CIFAR_DEPTHS = (20, 32, 44, 56, 110)
_IMAGENET = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# ResNet-RS (Bello et al. 2021): default input size, stochastic depth and dropout of its
# largest published config; the other configs are training presets.
_RESNETRS = {
    50: ((3, 4, 6, 3), 160, 0.0, 0.25),
    101: ((3, 4, 23, 3), 192, 0.0, 0.25),
    152: ((3, 8, 36, 3), 256, 0.0, 0.25),
    200: ((3, 24, 36, 3), 256, 0.1, 0.25),
    270: ((4, 29, 53, 4), 256, 0.1, 0.25),
    350: ((4, 36, 72, 4), 256, 0.1, 0.25),
    420: ((4, 44, 87, 4), 320, 0.1, 0.4),
}

MODELS: dict[str, ModelSpec] = {}
for _depth in _CIFAR_DEPTHS:
    MODELS[f"resnet{_depth}"] = ModelSpec("basic", ((_depth - 2) // 6,) * 3, "cifar", 32)
for _depth, (_block, _layers) in _IMAGENET.items():
    MODELS[f"resnet{_depth}"] = ModelSpec(_block, _layers, "imagenet", 224)
for _depth, (_layers, _size, _drop_path, _dropout) in _RESNETRS.items():
    MODELS[f"resnetrs{_depth}"] = ModelSpec(
        "bottleneck", _layers, "resnetrs", _size,
        dict(drop_path_rate=_drop_path, dropout=_dropout),
    )

# Options a caller may override, by name, with the ResNet argument each one sets.
OVERRIDABLE = (
    "width", "stem", "shortcut", "se_ratio", "drop_path_rate", "drop_path_rule", "dropout",
    "head_bias", "head_init", "zero_init_last_bn", "in_chans", "bn_momentum",
)


def list_models() -> list[str]:
    return list(MODELS)


def _resnet_kwargs(spec: ModelSpec, image_size: int, width: int) -> dict[str, Any]:
    if spec.family == "cifar":
        # Seed 001: the 16-channel stem is not widened; only the stages are.
        return dict(widths=(16 * width, 32 * width, 64 * width), stem="cifar", stem_width=16)
    stages = dict(widths=tuple(w * width for w in (64, 128, 256, 512)), stem_width=64)
    if spec.family == "imagenet":
        # Small images (32/64 px) keep their resolution: a 3x3 stride-1 stem and no max-pool.
        return dict(stages, stem="small" if image_size <= 64 else "imagenet")
    return dict(stages, stem="deep", shortcut="avgpool", se_ratio=0.25,
                drop_path_rule="tf", head_init="normal")


def create_model(name: str, num_classes: int = 1000, image_size: int | None = None, **overrides: Any) -> nn.Module:
    """Build a zoo model by name. `image_size` picks the stem of resnet18..152 (<= 64 px: 3x3)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for create_model({name!r}): expected any of {', '.join(OVERRIDABLE)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    spec = MODELS[name]
    image_size = spec.default_image_size if image_size is None else image_size
    width = overrides.pop("width", 1)
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer multiplier, got {width!r}")
    kwargs = _resnet_kwargs(spec, image_size, width)
    kwargs.update(spec.options)
    kwargs.update(overrides)
    model = ResNet(spec.block, spec.layers, num_classes=num_classes, **kwargs)
    model.model_name = name
    model.image_size = image_size
    return model
