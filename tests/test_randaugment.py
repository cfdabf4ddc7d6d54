"""TF-scale RandAugment (resnets.data.randaugment) against timm's TF-derived ops and TF's formulas.

timm's auto_augment ports the level functions of tensorflow/tpu's autoaugment.py, so it is the
oracle for each op's magnitude → argument mapping and, where timm's PIL op computes what TF
computes, for the op's output. Where timm departs from TF (Contrast's grey, shear origin, Cutout)
the test states TF's formula instead.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.config import TrainConfig
from resnets.data.pipelines import _train_transform
from resnets.data.randaugment import (FILL, SIGNED_OPS, TF_OPS, TFRandAugment, apply_op,
                                      op_argument)
from resnets.presets import get_preset

ta = pytest.importorskip("timm.data.auto_augment")

TIMM_HPARAMS = dict(translate_const=100, img_mean=(FILL,) * 3)  # RandAugment's translate_const
TIMM_KWARGS = dict(fillcolor=(FILL,) * 3, resample=Image.NEAREST)  # TF's fill and sampling
MAGNITUDES = (0, 3, 5, 7, 9, 10, 15)


def smooth_image(height: int = 64, width: int = 80, seed: int = 0, noise: float = 0.1) -> torch.Tensor:
    """A uint8 3×H×W image with large smooth structure (geometric ops then differ only at edges)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, max(2, height // 8), max(2, width // 8), generator=g)
    up = torch.nn.functional.interpolate(base[None], size=(height, width), mode="bicubic", align_corners=False)[0]
    image = up * (1 - noise) + torch.rand(3, height, width, generator=g) * noise
    return (image.clamp(0, 1) * 255).to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def timm_op(name: str, image: torch.Tensor, *args) -> torch.Tensor:
    return from_pil(ta.NAME_TO_OP[name](to_pil(image), *args, **TIMM_KWARGS))


def abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.to(torch.int16) - b.to(torch.int16)).abs()


# ----------------------------------------------------------------------------- the op set


def test_op_set_is_tf_randaugment_list():
    # distort_image_with_randaugment's available_ops (tensorflow/tpu autoaugment.py): timm's
    # RandAugment list minus its relative translations, plus TF's absolute ones and Cutout.
    assert len(TF_OPS) == 16 and len(set(TF_OPS)) == 16
    timm_ops = {op.replace("Rel", "") for op in ta._RAND_TRANSFORMS}
    assert set(TF_OPS) == timm_ops | {"Cutout"}
    assert SIGNED_OPS == {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


# ----------------------------------------------------------------------------- magnitude → argument


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", [op for op in TF_OPS if op != "Cutout"])
def test_argument_matches_timm_level_functions(name, magnitude):
    assert ta._LEVEL_DENOM == 10  # TF's _MAX_LEVEL
    level_fn = ta.LEVEL_TO_ARG[name]
    ours = op_argument(name, magnitude)
    if level_fn is None:
        assert ours is None
        return
    (theirs,) = level_fn(magnitude, TIMM_HPARAMS)
    if name in SIGNED_OPS:
        theirs = abs(theirs)  # timm negates at random, as TF does; the sign is drawn separately here
    if name == "Solarize":
        # timm clips the threshold at 256; TF does not (384 at m15). Both mean "no pixel reaches it".
        assert min(ours, 256) == theirs
    elif name == "SolarizeAdd" and magnitude > 11:
        # timm clips the addition at 128; TF does not.
        assert theirs == 128 and ours == int(magnitude / 10 * 110)
    else:
        assert ours == pytest.approx(theirs)


def test_published_magnitudes_on_tf_scale():
    # ResNet-RS configs use magnitude 10 and 15 on TF's 0-10 scale, unclipped.
    assert op_argument("Rotate", 10) == pytest.approx(30.0)
    assert op_argument("Rotate", 15) == pytest.approx(45.0)
    assert op_argument("ShearX", 10) == pytest.approx(0.3)
    assert op_argument("ShearY", 15) == pytest.approx(0.45)
    assert op_argument("TranslateX", 10) == pytest.approx(100.0)
    assert op_argument("TranslateY", 15) == pytest.approx(150.0)
    assert op_argument("Color", 10) == pytest.approx(1.9)
    assert op_argument("Contrast", 15) == pytest.approx(2.8)
    assert (op_argument("Posterize", 10), op_argument("Posterize", 15)) == (4, 6)
    assert (op_argument("Solarize", 10), op_argument("Solarize", 15)) == (256, 384)
    assert (op_argument("SolarizeAdd", 10), op_argument("SolarizeAdd", 15)) == (110, 165)
    assert (op_argument("Cutout", 10), op_argument("Cutout", 15)) == (40, 60)


# ----------------------------------------------------------------------------- op outputs vs timm


@pytest.mark.parametrize("magnitude", [3, 7, 10, 15])
@pytest.mark.parametrize("name,tolerance", [
    ("AutoContrast", 1), ("Equalize", 0), ("Invert", 0), ("Posterize", 0), ("Solarize", 0),
    ("SolarizeAdd", 0), ("Brightness", 0), ("Sharpness", 1), ("Color", 2),
    ("TranslateX", 0), ("TranslateY", 0),
])
def test_photometric_and_translate_outputs_match_timm(name, tolerance, magnitude):
    image = smooth_image()
    arg = op_argument(name, magnitude)
    args = () if arg is None else (min(arg, 256) if name == "Solarize" else arg,)
    for sign in ((1, -1) if name in SIGNED_OPS else (1,)):
        signed = tuple(sign * a for a in args) if name in SIGNED_OPS else args
        ours = apply_op(image, name, magnitude, sign)
        assert ours.dtype == torch.uint8 and ours.shape == image.shape
        assert int(abs_diff(ours, timm_op(name, image, *signed)).max()) <= tolerance


def test_solarize_is_identity_from_magnitude_10():
    image = smooth_image(noise=1.0)
    for magnitude in (10, 15, 30):
        assert torch.equal(apply_op(image, "Solarize", magnitude), image)
    assert not torch.equal(apply_op(image, "Solarize", 9), image)


@pytest.mark.parametrize("magnitude", [3, 10, 15])
@pytest.mark.parametrize("sign", [1, -1])
def test_rotate_matches_timm(magnitude, sign):
    image = smooth_image()
    ours = apply_op(image, "Rotate", magnitude, sign)
    theirs = timm_op("Rotate", image, sign * op_argument("Rotate", magnitude))
    mirrored = timm_op("Rotate", image, -sign * op_argument("Rotate", magnitude))
    # Same centre and direction: only nearest-neighbour ties may round differently.
    assert (abs_diff(ours, theirs) > 2).any(0).float().mean() < 0.005
    assert (abs_diff(ours, mirrored) > 2).any(0).float().mean() > 0.2


@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
@pytest.mark.parametrize("magnitude", [5, 10, 15])
@pytest.mark.parametrize("sign", [1, -1])
def test_shear_matches_timm_up_to_half_a_pixel(name, magnitude, sign):
    # PIL samples at pixel centres, TF at pixel indices: the same shear, offset by level/2 px.
    image = smooth_image(noise=0.0)
    level = op_argument(name, magnitude)
    ours = apply_op(image, name, magnitude, sign)
    theirs = timm_op(name, image, sign * level)
    mirrored = timm_op(name, image, -sign * level)
    close = abs_diff(ours, theirs).float().mean()
    assert close < 4
    assert abs_diff(ours, mirrored).float().mean() > 5 * close


def _tf_projective(image: torch.Tensor, source) -> torch.Tensor:
    """TF's ImageProjectiveTransform, NEAREST, fill 128: output (x, y) reads input source(x, y)."""
    _, height, width = image.shape
    out = torch.full_like(image, FILL)
    for y in range(height):
        for x in range(width):
            xs, ys = source(x, y)
            xi, yi = math.floor(xs + 0.5), math.floor(ys + 0.5)
            if 0 <= xi < width and 0 <= yi < height:
                out[:, y, x] = image[:, yi, xi]
    return out


@pytest.mark.parametrize("sign", [1, -1])
def test_geometric_ops_follow_tf_transform_matrices(sign):
    # tensorflow/tpu autoaugment.py: shear_x transform [1, level, 0, 0, 1, 0, 0, 0] (input x =
    # x + level·y), shear_y [1, 0, 0, level, 1, 0, 0, 0], translate_x by [-pixels, 0], rotate
    # about the image centre. Magnitude 9.7 avoids exact half-pixel ties.
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 23, 29), dtype=torch.uint8, generator=g)
    s = sign * 0.291
    t = math.radians(sign * 29.1)
    cx, cy = (29 - 1) / 2, (23 - 1) / 2
    cases = {
        "ShearX": lambda x, y: (x + s * y, y),
        "ShearY": lambda x, y: (x, y + s * x),
        "TranslateX": lambda x, y: (x + sign * 97.0 / 10, y),
        "TranslateY": lambda x, y: (x, y + sign * 97.0 / 10),
        "Rotate": lambda x, y: (math.cos(t) * (x - cx) - math.sin(t) * (y - cy) + cx,
                                math.sin(t) * (x - cx) + math.cos(t) * (y - cy) + cy),
    }
    for name, source in cases.items():
        magnitude = 0.97 if name.startswith("Translate") else 9.7
        assert torch.equal(apply_op(image, name, magnitude, sign), _tf_projective(image, source)), name


def _image_with_pil_grey_mean(height: int, width: int, target: int) -> torch.Tensor:
    base = smooth_image(height, width, noise=0.3).to(torch.int16)
    for offset in range(-128, 129):
        image = (base + offset).clamp(0, 255).to(torch.uint8)
        grey = np.array(to_pil(image).convert("L"), dtype=np.float64)
        if int(grey.mean() + 0.5) == target:
            return image
    raise AssertionError("no offset gives the target mean")


@pytest.mark.parametrize("magnitude", [5, 10, 15])
def test_contrast_is_pil_contrast_when_mean_grey_is_pixel_count_over_256(magnitude):
    # TF's contrast blends towards H·W/256 (= 100 at 160 px), where PIL/timm use the mean grey
    # level; the two agree on an image whose mean grey level is exactly that.
    image = _image_with_pil_grey_mean(160, 160, target=100)
    ours = apply_op(image, "Contrast", magnitude)
    theirs = timm_op("Contrast", image, op_argument("Contrast", magnitude))
    assert int(abs_diff(ours, theirs).max()) <= 1


def test_contrast_uses_tf_pixel_count_grey():
    # At 256 px TF's grey is min(65536/256, 255) = 255: a flat 200 image is darkened, where a
    # true-mean contrast would leave it unchanged.
    flat = torch.full((3, 256, 256), 200, dtype=torch.uint8)
    out = apply_op(flat, "Contrast", 10)
    assert torch.all(out == int(255 + 1.9 * (200 - 255)))  # 150.5 truncated
    small = torch.full((3, 32, 32), 200, dtype=torch.uint8)  # grey 1024/256 = 4
    assert torch.all(apply_op(small, "Contrast", 10) == 255)


@pytest.mark.parametrize("magnitude,side", [(10, 80), (15, 120)])
def test_cutout_square_of_tf_size_filled_with_128(magnitude, side):
    image = torch.zeros(3, 200, 220, dtype=torch.uint8)
    out = apply_op(image, "Cutout", magnitude, center=(100, 110))
    filled = (out == FILL).all(0)
    rows, cols = filled.any(1).nonzero().flatten(), filled.any(0).nonzero().flatten()
    assert int(filled.sum()) == side * side
    assert (int(rows.min()), int(rows.max()) + 1) == (100 - side // 2, 100 + side // 2)
    assert (int(cols.min()), int(cols.max()) + 1) == (110 - side // 2, 110 + side // 2)
    # Clipped at the border, as TF's padding arithmetic does.
    corner = (apply_op(image, "Cutout", magnitude, center=(0, 0)) == FILL).all(0)
    assert int(corner.sum()) == (side // 2) ** 2


# ----------------------------------------------------------------------------- the random transform


def test_draws_are_uniform_over_ops_with_random_sign():
    torch.manual_seed(0)
    ra = TFRandAugment(num_ops=2, magnitude=10)
    draws = [d for _ in range(4000) for d in ra.draw(50, 60)]
    counts = {op: sum(d.name == op for d in draws) for op in TF_OPS}
    expected = len(draws) / len(TF_OPS)
    assert all(abs(c - expected) < 5 * math.sqrt(expected) for c in counts.values()), counts
    signed = [d.sign for d in draws if d.name in SIGNED_OPS]
    assert abs(sum(s == -1 for s in signed) / len(signed) - 0.5) < 0.05
    assert all(d.sign == 1 for d in draws if d.name not in SIGNED_OPS)
    centers = [d.center for d in draws if d.name == "Cutout"]
    assert all(0 <= r < 50 and 0 <= c < 60 for r, c in centers)


def test_forward_is_the_drawn_ops_in_order_and_reproducible():
    image = smooth_image()
    ra = TFRandAugment(num_ops=2, magnitude=15)
    torch.manual_seed(3)
    draws = ra.draw(*image.shape[-2:])
    torch.manual_seed(3)
    out = ra(image)
    assert torch.equal(out, ra.apply(image, draws))
    expected = image
    for d in draws:
        expected = apply_op(expected, d.name, 15, d.sign, d.center)
    assert torch.equal(out, expected)
    assert out.dtype == torch.uint8 and out.shape == image.shape


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        TFRandAugment(magnitude=-1)
    with pytest.raises(ValueError):
        TFRandAugment(ops=("Rotate", "Blur"))
    with pytest.raises(ValueError):
        TFRandAugment()(torch.rand(3, 8, 8))


# ----------------------------------------------------------------------------- the presets' transform


def _preset_randaugment(name: str) -> TFRandAugment:
    cfg = TrainConfig.from_dict(get_preset(name))
    transform = _train_transform(cfg.image_size, cfg.augment, cfg.randaugment_magnitude)
    found = [t for t in transform.transforms if isinstance(t, TFRandAugment)]
    assert len(found) == 1, transform
    return found[0]


@pytest.mark.parametrize("preset,degrees", [("resnetrs50-i160", 30.0), ("resnetrs152-i224", 45.0)])
def test_preset_transform_rotates_by_the_published_range(preset, degrees):
    ra = _preset_randaugment(preset)
    assert ra.num_ops == 2 and ra.ops == TF_OPS
    assert op_argument("Rotate", ra.magnitude) == pytest.approx(degrees)
    # The rotation the preset's transform applies is timm's (TF's) ±degrees, not the third of it
    # that torchvision's RandAugment(magnitude=m) would give.
    image = smooth_image(160, 160)
    for sign in (1, -1):
        ours = apply_op(image, "Rotate", ra.magnitude, sign)
        assert (abs_diff(ours, timm_op("Rotate", image, sign * degrees)) > 2).any(0).float().mean() < 0.005
        assert (abs_diff(ours, timm_op("Rotate", image, sign * degrees / 3)) > 2).any(0).float().mean() > 0.2


def test_preset_transform_runs_on_a_decoded_image():
    cfg = TrainConfig.from_dict(get_preset("resnetrs50-i160"))
    transform = _train_transform(cfg.image_size, cfg.augment, cfg.randaugment_magnitude)
    encoded = io.BytesIO()
    Image.fromarray(smooth_image(200, 240).permute(1, 2, 0).numpy()).save(encoded, "JPEG", quality=90)
    torch.manual_seed(0)
    out = transform(encoded.getvalue(), "smooth.jpg")
    assert out.shape == (3, 160, 160) and out.dtype == torch.uint8
