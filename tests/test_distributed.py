"""torchrun with gloo on the CPU: N processes equal one process with the same global batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")
RECIPE = ["--image-size", 16, "--batch-size", 32, "--eval-batch-size", 512, "--augment", "crop", "--no-progress"]


def launch(nproc: int, args, **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "resnets", "train", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def finish(process: subprocess.Popen) -> None:
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_processes_with_synced_bn_equal_one_process(tmp_path):
    args = [*RECIPE, "--iters", 4, "--eval-every", 2, "--sync-bn"]
    two = launch(2, ["--out", tmp_path / "two", *args])
    one = launch(1, ["--out", tmp_path / "one", *args])
    finish(two)
    finish(one)
    ours, reference = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(ours[key], value), key
    # Only rank 0 writes: one log line per evaluation.
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2
    config = (tmp_path / "two" / "config.yaml").read_text()
    assert "world_size: 2" in config


def test_two_process_run_killed_and_resumed_matches_uninterrupted(tmp_path):
    args = [*RECIPE, "--iters", 12, "--eval-every", 3, "--sync-bn"]
    reference = launch(2, ["--out", tmp_path / "reference", *args])
    finish(reference)
    killed = tmp_path / "killed"
    victim = launch(2, ["--out", killed, *args], start_new_session=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both workers at once
    victim.wait()
    assert not (killed / "results.json").exists()
    # Another process count is refused (the per-process batch would differ).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    one = subprocess.run([sys.executable, "-m", "resnets", "train", "--resume", str(killed)], env=env,
                         capture_output=True, text=True)
    assert one.returncode == 2 and "--allow-world-size-change" in one.stderr and "Traceback" not in one.stderr
    finish(launch(2, ["--resume", killed]))
    ours, theirs = weights(killed), weights(tmp_path / "reference")
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    iters = [json.loads(line)["iter"] for line in metrics.read_text().splitlines()]
    assert iters == [3, 6, 9, 12]


@pytest.mark.parametrize("world_size", [2])
def test_cross_process_bn_matches_batchnorm_in_one_process(world_size):
    # Single-process fallback: without a process group it is exactly BatchNorm2d.
    from resnets.models.sync_batchnorm import CrossProcessBatchNorm2d

    torch.manual_seed(0)
    bn, ours = torch.nn.BatchNorm2d(4), CrossProcessBatchNorm2d(4)
    x = torch.randn(8, 4, 5, 5)
    assert torch.equal(bn(x), ours(x))
