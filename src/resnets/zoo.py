"""`resnets zoo`: every model with its parameters and FLOPs at its default input size."""
from __future__ import annotations

import torch

from .models import MODELS, create_model
from .models.stats import count_flops, count_parameters


def zoo_rows(num_classes: int | None = None) -> list[dict]:
    """One row per model; by default CIFAR-style models get 10 classes and the others 1000."""
    rows = []
    for name, spec in MODELS.items():
        classes = num_classes or (10 if spec.family == "cifar" else 1000)
        # The meta device builds even ResNet-RS-420 without allocating or initialising weights.
        with torch.device("meta"):
            model = create_model(name, num_classes=classes)
        flops = count_flops(model, model.image_size)
        rows.append(dict(model=name, image_size=model.image_size, classes=classes, params=count_parameters(model),
                         gflops=flops / 1e9, gmacs=flops / 2e9))
    return rows


def format_zoo(rows: list[dict]) -> str:
    lines = [f"{'model':<12} {'input':>6} {'classes':>8} {'params':>13} {'GFLOPs':>8} {'GMACs':>8}"]
    for r in rows:
        lines.append(f"{r['model']:<12} {r['image_size']:>6} {r['classes']:>8} {r['params']:>13,} "
                     f"{r['gflops']:>8.2f} {r['gmacs']:>8.2f}")
    return "\n".join(lines)
