"""Import torchvision and timm ResNet / ResNet-RS state dicts onto the zoo's models.

Our modules are named like torchvision's, so a torchvision (or timm non-RS) state dict
differs only in the stem and the shortcut; timm's ResNet-RS also renames its deep stem.
The import is strict: every source tensor is used, every parameter and buffer is filled.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

SOURCES = ("torchvision", "timm")

# (pattern in the source's key, replacement in ours), applied in order, first match wins.
_TORCHVISION_RULES = [
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.bn."),
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.bn."),
]
_TIMM_DEEP_STEM_RULES = [
    (r"^conv1\.0\.", "stem.conv1."),
    (r"^conv1\.1\.", "stem.bn1."),
    (r"^conv1\.3\.", "stem.conv2."),
    (r"^conv1\.4\.", "stem.bn2."),
    (r"^conv1\.6\.", "stem.conv3."),
    (r"^bn1\.", "stem.bn3."),
    (r"^maxpool\.0\.", "stem.pool_conv."),
    (r"^maxpool\.1\.", "stem.pool_bn."),
    # timm's average-pool shortcut is Sequential(pool, conv, bn); the pool has no tensors.
    (r"\.downsample\.1\.", ".downsample.conv."),
    (r"\.downsample\.2\.", ".downsample.bn."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _rules_for(model: nn.Module, source: str) -> list[tuple[str, str]]:
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}: expected one of {', '.join(SOURCES)}")
    if getattr(model, "stem", None) is not None and model.stem.kind == "deep":
        if source != "timm":
            raise ValueError("ResNet-RS weights come from timm: expected source='timm' for a deep-stem model")
        return _TIMM_DEEP_STEM_RULES
    return _TORCHVISION_RULES


def import_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Copy a torchvision/timm state dict into `model` in place; raise ValueError on any mismatch."""
    rules = _rules_for(model, source)
    target = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        ours = _rename(key, rules)
        if ours not in target:
            raise ValueError(
                f"{source} tensor {key!r} (as {ours!r}) has no place in {getattr(model, 'model_name', 'the model')}: "
                "expected a state dict of the same architecture"
            )
        if tuple(tensor.shape) != tuple(target[ours].shape):
            raise ValueError(
                f"{source} tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(target[ours].shape)} "
                f"for {ours!r}: the architecture, width or number of classes differs"
            )
        renamed[ours] = tensor
    missing = [k for k in target if k not in renamed]
    if missing:
        raise ValueError(
            f"the {source} state dict lacks {len(missing)} tensor(s) the model needs, first {missing[0]!r}: "
            "expected a state dict of the same architecture"
        )
    with torch.no_grad():
        for key, tensor in renamed.items():
            target[key].copy_(tensor)
    return model


# --- export: our state dict in timm's names (the inverse of import_weights(..., "timm")) -----------


def _inverse_rules(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Every rule maps a literal prefix ('^conv1\.0\.') or infix ('\.downsample\.1\.') to a literal:
    # swap the two sides, escaping ours and unescaping theirs.
    inverse = []
    for pattern, replacement in rules:
        anchor = "^" if pattern.startswith("^") else ""
        literal = pattern.lstrip("^").replace("\\", "")
        inverse.append((anchor + re.escape(replacement), literal))
    return inverse


def export_weights_to_timm(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state dict under timm's key names (resnet18..152, resnetrs*), CPU tensors.

    Checked by importing the result back with `import_weights(..., "timm")` onto a copy: the
    round trip must fill every tensor of the model with its own values."""
    import copy

    rules = _inverse_rules(_rules_for(model, "timm"))
    state = {_rename(key, rules): tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
    back = import_weights(copy.deepcopy(model).cpu(), state, "timm").state_dict()
    for key, tensor in model.state_dict().items():
        if not torch.equal(back[key].cpu(), tensor.cpu()):
            raise ValueError(f"the timm key mapping does not round-trip {key!r}")
    return state
