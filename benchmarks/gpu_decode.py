"""JPEG decoding on the GPU (nvjpeg) with random-resized crop and flip there, against the
DataLoader-worker pipeline of `resnets train`, on a folder of synthetic JPEGs.

    python benchmarks/gpu_decode.py --device cuda                  # makes its own JPEG folder
    python benchmarks/gpu_decode.py --device cuda --data-dir ~/data/imagenet --batch-size 256

`decode_crop_flip` is the GPU input path as a standalone function: raw JPEG bytes (read on the
CPU) → `torchvision.io.decode_jpeg(list_of_bytes, device="cuda")` → per image a
RandomResizedCrop (torchvision's parameter rule, scale 0.08-1, ratio 3/4-4/3) resized with
antialiased bilinear interpolation → a random horizontal flip → the ImageNet normalization,
as one float32 N×3×S×S batch (channels_last if asked). Its randomness comes from the
`generator` the caller passes, so batch i stays a pure function of (seed, i) as
src/resnets/data/pipelines.py requires of every data path. It also runs with device="cpu"
(libjpeg-turbo), which is how the CPU smoke test exercises it. It is not wired into
`resnets train` yet: this file measures whether it is worth doing.

`make_jpeg_folder` writes synthetic photographs-like JPEGs (smooth colour fields plus a little
noise, at ImageNet's usual sizes, ~30-60 KB each) in ImageNet's `train/<wnid>/*.JPEG` layout,
with a `val/` of one image per class so that `load_dataset("imagenet", ...)` accepts it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
# (width, height) of typical ImageNet photographs.
PHOTO_SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (640, 480), (333, 500))
_DEPRECATION = ".*image decoding and encoding capabilities of TorchVision are deprecated"


# ---------------------------------------------------------------- synthetic data

def make_jpeg_folder(root: str | os.PathLike, n_images: int, n_classes: int = 8, seed: int = 0,
                     quality: int = 90) -> list[Path]:
    """Write n_images JPEGs as root/train/<wnid>/<wnid>_<k>.JPEG (+ one per class in root/val).

    Returns the training files. Smooth random colour fields with mild noise: about the size
    and decoding cost of real photographs, unlike uniform noise, which is ~4x larger.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = [f"n{10_000_000 + 1_111 * k:08d}" for k in range(n_classes)]

    def photo() -> Image.Image:
        width, height = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
        grid = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noisy = field + rng.normal(0, 6, field.shape).astype(np.int16)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

    files = []
    for k in range(n_images):
        wnid = wnids[k % n_classes]
        path = root / "train" / wnid / f"{wnid}_{k}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo().save(path, "JPEG", quality=quality)
        files.append(path)
    for wnid in wnids:
        path = root / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo().save(path, "JPEG", quality=quality)
    return files


def list_train_jpegs(root: str | os.PathLike) -> list[Path]:
    return sorted(p for p in (Path(root) / "train").glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg"))


def read_encoded(paths: Sequence[str | os.PathLike]) -> list[torch.Tensor]:
    """The files' bytes as 1-D uint8 CPU tensors, which is what decode_jpeg takes."""
    return [torch.from_numpy(np.fromfile(path, dtype=np.uint8)) for path in paths]


# ---------------------------------------------------------------- the GPU path

def batch_generator(seed: int, iteration: int) -> torch.Generator:
    """A CPU generator for batch `iteration` of a run seeded `seed` (independent streams)."""
    words = np.random.SeedSequence([seed % 2**64, 3, iteration]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(words[0]) | (int(words[1]) & 0x7FFF_FFFF) << 32)


def rrc_params(height: int, width: int, generator: torch.Generator, scale: tuple[float, float] = RRC_SCALE,
               ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params (top, left, height, width), with our generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    # Fallback: the whole image cropped to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode(encoded: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """decode_jpeg on a whole list: nvjpeg's batched decoder on CUDA, libjpeg-turbo on the CPU."""
    import torchvision.io

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION)
        return torchvision.io.decode_jpeg(encoded, mode=torchvision.io.ImageReadMode.RGB, device=device)


def crop_flip_normalize(images: list[torch.Tensor], *, image_size: int, generator: torch.Generator,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        channels_last: bool = True, flip: bool = True) -> torch.Tensor:
    """Decoded uint8 3×H×W images (any sizes, one device) → normalized float32 N×3×S×S batch."""
    device = images[0].device
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.float32, device=device)
    for i, image in enumerate(images):
        top, left, h, w = rrc_params(image.shape[-2], image.shape[-1], generator)
        crop = image[None, :, top:top + h, left:left + w].float()
        out[i] = F.interpolate(crop, size=(image_size, image_size), mode="bilinear", align_corners=False,
                               antialias=True)[0]
    if flip:
        flips = torch.randint(0, 2, (len(images),), generator=generator).bool().to(device, non_blocking=True)
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    scale = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32).view(1, 3, 1, 1).to(device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, 3, 1, 1).to(device)
    out = out.clamp_(0, 255).mul_(scale).add_(shift)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def decode_crop_flip(encoded: list[torch.Tensor], *, image_size: int, generator: torch.Generator,
                     device: torch.device | str = "cuda", mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, channels_last: bool = True) -> torch.Tensor:
    """JPEG bytes → decoded on `device` → random-resized crop + flip + normalization there."""
    return crop_flip_normalize(decode(encoded, device), image_size=image_size, generator=generator, mean=mean,
                               std=std, channels_last=channels_last)


# ---------------------------------------------------------------- measurements

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_path_throughput(paths: Sequence[Path], *, batch_size: int, image_size: int, device: str,
                        batches: int, warmup: int = 2, seed: int = 0) -> dict:
    """img/s of decode only, decode + crop + flip + normalize (bytes already in memory), and the
    same with the files read in the loop (page cache warm), each over `batches` batches."""
    dev = torch.device(device)
    paths = list(paths)
    encoded = read_encoded(paths)

    def batch_of(i: int) -> list[int]:
        return [(i * batch_size + k) % len(paths) for k in range(batch_size)]

    def timed(step) -> float:
        for i in range(warmup):
            step(i)
        _sync(dev)
        start = time.perf_counter()
        for i in range(warmup, warmup + batches):
            step(i)
        _sync(dev)
        return batch_size * batches / (time.perf_counter() - start)

    result = {
        "decode_only": timed(lambda i: decode([encoded[k] for k in batch_of(i)], dev)),
        "decode_crop_flip": timed(lambda i: decode_crop_flip(
            [encoded[k] for k in batch_of(i)], image_size=image_size, generator=batch_generator(seed, i), device=dev)),
        "read_decode_crop_flip": timed(lambda i: decode_crop_flip(
            read_encoded([paths[k] for k in batch_of(i)]), image_size=image_size,
            generator=batch_generator(seed, i), device=dev)),
        "mean_file_kb": float(np.mean([t.numel() for t in encoded]) / 1024),
    }
    # Agreement with the CPU decoder on a few files (nvjpeg and libjpeg-turbo round differently).
    some = encoded[:8]
    ours = [t.cpu().to(torch.int16) for t in decode(some, dev)]
    reference = [t.to(torch.int16) for t in decode(some, "cpu")]
    diffs = [(a - b).abs() for a, b in zip(ours, reference)]
    result["vs_cpu_decode_max_abs"] = int(max(d.max().item() for d in diffs))
    result["vs_cpu_decode_mean_abs"] = float(np.mean([d.float().mean().item() for d in diffs]))
    batch = decode_crop_flip(some, image_size=image_size, generator=batch_generator(seed, 0), device=dev)
    again = decode_crop_flip(some, image_size=image_size, generator=batch_generator(seed, 0), device=dev)
    result["batch_shape"] = list(batch.shape)
    result["finite"] = bool(torch.isfinite(batch).all().item())
    result["same_seed_same_batch"] = bool(torch.equal(batch, again))
    return result


def loader_throughput(data_dir: str | os.PathLike, *, batch_size: int, image_size: int, device: str,
                      num_workers: int, batches: int, warmup: int = 2) -> float:
    """img/s of `resnets train`'s own JPEG-folder input (DataLoader workers decode with PIL and
    apply RandomResizedCrop + flip; batches are pinned, copied and normalized on `device`)."""
    from resnets.data import load_dataset, train_batches

    bundle = load_dataset("imagenet", data_dir, image_size=image_size)
    dev = torch.device(device)
    stream = train_batches(bundle.train, batch_size=batch_size, start_iteration=0, seed=0, device=dev,
                           mean=bundle.mean, std=bundle.std, image_size=image_size, augment="crop-flip",
                           channels_last=True, num_workers=num_workers)
    for _ in range(warmup):  # includes starting the workers
        next(stream)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(stream)
    _sync(dev)
    seconds = time.perf_counter() - start
    del stream
    return batch_size * batches / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", help="an ImageNet-layout folder (default: make synthetic JPEGs in a temp dir)")
    parser.add_argument("--images", type=int, default=512, help="synthetic JPEGs to make (default: 512)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            make_jpeg_folder(root, args.images)
        paths = list_train_jpegs(root)
        result = {"gpu_path": gpu_path_throughput(paths, batch_size=args.batch_size, image_size=args.image_size,
                                                  device=args.device, batches=args.batches)}
        result["loader"] = loader_throughput(root, batch_size=args.batch_size, image_size=args.image_size,
                                             device=args.device, num_workers=args.workers, batches=args.batches)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
