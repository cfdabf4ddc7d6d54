"""Checkpoints that are written atomically and loaded without running code from the file.

A checkpoint is a dict of tensors and plain Python values saved with torch.save and loaded
with `weights_only=True`; weights for inference are also exported as safetensors.

Each checkpoint file has a digest file beside it (`last.pt.sha256`, in `sha256sum` format),
written by the process that wrote the checkpoint from the bytes it wrote, so a truncated or
damaged file is recognised from its bytes alone, before anything in it is parsed
(`verify_checkpoint`). `save_checkpoint` can keep the file it replaces as the previous one;
its order of renames leaves, after a kill at any moment, the newest or the one before it
intact with its digest.
"""
from __future__ import annotations

import hashlib
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
DIGEST_SUFFIX = ".sha256"


def _fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def digest_path(path: str | os.PathLike) -> Path:
    """The digest file of checkpoint `path`: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def _write_digest(path: Path, digest: str) -> None:
    # sha256sum's format, so `sha256sum -c last.pt.sha256` checks it from the checkpoints folder.
    text = f"{digest}  {path.name}\n"
    _atomic_write(digest_path(path), lambda tmp: Path(tmp).write_text(text))


def read_digest(path: str | os.PathLike) -> str | None:
    """The sha256 recorded for checkpoint `path`, or None when it has no digest file."""
    try:
        text = digest_path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""  # unreadable: matches no file
    words = text.split()
    return words[0].lower() if words else ""


class _HashingWriter:
    """A file-like torch.save writes to: the bytes go to `handle` and into a sha256."""

    def __init__(self, handle):
        self.handle, self.sha256, self.error = handle, hashlib.sha256(), None

    def write(self, data) -> int:
        try:
            written = self.handle.write(data)
        except OSError as error:  # e.g. ENOSPC: kept, since torch may wrap it in its own error
            self.error = error
            raise
        self.sha256.update(data)
        return written

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], previous: str | os.PathLike | None = None) -> str:
    """Write `state` to `path` atomically, with its digest file; return the sha256.

    With `previous`, the checkpoint `path` held (if any) becomes `previous`, with its digest.
    Order: the new file is written and fsynced under a temporary name first, so a failure
    there (a full disk: OSError ENOSPC) changes nothing; then the old digest is copied to
    `previous`'s digest file, `path` is renamed to `previous`, the new digest written and the
    new file renamed to `path`. A kill between any two of these leaves `path` or `previous`
    matching its digest, holding the newest checkpoint that was complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _HashingWriter(handle)
            try:
                torch.save(dict(state, format=FORMAT), writer)
            except Exception:
                if writer.error is not None:
                    raise writer.error from None
                raise
            handle.flush()
            os.fsync(handle.fileno())
        digest = writer.sha256.hexdigest()
        if previous is not None and path.exists():
            previous = Path(previous)
            old = read_digest(path)
            if old is None:  # written before digest files: it moves without one
                digest_path(previous).unlink(missing_ok=True)
            else:
                _write_digest(previous, old)
            os.replace(path, previous)
        _write_digest(path, digest)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
        return digest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verify_checkpoint(path: str | os.PathLike) -> bool:
    """UserError unless `path` matches its digest file, checked on the raw bytes before anything
    in the file is read; True when it matched, False when it has no digest file (written before
    digests were kept: loading it with `weights_only=True` is then the only check)."""
    path = Path(path)
    expected = read_digest(path)
    if expected is None:
        return False
    try:
        with open(path, "rb") as handle:
            actual = hashlib.file_digest(handle, "sha256").hexdigest()
        size = path.stat().st_size
    except OSError as error:
        raise UserError(f"checkpoint {path} cannot be read: {error.strerror or error}") from None
    if actual != expected:
        raise UserError(f"checkpoint {path} ({size:,} bytes) does not match the sha256 in {digest_path(path).name} "
                        f"({actual[:12]}... instead of {expected[:12] or 'an unreadable digest'}...): it is truncated "
                        "or damaged")
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed write left in `folder` (`.<name>.<random>.tmp`)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for leftover in folder.glob(".*.tmp"):
        try:
            leftover.unlink()
            removed.append(leftover)
        except OSError:
            pass
    return removed


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: expected a file written by `resnets train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's weights-only unpickler raises many types on foreign bytes
        # Our words only: torch's UnpicklingError advises re-running with weights_only=False, which
        # would run whatever code the file holds.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, pickle.UnpicklingError) or "weights_only" in first_line or not first_line:
            first_line = f"{type(error).__name__}: refused by the safe loader"
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
