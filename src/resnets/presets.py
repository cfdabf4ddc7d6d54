"""Named training recipes: one per training row of the three seed tables, plus the digits default.

Each preset is a dict of TrainConfig fields; `resnets train --preset NAME --iters 1000`
overrides any of them. Recipes follow ../shared/GUIDE.md §2.
"""
from __future__ import annotations

from typing import Any

from .errors import UserError

# Seed 001: SGD 0.9, 10% linear warmup then cosine to 0, coupled L2 on every parameter,
# pad-4 crop + flip, bias-free zero-init head, zero-init last BN of each block.
_SEED001 = dict(momentum=0.9, nesterov=False, schedule="cosine", warmup="10%", decay_bn=True,
                head_bias=False, head_init="zero", zero_init_last_bn=True, eval_every="1000")
_SMALL = dict(_SEED001, batch_size=256, iters="48k", lr=0.1, weight_decay=1e-3, augment="crop-flip")
_IMAGENET_SMALL = dict(_SEED001, batch_size=1024, iters="128k", lr=0.4, weight_decay=1e-4, augment="crop-flip")

# Seed 000 (uncertainty-baselines ResNet-50): Nesterov, 5-epoch warmup, step decay, L2 not on BN, bf16.
_SEED000 = dict(data="imagenet", model="resnet50", momentum=0.9, nesterov=True, schedule="step",
                warmup="5ep", lr=0.1, lr_base_batch=256, weight_decay=1e-4, decay_bn=False,
                precision="bf16", eval_every="1ep", eval_train=True)

# Seed 003 (ResNet-RS, Model Garden): cosine, 5-epoch warmup, wd 4e-5 not on BN, label smoothing,
# EMA 0.9999, RandAugment with 2 layers, train and evaluate at the same size, bf16.
_SEED003 = dict(data="imagenet", batch_size=4096, iters="350ep", lr=0.1, lr_base_batch=256,
                momentum=0.9, nesterov=False, schedule="cosine", warmup="5ep", weight_decay=4e-5,
                decay_bn=False, label_smoothing=0.1, ema_decay=0.9999, precision="bf16", eval_every="1ep")


def _seed001_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}

    def add(data: str, size: int, depth: int, width: int, fp16: bool, base: dict, label: str, **extra):
        name = f"{label}-resnet{depth}x{width}" + ("-fp16" if fp16 else "")
        presets[name] = dict(base, data=data, image_size=size, model=f"resnet{depth}", width=width,
                             precision="fp16" if fp16 else "fp32", **extra)

    cifar_rows = [(20, 1), (20, 2), (20, 4), (32, 1), (44, 1), (56, 1), (18, 1)]
    for data in ("cifar10", "cifar100"):
        for depth, width in cifar_rows:
            add(data, 32, depth, width, False, _SMALL, data)
        add(data, 32, 18, 1, True, _SMALL, data)
    for size in (32, 64):
        for depth, width in [(20, 1), (20, 2), (20, 4), (18, 1)]:
            add("tinyimagenet", size, depth, width, False, _SMALL, f"tinyimagenet{size}")
        add("tinyimagenet", size, 18, 1, True, _SMALL, f"tinyimagenet{size}")
    for depth in (18, 34, 50):
        add("imagenet32", 32, depth, 1, True, _IMAGENET_SMALL, "imagenet32")
    add("imagenet64", 64, 50, 1, True, _IMAGENET_SMALL, "imagenet64")
    # ImageNet 2012 at 224 px: batch / iterations / LR trade-offs of the seed's rows.
    imagenet = dict(_SEED001, data="imagenet", image_size=224, weight_decay=1e-4)
    for depth, batch, iters, lr in [(18, 2048, "64k", 0.8), (34, 2048, "64k", 0.8), (50, 2048, "64k", 0.8),
                                    (50, 4096, "32k", 1.6), (101, 2048, "64k", 0.8), (152, 1024, "128k", 0.4)]:
        presets[f"imagenet-resnet{depth}x1-b{batch}-fp16"] = dict(
            imagenet, model=f"resnet{depth}", width=1, batch_size=batch, iters=iters, lr=lr, precision="fp16")
    return presets


def _seed000_presets() -> dict[str, dict[str, Any]]:
    return {
        "ub-imagenet-resnet50-deterministic": dict(
            _SEED000, batch_size=4096, iters="90ep", milestones="30ep,60ep,80ep"),
        "ub-imagenet-resnet50-batchensemble": dict(
            _SEED000, method="batchensemble", ensemble_size=4, fast_weight_lr_mult=0.25, be_init="normal",
            # The batch counts unique images; each is tiled once per member.
            batch_size=1024, iters="135ep", milestones="45ep,90ep,120ep"),
    }


def _seed003_presets() -> dict[str, dict[str, Any]]:
    rows = [  # model, image size, stochastic depth, dropout, RandAugment magnitude
        ("resnetrs50", 160, 0.0, 0.25, 10), ("resnetrs101", 160, 0.0, 0.25, 10),
        ("resnetrs101", 192, 0.0, 0.25, 15), ("resnetrs152", 192, 0.0, 0.25, 15),
        ("resnetrs152", 224, 0.0, 0.25, 15), ("resnetrs152", 256, 0.0, 0.25, 15),
        ("resnetrs200", 256, 0.1, 0.25, 15), ("resnetrs270", 256, 0.1, 0.25, 15),
        ("resnetrs350", 256, 0.1, 0.25, 15), ("resnetrs350", 320, 0.1, 0.4, 15),
        ("resnetrs420", 320, 0.1, 0.4, 15),
    ]
    return {f"{model}-i{size}": dict(_SEED003, model=model, image_size=size, drop_path_rate=drop_path,
                                     dropout=dropout, randaugment_magnitude=magnitude)
            for model, size, drop_path, dropout, magnitude in rows}


# The run of `resnets train` with no arguments: offline, on a CPU, in about a minute.
DIGITS = dict(data="digits", model="resnet20", width=1, image_size=32, batch_size=64, iters="300",
              lr=0.1, weight_decay=5e-4, warmup="10%", schedule="cosine", eval_every="100", augment="crop",
              eval_batch_size=512, precision="fp32", head_bias=False, head_init="zero",
              # Zero-initialised residual branches start ResNet-20 as a shallow net, which learns
              # this small set several times slower at first; seed 001 keeps it for CIFAR.
              zero_init_last_bn=False)

PRESETS: dict[str, dict[str, Any]] = {"digits-resnet20": DIGITS}
PRESETS.update(_seed001_presets())
PRESETS.update(_seed000_presets())
PRESETS.update(_seed003_presets())


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        close = [p for p in PRESETS if name.lower() in p]
        hint = f" Did you mean {', '.join(close[:5])}?" if close else ""
        raise UserError(f"--preset {name!r} is unknown.{hint} `resnets train --list-presets` lists all "
                        f"{len(PRESETS)} presets.")
    return dict(PRESETS[name])
