"""--grad-accum-steps: the optimizer sees the mean gradient of the micro-batches, the schedule
counts optimizer steps, and a run stopped or killed inside an accumulation window resumes
bit-identical (2-process torchrun with accumulation: tests/test_distributed.py)."""
from __future__ import annotations

import copy
import os
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from no_batchnorm import build_run_model
from resnets import train as train_module
from resnets.cli import main
from resnets.config import TrainConfig
from resnets.runs import CONFIG_FILE
from resnets.train import train

BASE = dict(data="digits", model="resnet20", image_size=16, eval_batch_size=512, progress=False, device="cpu",
            augment="crop", seed=0)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def test_the_optimizer_sees_the_mean_of_the_four_micro_batch_gradients(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "build_run_model", build_run_model)
    expected, handed = [], []
    step = train_module._Trainer.step

    def recording_step(self, x, y, sums):
        assert x.shape[0] == 64  # the step's whole batch
        if not handed:  # once: the hook sees what scaler.step hands the optimizer
            self.optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: handed.append([p.grad.clone() for p in self.model.parameters()]))
        # The expectation, by hand: each micro-batch of 16 on its own, gradients averaged.
        peer = copy.deepcopy(self.model)
        grads = []
        for i in range(4):
            peer.zero_grad()
            nn.functional.cross_entropy(peer(x[16 * i:16 * (i + 1)]), y[16 * i:16 * (i + 1)]).backward()
            grads.append([p.grad.clone() for p in peer.parameters()])
        expected.append([torch.stack(g).mean(0) for g in zip(*grads)])
        expected[-1].append([g[0] for g in zip(*grads)])  # the first micro-batch alone, for contrast
        step(self, x, y, sums)

    monkeypatch.setattr(train_module._Trainer, "step", recording_step)
    train(TrainConfig(**BASE, out=str(tmp_path / "run"), iters="3", batch_size=64, grad_accum_steps=4,
                      eval_every="3", warmup="0", lr=0.05))
    assert len(handed) == len(expected) == 3  # one optimizer step per iteration, not per micro-batch
    for got, want in zip(handed, expected):
        first_alone = want.pop()
        for a, b, c in zip(got, want, first_alone):
            # Float noise only: summing a/4 + b/4 + ... and stacking then averaging round differently.
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
            assert not torch.allclose(a, c, rtol=1e-3, atol=0)


def test_a_batch_that_does_not_divide_is_refused(tmp_path, capsys):
    flags = ["--data", "digits", "--image-size", "16", "--iters", "2", "--device", "cpu", "--no-progress"]
    assert main(["train", "--out", str(tmp_path / "r"), *flags, "--batch-size", "30", "--grad-accum-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "--grad-accum-steps 4" in err and "30" in err and "Traceback" not in err


RECIPE = dict(BASE, iters="8", batch_size=16, grad_accum_steps=4, eval_every="4", log_every=3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESNETS_CACHE", str(root / "cache"))
        train(TrainConfig(**RECIPE, out=str(root / "run")))
    return root / "run"


def _inside_the_window(monkeypatch, iteration: int, action) -> None:
    """Run `action` during the second of the four micro-batches of the step that reaches `iteration`."""
    accumulate = train_module._Trainer._accumulate
    calls = {"n": 0}

    def accumulating(self, x, y, micro_batches, sums):
        calls["n"] += 1
        accumulate(self, x, y, micro_batches, sums)
        if self.progress.iteration + 1 == iteration and calls["n"] % micro_batches == 2:
            action()

    monkeypatch.setattr(train_module._Trainer, "_accumulate", accumulating)


class Killed(Exception):
    pass


def _raise():
    raise Killed("killed inside the accumulation window")


@pytest.mark.parametrize("how", ["sigterm", "crash"])
def test_stopped_inside_an_accumulation_window_resumes_bit_identical(tmp_path, reference, monkeypatch, how):
    out = tmp_path / "run"
    cfg = TrainConfig(**RECIPE, out=str(out))
    if how == "sigterm":  # the step finishes, then the checkpoint is taken at its boundary
        _inside_the_window(monkeypatch, 7, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(train_module.TrainingStopped):
            train(cfg)
        assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 7
    else:  # the half-done step is lost; the last checkpoint (the evaluation at 4) is a step boundary
        _inside_the_window(monkeypatch, 7, _raise)
        with pytest.raises(Killed):
            train(cfg)
        assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 4
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["config"]["grad_accum_steps"] == 4


def test_accumulation_changes_what_bn_sees_and_says_so(tmp_path, reference, capsys):
    """With BN the micro-batches matter (so the reference is not a plain run), and the run says so."""
    whole = tmp_path / "whole"
    train(TrainConfig(**dict(RECIPE, grad_accum_steps=1), out=str(whole)))
    a, b = load_file(whole / "model.safetensors"), load_file(reference / "model.safetensors")
    running = [key for key in a if key.endswith("running_var")]
    assert running and any(not torch.equal(a[key], b[key]) for key in running)
    capsys.readouterr()
    train(TrainConfig(**RECIPE, out=str(tmp_path / "noted")))
    assert "BatchNorm normalizes over each micro-batch of 4 images" in capsys.readouterr().err


def test_micro_batch_size_sets_the_number_of_micro_batches_and_the_run_saves_it(tmp_path):
    out = tmp_path / "auto"
    assert main(["train", "--data", "digits", "--model", "resnet20", "--image-size", "16", "--device", "cpu",
                 "--no-progress", "--iters", "2", "--eval-every", "2", "--batch-size", "32",
                 "--grad-accum-steps", "auto", "--micro-batch-size", "8", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / CONFIG_FILE).read_text())["config"]
    assert (saved["grad_accum_steps"], saved["micro_batch_size"]) == (32 // 8, 8)


@pytest.mark.parametrize("flags, named", [
    (["--grad-accum-steps", "auto"], "--micro-batch-size"),
    (["--micro-batch-size", "12"], "--micro-batch-size 12"),
    (["--micro-batch-size", "8", "--grad-accum-steps", "2"], "disagree"),
])
def test_bad_micro_batch_flags_are_one_paragraph_errors(tmp_path, capsys, flags, named):
    assert main(["train", "--batch-size", "32", "--iters", "2", "--no-progress", "--out", str(tmp_path / "r"),
                 *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
