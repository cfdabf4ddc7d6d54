"""Decoding image files to uint8 RGB tensors (one file, or many at once into a fixed size)."""
from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from resnets.errors import UserError

def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a uint8 3×H×W RGB tensor; UserError names the file if it cannot."""
    return _decode_rgb(path, str(path))


def decode_encoded_rgb(data: bytes, name: str) -> torch.Tensor:
    """Decode encoded image bytes to a uint8 3×H×W RGB tensor; UserError names ``name`` if it cannot."""
    return _decode_rgb(io.BytesIO(data), name)


def _decode_rgb(source, name: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            array = np.array(image.convert("RGB"))  # grey, CMYK and palette files become RGB too
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(
            f"Could not decode image {name} ({e}). The file is damaged or not an image: restore it from the "
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

