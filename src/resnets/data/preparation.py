"""Writing a JPEG dataset once into prepared shards (``resnets prepare``); the format, and why
litdata, are described in ``sources/shards.py``, which reads them back."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from resnets.errors import UserError

from .sources import PREPARABLE, FolderSplit, dataset_spec, load_dataset
from .sources.shards import MANIFEST, SHARD_FORMAT, SHARD_FORMAT_VERSION, read_manifest

_CHUNK_BYTES = 64 << 20  # a few hundred chunks for ImageNet at 320 px


def _encode_for_shard(path: str, max_side: int, quality: int) -> bytes:
    from PIL import Image

    with open(path, "rb") as f:
        raw = f.read()
    with Image.open(io.BytesIO(raw)) as image:
        image.load()  # decodes: a damaged or truncated file fails here, not in training
        if image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= max_side:
            return raw  # already small enough: no second JPEG loss
        rgb = image.convert("RGB")
    width, height = rgb.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        # Pillow's resize filters the whole support (antialiased), as torchvision's Resize does.
        rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _encode_task(task: tuple[str, int, int]) -> tuple[bytes | None, str | None]:
    path, max_side, quality = task
    try:
        return _encode_for_shard(path, max_side, quality), None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, …
        return None, f"{type(e).__name__}: {e}"


def _source_fingerprint(name: str, splits: dict[str, FolderSplit]) -> str:
    digest = hashlib.sha256(name.encode())
    for split, samples in splits.items():
        for path, label in samples.samples:
            stat = os.stat(path)
            digest.update(f"{split}|{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _check_out(out: Path) -> None:
    if (out / MANIFEST).exists() or (out.is_dir() and any((out / s / "index.json").exists() for s in ("train", "val", "test"))):
        raise UserError(f"--out {out} already holds shards ({out / MANIFEST}). Choose another --out, or delete that "
                        f"folder first if you mean to prepare it again.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty folder. Choose a new or empty folder for the "
                        f"shards, so that nothing in it is overwritten.")


def prepare_shards(name: str, data_dir: str | os.PathLike, out: str | os.PathLike, *, max_side: int = 320,
                   quality: int = 90, on_bad_image: str = "skip", workers: int | None = None,
                   log=print) -> dict:
    """Write dataset ``name`` from ``data_dir`` into shards at ``out`` once; returns the manifest.

    The shards are written into a temporary folder beside ``out`` and moved into place only when
    complete, so a stop (or a crash) leaves ``out`` as it was.
    """
    from litdata.streaming.writer import BinaryWriter

    if name not in PREPARABLE:
        raise UserError(f"--data {name!r} cannot be prepared into shards: choose one of {', '.join(PREPARABLE)} "
                        f"(the datasets read as JPEG files).")
    if max_side < 16:
        raise UserError(f"--max-side must be at least 16 pixels, got {max_side}.")
    if not 1 <= quality <= 95:
        raise UserError(f"--quality must be a JPEG quality from 1 to 95 (Pillow's useful range), got {quality}.")
    if on_bad_image not in ("skip", "stop"):
        raise UserError(f"--on-bad-image must be skip or stop, got {on_bad_image!r}.")
    data_dir, out = Path(data_dir).expanduser(), Path(out).expanduser()
    if read_manifest(data_dir) is not None:
        raise UserError(f"--data-dir {data_dir} holds prepared shards already; prepare from the original image folders.")
    _check_out(out)
    # The folder's own val/ is kept; without one, the whole of train/ is stored and the held-out tail
    # is cut when the shards are read (--val-size then works as it does on the folders).
    own_val = name == "imagenet" or ((data_dir / "train").is_dir() and (data_dir / "val").is_dir())
    bundle = load_dataset(name, data_dir, val_size=None if own_val else 0)
    splits = {s: getattr(bundle, s) for s in dataset_spec(name).splits if getattr(bundle, s) is not None}
    manifest = {
        "format": SHARD_FORMAT, "version": SHARD_FORMAT_VERSION, "writer": "litdata",
        "dataset": name, "source": {"data_dir": str(data_dir.resolve()), "fingerprint": _source_fingerprint(name, splits)},
        "options": {"max_side": max_side, "quality": quality, "on_bad_image": on_bad_image},
        "num_classes": bundle.num_classes, "class_names": bundle.class_names, "val_from_train_tail": not own_val,
        "splits": {}, "skipped": [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    pool = None
    try:
        workers = workers or max(1, len(os.sched_getaffinity(0)))
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: the workers only run Pillow on file paths; an executor (not a Pool) fails loudly
            # instead of waiting forever when a worker dies.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        for split, samples in splits.items():
            (partial / split).mkdir()
            writer = BinaryWriter(str(partial / split), chunk_bytes=_CHUNK_BYTES)
            tasks = [(os.fsdecode(path), max_side, quality) for path in samples.paths]
            results = pool.map(_encode_task, tasks, chunksize=16) if pool else map(_encode_task, tasks)
            labels = []
            for (path, _, _), label, (data, error) in zip(tasks, samples.labels, results):
                if data is None:
                    if on_bad_image == "stop":
                        raise UserError(f"Could not decode image {path} ({error}); nothing was written to --out {out}. "
                                        f"Restore or delete the file, or pass --on-bad-image skip to leave it out.")
                    print(f"resnets prepare: warning: skipped {path}, which cannot be decoded ({error})", file=sys.stderr)
                    manifest["skipped"].append(path)
                    continue
                writer.add_item(len(labels), {"jpeg": data, "label": int(label)})
                labels.append(int(label))
            if not labels:
                raise UserError(f"No image of the {split} split of {data_dir} could be decoded; nothing was written.")
            writer.done()
            writer.merge()
            np.save(partial / split / "labels.npy", np.array(labels, dtype=np.int64))
            index_raw = (partial / split / "index.json").read_bytes()
            chunk_names = [c["filename"] for c in json.loads(index_raw)["chunks"]]
            manifest["splits"][split] = {
                "count": len(labels), "index_sha256": hashlib.sha256(index_raw).hexdigest(),
                "chunk_bytes": {c: (partial / split / c).stat().st_size for c in chunk_names},
            }
            log(f"{split}: {len(labels)} images in {len(chunk_names)} chunks")
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return manifest


