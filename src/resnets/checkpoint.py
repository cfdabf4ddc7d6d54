"""Checkpoints that are written atomically and loaded without running code from the file.

A checkpoint is a dict of tensors and plain Python values saved with torch.save and loaded
with `weights_only=True`; weights for inference are also exported as safetensors.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError

FORMAT = "resnets-checkpoint-v1"


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, fsync it, then rename over `path`,
    so a kill at any moment leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    _atomic_write(Path(path), lambda tmp: torch.save(dict(state, format=FORMAT), tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: expected a file written by `resnets train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"checkpoint {path} cannot be read safely ({first_line}): expected an intact "
                        "resnets checkpoint; it is corrupt, truncated, or holds objects other than tensors "
                        "and plain values, which are never unpickled") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a resnets checkpoint: expected a dict with "
                        f"format={FORMAT!r} (for torchvision/timm weights use resnets.import_weights)")
    return state


def export_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    # safetensors refuses tensors that share memory and non-contiguous ones.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: expected a .safetensors file written by `resnets train`")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise UserError(f"weights file {path} is not a valid safetensors file ({error})") from None
