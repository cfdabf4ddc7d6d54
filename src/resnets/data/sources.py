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
workers).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

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


@dataclass(eq=False)
class FolderSplit:
    """Image files decoded per sample by DataLoader workers: (path, label) pairs."""

    samples: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.samples)


Split = TensorSplit | FolderSplit


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
    request = _Request(
        name=name,
        data_dir=None if data_dir is None else Path(data_dir).expanduser(),
        image_size=image_size,
        download=download,
        val_size=val_size,
        num_classes=num_classes,
        synthetic_size=synthetic_size,
    )
    if spec.from_files and not request.data_dir.is_dir() and not download:
        raise UserError(
            f"--data-dir {request.data_dir} is not a folder. Dataset {name!r} expects it to hold {spec.layout}."
        )
    bundle = spec.loader(request)
    return _resize_tensor_splits(bundle)


# ----------------------------------------------------------------------------- shared helpers


def _published(request: _Request):
    """The dataset's published (mean, std) from its registry record."""
    return DATASETS[request.name].stats


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


# ----------------------------------------------------------------------------- CIFAR


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
        mean=_published(request)[0], std=_published(request)[1], train=train, val=val,
        test=TensorSplit(test_images, test_labels), class_names=class_names,
    )


# ----------------------------------------------------------------------------- Downsampled ImageNet

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
        mean=_published(request)[0], std=_published(request)[1], train=TensorSplit(train_images, train_labels), val=val, test=None,
    )


# ----------------------------------------------------------------------------- TinyImageNet

_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def cache_dir() -> Path:
    """Where decoded datasets are cached: $RESNETS_CACHE, else ~/.cache/resnets."""
    return Path(os.environ.get("RESNETS_CACHE") or Path.home() / ".cache" / "resnets").expanduser()


def _read_text_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"Could not read {path} ({e}); it should be {what}. Re-extract {_TINY_URL}.") from None


def _list_images(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a uint8 3×H×W RGB tensor; UserError names the file if it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # grey, CMYK and palette files become RGB too
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(
            f"Could not decode image {path} ({e}). The file is damaged or not an image: restore it from the "
            f"dataset archive or delete it."
        ) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _decode_jpeg_batch(paths: list[Path]) -> list[torch.Tensor]:
    """libjpeg-turbo on a whole list at once (about 3× Pillow's speed on small JPEGs); Pillow
    decodes the list instead where torchvision cannot, and names a damaged file."""
    import torchvision.io

    decode_jpeg = getattr(torchvision.io, "decode_jpeg", None)  # deprecated since torchvision 0.29
    if decode_jpeg is not None:
        try:
            encoded = [torch.from_numpy(np.fromfile(path, dtype=np.uint8)) for path in paths]
            return decode_jpeg(encoded, mode=torchvision.io.ImageReadMode.RGB)
        except (RuntimeError, ValueError, OSError):
            pass
    return [decode_rgb(path) for path in paths]


def decode_images(paths: list[Path], size: int) -> torch.Tensor:
    """Decode image files into one uint8 N×3×size×size tensor (resized with antialiasing when needed)."""
    from torchvision.transforms.v2 import functional as TF

    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    chunk = 512

    def decode_chunk(start: int) -> None:
        decoded = _decode_jpeg_batch(paths[start : start + chunk])
        if all(image.shape[-2:] == decoded[0].shape[-2:] for image in decoded):
            images[start : start + len(decoded)] = TF.resize(torch.stack(decoded), [size, size], antialias=True)
        else:
            for i, image in enumerate(decoded, start):
                images[i] = TF.resize(image, [size, size], antialias=True)

    # Decoding and resizing release the GIL, so threads work in parallel without pickling images.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision are deprecated")
        for _ in pool.map(decode_chunk, range(0, len(paths), chunk)):
            pass
    return images


def _tiny_root(data_dir: Path) -> Path:
    for root in (data_dir / "tiny-imagenet-200", data_dir):
        if (root / "wnids.txt").is_file():
            return root
    raise UserError(
        f"TinyImageNet not found: expected {data_dir / 'tiny-imagenet-200' / 'wnids.txt'} (or --data-dir being the "
        f"tiny-imagenet-200 folder itself). Download {_TINY_URL} and unzip it into {data_dir}."
    )


def _tiny_listing(root: Path) -> tuple[list[str], list[Path], list[int], list[Path], list[int]]:
    wnids = [line.strip() for line in _read_text_lines(root / "wnids.txt", "one WordNet id per line") if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise UserError(f"{root / 'wnids.txt'} must list distinct WordNet ids, one per line; it lists {len(wnids)} ids with duplicates or none.")
    class_of = {wnid: k for k, wnid in enumerate(wnids)}
    per_class = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise UserError(f"TinyImageNet training folder {folder} is missing (wnids.txt lists {wnid}). Re-extract {_TINY_URL}.")
        per_class.append(_list_images(folder))
    # Interleaving the classes (first image of every class, then every second, …) makes the
    # held-out tail a class-balanced validation set instead of the last classes only.
    train_paths, train_labels = [], []
    for rank in range(max(len(files) for files in per_class)):
        for label, files in enumerate(per_class):
            if rank < len(files):
                train_paths.append(files[rank])
                train_labels.append(label)
    annotations = root / "val" / "val_annotations.txt"
    val_paths, val_labels = [], []
    for line_number, line in enumerate(_read_text_lines(annotations, "tab-separated: file, wnid, box"), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_of:
            raise UserError(
                f"{annotations} line {line_number} should be 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1' with a wnid "
                f"listed in wnids.txt; got {line!r}."
            )
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise UserError(f"{annotations} line {line_number} names {path}, which does not exist. Re-extract {_TINY_URL}.")
        val_paths.append(path)
        val_labels.append(class_of[fields[1]])
    return wnids, train_paths, train_labels, val_paths, val_labels


def _listing_fingerprint(root: Path, paths: list[Path], size: int) -> str:
    digest = hashlib.sha256(f"{root.resolve()}|{size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _cached_arrays(cache_file: Path, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as archive:
                return {key: torch.from_numpy(archive[key]) for key in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            pass  # damaged cache: rebuild it
    arrays = build()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.partial.npz")
        np.savez(partial, **{key: value.numpy() for key, value in arrays.items()})
        os.replace(partial, cache_file)  # readers never see a half-written cache
    except OSError as e:
        warnings.warn(f"Could not cache decoded images in {cache_file} ({e}); they will be decoded again next time. Set RESNETS_CACHE to a writable folder.", stacklevel=2)
    return arrays


def _load_tinyimagenet(request: _Request) -> DatasetBundle:
    root = _tiny_root(request.data_dir)
    size = request.image_size or 64
    wnids, train_paths, train_labels, val_paths, val_labels = _tiny_listing(root)
    num_classes = _fixed_num_classes(request, len(wnids))
    fingerprint = _listing_fingerprint(root, [root / "wnids.txt"] + train_paths + val_paths, size)

    def decode_all() -> dict[str, torch.Tensor]:
        return {
            "train_images": decode_images(train_paths, size),
            "train_labels": torch.tensor(train_labels, dtype=torch.int64),
            "val_images": decode_images(val_paths, size),
            "val_labels": torch.tensor(val_labels, dtype=torch.int64),
        }

    arrays = _cached_arrays(cache_dir() / f"tinyimagenet-{fingerprint}-{size}px.npz", decode_all)
    train, val = _tail_split(arrays["train_images"], arrays["train_labels"], request.val_size, str(root / "train"))
    words = {}
    if (root / "words.txt").is_file():
        for line in _read_text_lines(root / "words.txt", "wnid<TAB>names lines"):
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.strip()
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=size, mean=_published(request)[0], std=_published(request)[1],
        train=train, val=val, test=TensorSplit(arrays["val_images"], arrays["val_labels"]),
        class_names=[words.get(wnid) or wnid for wnid in wnids],
    )


# ----------------------------------------------------------------------------- ImageNet folders


def _class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _folder_samples(folder: Path, class_names: list[str], labels: list[int]) -> list[tuple[str, int]]:
    samples = []
    for name, label in zip(class_names, labels):
        class_folder = os.path.join(folder, name)
        # Plain strings: ImageNet has 1.3 million files and Path objects are slow to make in bulk.
        with os.scandir(class_folder) as entries:
            files = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        samples.extend((os.path.join(class_folder, file), label) for file in files)
    return samples


def _load_imagenet(request: _Request) -> DatasetBundle:
    root = request.data_dir
    keep_val = _official_val_only(request)
    guide = "the layout of torchvision.datasets.ImageFolder, with the validation images moved into class folders (e.g. with the valprep.sh script)"
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"ImageNet not found: expected the folder {root / split} holding one folder per WordNet id (n01440764, …) of JPEGs — {guide}.")
    train_wnids = _class_folders(root / "train")
    val_wnids = _class_folders(root / "val")
    if not val_wnids and _list_images(root / "val"):
        raise UserError(f"{root / 'val'} holds the images directly, as the publisher's tar extracts; sort them into one folder per WordNet id — {guide}.")
    if not train_wnids:
        raise UserError(f"{root / 'train'} has no class folders: expected one folder per WordNet id (n01440764, …) of JPEGs — {guide}.")
    if train_wnids != val_wnids:
        only_train = sorted(set(train_wnids) - set(val_wnids))
        only_val = sorted(set(val_wnids) - set(train_wnids))
        raise UserError(
            f"The class folders of {root / 'train'} and {root / 'val'} differ (only in train: {', '.join(only_train[:5]) or 'none'}"
            f"{' …' if len(only_train) > 5 else ''}; only in val: {', '.join(only_val[:5]) or 'none'}{' …' if len(only_val) > 5 else ''}). "
            f"Both must hold the same WordNet id folders, because a class's index is its position in their sorted list."
        )
    num_classes = _fixed_num_classes(request, len(train_wnids))
    labels = list(range(num_classes))
    train = _folder_samples(root / "train", train_wnids, labels)
    if not train:
        raise UserError(f"No images (.JPEG, .jpg, .png) found in the class folders of {root / 'train'}.")
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=request.image_size or 224,
        mean=_published(request)[0], std=_published(request)[1], train=FolderSplit(train),
        val=FolderSplit(_folder_samples(root / "val", val_wnids, labels)) if keep_val else None,
        test=None, class_names=train_wnids,
    )


def _imagenet_v2_root(data_dir: Path) -> Path:
    def is_numbered(folder: Path) -> bool:
        return any(name.isdigit() for name in _class_folders(folder))

    if is_numbered(data_dir):
        return data_dir
    candidates = [data_dir / name for name in _class_folders(data_dir) if is_numbered(data_dir / name)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UserError(
            f"{data_dir} holds several ImageNet-V2 variants ({', '.join(c.name for c in candidates)}); point --data-dir at one of them."
        )
    raise UserError(
        f"ImageNet-V2 not found: expected class folders named 0 … 999 in {data_dir} or in one folder below it "
        f"(e.g. {data_dir / 'imagenetv2-matched-frequency-format-val' / '0'}). Download and extract an ImageNet-V2 "
        f"tarball (e.g. imagenetv2-matched-frequency.tar.gz from https://github.com/modestyachts/ImageNetV2)."
    )


def _load_imagenet_v2(request: _Request) -> DatasetBundle:
    if request.val_size:
        raise UserError("--val-size does not apply to 'imagenet-v2': it is a test set only. Leave --val-size out.")
    root = _imagenet_v2_root(request.data_dir)
    folders = _class_folders(root)
    bad = [name for name in folders if not name.isdigit()]
    if bad:
        raise UserError(
            f"{root} holds folders that are not class numbers: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}. "
            f"ImageNet-V2 class folders are named by the ImageNet class index 0 … 999; remove the others."
        )
    # Folder "10" is class 10: the names are indices, so they are read as numbers, not sorted as text.
    indices = [int(name) for name in folders]
    num_classes = request.num_classes or 1000
    if max(indices) >= num_classes:
        raise UserError(f"{root / str(max(indices))} is class {max(indices)}, but there are only {num_classes} classes (--num-classes).")
    order = sorted(range(len(folders)), key=lambda k: indices[k])
    samples = _folder_samples(root, [folders[k] for k in order], [indices[k] for k in order])
    if not samples:
        raise UserError(f"No images (.jpeg, .jpg, .png) found in the numbered class folders of {root}.")
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=request.image_size or 224,
        mean=_published(request)[0], std=_published(request)[1], train=None, val=None, test=FolderSplit(samples),
    )


# ----------------------------------------------------------------------------- npy, digits, synthetic


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
        name=request.name, num_classes=num_classes, image_size=size, mean=_published(request)[0], std=_published(request)[1],
        train=split(n_train), val=split(n_val), test=split(n_test),
    )


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
    DatasetSpec("synthetic", _load_synthetic, "uniform noise images (benchmarks and tests)",
                "nothing (generated)", None, 32, (NOISE_MEAN, NOISE_STD), _TAIL, from_files=False),
)}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    return DATASETS[name]
