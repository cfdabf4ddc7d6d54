"""RandAugment on TensorFlow's magnitude scale, as the ResNet-RS configs (seed 003) specify it.

Reading order: ``TF_OPS`` (the op list), ``op_argument`` (magnitude → op parameter),
``apply_op`` (one op, no randomness), ``TFRandAugment`` (the random transform).

Why not ``torchvision.transforms.v2.RandAugment``: the ResNet-RS configs' ``randaug_magnitude``
(10 or 15) is a level on TensorFlow's 0–10 scale (tensorflow/tpu
``models/official/efficientnet/autoaugment.py``, ``_MAX_LEVEL = 10``): at magnitude 10 a rotation
is 30°, a shear 0.3, a translation 100 px, an enhance factor 1.9. torchvision maps its
``magnitude`` onto 31 bins (0–30), so magnitude 10 there is 10°, 0.1, 0.15 of the image width
and a factor 1 ± 0.3: a third of the published rotation and shear, and far less of the rest.
TensorFlow does not clip the level either: magnitude 15 is a 45° rotation, 0.45 shear, 150 px
shift.

What this follows from ``distort_image_with_randaugment`` (tensorflow/tpu, same file):

- ``num_ops`` layers (2 in every ResNet-RS config); each picks one of the 16 ``TF_OPS``
  uniformly, with replacement, and applies it with probability 1 at the fixed magnitude (the
  per-op ``prob`` TF draws is never passed to these ops).
- Rotate, ShearX/Y and TranslateX/Y are negated with probability 1/2.
- Geometric ops use nearest-neighbour sampling and fill uncovered pixels with 128 (``wrap`` /
  ``unwrap``); Cutout also fills with 128 (RandAugment passes ``replace`` to it).
- Level → argument (``level_to_arg``), with m the magnitude: Rotate m/10·30°; ShearX/Y m/10·0.3
  (x' = x + s·y about the top-left pixel, not the centre); TranslateX/Y m/10·100 px
  (``translate_const=100`` for RandAugment; AutoAugment uses 250); Color, Contrast, Brightness,
  Sharpness blend factor m/10·1.8 + 0.1 (1.9 at m10, 2.8 at m15, never negated, so always
  *more* colour/contrast/brightness/sharpness); Posterize keeps int(m/10·4) bits (4 at m10, 6 at
  m15: more magnitude, *weaker* posterization); Solarize threshold int(m/10·256) (256 at m10,
  384 at m15: no pixel reaches it, so Solarize is the identity at m ≥ 10 — it still takes its
  1/16 share of the draws); SolarizeAdd adds int(m/10·110) to pixels below 128 (110 at m10,
  165 at m15), clipped to 255; Cutout a square of side 2·int(m/10·40) (80 px at m10, 120 at m15)
  centred on a uniformly drawn pixel and clipped at the border.
- Contrast blends towards a constant grey of min(H·W/256, 255), not towards the mean grey level:
  TF computes its "mean" as ``reduce_sum(histogram) / 256``, which is the pixel count over 256.
  The ResNet-RS input pipeline runs RandAugment on the cropped ``image_size`` image, so that
  grey is 100 at 160 px, 144 at 192, 196 at 224 and 255 at 256 px and above (at 255 and factor
  1.9 the op darkens the image). This module reproduces that, on the size of the image it gets.

Differences from TF that remain (all at most one grey level, or sub-pixel):

- Color: torchvision floors the grey image; TF's ``rgb_to_grayscale`` converts back to uint8 as
  trunc(g/255 · 255.5), which now and then is one level higher. Output differs by ≤ 1 level.
- Sharpness: torchvision rounds the smoothed image; TF truncates it. Output differs by ≤ 1 level.
- Rotate, ShearX/Y: same centre ((w-1)/2, (h-1)/2 for Rotate, pixel (0, 0) for shears),
  direction and nearest-neighbour sampling; only ties at exactly half-pixel positions may round
  the other way (torch rounds half to even).
- Posterize beyond magnitude 20 (more than 8 bits, an undefined shift in TF) keeps all 8 bits.
- The random numbers come from torch's global generator (the data pipeline seeds it per
  sample), not TF's.

timm's ``rand_augment_transform("rand-m10-n2")`` uses the same level functions but is not TF's
RandAugment either: it applies each op with probability 0.5, clips the magnitude at 10 unless
``mmax`` is given, translates relative to the image size (0.45 at m10), has no Cutout, clips
SolarizeAdd at 128 and uses PIL's Contrast (true mean). tests/test_randaugment.py compares the
per-op parameter mappings and outputs with timm's op functions where they agree with TF.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

MAX_LEVEL = 10.0  # TF's _MAX_LEVEL: the magnitude at which each op reaches its nominal maximum
FILL = 128  # TF's replace value for pixels that geometric ops and Cutout uncover
TRANSLATE_CONST = 100  # pixels of translation at magnitude 10 (RandAugment's translate_const)
CUTOUT_CONST = 40  # Cutout half-side in pixels at magnitude 10 (RandAugment's cutout_const)

# distort_image_with_randaugment's available_ops, in TF's order.
TF_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)
# Ops whose argument TF negates with probability 1/2.
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


def op_argument(name: str, magnitude: float) -> float | int | None:
    """TF's level_to_arg for `name` at `magnitude`, before the random sign (None: no argument)."""
    level = float(magnitude) / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return level * 30.0  # degrees
    if name in ("ShearX", "ShearY"):
        return level * 0.3
    if name in ("TranslateX", "TranslateY"):
        return level * float(TRANSLATE_CONST)  # pixels
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1  # blend factor
    if name == "Posterize":
        return int(level * 4)  # bits kept
    if name == "Solarize":
        return int(level * 256)  # threshold
    if name == "SolarizeAdd":
        return int(level * 110)  # added to pixels below 128
    if name == "Cutout":
        return int(level * CUTOUT_CONST)  # half-side of the square
    raise ValueError(f"unknown RandAugment op {name!r}: expected one of {', '.join(TF_OPS)}")


def _check_image(image: torch.Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"TF RandAugment works on uint8 3×H×W RGB tensors, got {image.dtype} of shape "
                         f"{tuple(image.shape)}")


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """TF's blend: degenerate + factor·(image − degenerate), clipped to [0, 255], truncated."""
    degenerate = degenerate.to(torch.float32)
    out = degenerate + factor * (image.to(torch.float32) - degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def _tf_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    # TF's "mean" is sum(histogram) / 256 = H·W / 256 (module doc), clipped and cast to uint8.
    grey = int(min(image.shape[-2] * image.shape[-1] / 256.0, 255.0))
    return _blend(torch.full_like(image, grey), image, factor)


def _shear(image: torch.Tensor, level: float, axis: str) -> torch.Tensor:
    # TF maps output pixel (x, y) to input (x + level·y, y) for ShearX (about pixel (0, 0)).
    # torchvision's centre is in pixel-edge coordinates: 0.5 is the centre of pixel 0.
    degrees = math.degrees(math.atan(level))
    shear = [degrees, 0.0] if axis == "x" else [0.0, degrees]
    return F.affine(image, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear,
                    interpolation=InterpolationMode.NEAREST, fill=[float(FILL)] * 3, center=[0.5, 0.5])


def _translate(image: torch.Tensor, pixels: float, axis: str) -> torch.Tensor:
    # TF: output(x) = input(x + pixels) (tf.contrib.image.translate by −pixels).
    shift = [-pixels, 0.0] if axis == "x" else [0.0, -pixels]
    return F.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                    interpolation=InterpolationMode.NEAREST, fill=[float(FILL)] * 3)


def _cutout(image: torch.Tensor, pad: int, center: tuple[int, int]) -> torch.Tensor:
    height, width = image.shape[-2:]
    cy, cx = center
    top, bottom = max(0, cy - pad), min(height, cy + pad)
    left, right = max(0, cx - pad), min(width, cx + pad)
    if bottom <= top or right <= left:
        return image
    return F.erase(image, top, left, bottom - top, right - left, v=torch.tensor(FILL, dtype=image.dtype))


def apply_op(image: torch.Tensor, name: str, magnitude: float, sign: int = 1,
             center: tuple[int, int] | None = None) -> torch.Tensor:
    """Apply TF RandAugment op `name` at `magnitude` to a uint8 3×H×W image, deterministically.

    `sign` (+1 or −1) is the random negation of the signed ops; `center` (row, column) is
    Cutout's square centre (default: the image centre).
    """
    _check_image(image)
    arg = op_argument(name, magnitude)
    if name in SIGNED_OPS:
        if sign not in (1, -1):
            raise ValueError(f"sign must be +1 or -1, got {sign!r}")
        arg = sign * arg
    if name == "AutoContrast":
        return F.autocontrast(image)
    if name == "Equalize":
        return F.equalize(image)
    if name == "Invert":
        return F.invert(image)
    if name == "Rotate":
        return F.rotate(image, angle=arg, interpolation=InterpolationMode.NEAREST, fill=[float(FILL)] * 3)
    if name == "Posterize":
        return F.posterize(image, bits=min(8, max(0, arg)))
    if name == "Solarize":
        if arg > 255:  # no uint8 pixel reaches the threshold (and a uint8 compare would wrap it)
            return image
        return torch.where(image < arg, image, 255 - image)
    if name == "SolarizeAdd":
        added = (image.to(torch.int16) + arg).clamp_(0, 255).to(torch.uint8)
        return torch.where(image < 128, added, image)
    if name == "Color":
        return F.adjust_saturation(image, arg)
    if name == "Contrast":
        return _tf_contrast(image, arg)
    if name == "Brightness":
        return F.adjust_brightness(image, arg)
    if name == "Sharpness":
        return F.adjust_sharpness(image, arg)
    if name in ("ShearX", "ShearY"):
        return _shear(image, arg, name[-1].lower())
    if name in ("TranslateX", "TranslateY"):
        return _translate(image, arg, name[-1].lower())
    if name == "Cutout":
        if center is None:
            center = (image.shape[-2] // 2, image.shape[-1] // 2)
        return _cutout(image, arg, center)
    raise AssertionError(name)  # op_argument rejected unknown names


@dataclass(frozen=True)
class OpDraw:
    """The random choices of one RandAugment layer."""
    name: str
    sign: int = 1
    center: tuple[int, int] | None = None


class TFRandAugment(torch.nn.Module):
    """TF's RandAugment: `num_ops` ops drawn uniformly from `ops`, each at `magnitude` (module doc).

    Works on uint8 3×H×W tensors and draws from torch's global generator, like the torchvision
    transforms around it in the data pipeline. `ops` defaults to TF's 16; a subset is for tests.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 10, ops: Sequence[str] = TF_OPS) -> None:
        super().__init__()
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"num_ops must be a whole number >= 0, got {num_ops!r}")
        if not magnitude >= 0:
            raise ValueError(f"magnitude must be >= 0 (TF's 0-10 scale; 15 is allowed), got {magnitude!r}")
        ops = tuple(ops)
        if not ops:
            raise ValueError("ops must name at least one op")
        for name in ops:
            op_argument(name, 0)  # rejects unknown names
        self.num_ops, self.magnitude, self.ops = num_ops, magnitude, ops

    def draw(self, height: int, width: int) -> list[OpDraw]:
        """The random choices for one image of `height`×`width`, in application order."""
        draws = []
        for _ in range(self.num_ops):
            name = self.ops[int(torch.randint(len(self.ops), ()))]
            sign = -1 if name in SIGNED_OPS and float(torch.rand(())) < 0.5 else 1
            center = None
            if name == "Cutout":
                center = (int(torch.randint(height, ())), int(torch.randint(width, ())))
            draws.append(OpDraw(name, sign, center))
        return draws

    def apply(self, image: torch.Tensor, draws: Sequence[OpDraw]) -> torch.Tensor:
        for d in draws:
            image = apply_op(image, d.name, self.magnitude, d.sign, d.center)
        return image

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image)
        return self.apply(image, self.draw(*image.shape[-2:]))

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}, ops={len(self.ops)} (TF scale)"
