"""Mixup, CutMix and random erasing (data/mixing.py): the draws against their definitions and
timm's, soft targets, and exact resume with them on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from scipy import stats

from formats import write_image_folders
from resnets import train as train_module
from resnets.cli import main
from resnets.config import TrainConfig
from resnets.data.mixing import BatchMixer
from resnets.train import train

N, C, H, W = 8, 10, 16, 20


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def constant_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Image k is filled with the value k, so every output pixel names the image it came from."""
    x = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1).expand(N, 3, H, W).contiguous()
    return x, torch.arange(N) % C


def test_cutmix_lambda_is_the_kept_area_and_the_partner_weight_the_pasted_area():
    mixer = BatchMixer(C, seed=3, cutmix=1.0)
    x, y = constant_batch()
    seen = 0
    for iteration in range(40):
        mixed, targets = mixer(x, y, iteration)
        assert torch.allclose(targets.sum(1), torch.ones(N))
        for k in range(N):
            partner = N - 1 - k
            pasted = (mixed[k] == partner).float().mean().item() if partner != k else 0.0
            own = (mixed[k] == k).float().mean().item()
            assert own + pasted == pytest.approx(1.0)
            if partner != k and y[partner] != y[k]:
                # The weight of the partner's label is the fraction of its pixels in the image.
                assert targets[k, y[partner]].item() == pytest.approx(pasted, abs=1e-6)
                assert targets[k, y[k]].item() == pytest.approx(own, abs=1e-6)
                seen += pasted > 0
    assert seen > 0


def test_mixup_is_the_convex_combination_with_the_reversed_batch():
    mixer = BatchMixer(C, seed=5, mixup=0.4)
    x = torch.randn(N, 3, H, W)
    y = torch.arange(N)
    for iteration in range(10):
        mixed, targets = mixer(x, y, iteration)
        lam = targets[0, y[0]].item()  # labels are distinct, so this is image 0's own weight
        assert 0.0 <= lam <= 1.0
        assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
        expected = lam * torch.eye(C)[y[:N]] + (1 - lam) * torch.eye(C)[y.flip(0)]
        assert torch.allclose(targets, expected, atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(N))


def _lambdas(mixer: BatchMixer, draws: int) -> np.ndarray:
    x, y = torch.zeros(2, 3, H, W), torch.tensor([0, 1])
    return np.array([mixer(x, y, i)[1][0, 0].item() for i in range(draws)])


def test_mixup_lambda_follows_beta_alpha_alpha():
    draws = 2000
    lams = _lambdas(BatchMixer(C, seed=11, mixup=0.3), draws)
    # Kolmogorov–Smirnov against Beta(0.3, 0.3); at 2000 draws a p-value under 1e-4 would be a real misfit.
    assert stats.kstest(lams, stats.beta(0.3, 0.3).cdf).pvalue > 1e-4


def test_cutmix_lambda_has_timms_distribution():
    from timm.data.mixup import cutmix_bbox_and_lam

    draws = 2000
    ours = _lambdas(BatchMixer(C, seed=13, cutmix=1.0), draws)
    np.random.seed(0)
    theirs = np.array([cutmix_bbox_and_lam((2, 3, H, W), np.random.beta(1.0, 1.0), correct_lam=True)[1]
                       for _ in range(draws)])
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-4


def test_mixup_prob_and_switch_prob():
    draws = 1000
    x, y = torch.zeros(2, 3, H, W), torch.tensor([0, 1])
    mixer = BatchMixer(C, seed=17, mixup=1.0, cutmix=1.0, mixup_prob=0.6, switch_prob=0.25)
    kinds = [mixer.draw(mixer.generator(i, 0), H, W).kind for i in range(draws)]
    counts = {kind: kinds.count(kind) for kind in ("none", "mixup", "cutmix")}
    # Binomial bounds at about 4.5 sigma.
    for kind, p in (("none", 0.4), ("mixup", 0.6 * 0.75), ("cutmix", 0.6 * 0.25)):
        assert abs(counts[kind] - p * draws) < 4.5 * math.sqrt(draws * p * (1 - p)), (kind, counts)
    # And the draw the batch used is the one its targets show.
    mixed, targets = mixer(x, y, 0)
    assert (targets[0, 0].item() == 1.0) == (kinds[0] == "none")


def _erased_boxes(pixels: torch.Tensor) -> list[tuple[int, int]]:
    """(h, w) of the changed region of each image of a batch that was all zeros."""
    sizes = []
    for image in pixels:
        changed = (image != 0).any(0)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        sizes.append((int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)) if rows.numel() else (0, 0))
    return sizes


def test_random_erasing_has_timms_box_distribution():
    from timm.data.random_erasing import RandomErasing

    size = (3, 32, 32)
    images = 1500
    ours = _erased_boxes(BatchMixer(C, seed=19, reprob=1.0)(torch.zeros(images, *size),
                                                             torch.zeros(images, dtype=torch.long), 0)[0])
    torch.manual_seed(0)
    import random
    random.seed(0)
    timm_erase = RandomErasing(probability=1.0, mode="pixel", device="cpu")
    theirs = _erased_boxes(torch.stack([timm_erase(torch.zeros(size)) for _ in range(images)]))
    for index in (0, 1):  # heights, widths
        a = [box[index] for box in ours]
        b = [box[index] for box in theirs]
        assert stats.ks_2samp(a, b).pvalue > 1e-4
    areas_a = [h * w / 1024 for h, w in ours]
    areas_b = [h * w / 1024 for h, w in theirs]
    assert stats.ks_2samp(areas_a, areas_b).pvalue > 1e-4
    assert all(0 < h * w <= 1024 / 3 + 32 for h, w in ours)


def test_reprob_erases_that_fraction_of_images_and_leaves_targets_hard():
    images = 2000
    x, y = torch.zeros(images, 3, 16, 16), torch.randint(0, C, (images,))
    out, targets = BatchMixer(C, seed=23, reprob=0.25)(x, y, 4)
    erased = (out != 0).flatten(1).any(1).float().sum().item()
    p = 0.25
    assert abs(erased - p * images) < 4.5 * math.sqrt(images * p * (1 - p))
    assert torch.equal(targets, torch.eye(C)[y])


def test_draws_are_a_function_of_seed_step_and_rank_and_keep_channels_last():
    x = torch.randn(N, 3, H, W).contiguous(memory_format=torch.channels_last)
    y = torch.arange(N)
    mixer = BatchMixer(C, seed=1, mixup=0.2, cutmix=1.0, reprob=0.5)
    a, ta = mixer(x, y, 7, rank=0)
    b, tb = BatchMixer(C, seed=1, mixup=0.2, cutmix=1.0, reprob=0.5)(x, y, 7, rank=0)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, mixer(x, y, 7, rank=1)[0]) or not torch.equal(ta, mixer(x, y, 7, rank=1)[1])
    assert not torch.equal(a, mixer(x, y, 8, rank=0)[0])
    assert a.is_contiguous(memory_format=torch.channels_last)


BASE = dict(data="digits", model="resnet20", image_size=16, eval_batch_size=512, progress=False, device="cpu",
            seed=0, iters="8", batch_size=16, eval_every="4", log_every=3, mixup=0.2, cutmix=1.0, reprob=0.25)


class Killed(Exception):
    pass


def test_kill_and_resume_with_mixup_cutmix_and_erasing_is_bit_identical(tmp_path, monkeypatch):
    train(TrainConfig(**BASE, out=str(tmp_path / "reference")))
    step = train_module._Trainer.step

    def dying(self, x, y, sums):
        if self.progress.iteration == 6:
            raise Killed("killed at step 7")
        step(self, x, y, sums)

    monkeypatch.setattr(train_module._Trainer, "step", dying)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(TrainConfig(**BASE, out=str(out)))
    monkeypatch.undo()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 4
    assert main(["train", "--resume", str(out)]) == 0
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors")
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    saved = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert (saved["mixup"], saved["cutmix"], saved["reprob"]) == (0.2, 1.0, 0.25)


def test_soft_targets_reach_the_loss_and_accuracy_uses_hard_labels(tmp_path, monkeypatch):
    seen = []
    cross_entropy = train_module.F.cross_entropy

    def recording(logits, target, **kwargs):
        seen.append((target.dtype, tuple(target.shape), kwargs.get("label_smoothing")))
        return cross_entropy(logits, target, **kwargs)

    monkeypatch.setattr(train_module.F, "cross_entropy", recording)
    cfg = dict(BASE, iters="2", eval_every="2", label_smoothing=0.1, method="batchensemble", ensemble_size=2)
    train(TrainConfig(**cfg, out=str(tmp_path / "run")))
    # BatchEnsemble tiles the soft targets with its images: 2 members x 16 images x 10 classes.
    assert seen and all(s == (torch.float32, (32, 10), 0.1) for s in seen)


def test_mixing_on_a_jpeg_folder(tmp_path):
    classes = ["cat", "dog", "owl"]
    data = tmp_path / "photos"
    write_image_folders(data / "train", classes, per_folder=6, size=(40, 36))
    write_image_folders(data / "val", classes, per_folder=2, size=(30, 44), seed=3)
    out = tmp_path / "run"
    assert main(["train", "--data", "folder", "--data-dir", str(data), "--out", str(out), "--model", "resnet18",
                 "--image-size", "32", "--num-workers", "0", "--iters", "2", "--eval-every", "2", "--batch-size", "6",
                 "--eval-batch-size", "16", "--no-progress", "--device", "cpu", "--mixup", "0.2", "--cutmix", "1.0",
                 "--reprob", "0.5"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["cutmix"] == 1.0


@pytest.mark.parametrize("flags, named", [(["--mixup", "-0.5"], "--mixup"), (["--cutmix", "nan"], "--cutmix"),
                                          (["--reprob", "1.5"], "--reprob"), (["--mixup-prob", "-1"], "--mixup-prob")])
def test_bad_values_are_one_paragraph_errors(tmp_path, capsys, flags, named):
    assert main(["train", "--out", str(tmp_path / "run"), "--iters", "2", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
