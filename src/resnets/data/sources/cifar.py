"""CIFAR-10 and CIFAR-100, python version (pickled batches), optionally fetched by torchvision."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from resnets.errors import UserError

from .common import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DatasetBundle, TensorSplit, _check_labels, _fixed_num_classes, _planar_rows_to_images, _Request, _tail_split


class _CifarLayout(NamedTuple):
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str


_CIFAR = {
    "cifar10": _CifarLayout(
        "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        "batches.meta", b"labels", b"label_names", 10, CIFAR10_MEAN, CIFAR10_STD, "CIFAR10",
    ),
    "cifar100": _CifarLayout(
        "CIFAR-100", "cifar-100-python", ("train",), ("test",),
        "meta", b"fine_labels", b"fine_label_names", 100, CIFAR100_MEAN, CIFAR100_STD, "CIFAR100",
    ),
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR_LAYOUT_TEXT = {
    name: f"{layout.folder}/ ({', '.join(layout.train_files + layout.test_files + (layout.meta_file,))})"
    for name, layout in _CIFAR.items()
}


def _pickle_value(record: dict, key: bytes, path: Path):
    # The publisher's pickles were written by Python 2 (bytes keys); re-saved copies have str keys.
    for candidate in (key, key.decode()):
        if candidate in record:
            return record[candidate]
    raise UserError(f"{path} has no {key.decode()!r} entry: it is not a {path.name} file of the CIFAR python version.")


def _read_pickle(path: Path, title: str) -> dict:
    try:
        with open(path, "rb") as f:
            record = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise UserError(
            f"{path} could not be read as a {title} python pickle ({e}). Delete it and fetch the dataset again "
            f"with --download or from {_CIFAR_URL} (python version)."
        ) from None
    if not isinstance(record, dict):
        raise UserError(f"{path} holds a {type(record).__name__}, not the dict of a {title} python pickle.")
    return record


def _read_cifar_files(folder: Path, files: tuple[str, ...], layout: _CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for file_name in files:
        path = folder / file_name
        record = _read_pickle(path, layout.title)
        rows = np.asarray(_pickle_value(record, b"data", path))
        file_labels = np.asarray(_pickle_value(record, layout.label_key, path))
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
            raise UserError(
                f"{path}: 'data' is {rows.dtype} of shape {rows.shape}, expected uint8 rows of 3072 values "
                f"(32×32 red, green and blue planes). Fetch the dataset again from {_CIFAR_URL}."
            )
        if file_labels.shape != (rows.shape[0],) or not np.issubdtype(file_labels.dtype, np.integer):
            raise UserError(f"{path}: expected {rows.shape[0]} integer labels, got {file_labels.dtype} of shape {file_labels.shape}.")
        file_labels = torch.from_numpy(file_labels.astype(np.int64))
        _check_labels(file_labels, layout.num_classes, path)
        images.append(_planar_rows_to_images(rows, 32))
        labels.append(file_labels)
    return torch.cat(images), torch.cat(labels)


def _download_cifar(request: _Request, layout: _CifarLayout) -> None:
    import torchvision.datasets

    downloader = getattr(torchvision.datasets, layout.torchvision_class)
    try:
        downloader(root=str(request.data_dir), download=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError and socket errors are OSErrors
        raise UserError(
            f"Could not download {layout.title} into {request.data_dir} ({e}). This machine may be offline: "
            f"fetch the python version from {_CIFAR_URL}, extract it so that {request.data_dir / layout.folder} "
            f"exists, and run again without --download."
        ) from None


def _load_cifar(request: _Request) -> DatasetBundle:
    layout = _CIFAR[request.name]
    data_dir = request.data_dir
    if request.download:
        _download_cifar(request, layout)
    folder = data_dir / layout.folder
    if not folder.is_dir() and (data_dir / layout.train_files[0]).is_file():
        folder = data_dir  # --data-dir points at the extracted folder itself
    expected = layout.train_files + layout.test_files + (layout.meta_file,)
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{layout.title} not found: expected {folder / missing[0]}"
            + (f" (and {len(missing) - 1} more of {', '.join(expected)})" if len(missing) > 1 else "")
            + f". Get it with --download, or fetch the python version from {_CIFAR_URL} and extract it into {data_dir}."
        )
    num_classes = _fixed_num_classes(request, layout.num_classes)
    train_images, train_labels = _read_cifar_files(folder, layout.train_files, layout)
    test_images, test_labels = _read_cifar_files(folder, layout.test_files, layout)
    meta_path = folder / layout.meta_file
    class_names = [
        n.decode() if isinstance(n, bytes) else str(n)
        for n in _pickle_value(_read_pickle(meta_path, layout.title), layout.names_key, meta_path)
    ]
    train, val = _tail_split(train_images, train_labels, request.val_size, str(folder))
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=request.image_size or 32,
        mean=request.stats[0], std=request.stats[1], train=train, val=val,
        test=TensorSplit(test_images, test_labels), class_names=class_names,
    )

