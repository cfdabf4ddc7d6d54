"""Downsampled ImageNet 32×32 and 64×64 (Chrabaszcz et al. 2017), the publisher's .npz batches."""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from resnets.errors import UserError

from .common import DatasetBundle, TensorSplit, _check_labels, _official_val_only, _planar_rows_to_images, _Request

_DOWNSAMPLED_URL = "https://image-net.org/download-images.php (Downsampled ImageNet, npz format)"


def _npz_member_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of one array of an .npz file, read from its header without loading the data."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(member)
    return shape


def _pick_downsampled_file(name: str, found: list[Path], root: Path, size: int) -> Path:
    if len(found) == 1:
        return found[0]
    # Both resolutions unpacked side by side share file names: the folder name tells them apart.
    for preferred in ([p for p in found if p.parent == root], [p for p in found if f"imagenet{size}" in p.parent.name.lower()]):
        if len(preferred) == 1:
            return preferred[0]
    raise UserError(
        f"Found {name} in several folders ({', '.join(str(p.parent) for p in found)}) and cannot tell which holds "
        f"ImageNet{size}. Point --data-dir at a folder with only the ImageNet{size} files."
    )


def _find_downsampled_files(root: Path, size: int) -> tuple[list[Path], Path]:
    train_names = [f"train_data_batch_{k}.npz" for k in range(1, 11)]
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    found: dict[str, list[Path]] = {}
    for folder in folders:
        for name in train_names + ["val_data.npz"]:
            if (folder / name).is_file():
                found.setdefault(name, []).append(folder / name)
    train_files = [_pick_downsampled_file(n, found[n], root, size) for n in train_names if n in found]
    if not train_files:
        raise UserError(
            f"ImageNet{size} training data not found: expected train_data_batch_1.npz … train_data_batch_10.npz in "
            f"{root} or one of its subfolders (none of them is there). Download the {size}x{size} npz files from "
            f"{_DOWNSAMPLED_URL} and unzip them into {root}."
        )
    if "val_data.npz" not in found:
        raise UserError(
            f"ImageNet{size} validation data not found: expected val_data.npz in {root} or one of its subfolders. "
            f"Download the {size}x{size} validation npz from {_DOWNSAMPLED_URL} and unzip it into {root}."
        )
    missing = [n for n in train_names if n not in found]
    if missing:
        warnings.warn(
            f"ImageNet{size}: training on {len(train_files)} of 10 training batches; missing in {root}: {', '.join(missing)}.",
            stacklevel=3,
        )
    return train_files, _pick_downsampled_file("val_data.npz", found["val_data.npz"], root, size)


def _read_downsampled(files: list[Path], size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = 3 * size * size
    shapes = []
    for path in files:
        try:
            shape = _npz_member_shape(path, "data")
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
            raise UserError(f"{path} is not a Downsampled ImageNet .npz with a 'data' array ({e}). Download it again from {_DOWNSAMPLED_URL}.") from None
        if len(shape) != 2 or shape[1] != width:
            other = {3072: " (that is ImageNet32)", 12288: " (that is ImageNet64)"}.get(shape[1] if len(shape) == 2 else -1, "")
            raise UserError(
                f"{path} holds images of shape {shape}, but ImageNet{size} rows have {width} values (3×{size}×{size}){other}. "
                f"Point --data-dir at the ImageNet{size} files."
            )
        shapes.append(shape)
    # Filled in place: concatenating would briefly need twice the (up to 15 GB) training set.
    images = torch.empty((sum(s[0] for s in shapes), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(images.shape[0], dtype=torch.int64)
    offset = 0
    for path, shape in zip(files, shapes):
        try:
            with np.load(path, allow_pickle=False) as archive:
                rows, file_labels = archive["data"], np.asarray(archive["labels"])
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
            raise UserError(f"{path} could not be read as a Downsampled ImageNet .npz with 'data' and 'labels' ({e}). Download it again from {_DOWNSAMPLED_URL}.") from None
        if rows.dtype != np.uint8:
            raise UserError(f"{path}: 'data' is {rows.dtype}, expected uint8 pixels.")
        if file_labels.shape != (shape[0],) or not np.issubdtype(file_labels.dtype, np.integer):
            raise UserError(f"{path}: expected {shape[0]} integer labels, got {file_labels.dtype} of shape {file_labels.shape}.")
        file_labels = torch.from_numpy(file_labels.astype(np.int64))
        _check_labels(file_labels, num_classes, path, first=1)  # the publisher numbers classes from 1
        images[offset : offset + shape[0]] = _planar_rows_to_images(rows, size)
        labels[offset : offset + shape[0]] = file_labels - 1
        offset += shape[0]
    return images, labels


def _load_downsampled(request: _Request) -> DatasetBundle:
    size = 32 if request.name == "imagenet32" else 64
    num_classes = request.num_classes or 1000
    keep_val = _official_val_only(request)
    train_files, val_file = _find_downsampled_files(request.data_dir, size)
    train_images, train_labels = _read_downsampled(train_files, size, num_classes)
    val = TensorSplit(*_read_downsampled([val_file], size, num_classes)) if keep_val else None
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=request.image_size or size,
        mean=request.stats[0], std=request.stats[1], train=TensorSplit(train_images, train_labels), val=val, test=None,
    )

