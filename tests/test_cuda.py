"""The CUDA path: reduced precision, skipped fp16 steps, bit-exact resume, SyncBatchNorm under
NCCL and torch.compile, each through `resnets train` on the bundled digits.

Every test needs a CUDA GPU and is skipped cleanly without one. On a GPU they take a few
minutes in all; `python benchmarks/gpu_suite.py --parts cuda_tests` runs them and records the
outcome in benchmarks/results/cuda_tests_gpu.md.

The tests that compare runs bit for bit train with --use-deterministic-algorithms (a resume
keeps it from the run's config).
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from resnets.cli import main
from resnets.config import TrainConfig
from resnets.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[1]
SRC = str(REPO / "src")
DETERMINISTIC = "--use-deterministic-algorithms"
LAUNCH_ONE = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC, **extra)


def _popen(command, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([str(c) for c in command], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate()
    assert process.returncode == 0, output[-4000:]
    return output


def _train_cli(args) -> subprocess.Popen:
    return _popen([sys.executable, "-m", "resnets", "train", *args])


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _assert_same_tensors(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_decreases_the_loss(tmp_path, precision):
    out = tmp_path / "run"
    assert main(["train", "--device", "cuda", "--precision", precision, "--iters", "150", "--eval-every", "50",
                 "--out", str(out), "--no-progress"]) == 0
    losses = [r["trn/loss"] for r in _records(out)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    # Mean training loss of iterations 101-150 against 1-50.
    assert losses[-1] < 0.5 * losses[0], losses
    res = _results(out)
    assert res["precision"] == precision and res["tst/acc"] >= 0.8, res
    saved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    assert saved["device"].startswith("cuda") and saved["channels_last"] is True
    if precision == "bf16":
        assert res["nan_grad_steps"] == 0
    else:  # the dynamic loss scale may start too high for a few steps
        assert res["nan_grad_steps"] <= 15, res["nan_grad_steps"]


def test_fp16_steps_with_non_finite_gradients_are_skipped_and_counted_on_cuda(tmp_path, monkeypatch):
    # tests/test_train.py's CPU test, on the GPU: a loss scale this large overflows every fp16
    # backward pass, so each step must be skipped (and the weights never updated).
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 120))
    cfg = TrainConfig(data="digits", image_size=16, iters="4", eval_every="2", batch_size=16, eval_batch_size=512,
                      precision="fp16", device="cuda", progress=False, out=str(tmp_path / "run"))
    train(cfg)  # skipped steps are not divergence: no error
    res = _results(tmp_path / "run")
    assert res["nan_grad_steps"] == 4 and res["precision"] == "fp16"
    last = _last(tmp_path / "run")
    assert last["optimizer"]["state"] == {}  # no optimizer step was taken
    assert last["scaler"]["scale"] == 2.0 ** 116  # halved at each of the 4 skipped steps


def test_sigkill_then_resume_ends_bit_identical_on_cuda(tmp_path):
    # As tests/test_train.py does on the CPU, on the GPU with its default precision (bf16) and
    # channels_last; dropout, stochastic depth and EMA make the CUDA RNG state part of the resume.
    recipe = ["--device", "cuda", "--iters", 300, "--eval-every", 20, "--batch-size", 64, "--eval-batch-size", 512,
              "--dropout", 0.2, "--drop-path-rate", 0.2, "--ema-decay", 0.9, "--no-progress"]
    reference = _train_cli(["--out", tmp_path / "reference", *recipe, DETERMINISTIC])
    killed = tmp_path / "killed"
    victim = _train_cli(["--out", killed, *recipe, DETERMINISTIC])
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    if (killed / "results.json").exists():
        pytest.fail("the run finished before it could be killed: give the recipe more --iters")
    assert (killed / "checkpoints" / "last.pt").exists()
    _finish(_train_cli(["--resume", killed, "--no-progress"]))
    _finish(reference)
    _assert_same_tensors(load_file(killed / "model.safetensors"),
                         load_file(tmp_path / "reference" / "model.safetensors"))
    ours, theirs = _last(killed), _last(tmp_path / "reference")
    _assert_same_tensors(ours["model"], theirs["model"])
    _assert_same_tensors(ours["ema"], theirs["ema"])
    assert [r["iter"] for r in _records(killed)] == list(range(20, 301, 20))
    assert _results(killed)["tst/acc"] == _results(tmp_path / "reference")["tst/acc"]


SYNC_BN_SCRIPT = """
import os
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction

torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
assert dist.get_backend() == "nccl" and dist.get_world_size() == 1
torch.manual_seed(0)
for memory_format in (torch.contiguous_format, torch.channels_last):
    x = torch.randn(8, 6, 5, 7, device="cuda").contiguous(memory_format=memory_format)
    weight, bias = torch.rand(6, device="cuda") + 0.5, torch.randn(6, device="cuda")
    grad = torch.randn_like(x)

    def run(function):
        xi, wi, bi = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
        mean, var = torch.zeros(6, device="cuda"), torch.ones(6, device="cuda")
        y = function(xi, wi, bi, mean, var)
        y.backward(grad)
        return y.detach(), xi.grad, wi.grad, bi.grad, mean, var

    # nn.SyncBatchNorm normalizes locally at world size 1; its function is what N GPUs run:
    # statistics all-gathered through NCCL, then the sync-BN CUDA kernels, forward and backward.
    synced = run(lambda xi, wi, bi, mean, var: SyncBatchNormFunction.apply(
        xi, wi, bi, mean, var, 1e-5, 0.1, dist.group.WORLD, 1))
    local = run(lambda xi, wi, bi, mean, var: F.batch_norm(xi, mean, var, wi, bi, True, 0.1, 1e-5))
    for name, a, b in zip(("out", "grad x", "grad weight", "grad bias", "running mean", "running var"), synced, local):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
dist.destroy_process_group()
print("SYNC-BN-NCCL-OK")
"""


def test_sync_batchnorm_all_gathers_through_nccl_and_matches_batchnorm(tmp_path):
    script = tmp_path / "sync_bn.py"
    script.write_text(SYNC_BN_SCRIPT)
    assert "SYNC-BN-NCCL-OK" in _finish(_popen([*LAUNCH_ONE, script]))


DDP_RECIPE = ["--device", "cuda", "--precision", "fp32", "--sync-bn", "--iters", 20, "--eval-every", 10,
              "--batch-size", 64, "--eval-batch-size", 512, "--no-progress"]


def test_torchrun_one_process_with_sync_bn_completes(tmp_path):
    out = tmp_path / "run"
    _finish(_popen([*LAUNCH_ONE, "-m", "resnets", "train", *DDP_RECIPE, "--out", out]))
    assert _results(out)["iters"] == DDP_RECIPE[DDP_RECIPE.index("--iters") + 1]
    assert yaml.safe_load((out / "config.yaml").read_text())["resolved"]["world_size"] == 1


def test_trainer_in_an_nccl_process_group_of_one_equals_a_plain_run(tmp_path):
    # resnets.distributed makes no process group for one process; benchmarks/gpu_suite.py's
    # wrapper makes one, so DDP, SyncBatchNorm, barriers and broadcasts all run over NCCL.
    forced = _popen([*LAUNCH_ONE, REPO / "benchmarks" / "gpu_suite.py", "--_train-in-process-group", *DDP_RECIPE,
                     "--out", tmp_path / "ddp", DETERMINISTIC])
    output = _finish(forced)
    assert "process group: nccl, world size 1" in output
    _finish(_train_cli([*DDP_RECIPE, "--out", tmp_path / "plain", DETERMINISTIC]))
    ours, reference = _last(tmp_path / "ddp")["model"], _last(tmp_path / "plain")["model"]
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(ours[key], value), key


def test_compile_gives_the_eager_loss_curve_on_cuda(tmp_path):
    # fp32 (cuDNN's TF32 convolutions in both), 40 iterations logged every 10: each logged mean
    # training loss of the compiled run within 5% (+0.02) of eager's, the first within 1%.
    recipe = ["--device", "cuda", "--precision", "fp32", "--iters", 40, "--eval-every", 10, "--no-progress"]
    _finish(_train_cli([*recipe, "--out", tmp_path / "eager"]))
    _finish(_train_cli([*recipe, "--compile", "--out", tmp_path / "compiled"]))
    eager = [r["trn/loss"] for r in _records(tmp_path / "eager")]
    compiled = [r["trn/loss"] for r in _records(tmp_path / "compiled")]
    assert len(eager) == len(compiled) == 4
    assert compiled[0] == pytest.approx(eager[0], rel=1e-2)
    assert compiled == pytest.approx(eager, rel=0.05, abs=0.02)
    assert _results(tmp_path / "compiled")["tst/acc"] == pytest.approx(_results(tmp_path / "eager")["tst/acc"],
                                                                        abs=0.05)
    assert yaml.safe_load((tmp_path / "compiled" / "config.yaml").read_text())["config"]["compile"] is True
