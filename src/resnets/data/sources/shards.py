"""Prepared shards: a JPEG dataset (``imagenet`` or ``folder``) written once by ``resnets prepare``
into litdata chunks, read by every rank from local disk or an object store (s3://, gs://, …).

Why litdata (measured 2026-12-06 on this project's venv, torch 2.14 CPU, see README "Feeding a GPU
from ImageNet"): its ``StreamingDataset[i]`` reads any sample by its global index (37 µs per random
read of a 3 KB sample from local chunks with ``batch_decode=False``), so our own sampler keeps
choosing the indices and batch i stays f(seed, i), resume included; it reads the same chunks from
local disk or s3/gs/azure URLs (downloaded into a local cache). It adds 12 packages, 57 MiB installed.
MosaicML ``streaming`` (MDS) also reads by index and from object stores, but pulls 62 packages
(108 MiB of wheels, transformers and every cloud SDK among them) and pins numpy back to 2.1;
WebDataset's tar shards are read in order only, so batch i would not be a function of the index.

Layout of a prepared folder S::

    S/manifest.json           dataset, preparation options, source fingerprint, class names, and per split
                              the sample count, the sha256 of its index.json and the size of each chunk
    S/<split>/index.json      litdata's index of the chunks
    S/<split>/chunk-*.bin     litdata chunks of {"jpeg": bytes, "label": int}
    S/<split>/labels.npy      int64 labels, so samplers and class counts need no chunk reads

Each sample's JPEG has its longest side at most ``max_side`` (kept byte for byte when the source
already is an RGB JPEG that small, re-encoded at ``quality`` otherwise).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from resnets.errors import UserError

from .common import cache_dir

MANIFEST = "manifest.json"
SHARD_FORMAT = "resnets-shards"
SHARD_FORMAT_VERSION = 1
PREPARABLE = ("imagenet", "folder")


def is_remote(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def _join(location: str, *parts: str) -> str:
    return "/".join([str(location).rstrip("/"), *parts]) if is_remote(location) else str(Path(location, *parts))


def _local_copy(location: str, relative: str) -> Path:
    """The file ``relative`` of the shard set at ``location``: itself if local, else downloaded into the cache."""
    if not is_remote(location):
        return Path(location, relative)
    from litdata.streaming.downloader import get_downloader

    key = hashlib.sha256(str(location).rstrip("/").encode()).hexdigest()[:16]
    local = cache_dir() / "shards" / key / relative
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        downloader = get_downloader(str(location).rstrip("/"), str(local.parent), [])
        downloader.download_file(_join(location, relative), str(local))
    except Exception as e:  # every object store client raises its own kinds
        raise UserError(f"Could not download {_join(location, relative)} ({e}). Check the URL and the store's "
                        f"credentials (e.g. AWS_* or GOOGLE_APPLICATION_CREDENTIALS).") from None
    return local


def read_manifest(location: str | os.PathLike) -> dict | None:
    """The manifest of the shard set at ``location``, or None when it holds no shards."""
    location = str(location)
    if not is_remote(location) and not Path(location, MANIFEST).is_file():
        return None
    path = _local_copy(location, MANIFEST)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"Could not read the shard manifest {_join(location, MANIFEST)} ({e}). It is damaged or "
                        f"truncated: prepare the shards again with `resnets prepare`.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARD_FORMAT:
        raise UserError(f"{_join(location, MANIFEST)} is not a resnets shard manifest (its \"format\" should be "
                        f"{SHARD_FORMAT!r}). Point --data-dir at a folder written by `resnets prepare`.")
    if manifest.get("version") != SHARD_FORMAT_VERSION:
        raise UserError(f"{_join(location, MANIFEST)} has shard format version {manifest.get('version')!r}; this "
                        f"resnets reads version {SHARD_FORMAT_VERSION}. Prepare the shards again with this version.")
    return manifest


class ShardSplit:
    """One split of a prepared shard set, read by global sample index (``EncodedSplit``).

    ``indices`` maps this split's positions to stored samples (a held-out tail is a view of the
    stored train split). The litdata reader is opened lazily in each process and not pickled,
    so DataLoader workers and torchrun ranks each open their own.
    """

    def __init__(self, location: str, split: str, stored_labels: np.ndarray, chunks: list[tuple[str, int]],
                 indices: np.ndarray | None = None) -> None:
        self.location, self.split = str(location), split
        self.stored_labels = stored_labels
        self.chunk_names = [name for name, _ in chunks]
        self.chunk_ends = np.cumsum([count for _, count in chunks], dtype=np.int64)
        self.indices = np.arange(len(stored_labels), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        self.labels = stored_labels[self.indices]
        self._reader = None

    def subset(self, positions) -> "ShardSplit":
        view = ShardSplit.__new__(ShardSplit)
        view.__dict__.update(self.__getstate__())
        view.indices = self.indices[np.asarray(positions, dtype=np.int64)]
        view.labels = self.stored_labels[view.indices]
        return view

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    def __len__(self) -> int:
        return len(self.indices)

    def _chunk_of(self, stored: int) -> str:
        return _join(self.location, self.split, self.chunk_names[int(np.searchsorted(self.chunk_ends, stored, "right"))])

    def describe(self, index: int) -> str:
        stored = int(self.indices[index])
        return f"sample {stored} of {self._chunk_of(stored)}"

    def _open(self):
        if self._reader is None:
            from litdata import StreamingDataset

            remote = is_remote(self.location)
            cache = None
            if remote:
                key = hashlib.sha256(self.location.rstrip("/").encode()).hexdigest()[:16]
                cache = str(cache_dir() / "shards" / key / self.split)
            # batch_decode=False: decode only the sample asked for (the default decodes a window of
            # neighbours, 25× slower for random access).
            self._reader = StreamingDataset(_join(self.location, self.split), cache_dir=cache, batch_decode=False)
        return self._reader

    def read_encoded(self, index: int) -> bytes:
        stored = int(self.indices[index])
        try:
            item = self._open()[stored]
            data, label = bytes(item["jpeg"]), int(item["label"])
        except Exception as e:  # litdata raises whatever its parsing of a damaged chunk hits
            raise UserError(f"Could not read sample {stored} from the shard {self._chunk_of(stored)} ({type(e).__name__}: "
                            f"{e}). The shard is damaged: restore it or prepare the shards again with `resnets prepare`.") from None
        if label != self.stored_labels[stored]:
            raise UserError(f"Sample {stored} of the shard {self._chunk_of(stored)} has label {label}, but "
                            f"{_join(self.location, self.split, 'labels.npy')} says {self.stored_labels[stored]}. The shard "
                            f"or the labels file is damaged or from another preparation: prepare the shards again.")
        return data


def open_split(location: str, manifest: dict, split: str) -> ShardSplit | None:
    """The stored split ``split``, checked against the manifest (no chunk is read)."""
    entry = manifest.get("splits", {}).get(split)
    if entry is None:
        return None
    index_name = _join(location, split, "index.json")
    index_path = _local_copy(location, f"{split}/index.json")
    try:
        raw = index_path.read_bytes()
        index = json.loads(raw)
        chunks = [(c["filename"], int(c["chunk_size"])) for c in index["chunks"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"Could not read the shard index {index_name} ({type(e).__name__}: {e}). It is missing, "
                        f"damaged or truncated: restore it or prepare the shards again with `resnets prepare`.") from None
    if hashlib.sha256(raw).hexdigest() != entry.get("index_sha256"):
        raise UserError(f"The shard index {index_name} does not belong to {_join(location, MANIFEST)}: it is damaged "
                        f"or comes from another preparation. Keep each shard folder as `resnets prepare` wrote it, "
                        f"or prepare the shards again.")
    if not is_remote(location):  # remote chunks are checked by their download
        for name, size in entry["chunk_bytes"].items():
            path = Path(location, split, name)
            actual = path.stat().st_size if path.is_file() else None
            if actual != size:
                raise UserError(f"The shard {path} is {'missing' if actual is None else f'{actual} bytes'}, but "
                                f"{_join(location, MANIFEST)} says it has {size} bytes: it is truncated or damaged. "
                                f"Restore it or prepare the shards again with `resnets prepare`.")
    labels_name = _join(location, split, "labels.npy")
    try:
        labels = np.load(_local_copy(location, f"{split}/labels.npy"), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"Could not read the shard labels {labels_name} ({e}). Restore it or prepare the shards "
                        f"again with `resnets prepare`.") from None
    total = sum(count for _, count in chunks)
    if labels.dtype != np.int64 or labels.shape != (entry["count"],) or total != entry["count"]:
        raise UserError(f"{labels_name} ({labels.shape[0] if labels.ndim == 1 else labels.shape} labels) and "
                        f"{index_name} ({total} samples) disagree with the {entry['count']} samples of {split} in "
                        f"{_join(location, MANIFEST)}: the shards are damaged. Prepare them again.")
    return ShardSplit(location, split, labels, chunks)


# ----------------------------------------------------------------------------- reading


def load_shards(request, manifest: dict, location: str):
    """The bundle of dataset ``request.name`` from the shard set at ``location`` (``manifest`` its manifest)."""
    from .common import DatasetBundle, VAL_FRACTION, _fixed_num_classes, _official_val_only
    from .folders import class_balanced_positions

    if manifest.get("dataset") != request.name:
        raise UserError(f"{_join(location, MANIFEST)} says these shards hold the dataset {manifest.get('dataset')!r}, "
                        f"not {request.name!r}. Pass --data {manifest.get('dataset')}, or point --data-dir at shards "
                        f"prepared with --data {request.name}.")
    num_classes = _fixed_num_classes(request, int(manifest["num_classes"]))
    splits = {s: open_split(location, manifest, s) for s in ("train", "val", "test")}
    if splits["train"] is None and request.name in PREPARABLE:
        raise UserError(f"{_join(location, MANIFEST)} lists no train split; prepare the shards again.")
    train, val, test = splits["train"], splits["val"], splits["test"]
    if request.name == "imagenet":
        val = val if _official_val_only(request) else None
    elif val is not None:  # folder with its own val/
        if request.val_size:
            raise UserError(f"--val-size {request.val_size} does not apply: the shards at {location} hold the folder's "
                            f"own val/ split. Leave --val-size out (or 0 to skip validation).")
        val = val if request.val_size is None else None
    else:  # folder without val/: the same class-balanced tail as the folders give
        order = class_balanced_positions(train.labels, num_classes)
        n_val = round(len(order) * VAL_FRACTION) if request.val_size is None else request.val_size
        if n_val >= len(order):
            raise UserError(f"--val-size {n_val} leaves no training images: the shards at {location} hold "
                            f"{len(order)} training images. Choose a smaller --val-size (0 trains on all of them).")
        train, val = train.subset(order[: len(order) - n_val]), (train.subset(order[len(order) - n_val:]) if n_val else None)
    return DatasetBundle(
        name=request.name, num_classes=num_classes, image_size=request.image_size or 224,
        mean=request.stats[0], std=request.stats[1], train=train, val=val, test=test,
        class_names=manifest.get("class_names"),
    )
