"""Datasets held as arrays: seed 001's .npy layout, scikit-learn's digits, and synthetic noise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resnets.errors import UserError

from .common import DatasetBundle, TensorSplit, _channel_stats, _check_labels, _fixed_num_classes, _Request, _tail_split, resize_images

def _read_npy_pair(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    image_path, label_path = root / f"{split}_images.npy", root / f"{split}_labels.npy"
    if not image_path.is_file() and not label_path.is_file() and split == "test":
        return None
    for path in (image_path, label_path):
        if not path.is_file():
            raise UserError(
                f"Expected {path}. The npy layout is train_images.npy (N×H×W×3 uint8), train_labels.npy (N integers), "
                f"and optionally test_images.npy with test_labels.npy, all in --data-dir."
            )
    try:
        images = np.load(image_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(label_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not read {image_path} / {label_path} as .npy arrays ({e}).") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise UserError(
            f"{image_path} is {images.dtype} of shape {images.shape}; expected uint8 N×H×W×3 with square images (H = W)."
        )
    if split == "train" and images.shape[0] == 0:
        raise UserError(f"{image_path} holds no images; the training set needs at least one.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{label_path} is {labels.dtype} of shape {labels.shape}; expected a 1-D array of integer class labels.")
    if labels.shape[0] != images.shape[0]:
        raise UserError(f"{label_path} has {labels.shape[0]} labels but {image_path} has {images.shape[0]} images; they must match.")
    labels = torch.from_numpy(labels.astype(np.int64))
    if labels.numel() and int(labels.min()) < 0:
        raise UserError(f"{label_path} has negative labels ({int(labels.min())}); labels must be class indices 0, 1, ….")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), labels


def _load_npy(request: _Request) -> DatasetBundle:
    root = request.data_dir
    train_images, train_labels = _read_npy_pair(root, "train")
    test = _read_npy_pair(root, "test")
    if test is not None and test[0].shape[1:] != train_images.shape[1:]:
        raise UserError(f"{root / 'test_images.npy'} has images of shape {tuple(test[0].shape[2:])}, unlike the {tuple(train_images.shape[2:])} of train_images.npy.")
    all_labels = [train_labels] + ([] if test is None else [test[1]])
    num_classes = request.num_classes or max(int(labels.max()) + 1 for labels in all_labels if labels.numel())
    _check_labels(train_labels, num_classes, root / "train_labels.npy")
    if test is not None:
        _check_labels(test[1], num_classes, root / "test_labels.npy")
    train, val = _tail_split(train_images, train_labels, request.val_size, str(root / "train_images.npy"))
    mean, std = _channel_stats(train.images)
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=request.image_size or train_images.shape[-1],
        mean=mean, std=std, train=train, val=val, test=None if test is None else TensorSplit(*test),
    )


# The digits split is fixed (not the training seed) so every run evaluates on the same images.
_DIGITS_SPLIT_SEED = 0


def _load_digits(request: _Request) -> DatasetBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    num_classes = _fixed_num_classes(request, 10)
    digits = load_digits()
    grey = np.round(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16
    labels = digits.target.astype(np.int64)
    everything = np.arange(len(labels))
    rest, test_idx = train_test_split(everything, test_size=0.2, stratify=labels, random_state=_DIGITS_SPLIT_SEED)
    n_val = round(0.1 * len(labels)) if request.val_size is None else request.val_size
    if n_val >= len(rest):
        raise UserError(f"--val-size {n_val} leaves no training images: digits has {len(rest)} non-test images.")
    if n_val:
        train_idx, val_idx = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=_DIGITS_SPLIT_SEED)
    else:
        train_idx, val_idx = rest, None
    size = request.image_size or 32
    images = torch.from_numpy(grey)[:, None].expand(-1, 3, -1, -1).contiguous()
    images = resize_images(images, size)

    def split(idx):
        idx = torch.from_numpy(np.sort(idx))
        return TensorSplit(images[idx], torch.from_numpy(labels)[idx])

    train = split(train_idx)
    mean, std = _channel_stats(train.images)
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=size, mean=mean, std=std,
        train=train, val=None if val_idx is None else split(val_idx), test=split(test_idx),
        class_names=[str(d) for d in range(10)],
    )


_SYNTHETIC_SEED = 0


def _load_synthetic(request: _Request) -> DatasetBundle:
    sizes = request.synthetic_size or (10_000, 1_000, 1_000)
    if len(sizes) != 3 or any(n < 0 for n in sizes) or sizes[0] < 1:
        raise UserError(f"The synthetic dataset size must be three counts (train, val, test) with train ≥ 1, got {sizes}.")
    n_train, n_val, n_test = sizes
    if request.val_size is not None:
        n_val = request.val_size
    size = request.image_size or 32
    num_classes = request.num_classes or 10
    generator = torch.Generator().manual_seed(_SYNTHETIC_SEED)

    def split(n: int) -> TensorSplit | None:
        if n == 0:
            return None
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
        return TensorSplit(images, torch.randint(0, num_classes, (n,), generator=generator))

    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=size, mean=request.stats[0], std=request.stats[1],
        train=split(n_train), val=split(n_val), test=split(n_test),
    )

