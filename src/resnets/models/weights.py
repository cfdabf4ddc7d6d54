"""Import torchvision and timm ResNet / ResNet-RS state dicts onto the zoo's models.

Our modules are named like torchvision's, so a torchvision (or timm non-RS) state dict
differs only in the stem and the shortcut; timm's ResNet-RS also renames its deep stem.
The import is strict: every source tensor is used, every parameter and buffer is filled.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

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

# ---------------------------------------------------------------------------------------------
# `resnets train --pretrained SOURCE`: where published weights are found, and reading weight files.

# The zoo models each library publishes ImageNet weights for (torchvision.models' ResNet weight
# enums; timm's resnet* and resnetrs* pretrained configs on the Hugging Face Hub).
PUBLISHED = {
    "torchvision": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
    "timm": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnetrs50", "resnetrs101",
             "resnetrs152", "resnetrs200", "resnetrs270", "resnetrs350", "resnetrs420"),
}
# The files timm's loader looks for in a Hub repository, in its order (timm/models/_hub.py).
_TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _check_published(model_name: str, source: str) -> None:
    if model_name not in PUBLISHED[source]:
        others = [s for s, names in PUBLISHED.items() if model_name in names]
        hint = (f"; {' and '.join(others)} publishes them: --pretrained {others[0]}" if others else
                f"; neither library publishes weights for {model_name}: give a weights file of your own "
                f"(--pretrained PATH.safetensors), or a model with published weights "
                f"({', '.join(PUBLISHED['timm'])})")
        raise UserError(f"--pretrained {source}: {source} publishes no weights for --model {model_name}{hint}")


def torchvision_weights_file(model_name: str) -> tuple[Path, str]:
    """Where torchvision keeps `model_name`'s default ImageNet weights, and their URL.

    The file name is the published one (the last part of the weight enum's url), in torch hub's
    checkpoint folder ($TORCH_HOME/hub/checkpoints), where torchvision.models downloads it to.
    """
    import torchvision
    _check_published(model_name, "torchvision")
    url = torchvision.models.get_model_weights(model_name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def _hf_cache_dir() -> Path:
    # Read at call time (huggingface_hub reads HF_HOME once, at import).
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def timm_weights_file(model_name: str) -> tuple[Path | None, str, Path]:
    """timm's default weights of `model_name` in the Hugging Face cache: (file or None, repo id, cache)."""
    _check_published(model_name, "timm")
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
    except ImportError:
        raise UserError("--pretrained timm needs timm (pip install timm): it names the Hugging Face "
                        "repository that holds the weights") from None
    repo_id = get_pretrained_cfg(model_name).hf_hub_id
    cache = _hf_cache_dir()
    for filename in _TIMM_HUB_FILES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(found, str):
            return Path(found), repo_id, cache
    return None, repo_id, cache


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def download_torchvision(url: str, path: Path) -> None:
    """torchvision's own download path (its weight enum's get_state_dict): torch hub's
    load_state_dict_from_url into the checkpoint folder, the hash in the file name checked."""
    torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), file_name=path.name, check_hash=True,
                                       progress=True, weights_only=True)


def download_timm(repo_id: str, cache: Path) -> Path | None:
    """timm's download path (timm.models._hub.download_from_hf): huggingface_hub's hf_hub_download
    into the Hugging Face cache, safetensors first. None where the repository has neither file."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    for filename in _TIMM_HUB_FILES:
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=str(cache)))
        except LocalEntryNotFoundError:
            raise  # offline (or HF_HUB_OFFLINE): trying the next file cannot help
        except EntryNotFoundError:
            continue  # the repository has no such file: timm tries pytorch_model.bin next
    return None


def pretrained_file(source: str, model_name: str) -> Path:
    """The weights file for --pretrained SOURCE: a library's cached file (downloaded by that
    library's own path where it is not there yet and the network is reachable), or SOURCE itself."""
    if source == "torchvision":
        path, url = torchvision_weights_file(model_name)
        if not path.is_file():
            try:
                download_torchvision(url, path)
            except Exception as error:  # no network, a refused connection, a hash mismatch...
                reason = _first_line(error)
            else:
                if path.is_file():
                    return path
                reason = "nothing was written"
            raise UserError(f"--pretrained torchvision: {path} is not there, and downloading it from {url} failed "
                            f"({reason}). Expected torchvision's published file {path.name} for {model_name}: put "
                            f"it there (or run torchvision.models.get_model({model_name!r}, weights='DEFAULT') "
                            f"once online), or set TORCH_HOME to the folder whose hub/checkpoints/ holds it")
        return path
    if source == "timm":
        path, repo_id, cache = timm_weights_file(model_name)
        if path is None:
            try:
                path = download_timm(repo_id, cache)
                reason = "the repository has neither file"
            except Exception as error:  # offline, HF_HUB_OFFLINE, a refused connection...
                reason = _first_line(error)
            if path is not None and path.is_file():
                return path
            folder = cache / f"models--{repo_id.replace('/', '--')}"
            raise UserError(f"--pretrained timm: no weights of {repo_id} in the Hugging Face cache {cache}, and "
                            f"downloading them failed ({reason}). Expected {folder}/snapshots/<revision>/"
                            f"{_TIMM_HUB_FILES[0]} (or {_TIMM_HUB_FILES[1]}) with refs/main naming the revision: "
                            f"run timm.create_model({model_name!r}, pretrained=True) once online, or set HF_HOME")
        return path
    path = Path(source)
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise UserError(f"--pretrained {source}: expected torchvision, timm, or a weights file ending in .pth, "
                        ".pt or .safetensors")
    if not path.is_file():
        raise UserError(f"--pretrained {source}: no such file; expected a .pth, .pt or .safetensors state dict")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a torch.save'd state dict, read without running code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise UserError(f"--pretrained {path} is not a valid safetensors file ({error}): expected a state "
                            "dict written by safetensors, such as a resnets run's model.safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's weights-only unpickler raises many types on foreign bytes
        # Our words, not torch's: its hint to retry with weights_only=False would run the file's code.
        raise UserError(f"--pretrained {path} cannot be read safely as weights ({type(error).__name__}): "
                        "expected a state dict of tensors saved with torch.save; it is corrupt, not a weights "
                        "file, or holds objects other than tensors and plain values, which are never "
                        "unpickled") from None
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):  # a training checkpoint that holds the state dict
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"--pretrained {path} holds a {type(state).__name__} that is not a state dict: expected "
                        "a mapping of parameter names to tensors (model.state_dict())")
    return state


def load_pretrained(model: nn.Module, source: str) -> list[str]:
    """Fill `model` from --pretrained SOURCE; a head of another class count stays freshly initialized.

    Returns notes for the run's log. Every other tensor must load (UserError naming the key).
    """
    model_name = getattr(model, "model_name", "the model")
    if source in SOURCES:
        _check_published(model_name, source)
    path = pretrained_file(source, model_name)
    state = dict(read_state_dict(path))
    notes = []
    head = {"fc.weight": model.fc.weight}
    if model.fc.bias is not None:
        head["fc.bias"] = model.fc.bias
    given = state.get("fc.weight")
    if torch.is_tensor(given) and tuple(given.shape) != tuple(model.fc.weight.shape):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state.update({k: v.detach().clone() for k, v in head.items()})
        notes.append(f"the head of {path.name} has {given.shape[0]} classes and the data {model.fc.out_features}: "
                     "replaced by a freshly initialized head")
    try:
        if any(k.startswith("stem.") for k in state):  # a resnets state dict, as a run's model.safetensors
            missing = [k for k in model.state_dict() if k not in state]
            unexpected = [k for k in state if k not in model.state_dict()]
            if missing or unexpected:
                raise ValueError(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected "
                                 f"{unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}: expected a state dict "
                                 "of the same architecture")
            model.load_state_dict(state)
        else:
            import_weights(model, state, "timm" if model.stem.kind == "deep" else "torchvision")
    except (ValueError, RuntimeError) as error:
        raise UserError(f"--pretrained {source} ({path}) does not fit --model {model_name}: "
                        f"{str(error).splitlines()[0]}") from None
    notes.insert(0, f"initialized from {path} (--pretrained {source})")
    return notes
