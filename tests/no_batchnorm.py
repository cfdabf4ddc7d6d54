"""A small classifier without BatchNorm, so micro-batches and processes do not interact through
batch statistics; run as a script, it is `python -m resnets` with that model in place of the
zoo's (for torchrun, which cannot monkeypatch its workers)."""
from __future__ import annotations

import sys

import torch
from torch import nn


class NoBatchNorm(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def build_run_model(cfg, num_classes, image_size, method=None, notes=None):
    """train.build_run_model's signature, the model replaced (seeded, so every process and run starts
    from the same weights, as the zoo's models do)."""
    from resnets.methods import method_from_config

    torch.manual_seed(cfg.seed)
    return NoBatchNorm(num_classes), method_from_config(cfg) if method is None else method


if __name__ == "__main__":
    from resnets import train as train_module
    from resnets.cli import main

    train_module.build_run_model = build_run_model
    raise SystemExit(main(sys.argv[1:]))
