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


def launch(nproc: int, args, torchrun_args=(), entry=("-m", "resnets"), **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               *torchrun_args, *entry, "train", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def finish(process: subprocess.Popen) -> None:
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_processes_with_synced_bn_equal_one_process(tmp_path):
    # One step: both runs sum the same 32 samples' float32 statistics and gradients in another
    # order, so they agree to rounding (measured 1.2e-7); unsynced BN (per-process statistics of
    # 16 samples) differs by ~1e-2 at this step.
    args = [*RECIPE, "--iters", 1, "--eval-every", 1, "--sync-bn"]
    two = launch(2, ["--out", tmp_path / "two", *args])
    one = launch(1, ["--out", tmp_path / "one", *args])
    finish(two)
    finish(one)
    ours, reference = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(ours[key], value), key
    # The logged training loss is the global batch's, not rank 0's half.
    two_log, one_log = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("two", "one"))
    assert two_log["trn/loss"] == pytest.approx(one_log["trn/loss"], rel=1e-5)
    assert two_log["trn/acc"] == one_log["trn/acc"]
    config = (tmp_path / "two" / "config.yaml").read_text()
    assert "world_size: 2" in config


def test_two_processes_train_like_one_over_several_steps(tmp_path):
    # Over several steps the rounding differences of the first grow (measured here: 2.4e-3 in the
    # weights after 4 steps, as much as between two thread counts over longer runs), so the runs
    # are compared by what they predict: validation NLL within 0.1% (measured 2e-5).
    args = [*RECIPE, "--iters", 4, "--eval-every", 2, "--sync-bn"]
    two = launch(2, ["--out", tmp_path / "two", *args])
    one = launch(1, ["--out", tmp_path / "one", *args])
    finish(two)
    finish(one)
    logs = {d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("two", "one")}
    # Only rank 0 writes: one log line per evaluation.
    assert [r["iter"] for r in logs["two"]] == [2, 4]
    for ours, reference in zip(logs["two"], logs["one"]):
        assert ours["val/nll"] == pytest.approx(reference["val/nll"], rel=1e-3)
        assert ours["trn/loss"] == pytest.approx(reference["trn/loss"], rel=1e-3)


# `resnets train` with tests/no_batchnorm.py's model in place of the zoo's.
NO_BATCHNORM = (str(Path(__file__).with_name("no_batchnorm.py")),)


def test_two_processes_with_accumulation_equal_one_process(tmp_path):
    # Without BatchNorm the mean gradient of the global batch does not depend on how it is cut:
    # two processes x two micro-batches of 8 (all-reduced once, on the last one, under no_sync),
    # one process x two micro-batches of 16, and one process without accumulation all sum the
    # same 32 per-sample gradients, in another order. The reference for the float noise is the
    # last pair: accumulation against none, both in one process (measured 4.5e-8 after 3 steps;
    # two processes against one, 6.0e-8).
    args = [*RECIPE, "--iters", 3, "--eval-every", 3, "--lr", 0.05, "--warmup", 0]
    runs = {"two": (2, 2), "one": (1, 2), "plain": (1, 1)}
    for name, (nproc, accum) in runs.items():
        finish(launch(nproc, ["--out", tmp_path / name, *args, "--grad-accum-steps", accum], entry=NO_BATCHNORM))
    two, one, plain = (weights(tmp_path / name) for name in runs)
    noise = max(float((one[k] - plain[k]).abs().max()) for k in plain)
    assert "grad_accum_steps: 2" in (tmp_path / "two" / "config.yaml").read_text()
    for key, value in one.items():
        # Within ten times the noise of accumulating at all (or 1e-6 where that noise is 0).
        torch.testing.assert_close(two[key], value, rtol=0, atol=max(10 * noise, 1e-6), msg=key)
        assert not torch.equal(value, weights_at_start(tmp_path)[key]), key  # it trained
    logs = {d: json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("two", "one")}
    assert logs["two"]["trn/loss"] == pytest.approx(logs["one"]["trn/loss"], rel=1e-5)
    assert logs["two"]["val/nll"] == pytest.approx(logs["one"]["val/nll"], rel=1e-5)


def weights_at_start(tmp_path: Path) -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from no_batchnorm import NoBatchNorm
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    return NoBatchNorm(10).state_dict()


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
    # The launcher and both workers at once (torchrun starts each worker in a session of its own,
    # so killing the launcher's process group would leave them running).
    kill_all(victim, signal.SIGKILL)
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


def test_torchrun_prints_one_summary_and_no_deprecation_warning(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "resnets", "train", "--out", str(tmp_path / "run"), *map(str, RECIPE), "--iters", "2",
               "--eval-every", "2", "--sync-bn"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1, done.stdout
    assert "val/acc -" not in done.stdout
    assert "deprecat" not in done.stderr.lower(), done.stderr[-3000:]


# --- preemption (tests/test_preemption.py has the single-process cases) ------------------------

PREEMPTED = [*RECIPE, "--iters", 24, "--eval-every", 8, "--log-every", 2, "--sync-bn"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run of PREEMPTED."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(launch(2, ["--out", out, *PREEMPTED]))
    return out


def wait_for_lines(path: Path, lines: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{path} did not reach {lines} lines: {process.communicate()[1].decode()[-3000:]}")


def workers_of(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the torchrun workers (children of the launcher)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ranks = [int(v[5:]) for v in environ if v.startswith(b"RANK=")]
        if parent == launcher.pid and ranks:
            workers[ranks[0]] = int(entry.name)
    return workers


def worker_of(launcher: subprocess.Popen, rank: int) -> int:
    workers = workers_of(launcher)
    assert rank in workers, f"no worker of rank {rank} under torchrun {launcher.pid}"
    return workers[rank]


def kill_all(launcher: subprocess.Popen, signum: int) -> None:
    """`signum` to the launcher and its workers, as a scheduler signals every process of a job."""
    workers = list(workers_of(launcher).values())
    assert workers, f"no workers under torchrun {launcher.pid}"
    for pid in [launcher.pid, *workers]:
        os.kill(pid, signum)
    if signum == signal.SIGKILL:
        for pid in workers:  # gone (or a zombie) before the test looks at their files
            while Path(f"/proc/{pid}").exists() and "\nState:\tZ" not in _status(pid):
                time.sleep(0.01)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "\nState:\tZ"


def test_two_process_sigterm_stops_both_at_one_step_and_resume_ends_bit_identical(tmp_path, uninterrupted):
    # SIGTERM to the launcher and both workers at once, as a scheduler's preemption does (torchrun
    # also forwards it to the workers). Both must stop after the same step, with one checkpoint.
    stopped = tmp_path / "stopped"
    victim = launch(2, ["--out", stopped, *PREEMPTED])
    wait_for_lines(stopped / "train_metrics.jsonl", 2, victim)
    kill_all(victim, signal.SIGTERM)
    err = victim.communicate(timeout=300)[1].decode()
    last = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    at = last["iteration"]
    assert 4 <= at < 24 and last["world_size"] == 2, err[-3000:]
    assert f"stopped by SIGTERM at iteration {at}/24" in err, err[-3000:]
    assert err.count("resnets train: stopped by") == 1  # rank 0 says it, once
    assert "torchrun --standalone --nproc-per-node 2 -m resnets train --resume" in err
    assert f"stopped by SIGTERM at iteration {at}/24" in (stopped / "train.log").read_text()
    assert not (stopped / "results.json").exists()
    finish(launch(2, ["--resume", stopped]))
    ours, theirs = weights(stopped), weights(uninterrupted)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    for name in ("metrics.jsonl", "train_metrics.jsonl"):
        rows = [json.loads(line) for line in (stopped / name).read_text().splitlines()]
        reference = [json.loads(line) for line in (uninterrupted / name).read_text().splitlines()]
        assert [(r["iter"], r["trn/loss"]) for r in rows] == [(r["iter"], r["trn/loss"]) for r in reference], name


def test_torchrun_max_restarts_continues_after_a_worker_is_killed(tmp_path, uninterrupted):
    # One worker SIGKILLed after the first checkpoint: torchrun restarts both, which find the
    # checkpoint in --out and continue; the run completes on its own, as if never interrupted.
    out = tmp_path / "run"
    run = launch(2, ["--out", out, *PREEMPTED], torchrun_args=["--max-restarts", "1"])
    wait_for_lines(out / "metrics.jsonl", 1, run)
    deadline = time.time() + 60
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)  # renamed into place once complete
    os.kill(worker_of(run, 0), signal.SIGKILL)  # rank 0, the one that writes the files
    err = run.communicate(timeout=600)[1].decode()  # read while it runs: a full pipe would block it
    assert run.returncode == 0, err[-3000:]
    assert "resuming" in err and "at iteration 8/24" in err, err[-3000:]
    ours, theirs = weights(out), weights(uninterrupted)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    assert [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [8, 16, 24]
    assert (out / "results.json").exists()
