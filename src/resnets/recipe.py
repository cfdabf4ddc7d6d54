"""From a TrainConfig to the objects it describes: the model, its method and the optimizer's
parameter groups. Training builds them here, and so does every reader of a finished run, so a
run is rebuilt exactly as it was trained.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .config import MODEL_OPTION_FIELDS, TrainConfig
from .errors import UserError
from .methods import Method, method_from_config
from .models import create_model

__all__ = ["build_model", "build_run_model", "parameter_groups"]


def build_model(cfg: TrainConfig, num_classes: int, image_size: int) -> nn.Module:
    """The zoo model of `cfg`; a model option left unset (None) keeps the model's own default."""
    options: dict[str, Any] = {name: getattr(cfg, name) for name in MODEL_OPTION_FIELDS
                               if getattr(cfg, name) is not None}
    try:
        return create_model(cfg.model, num_classes=num_classes, image_size=image_size, **options)
    except ValueError as error:
        raise UserError(f"--model {cfg.model}: {error}") from None


def build_run_model(cfg: TrainConfig, num_classes: int, image_size: int,
                    method: Method | None = None) -> tuple[nn.Module, Method]:
    """A fresh model as the run built it, converted by its method (e.g. BatchEnsemble layers)."""
    method = method_from_config(cfg) if method is None else method
    return method.prepare_model(build_model(cfg, num_classes, image_size)), method


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Coupled L2 (SGD's weight_decay: grad += wd * param) on every parameter, or all but BN's."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in bn_params and not cfg.decay_bn else decay).append(p)
    groups = [dict(params=decay, weight_decay=cfg.weight_decay, lr_mult=1.0)]
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0, lr_mult=1.0))
    return groups
