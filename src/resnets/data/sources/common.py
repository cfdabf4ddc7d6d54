"""Shared parts of the dataset sources: the split and bundle types, the load request, and the
helpers every format family uses (tail split, label checks, channel statistics, resizing, cache)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from resnets.errors import UserError

# Fraction of the official training set held out (from its tail) as the validation set.
VAL_FRACTION = 0.1808

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Uniform integers 0..255, divided by 255: mean 0.5, std sqrt((256²-1)/12)/255.
NOISE_MEAN, NOISE_STD = (0.5, 0.5, 0.5), (0.2898, 0.2898, 0.2898)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


@dataclass(eq=False)
class TensorSplit:
    """Small images kept whole in memory (and, once used, on the training device)."""

    images: torch.Tensor  # uint8, N×3×H×W, contiguous
    labels: torch.Tensor  # int64, N
    # One copy per device, made on first use, so training and every evaluation share it.
    _device_copies: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"TensorSplit images must be uint8 N×3×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"TensorSplit labels must be int64 of length {self.images.shape[0]}, got {self.labels.dtype} {tuple(self.labels.shape)}")
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def on_device(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) on ``device``, copied there once and reused afterwards."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.images, self.labels
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # "cuda" and "cuda:0": one copy
        key = str(device)
        if key not in self._device_copies:
            self._device_copies[key] = (self.images.to(device), self.labels.to(device))
        return self._device_copies[key]


@runtime_checkable
class EncodedSplit(Protocol):
    """A split of encoded images (JPEG/PNG bytes), decoded per sample by DataLoader workers.

    The batch pipelines read such a split only through these members, so any store of
    encoded samples (image files, prepared shards) plugs in. Instances are pickled to
    spawned workers, so they should hold plain arrays, not open files.
    """

    labels: np.ndarray  # int64, one class index per sample

    def __len__(self) -> int: ...

    def read_encoded(self, index: int) -> bytes:
        """The encoded bytes of sample ``index``; UserError (naming the sample) if unreadable."""

    def describe(self, index: int) -> str:
        """What sample ``index`` is, for error messages (e.g. its file path)."""


class FolderSplit:
    """Image files, one per sample: (path, label) pairs, read as encoded bytes (``EncodedSplit``)."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        # Numpy arrays instead of a list of tuples: DataLoader workers share them without
        # copy-on-write churn from reference counts, and they pickle fast for spawned workers.
        self.paths = np.array([os.fsencode(path) for path, _ in samples], dtype=np.bytes_)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [(os.fsdecode(path), int(label)) for path, label in zip(self.paths, self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return os.fsdecode(self.paths[index])

    def read_encoded(self, index: int) -> bytes:
        path = self.describe(index)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise UserError(
                f"Could not read image {path} ({e.strerror or e}). Restore it from the dataset archive or delete it."
            ) from None


# The Split union (TensorSplit | FolderSplit | ShardSplit) is defined in sources/__init__.py,
# beside the shard module it needs.


@dataclass(eq=False)
class DatasetBundle:
    name: str
    num_classes: int
    image_size: int  # training/eval resolution
    mean: tuple[float, float, float]  # in [0, 1] units, for normalization
    std: tuple[float, float, float]
    train: Split | None
    val: Split | None
    test: Split | None
    class_names: list[str] | None = None  # index -> name, where the publisher ships names


@dataclass
class _Request:
    name: str
    data_dir: Path | None
    image_size: int | None
    download: bool
    val_size: int | None
    num_classes: int | None
    synthetic_size: tuple[int, int, int] | None
    # The registry record's published normalization (mean, std), or None: computed from the data.
    stats: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None



# ----------------------------------------------------------------------------- shared helpers


def _tail_split(
    images: torch.Tensor, labels: torch.Tensor, val_size: int | None, source: str
) -> tuple[TensorSplit, TensorSplit | None]:
    n = labels.shape[0]
    n_val = round(n * VAL_FRACTION) if val_size is None else val_size
    if n_val >= n:
        raise UserError(
            f"--val-size {n_val} leaves no training images: {source} has {n} training images. "
            f"Choose a smaller --val-size (0 trains on all of them)."
        )
    n_train = n - n_val
    train = TensorSplit(images[:n_train], labels[:n_train])
    val = TensorSplit(images[n_train:], labels[n_train:]) if n_val > 0 else None
    return train, val


def _official_val_only(request: _Request) -> bool:
    """Whether to keep the official validation set (datasets without a test set)."""
    if request.val_size is None:
        return True
    if request.val_size == 0:
        return False
    raise UserError(
        f"--val-size {request.val_size} does not apply to {request.name!r}: its validation set is the "
        f"publisher's official one. Leave --val-size out (or 0 to skip validation)."
    )


def _check_labels(labels: torch.Tensor, num_classes: int, path: Path | str, *, first: int = 0) -> None:
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < first or high >= num_classes + first:
        raise UserError(
            f"{path} has labels from {low} to {high}, but {num_classes} classes numbered "
            f"{first}..{num_classes - 1 + first} were expected. Check that the file belongs to this dataset "
            f"(or pass the right --num-classes)."
        )


def _fixed_num_classes(request: _Request, actual: int) -> int:
    if request.num_classes is not None and request.num_classes != actual:
        raise UserError(
            f"--num-classes {request.num_classes} does not match {request.name!r}, which has {actual} classes. "
            f"Leave --num-classes out for this dataset."
        )
    return actual


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×3×H×W images, in [0, 1] units."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    # Chunks keep the float64 copy small for big training sets.
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    if count == 0:
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant channels: leave unscaled
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N×3×H×W → N×3×size×size, bilinear with antialiasing, in chunks."""
    from torchvision.transforms.v2 import functional as TF

    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], 2048):
        out[start : start + 2048] = TF.resize(images[start : start + 2048], [size, size], antialias=True)
    return out


def _resize_tensor_splits(bundle: DatasetBundle) -> DatasetBundle:
    for split_name in ("train", "val", "test"):
        split = getattr(bundle, split_name)
        if isinstance(split, TensorSplit) and split.images.shape[-1] != bundle.image_size:
            setattr(bundle, split_name, TensorSplit(resize_images(split.images, bundle.image_size), split.labels))
    return bundle


def _planar_rows_to_images(rows: np.ndarray, size: int) -> torch.Tensor:
    """Rows of R plane, G plane, B plane (each row-major) → N×3×size×size."""
    return torch.from_numpy(np.ascontiguousarray(rows).reshape(-1, 3, size, size))


def cache_dir() -> Path:
    """Where decoded datasets are cached: $RESNETS_CACHE, else ~/.cache/resnets."""
    return Path(os.environ.get("RESNETS_CACHE") or Path.home() / ".cache" / "resnets").expanduser()


