"""Test-time augmentation (`--tta` of eval, predict and export): the predictive distribution is
the mean of the softmaxes of several views of each image, as timm's and torchvision's
references average their test-time crops.

Views of a batch of normalized N×3×S×S images (flips and crops commute with the per-channel
normalization, so they are taken after it):

* ``flip``: the image and its horizontal mirror (2 views);
* ``flip+crops``: those two, each also as its four corner crops of side round(7S/8) resized back
  to S bilinearly (10 views: the ten-crop of Krizhevsky et al. 2012, on the evaluated image,
  whose centre is the full view).

`TestTimeAugmentation` wraps the run's own method: each view goes through the method's
`predict` (so a BatchEnsemble or MC dropout keeps its members: member probabilities are
averaged over the views too) and everything else (passes, finalization) is the method's.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .methods.base import Method, Prediction

TTA_MODES = ("none", "flip", "flip+crops")
CROP_FRACTION = 7 / 8
HELP = ("test-time augmentation: none, flip (the image and its mirror) or flip+crops (those and their four "
        "7/8 corner crops resized back: 10 views); the prediction is the mean of the views' softmaxes "
        "(default: none)")


def check_mode(mode: str, flag: str = "--tta") -> str:
    if mode not in TTA_MODES:
        raise UserError(f"{flag} {mode!r} is not a test-time augmentation: expected one of {', '.join(TTA_MODES)}.")
    return mode


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of N×C×H×W images `x` that `mode` averages over (see the module docstring)."""
    check_mode(mode)
    if mode == "none":
        return [x]
    images = [x, x.flip(-1)]
    if mode == "flip":
        return images
    height, width = int(x.shape[-2]), int(x.shape[-1])  # static in an exported graph: S is fixed
    h, w = max(1, round(height * CROP_FRACTION)), max(1, round(width * CROP_FRACTION))
    views = []
    for image in images:
        views.append(image)
        for top, left in ((0, 0), (0, width - w), (height - h, 0), (height - h, width - w)):
            crop = image[..., top:top + h, left:left + w]
            views.append(F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False))
    return views


class TestTimeAugmentation(Method):
    """`base` predicting on every view of `mode`, averaged; otherwise `base` itself."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, base: Method, mode: str):
        self.base = base
        self.mode = check_mode(mode)
        # What the method declares is the base method's (the evaluator and exporter ask it).
        for attribute in ("name", "title", "members", "sized_by_ensemble_size", "single_pass", "finalizes",
                          "averages_weights", "stateful", "separate_runs"):
            setattr(self, attribute, getattr(base, attribute))

    def __getattr__(self, name):  # the base method's own attributes (samples, load_member, ...)
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        predictions = [self.base.predict(model, view) for view in tta_views(x, self.mode)]
        mean = lambda values: torch.stack(values).mean(0)  # noqa: E731
        member_probs = None if predictions[0].member_probs is None else mean([p.member_probs for p in predictions])
        logits = None
        if all(p.logits is not None for p in predictions):
            logits = mean([p.logits for p in predictions])
        return Prediction(mean([p.probs for p in predictions]), member_probs, logits)

    def eval_passes(self, model: nn.Module) -> Iterator[None]:
        return self.base.eval_passes(model)

    def finalize(self, model: nn.Module, train_batches: Iterable) -> None:
        self.base.finalize(model, train_batches)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


def with_tta(method: Method, mode: str) -> Method:
    """`method` under test-time augmentation `mode` (itself for none)."""
    return method if check_mode(mode) == "none" else TestTimeAugmentation(method, mode)
