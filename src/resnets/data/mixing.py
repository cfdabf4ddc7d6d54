"""Mixup, CutMix and random erasing on normalized training batches, on the batch's device.

The semantics and names follow timm (timm/data/mixup.py `Mixup` with mode="batch" and
correct_lam=True; timm/data/random_erasing.py `RandomErasing` with mode="pixel", count 1, and
train.py's --mixup/--cutmix/--mixup-prob/--mixup-switch-prob/--reprob), written for batches:
one λ per batch, erasing boxes drawn for all images at once and applied as one mask.

Every draw comes from a generator seeded by (seed, iteration, rank), so that the augmented batch i
is a function of (seed, i) like the batch itself and a resumed run replays it bit for bit. The
images and targets arrive after the training loop has normalized `train_batches`' uint8 batches,
for tensor datasets and JPEG folders alike, and they work on any memory format (channels_last stays channels_last).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

# timm's RandomErasing defaults: area fraction 0.02–1/3, aspect ratio 0.3–1/0.3, 10 attempts.
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))
ERASE_ATTEMPTS = 10
# Separates these streams from any other user of (seed, iteration, rank).
_STREAM_TAG = 0x6D6978  # "mix"


@dataclass(frozen=True)
class MixDraw:
    """What one batch drew: kind is "mixup", "cutmix" or "none"; lam the weight of the batch's own
    images (CutMix: the fraction of pixels kept, 1 − the pasted box's area fraction); box is
    (top, bottom, left, right) of the pasted region for CutMix."""
    kind: str
    lam: float
    box: tuple[int, int, int, int] | None = None


class BatchMixer:
    """(x, y) → (x', soft targets) for one training step; see the module doc.

    The targets are N×C probability vectors summing to 1: the one-hot labels mixed with the
    same λ as the images, the partner of image k being image N−1−k (the batch flipped, as timm
    pairs them). Label smoothing is left to the loss (torch's cross_entropy applies it to
    probability targets exactly as timm's mixup_target folds it in).
    """

    def __init__(self, num_classes: int, *, seed: int, mixup: float = 0.0, cutmix: float = 0.0,
                 mixup_prob: float = 1.0, switch_prob: float = 0.5, reprob: float = 0.0):
        self.num_classes, self.seed = num_classes, seed
        self.mixup, self.cutmix = mixup, cutmix
        self.mixup_prob, self.switch_prob, self.reprob = mixup_prob, switch_prob, reprob

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> "BatchMixer | None":
        """The mixer a TrainConfig asks for, or None when every option is off."""
        check_options(cfg)
        if not (cfg.mixup > 0 or cfg.cutmix > 0 or cfg.reprob > 0):
            return None
        return cls(num_classes, seed=cfg.seed, mixup=cfg.mixup, cutmix=cfg.cutmix, mixup_prob=cfg.mixup_prob,
                   switch_prob=cfg.mixup_switch_prob, reprob=cfg.reprob)

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def generator(self, iteration: int, rank: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, iteration, rank, _STREAM_TAG])

    def draw(self, rng: np.random.Generator, height: int, width: int) -> MixDraw:
        """The batch's mixing decision, as timm's Mixup._params_per_batch and rand_bbox draw it."""
        if not self.mixes or rng.random() >= self.mixup_prob:
            return MixDraw("none", 1.0)
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < self.switch_prob)
        if not use_cutmix:
            return MixDraw("mixup", float(rng.beta(self.mixup, self.mixup)))
        lam = float(rng.beta(self.cutmix, self.cutmix))
        # timm's rand_bbox: a box of side ratio sqrt(1 − λ) centred uniformly, clipped to the image,
        # and λ corrected to the area actually kept.
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + (cut_h + 1) // 2, 0, height))
        left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + (cut_w + 1) // 2, 0, width))
        kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return MixDraw("cutmix", kept, (top, bottom, left, right))

    def erase_boxes(self, rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
        """batch×4 (top, left, h, w) boxes, h = w = 0 for images not erased: each image with
        probability reprob, its box the first of 10 (area, ratio) attempts that fits, as timm's
        RandomErasing._erase tries them."""
        boxes = np.zeros((batch, 4), dtype=np.int64)
        chosen = rng.random(batch) < self.reprob
        area = height * width * rng.uniform(*ERASE_AREA, size=(batch, ERASE_ATTEMPTS))
        ratio = np.exp(rng.uniform(*ERASE_LOG_RATIO, size=(batch, ERASE_ATTEMPTS)))
        h = np.round(np.sqrt(area * ratio)).astype(np.int64)
        w = np.round(np.sqrt(area / ratio)).astype(np.int64)
        fits = (h < height) & (w < width)
        offsets = rng.random((batch, 2))
        for k in np.flatnonzero(chosen):
            attempts = np.flatnonzero(fits[k])
            if attempts.size == 0:
                continue
            a = attempts[0]
            top = int(offsets[k, 0] * (height - h[k, a] + 1))
            left = int(offsets[k, 1] * (width - w[k, a] + 1))
            boxes[k] = (top, left, h[k, a], w[k, a])
        return boxes

    def __call__(self, x: torch.Tensor, y: torch.Tensor, iteration: int, rank: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.generator(iteration, rank)
        n, _, height, width = x.shape
        if self.reprob > 0:
            x = self._erase(x, self.erase_boxes(rng, n, height, width), rng)
        targets = F.one_hot(y, self.num_classes).to(torch.float32)
        if not self.mixes:
            return x, targets
        mix = self.draw(rng, height, width)
        return self.apply(x, targets, mix)

    @staticmethod
    def apply(x: torch.Tensor, targets: torch.Tensor, mix: MixDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and targets mixed as `mix` says, each with the batch flipped."""
        if mix.kind == "none":
            return x, targets
        if mix.kind == "mixup":
            x = x * mix.lam + x.flip(0) * (1.0 - mix.lam)
        else:
            top, bottom, left, right = mix.box
            x = x.clone()
            x[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        return x, targets * mix.lam + targets.flip(0) * (1.0 - mix.lam)

    def _erase(self, x: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Fill each box with per-pixel standard-normal noise (timm's mode "pixel": the images are
        normalized, so noise of the data's own scale)."""
        if not boxes[:, 2].any():
            return x
        device = x.device
        b = torch.from_numpy(boxes).to(device)
        rows = torch.arange(x.shape[2], device=device).view(1, -1, 1)
        cols = torch.arange(x.shape[3], device=device).view(1, 1, -1)
        top, left, h, w = (b[:, i].view(-1, 1, 1) for i in range(4))
        mask = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        noise_gen = torch.Generator(device=device).manual_seed(int(rng.integers(0, 2**63 - 1)))
        noise = torch.empty_like(x).normal_(generator=noise_gen)  # empty_like keeps x's memory format
        return torch.where(mask.unsqueeze(1), noise, x)


def check_options(cfg) -> None:
    """A one-paragraph UserError for a value timm would not accept either."""
    for flag, value in (("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix)):
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"{flag} {value}: expected the Beta(α, α) concentration α ≥ 0 (0 turns it off; "
                            "timm's recipes use 0.1–0.8 for mixup and 1.0 for CutMix)")
    for flag, value in (("--mixup-prob", cfg.mixup_prob), ("--mixup-switch-prob", cfg.mixup_switch_prob),
                        ("--reprob", cfg.reprob)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} {value}: expected a probability between 0 and 1")
