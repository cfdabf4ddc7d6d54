"""Dataset sources: each dataset read from the files its publisher ships, split the same way.

Split rule (shared by every dataset whose publisher ships no validation set of its own):
the validation set is the held-out *tail* of the official training set and the test set is
the official test set. The default tail is 18.08 % of the training set, which gives exactly
CIFAR's 40,960 / 9,040 of 50,000 and TinyImageNet's 81,920 / 18,080 of 100,000;
``val_size`` overrides the count and ``val_size=0`` trains on everything (``val`` is None).
ImageNet 2012 and its downsampled versions use the official validation set as ``val`` and
have no test set. ImageNet-V2 is a test set only.

Normalization statistics are the published ones for CIFAR and the ImageNet family
(TinyImageNet included). ``digits`` and ``npy`` compute them from their own training split
(there is no published value); ``synthetic`` uses those of uniform uint8 noise
(mean 0.5, std 0.2898).

Small-image datasets become ``TensorSplit`` (uint8 in memory, augmented on the training
device); ImageNet-size photos become ``FolderSplit`` (decoded per sample by DataLoader
workers) through the ``EncodedSplit`` interface.

One module per format family, behind the one registry below (``DATASETS``): ``cifar``,
``downsampled`` (ImageNet32/64), ``folders`` (TinyImageNet, ImageNet, ImageNet-V2, and ``folder``:
your own ImageFolder-layout photos), ``arrays`` (npy, digits, synthetic); ``common`` holds the shared types and helpers and
``decode`` the image decoding; ``shards`` writes ``imagenet`` and ``folder`` once into litdata
chunks (``resnets prepare``) and reads them back as ``ShardSplit`` wherever --data-dir holds them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from resnets.errors import UserError

from .arrays import _load_digits, _load_npy, _load_synthetic
from .cifar import _CIFAR_LAYOUT_TEXT, _load_cifar
from .common import (
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD,
    NOISE_MEAN, NOISE_STD, VAL_FRACTION, DatasetBundle, EncodedSplit, FolderSplit, TensorSplit, _Request,
    _resize_tensor_splits, cache_dir, resize_images,
)
from .decode import decode_images, decode_rgb
from .downsampled import _load_downsampled
from .folders import _load_folder, _load_imagenet, _load_imagenet_v2, _load_tinyimagenet
from .shards import PREPARABLE, ShardSplit, is_remote, load_shards, read_manifest

# Tensor data is augmented on the device; everything else is an EncodedSplit decoded by workers.
Split = TensorSplit | FolderSplit | ShardSplit

__all__ = [
    "DATASETS", "DatasetBundle", "DatasetSpec", "EncodedSplit", "FolderSplit", "IMAGE_EXTENSIONS", "PREPARABLE",
    "ShardSplit", "Split", "TensorSplit", "VAL_FRACTION", "cache_dir", "dataset_spec", "decode_images", "decode_rgb", "load_dataset",
    "resize_images",
]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    download: bool = False,
    val_size: int | None = None,
    num_classes: int | None = None,
    synthetic_size: tuple[int, int, int] | None = None,
) -> DatasetBundle:
    """Read dataset ``name`` from ``data_dir`` in its publisher's format (see the module doc)."""
    spec = dataset_spec(name)
    if spec.from_files and data_dir is None:
        raise UserError(
            f"Dataset {name!r} is read from files: --data-dir is required (the folder holding {spec.layout})."
        )
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size must be a positive number of pixels, got {image_size}.")
    if val_size is not None and val_size < 0:
        raise UserError(f"--val-size must be 0 (no validation split) or a positive count, got {val_size}.")
    if num_classes is not None and num_classes < 1:
        raise UserError(f"--num-classes must be positive, got {num_classes}.")
    if download and not spec.downloadable:
        downloadable = " and ".join(n for n, d in DATASETS.items() if d.downloadable)
        raise UserError(
            f"--download fetches only {downloadable}; {name!r} cannot be downloaded automatically. "
            f"Put {spec.layout} in --data-dir yourself and leave --download out."
        )
    # Prepared shards (resnets prepare), on local disk or at an object-store URL, are read directly.
    shards = read_manifest(data_dir if is_remote(data_dir) else Path(data_dir).expanduser()) if (
        spec.from_files and data_dir is not None and (is_remote(data_dir) or Path(data_dir).expanduser().is_dir())) else None
    if shards is None and data_dir is not None and is_remote(data_dir):
        raise UserError(f"--data-dir {data_dir} is a URL, which only prepared shards (resnets prepare) can be read from.")
    if shards is not None and name not in PREPARABLE:
        raise UserError(
            f"--data-dir {data_dir} holds prepared shards of {shards.get('dataset')!r}, which --data {name} cannot read. "
            f"Pass --data {shards.get('dataset')}."
        )
    request = _Request(
        name=name,
        data_dir=None if data_dir is None or shards is not None else Path(data_dir).expanduser(),
        image_size=image_size,
        download=download,
        val_size=val_size,
        num_classes=num_classes,
        synthetic_size=synthetic_size,
        stats=spec.stats,
    )
    if shards is not None:
        return load_shards(request, shards, str(data_dir) if is_remote(data_dir) else str(Path(data_dir).expanduser()))
    if spec.from_files and not request.data_dir.is_dir() and not download:
        raise UserError(
            f"--data-dir {request.data_dir} is not a folder. Dataset {name!r} expects it to hold {spec.layout}."
        )
    bundle = spec.loader(request)
    return _resize_tensor_splits(bundle)



# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the rest of the package knows about a dataset, in one record."""

    name: str
    loader: Callable[[_Request], DatasetBundle]
    help: str
    layout: str  # what --data-dir must hold
    num_classes: int | None  # fixed, or None: read from the files or chosen by the caller
    image_size: int | None  # default resolution, or None: the files'
    # Published normalization (mean, std), or None: computed from the training split.
    stats: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    splits: tuple[str, ...]  # which of train, val, test it has
    from_files: bool = True  # False: built in memory, --data-dir unused
    downloadable: bool = False  # --download fetches it (torchvision)

    @property
    def eval_only(self) -> bool:
        return "train" not in self.splits

    @property
    def test_split(self) -> str:
        """The split `resnets train` reports as its final result: test, or val where the
        publisher ships no test set (ImageNet's official validation set)."""
        return "test" if "test" in self.splits else "val"


_IMAGENET_STATS = (IMAGENET_MEAN, IMAGENET_STD)
_TAIL = ("train", "val", "test")  # train's tail as val, the official test set as test

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("digits", _load_digits, "scikit-learn's 8x8 handwritten digits, bundled (offline)",
                "nothing (scikit-learn ships it)", 10, 32, None, _TAIL, from_files=False),
    DatasetSpec("cifar10", _load_cifar, "CIFAR-10, python version", _CIFAR_LAYOUT_TEXT["cifar10"], 10, 32,
                (CIFAR10_MEAN, CIFAR10_STD), _TAIL, downloadable=True),
    DatasetSpec("cifar100", _load_cifar, "CIFAR-100, python version", _CIFAR_LAYOUT_TEXT["cifar100"], 100, 32,
                (CIFAR100_MEAN, CIFAR100_STD), _TAIL, downloadable=True),
    DatasetSpec("tinyimagenet", _load_tinyimagenet, "TinyImageNet-200 (its val set as test)",
                "tiny-imagenet-200/ (wnids.txt, train/, val/)", 200, 64, _IMAGENET_STATS, _TAIL),
    DatasetSpec("imagenet32", _load_downsampled, "downsampled ImageNet 32x32 (Chrabaszcz et al. 2017)",
                "train_data_batch_1..10.npz and val_data.npz (or the Imagenet32_train_npz/ and "
                "Imagenet32_val_npz/ folders)", None, 32, _IMAGENET_STATS, ("train", "val")),
    DatasetSpec("imagenet64", _load_downsampled, "downsampled ImageNet 64x64 (Chrabaszcz et al. 2017)",
                "train_data_batch_1..10.npz and val_data.npz (or the Imagenet64_train_part1_npz/, "
                "Imagenet64_train_part2_npz/ and Imagenet64_val_npz/ folders)", None, 64, _IMAGENET_STATS,
                ("train", "val")),
    DatasetSpec("npy", _load_npy, "seed 001's own layout of .npy arrays",
                "train_images.npy, train_labels.npy, test_images.npy and test_labels.npy", None, None, None, _TAIL),
    DatasetSpec("imagenet", _load_imagenet, "ImageNet 2012 JPEG folders (official val as val)",
                "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG", None, 224, _IMAGENET_STATS, ("train", "val")),
    DatasetSpec("imagenet-v2", _load_imagenet_v2, "ImageNet-V2 test set (evaluation only)",
                "the numbered class folders 0..999 (e.g. imagenetv2-matched-frequency-format-val/)", None, 224,
                _IMAGENET_STATS, ("test",)),
    # Your own photos: ImageNet's statistics and 224 px, the convention of fine-tuning an ImageNet model
    # (torchvision's ImageNet weights' transforms).
    DatasetSpec("folder", _load_folder, "your own photos in torchvision's ImageFolder layout",
                "train/<class>/*.jpg (val/<class>/ and test/<class>/ optional), or <class>/*.jpg directly", None,
                224, _IMAGENET_STATS, _TAIL),
    DatasetSpec("synthetic", _load_synthetic, "uniform noise images (benchmarks and tests)",
                "nothing (generated)", None, 32, (NOISE_MEAN, NOISE_STD), _TAIL, from_files=False),
)}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    return DATASETS[name]
