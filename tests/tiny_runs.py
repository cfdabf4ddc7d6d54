"""Tiny real runs written by `resnets train` (digits, 2 iterations), shared by the tests of the
commands that read runs: eval, predict and export."""
from __future__ import annotations

from resnets.config import TrainConfig
from resnets.train import train

IMAGE_SIZE = 16  # digits upsampled from 8 px: every run and evaluation here takes about a second


def tiny_run(path, **overrides):
    cfg = dict(data="digits", model="resnet20", iters="2", batch_size=32, eval_every="2", eval_batch_size=512,
               out=str(path), progress=False, augment="crop", image_size=IMAGE_SIZE, device="cpu")
    cfg.update(overrides)
    train(TrainConfig(**cfg))
    return path


def make_runs(root) -> dict:
    """Two deterministic runs (seeds 0 and 1) and a 2-member BatchEnsemble run under `root`."""
    return dict(
        det=tiny_run(root / "det", seed=0),
        det2=tiny_run(root / "det2", seed=1),
        be=tiny_run(root / "be", method="batchensemble", ensemble_size=2),
    )
