"""From a TrainConfig to the objects it describes: the model, its method and the optimizer's
parameter groups. Training builds them here, and so does every reader of a finished run, so a
run is rebuilt exactly as it was trained.
"""
from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from .config import MODEL_OPTION_FIELDS, TrainConfig
from .errors import UserError
from .methods import Method, method_from_config
from .models import create_model
from .models.registry import MODELS
from .models.weights import load_pretrained
from .optimizers import Lamb, Lars

__all__ = ["build_model", "build_optimizer", "build_run_model", "freeze", "parameter_groups"]


def build_model(cfg: TrainConfig, num_classes: int, image_size: int) -> nn.Module:
    """The zoo model of `cfg`; a model option left unset (None) keeps the model's own default."""
    options: dict[str, Any] = {name: getattr(cfg, name) for name in MODEL_OPTION_FIELDS
                               if getattr(cfg, name) is not None}
    if cfg.pretrained and cfg.model in MODELS and MODELS[cfg.model].family == "imagenet":
        options["stem"] = "imagenet"  # the architecture follows the weights: their 7x7 stem at any size
    try:
        return create_model(cfg.model, num_classes=num_classes, image_size=image_size, **options)
    except ValueError as error:
        raise UserError(f"--model {cfg.model}: {error}") from None


def build_run_model(cfg: TrainConfig, num_classes: int, image_size: int, method: Method | None = None,
                    notes: list[str] | None = None) -> tuple[nn.Module, Method]:
    """A fresh model as the run built it, converted by its method (e.g. BatchEnsemble layers).

    With `notes` (a new run's start), --pretrained weights are loaded before the method converts
    the model, so BatchEnsemble's members share them; what happened is appended to `notes`.
    """
    method = method_from_config(cfg) if method is None else method
    model = build_model(cfg, num_classes, image_size)
    if cfg.pretrained and notes is not None:
        notes.extend(load_pretrained(model, cfg.pretrained))
    model = method.prepare_model(model)
    freeze(model, cfg.freeze)
    return model, method


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze(model: nn.Module, stages: int) -> None:
    """--freeze N: the stem and the first N stages get no gradients, and their BN layers stay in
    eval mode (as torchvision's FrozenBatchNorm2d and timm's freeze(): frozen running statistics,
    which a few fine-tuning batches would otherwise drag away from the pretrained ones)."""
    if not stages:
        return
    names = list(getattr(model, "stage_names", []))
    if not 0 <= stages <= len(names) or not hasattr(model, "stem"):
        raise UserError(f"--freeze {stages}: {getattr(model, 'model_name', 'the model')} has {len(names)} stages; "
                        f"expected 0 to {len(names)} (the stem and the first N stages are frozen)")
    for part in [model.stem] + [getattr(model, name) for name in names[:stages]]:
        for p in part.parameters():
            p.requires_grad_(False)
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train = types.MethodType(_stay_in_eval, m)  # model.train() leaves it in eval mode
                m.eval()


def decays_bn(cfg: TrainConfig) -> bool:
    """--decay-bn resolved: given, or yes with SGD (seed 001) and no with AdamW, LAMB and LARS (timm,
    torchvision; LAMB and LARS papers exclude BN and biases from decay and layer-wise adaptation)."""
    return cfg.decay_bn if cfg.decay_bn is not None else cfg.optimizer == "sgd"


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Weight decay on every parameter, or all but BN's (with AdamW also all but biases), the
    head's LR scaled by --head-lr-mult. SGD's decay is coupled L2 (grad += wd * param), AdamW's
    decoupled (param -= lr * wd * param); LAMB and LARS add wd * param to the update before the
    trust ratio, and a group without decay is not adapted (as timm's Lamb/Lars)."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    if cfg.optimizer in DECOUPLED_RULE:  # the usual AdamW/LAMB/LARS rule: no decay on biases and BN
        bn_params |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    head = getattr(model, "fc", None)
    head_params = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    buckets: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            no_decay = id(p) in bn_params and not decays_bn(cfg)
            buckets.setdefault((no_decay, id(p) in head_params and cfg.head_lr_mult != 1.0), []).append(p)
    groups = [dict(params=params, weight_decay=0.0 if no_decay else cfg.weight_decay,
                   lr_mult=cfg.head_lr_mult if is_head else 1.0)
              for (no_decay, is_head), params in sorted(buckets.items())]
    return groups or [dict(params=[], weight_decay=cfg.weight_decay, lr_mult=1.0)]


OPTIMIZERS = ("sgd", "adamw", "lamb", "lars")
DECOUPLED_RULE = ("adamw", "lamb", "lars")  # optimizers that leave biases (as well as BN) undecayed


def build_optimizer(groups: list[dict], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if cfg.optimizer == "lamb":  # timm.optim.Lamb's defaults: betas 0.9/0.999, eps 1e-6, grad norm clipped at 1
        return Lamb(groups, lr=lr)
    if cfg.optimizer == "lars":  # timm.optim.Lars's trust_coeff 0.001, eps 1e-8; SGD's --momentum/--nesterov
        return Lars(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise UserError(f"--optimizer {cfg.optimizer!r} is unknown: expected one of {', '.join(OPTIMIZERS)}")
