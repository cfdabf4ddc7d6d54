"""Crops of encoded photos, decoded only as finely as the crop needs.

A training crop (RandomResizedCrop) or an evaluation crop (resize + center crop) is a box
in the full-size image that ends up ``size``×``size`` pixels. The box is chosen on the
full-size geometry, read from the file's header without decoding; the JPEG is then decoded
with libjpeg-turbo's DCT-domain scaling at 1/2, 1/4 or 1/8 where the box, so reduced, still
has at least ``size`` pixels each way (the scaled IDCT averages the pixels it drops, so the
crop stays within 30 dB PSNR of one cut from the full-size decode; tests/test_crops.py), and
cropped and resized: a whole-pixel box with torch's antialiased bilinear uint8 kernel
(vectorized on the channels_last view of the decoded pixels), a box between pixels (after a
scaled decode) exactly with Pillow's ``resize(box=...)``. Output is contiguous uint8 3×H×W,
so a batch is a plain stack: normalization happens where the model runs.

Decoder, chosen by measurement (benchmarks/input_pipeline.py): simplejpeg, where installed,
decodes straight into a numpy array (libjpeg-turbo's TurboJPEG API, no Pillow image to unpack);
otherwise Pillow's own libjpeg-turbo through ``Image.draft``. PNGs, CMYK JPEGs and anything
simplejpeg refuses go through Pillow at full size.

The random crop is RandomResizedCrop's draw (torchvision's ``get_params`` algorithm, its
uniforms drawn in one call) on the full-size dimensions (scale 0.08–1, ratio 3/4–4/3) and the
flip a ``torch.rand`` draw against 0.5, as ``RandomHorizontalFlip`` does, all from torch's
global generator, which the pipeline seeds per sample.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from resnets.errors import UserError

try:  # optional: the `fast` extra
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

RRC_SCALE = (0.08, 1.0)  # torchvision.transforms.RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)
_REDUCTIONS = (8, 4, 2, 1)  # libjpeg-turbo's power-of-two DCT scalings


def _decode_error(name: str, e: Exception) -> UserError:
    return UserError(
        f"Could not decode image {name} ({e}). The file is damaged or not an image: restore it from the "
        f"dataset archive or delete it."
    )


class EncodedImage:
    """One encoded image and its full-size (width, height), read from the header only."""

    def __init__(self, data: bytes, name: str, use_simplejpeg: bool | None = None) -> None:
        self.data, self.name = data, name
        self.jpeg = False
        if use_simplejpeg is None:
            use_simplejpeg = simplejpeg is not None
        if use_simplejpeg and simplejpeg is not None and data[:2] == b"\xff\xd8":
            try:
                height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
                self.jpeg = colorspace in ("RGB", "YCbCr", "Gray")  # CMYK/YCCK: Pillow converts those
                self.size = (width, height)
            except ValueError:
                pass  # Pillow decides, and names the file if it is damaged
        if not self.jpeg:
            self._image = self._open()
            self.size = self._image.size

    def _open(self):
        from PIL import Image, UnidentifiedImageError

        try:
            return Image.open(io.BytesIO(self.data))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise _decode_error(self.name, e) from None

    def crop(self, box: tuple[float, float, float, float], size: tuple[int, int], flip: bool = False) -> torch.Tensor:
        """The ``box`` (left, top, right, bottom, full-size pixels) resized to ``size`` (w, h), as contiguous uint8 3×H×W."""
        from PIL import Image

        reduction = reduction_for(box, size)
        try:
            if self.jpeg:
                pixels, reduction = self._decode_simplejpeg(reduction)
            else:
                pixels, reduction = self._decode_pillow(reduction)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise _decode_error(self.name, e) from None
        scaled = tuple(v / reduction for v in box)
        if all(float(v).is_integer() for v in scaled):
            out = _crop_resize_torch(pixels, scaled, size)
        else:
            # A box between pixels (after a DCT-scaled decode): Pillow resamples it exactly, where
            # rounding it to whole pixels would shift the crop by up to half a decoded pixel.
            image = Image.fromarray(pixels)
            resized = np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=_clip(scaled, image.size)))
            out = torch.from_numpy(resized.transpose(2, 0, 1).copy())  # H×W×3 → 3×H×W, the one copy
        if flip:
            out = out.flip(-1)  # a new contiguous tensor
        return out.contiguous()  # no copy after a resize or flip: only for a box already of `size`

    def _decode_simplejpeg(self, reduction: int) -> tuple[np.ndarray, int]:
        width, height = self.size
        # The smallest libjpeg-turbo output at least this large is exactly 1/reduction.
        # fastdct/fastupsample: libjpeg-turbo's fast integer IDCT and chroma upsampling, about 10 %
        # faster; the crops stay within 36 dB of Pillow's exact full-size decode (tests/test_crops.py).
        pixels = simplejpeg.decode_jpeg(
            self.data, "RGB", fastdct=True, fastupsample=True, min_width=math.ceil(width / reduction), min_height=math.ceil(height / reduction)
        )
        return pixels, round(width / pixels.shape[1]) if pixels.shape[1] != width else 1

    def _decode_pillow(self, reduction: int) -> tuple[np.ndarray, int]:
        image = self._image
        width, height = self.size
        if reduction > 1 and image.format == "JPEG":
            # draft picks the largest power of two ≤ min(width // w, height // h).
            drafted = image.draft("RGB", (max(1, width // reduction), max(1, height // reduction)))
            reduction = round(width / drafted[1][2]) if drafted is not None else 1
        else:
            reduction = 1
        image.load()
        if image.mode != "RGB":
            image = image.convert("RGB")  # grey, CMYK, palette, alpha: RGB as decode_rgb gives
        return np.array(image), reduction  # writable, for torch.from_numpy


def _crop_resize_torch(pixels: np.ndarray, box, size: tuple[int, int]) -> torch.Tensor:
    """Crop a whole-pixel box of H×W×3 pixels, then resize, as torchvision's resized_crop does."""
    import torch.nn.functional as F

    rows, cols = pixels.shape[:2]
    left, top, right, bottom = (int(v) for v in box)
    left, top = min(max(0, left), cols - 1), min(max(0, top), rows - 1)
    right, bottom = min(max(left + 1, right), cols), min(max(top + 1, bottom), rows)
    # A 1×3×H×W view of H×W×3 pixels is channels_last, where torch's antialiased uint8 resize is
    # vectorized (about 2.5× Pillow's on this crop); the box is a view, so the crop copies nothing,
    # and the resize writes a contiguous 1×3×h×w tensor, which is the 3×h×w output as it is.
    region = torch.from_numpy(pixels).permute(2, 0, 1)[None, :, top:bottom, left:right]
    if (right - left, bottom - top) != size:
        region = F.interpolate(region, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
    return region[0]


def _clip(box, image_size):
    # The decoded size is a ceiling of size/reduction; the scaled box must not step past it.
    width, height = image_size
    left, top, right, bottom = box
    return (max(0.0, left), max(0.0, top), min(float(width), right), min(float(height), bottom))


def reduction_for(box: tuple[float, float, float, float], size: tuple[int, int]) -> int:
    """The largest power-of-two reduction that leaves the box at least ``size`` pixels each way."""
    box_width, box_height = box[2] - box[0], box[3] - box[1]
    for reduction in _REDUCTIONS:
        if box_width / reduction >= size[0] and box_height / reduction >= size[1]:
            return reduction
    return 1


def random_resized_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """A RandomResizedCrop draw on a width×height image, as a (left, top, right, bottom) box.

    The algorithm of torchvision's ``RandomResizedCrop.get_params`` (ten attempts at an area
    fraction uniform in ``RRC_SCALE`` and a log-uniform aspect ratio in ``RRC_RATIO``, a uniform
    position for the first that fits, else the central crop clipped to the ratio range), with
    all forty uniforms drawn in one ``torch.rand`` call: get_params makes four one-element
    tensors per attempt, about ten times the cost of this whole draw, which showed up at
    160 px. tests/test_crops.py compares the distribution with get_params's over many draws.
    """
    area = width * height
    log_ratio_low, log_ratio_high = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for u_scale, u_ratio, u_top, u_left in torch.rand(10, 4, dtype=torch.float64).tolist():
        target_area = area * (RRC_SCALE[0] + u_scale * (RRC_SCALE[1] - RRC_SCALE[0]))
        aspect_ratio = math.exp(log_ratio_low + u_ratio * (log_ratio_high - log_ratio_low))
        box_width = int(round(math.sqrt(target_area * aspect_ratio)))
        box_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < box_width <= width and 0 < box_height <= height:
            # Uniform over the height - h + 1 (width - w + 1) positions, as torch.randint draws them.
            top = min(int(u_top * (height - box_height + 1)), height - box_height)
            left = min(int(u_left * (width - box_width + 1)), width - box_width)
            return left, top, left + box_width, top + box_height
    # get_params's fallback: the central crop, clipped to the ratio range.
    in_ratio = width / height
    if in_ratio < min(RRC_RATIO):
        box_width, box_height = width, int(round(width / min(RRC_RATIO)))
    elif in_ratio > max(RRC_RATIO):
        box_width, box_height = int(round(height * max(RRC_RATIO))), height
    else:
        box_width, box_height = width, height
    top, left = (height - box_height) // 2, (width - box_width) // 2
    return left, top, left + box_width, top + box_height


def center_crop_box(width: int, height: int, resize_to: int, size: int) -> tuple[int, int, int, int]:
    """The box of the full-size image that torchvision's Resize(resize_to) + CenterCrop(size) keeps."""
    # torchvision.transforms.functional._compute_resized_output_size: the longer side is truncated.
    if width <= height:
        new_width, new_height = resize_to, int(resize_to * height / width)
    else:
        new_width, new_height = int(resize_to * width / height), resize_to
    # torchvision.transforms.functional.center_crop's offsets.
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    scale_x, scale_y = width / new_width, height / new_height
    # Rounded to whole full-size pixels (a shift of at most half of one, under half an output
    # pixel): whole-pixel boxes take the vectorized crop and resize.
    return (round(left * scale_x), round(top * scale_y), round((left + size) * scale_x), round((top + size) * scale_y))
