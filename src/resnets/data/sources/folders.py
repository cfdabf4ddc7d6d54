"""Image folders: TinyImageNet (decoded once into a cache), ImageNet 2012, ImageNet-V2 and your
own photos in the ImageFolder layout (``folder``), the last three read per sample."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from resnets.errors import UserError

from .common import IMAGE_EXTENSIONS, VAL_FRACTION, DatasetBundle, FolderSplit, TensorSplit, _fixed_num_classes, _official_val_only, _Request, _tail_split, cache_dir
from .decode import decode_images

_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _read_text_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"Could not read {path} ({e}); it should be {what}. Re-extract {_TINY_URL}.") from None


def _list_images(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


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
        name=request.name, num_classes=num_classes, image_size=size, mean=request.stats[0], std=request.stats[1],
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
        mean=request.stats[0], std=request.stats[1], train=FolderSplit(train),
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
        mean=request.stats[0], std=request.stats[1], train=None, val=None, test=FolderSplit(samples),
    )



# ----------------------------------------------------------------------------- your own image folders

_FOLDER_GUIDE = (
    "the layout of torchvision.datasets.ImageFolder: one folder per class of JPEG/PNG images, either as "
    "train/<class>/ (with val/<class>/ and test/<class>/ optional) or as <class>/ folders directly in --data-dir"
)


def _folder_split_samples(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    samples = _folder_samples(folder, classes, list(range(len(classes))))
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    empty = [classes[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(
            f"The class folder {folder / empty[0]} holds no images (.jpeg, .jpg, .png)"
            + (f", nor do {len(empty) - 1} more in {folder}" if len(empty) > 1 else "")
            + ". Put at least one image in every class folder, or remove the empty ones."
        )
    return samples


def class_balanced_positions(labels, num_classes: int) -> np.ndarray:
    """Positions of ``labels`` reordered as: first sample of every class, then every second, …
    (the held-out tail then has every class). Idempotent, so prepared shards of an ordered
    training split give the same tail as the folders."""
    labels = np.asarray(labels, dtype=np.int64)
    per_class = [np.flatnonzero(labels == label) for label in range(num_classes)]
    ranks = np.empty(len(labels), dtype=np.int64)
    for positions in per_class:
        ranks[positions] = np.arange(len(positions))
    return np.lexsort((labels, ranks))  # by rank, then by class


def _class_balanced_order(samples: list[tuple[str, int]], num_classes: int) -> list[tuple[str, int]]:
    return [samples[k] for k in class_balanced_positions([label for _, label in samples], num_classes)]


def _load_folder(request: _Request) -> DatasetBundle:
    root = request.data_dir
    has_train = (root / "train").is_dir()
    train_root = root / "train" if has_train else root
    classes = _class_folders(train_root)
    if not classes:
        loose = _list_images(train_root)
        raise UserError(
            f"{train_root} has no class folders"
            + (f" (it holds {len(loose)} images directly, which carry no class)" if loose else " (it is empty)")
            + f". --data folder expects {_FOLDER_GUIDE}."
        )
    if not has_train and {"val", "test"} & set(classes):
        raise UserError(
            f"{root} has a {'val' if 'val' in classes else 'test'}/ folder but no train/ folder: put the training "
            f"classes in {root / 'train'}, or, for one folder split by --val-size, leave out val/ and test/."
        )
    num_classes = _fixed_num_classes(request, len(classes))
    train = _folder_split_samples(train_root, classes)
    others = {}
    for split in ("val", "test"):
        folder = root / split
        if has_train and folder.is_dir():
            split_classes = _class_folders(folder)
            unknown = sorted(set(split_classes) - set(classes))
            if unknown:
                raise UserError(
                    f"{folder} has class folders that {train_root} lacks: {', '.join(unknown[:5])}"
                    f"{' …' if len(unknown) > 5 else ''}. A class's index is its position in the sorted training "
                    f"class folders, so every {split} class must also be a training class."
                )
            labels = [classes.index(name) for name in split_classes]
            samples = _folder_samples(folder, split_classes, labels)
            if not samples:
                raise UserError(f"{folder} holds no images (.jpeg, .jpg, .png) in its class folders; remove it or fill it.")
            others[split] = FolderSplit(samples)
    if "val" in others:
        if request.val_size:
            raise UserError(
                f"--val-size {request.val_size} does not apply: {root / 'val'} is the validation set. Leave "
                f"--val-size out (or 0 to skip validation), or remove val/ to hold out part of train/ instead."
            )
        val = others["val"] if request.val_size is None else None
    else:
        ordered = _class_balanced_order(train, num_classes)
        n_val = round(len(ordered) * VAL_FRACTION) if request.val_size is None else request.val_size
        if n_val >= len(ordered):
            raise UserError(
                f"--val-size {n_val} leaves no training images: {train_root} has {len(ordered)} images. "
                f"Choose a smaller --val-size (0 trains on all of them)."
            )
        train, val = ordered[: len(ordered) - n_val], (FolderSplit(ordered[len(ordered) - n_val :]) if n_val else None)
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=request.image_size or 224,
        mean=request.stats[0], std=request.stats[1], train=FolderSplit(train), val=val, test=others.get("test"),
        class_names=classes,
    )
