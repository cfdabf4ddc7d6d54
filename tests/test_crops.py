"""Folder-image crops (resnets.data.crops): torchvision's RandomResizedCrop distribution, and the
pixels of a DCT-scaled decode against the same box decoded at full size."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from resnets.data import crops
from resnets.data.crops import EncodedImage, reduction_for
from resnets.data.pipelines import _seeded_cpu_rng, _train_transform

BACKENDS = [pytest.param(False, id="pillow"),
            pytest.param(True, id="simplejpeg",
                         marks=pytest.mark.skipif(crops.simplejpeg is None, reason="simplejpeg not installed"))]


def photo_jpeg(short_side: int = 400, quality: int = 85) -> bytes:
    """scikit-learn's china.jpg (a real photograph), resized to an ImageNet-like shorter side."""
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg"))
    scale = short_side / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BICUBIC)
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=quality)
    return encoded.getvalue()


def test_random_crops_follow_torchvision_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    data = photo_jpeg(360)
    width, height = Image.open(io.BytesIO(data)).size
    transform = _train_transform(32, "crop-flip", None)
    drawn = []
    original_crop = EncodedImage.crop

    def recording_crop(self, box, size, flip=False):
        drawn.append((*box, flip))
        return original_crop(self, box, size, flip)

    n = 3000
    EncodedImage.crop = recording_crop
    try:
        for k in range(n):
            with _seeded_cpu_rng(k):  # what the pipeline does per sample
                transform(data, "china.jpg")
    finally:
        EncodedImage.crop = original_crop
    ours = np.array(drawn, dtype=np.float64)

    torch.manual_seed(12345)
    reference_image = Image.new("RGB", (width, height))
    peer = []
    for _ in range(n):
        top, left, h, w = RandomResizedCrop.get_params(reference_image, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
        peer.append((left, top, left + w, top + h, float(torch.rand(1) < 0.5)))
    peer = np.array(peer, dtype=np.float64)

    def features(boxes):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return {"area": w * h / (width * height), "log_ratio": np.log(w / h),
                "centre_x": (boxes[:, 0] + boxes[:, 2]) / 2, "centre_y": (boxes[:, 1] + boxes[:, 3]) / 2}

    # Two-sample Kolmogorov-Smirnov critical distance at alpha = 1e-3 for n = m draws:
    # c(alpha) * sqrt((n + m) / (n m)), c(1e-3) = sqrt(-ln(alpha / 2) / 2).
    critical = math.sqrt(-math.log(1e-3 / 2) / 2) * math.sqrt(2 / n)
    for name, (a, b) in {k: (features(ours)[k], features(peer)[k]) for k in features(ours)}.items():
        distance = stats.ks_2samp(a, b).statistic
        assert distance < critical, f"{name}: KS distance {distance:.4f} ≥ {critical:.4f}"
    # Ranges of the published distribution: scale 0.08-1 (of the area), ratio 3/4-4/3, inside the image.
    area, ratio = features(ours)["area"], np.exp(features(ours)["log_ratio"])
    assert area.max() <= 1 and ratio.min() >= 3 / 4 - 0.02 and ratio.max() <= 4 / 3 + 0.02
    assert (ours[:, 0] >= 0).all() and (ours[:, 1] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    # Flip rate 0.5 within 4 standard errors of a binomial proportion.
    assert abs(ours[:, 4].mean() - 0.5) < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("width,height", [(1000, 10), (10, 1000), (3, 3), (400, 2)])
def test_random_crop_falls_back_to_torchvision_central_crop_when_no_attempt_fits(width, height):
    # Strips this thin fit none of the ten attempts (scale >= 0.08, ratio within 3/4-4/3), so
    # get_params returns its deterministic central crop; (3, 3) fits on some draws (which then
    # depend on how the uniforms are drawn), so there the box need only lie inside the image.
    from torchvision.transforms import RandomResizedCrop

    from resnets.data.crops import random_resized_crop_box

    stand_in = Image.new("RGB", (width, height))
    for seed in range(20):
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(stand_in, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
        torch.manual_seed(seed)
        box = random_resized_crop_box(width, height)
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        if (width, height) != (3, 3):
            assert box == (left, top, left + w, top + h)


def _full_size_crop(data: bytes, box, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / max(mse, 1e-12))


@pytest.mark.parametrize("use_simplejpeg", BACKENDS)
@pytest.mark.parametrize("size", [224, 160, 64])
def test_scaled_decode_stays_within_30_db_of_the_full_size_decode(use_simplejpeg, size):
    data = photo_jpeg(480, quality=80)
    width, height = Image.open(io.BytesIO(data)).size
    rng = np.random.default_rng(size)
    reductions, worst = set(), math.inf
    for _ in range(40):
        w, h = rng.integers(size // 2, width + 1), rng.integers(size // 2, height + 1)
        left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        box = (int(left), int(top), int(left + w), int(top + h))
        reductions.add(reduction_for(box, (size, size)))
        ours = EncodedImage(data, "china.jpg", use_simplejpeg=use_simplejpeg).crop(box, (size, size))
        assert ours.shape == (3, size, size) and ours.dtype == torch.uint8 and ours.is_contiguous()
        ours = ours.permute(1, 2, 0).numpy()
        worst = min(worst, _psnr(ours, _full_size_crop(data, box, size)))
    assert worst >= 30, f"worst PSNR {worst:.1f} dB"
    assert max(reductions) > 1, "no box was decoded at a reduced scale"  # the test exercises the DCT scaling


@pytest.mark.parametrize("use_simplejpeg", BACKENDS)
@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG")])
def test_any_colour_mode_becomes_rgb(use_simplejpeg, mode, fmt):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 340, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    encoded = io.BytesIO()
    image.save(encoded, fmt)
    data = encoded.getvalue()
    box = (10, 20, 330, 290)
    ours = EncodedImage(data, "x", use_simplejpeg=use_simplejpeg).crop(box, (64, 64), flip=True).permute(1, 2, 0).numpy()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR, box=box))
    assert ours.shape == (64, 64, 3)
    assert _psnr(ours, expected[:, ::-1]) >= 30


@pytest.mark.parametrize("use_simplejpeg", BACKENDS)
def test_damaged_jpeg_is_a_user_error_naming_it(use_simplejpeg):
    from resnets.errors import UserError

    data = photo_jpeg(200)[:600]  # cut short after the header
    with pytest.raises(UserError, match="broken.jpg"):
        EncodedImage(data, "broken.jpg", use_simplejpeg=use_simplejpeg).crop((0, 0, 200, 200), (32, 32))
    with pytest.raises(UserError, match="garbage.jpg"):
        EncodedImage(b"not an image at all", "garbage.jpg", use_simplejpeg=use_simplejpeg).crop((0, 0, 1, 1), (8, 8))


@pytest.mark.parametrize("use_simplejpeg", BACKENDS)
@pytest.mark.parametrize("size,short_side", [(224, 333), (224, 500), (160, 420)])
def test_eval_crop_stays_within_30_db_of_torchvision_resize_and_center_crop(use_simplejpeg, size, short_side):
    from torchvision import transforms

    from resnets.data.crops import center_crop_box

    data = photo_jpeg(short_side)
    image = EncodedImage(data, "china.jpg", use_simplejpeg=use_simplejpeg)
    ours = image.crop(center_crop_box(*image.size, round(size / 0.875), size), (size, size)).permute(1, 2, 0).numpy()
    reference = transforms.Compose([transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size)])
    expected = np.asarray(reference(Image.open(io.BytesIO(data)).convert("RGB")))
    assert _psnr(ours, expected) >= 30
