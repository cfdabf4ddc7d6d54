"""Preemption: signals stop a run with a checkpoint, checkpoints on their own clock, the
previous checkpoint as a fallback, a full disk, and relaunching the same command.

Single-process here (the 2-process torchrun cases are in test_distributed.py). Signals are sent
to the test process itself from inside a training step, so the stop lands at a known iteration.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnets import checkpoint as checkpoint_module
from resnets import runs
from resnets import train as train_module
from resnets.checkpoint import digest_path, save_checkpoint, verify_checkpoint
from resnets.cli import main
from resnets.config import TrainConfig, parse_checkpoint_every
from resnets.errors import UserError
from resnets.train import STOPPED_EXIT_STATUS, TrainingStopped, train

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Eight 16 px digits steps, evaluations at 4 and 8, log points at 3 and 6: a second or two in-process.
RECIPE = ["--image-size", 16, "--batch-size", 16, "--eval-batch-size", 512, "--iters", 8, "--eval-every", 4,
          "--log-every", 3, "--no-progress"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def run_cli(*args) -> int:
    return main(["train", *map(str, args)])


def signal_at(monkeypatch, iteration: int, signum=signal.SIGTERM, seed: int | None = None) -> None:
    """Send `signum` to this process during the step that reaches `iteration` (of the run with `seed`)."""
    step = train_module._Trainer.step

    def signalling_step(self, x, y, sums):
        step(self, x, y, sums)
        if self.progress.iteration + 1 == iteration and (seed is None or self.cfg.seed == seed):
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(train_module._Trainer, "step", signalling_step)


def iteration_of(path: Path) -> int:
    return torch.load(path, weights_only=True)["iteration"]


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    ours, theirs = load_file(run_dir / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def metric_rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def assert_same_logs(run_dir: Path, reference: Path) -> None:
    """Iterations and training statistics logged as by the uninterrupted run (timings aside)."""
    for name, keys in (("metrics.jsonl", ("iter", "trn/loss", "trn/acc", "val/nll", "tst/acc")),
                       ("train_metrics.jsonl", ("iter", "trn/loss", "trn/acc", "lr"))):
        ours, theirs = metric_rows(run_dir, name), metric_rows(reference, name)
        assert [{k: r[k] for k in keys} for r in ours] == [{k: r[k] for k in keys} for r in theirs], name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run of RECIPE."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESNETS_CACHE", str(root / "cache"))
        assert run_cli("--out", root / "run", *RECIPE) == 0
    return root / "run"


# --- signals --------------------------------------------------------------------------------


def test_sigterm_writes_a_checkpoint_mid_window_and_resume_ends_bit_identical(tmp_path, reference, monkeypatch,
                                                                                capsys):
    # Stopped at 7: between the evaluations at 4 and 8, after the log point at 6, with no clock due.
    # The checkpoint carries the loss sums of step 7 and of the window 5..6.
    out = tmp_path / "run"
    signal_at(monkeypatch, 7)
    assert run_cli("--out", out, *RECIPE) == STOPPED_EXIT_STATUS
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at iteration 7/8" in err and f"resnets train --resume {out}" in err
    assert "stopped by SIGTERM at iteration 7/8" in (out / "train.log").read_text()
    loop = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["loop"]
    assert loop["sums"][0, 2] == 16 and loop["window"][2] == 32  # images since the log point / evaluation
    assert iteration_of(out / "checkpoints" / "last.pt") == 7
    assert iteration_of(out / "checkpoints" / "previous.pt") == 4
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0
    assert "resuming" in capsys.readouterr().err
    assert_same_weights(out, reference)
    # The training loss of the log interval 6..9 and of the evaluation window 4..8 spans the stop.
    assert_same_logs(out, reference)
    assert tensorboard_steps(out, "trn/loss") == [3, 6] and tensorboard_steps(out, "val/acc") == [4, 8]


def test_stop_signals_record_the_first_and_a_second_ctrl_c_quits_at_once():
    # What was there before: Python's default, or SIG_IGN in a job started in the background.
    before = signal.getsignal(signal.SIGINT)
    with train_module._StopSignals(announce=False) as stops:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.signum == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated request changes nothing
        assert stops.signum == signal.SIGUSR1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_from_another_process_exits_75_with_a_checkpoint(tmp_path):
    # The real thing: another process signals `resnets train` at a moment it does not choose.
    out = tmp_path / "run"
    recipe = [str(v) for v in RECIPE]
    recipe[recipe.index("--iters") + 1] = "400"
    recipe[recipe.index("--eval-every") + 1] = "200"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    process = subprocess.Popen([sys.executable, "-m", "resnets", "train", "--out", str(out), *recipe], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dense = out / "train_metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (dense.exists() and len(dense.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == STOPPED_EXIT_STATUS, err
    stopped_at = iteration_of(out / "checkpoints" / "last.pt")
    assert 3 <= stopped_at < 400 and f"stopped by SIGTERM at iteration {stopped_at}/400" in err
    assert "Traceback" not in err


# --- checkpoints on their own clock -----------------------------------------------------------


def record_saves(monkeypatch) -> list[int]:
    saved: list[int] = []
    save = train_module.save_checkpoint

    def recording(path, state, previous=None):
        saved.append(state["iteration"])
        return save(path, state, previous)

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    return saved


def test_time_based_checkpoints_follow_the_clock(tmp_path, monkeypatch):
    # A fake clock that moves one minute per training step.
    now = [0.0]
    monkeypatch.setattr(train_module, "_clock", lambda: now[0])
    step = train_module._Trainer.step

    def minute_long_step(self, x, y, sums):
        step(self, x, y, sums)
        now[0] += 60.0

    monkeypatch.setattr(train_module._Trainer, "step", minute_long_step)
    saved = record_saves(monkeypatch)
    common = dict(data="digits", image_size=16, batch_size=16, eval_batch_size=512, iters="10", eval_every="7",
                  progress=False)
    train(TrainConfig(**common, checkpoint_every="3min", out=str(tmp_path / "clock")))
    # Every 3 minutes since the last checkpoint; the evaluation at 7 checkpoints and restarts the clock.
    assert saved == [3, 6, 7, 10]
    saved.clear()
    train(TrainConfig(**common, checkpoint_every="4", out=str(tmp_path / "iters")))
    assert saved == [4, 7, 8, 10]
    saved.clear()
    train(TrainConfig(**common, checkpoint_every="0", out=str(tmp_path / "evals")))
    assert saved == [7, 10]
    assert iteration_of(tmp_path / "clock" / "checkpoints" / "previous.pt") == 7


def test_checkpoint_every_parses_clock_iterations_and_epochs():
    assert parse_checkpoint_every("30min", total_iters=100, steps_per_epoch=10).seconds == 1800
    assert parse_checkpoint_every("1.5h", total_iters=100, steps_per_epoch=10).seconds == 5400
    assert parse_checkpoint_every("2ep", total_iters=100, steps_per_epoch=10).iterations == 20
    assert parse_checkpoint_every("5k", total_iters=100, steps_per_epoch=10).iterations == 5000
    off = parse_checkpoint_every("0", total_iters=100, steps_per_epoch=10)
    assert off.seconds is None and off.iterations is None
    with pytest.raises(UserError, match="checkpoint-every"):
        parse_checkpoint_every("soon", total_iters=100, steps_per_epoch=10)


# --- the previous checkpoint ----------------------------------------------------------------


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, monkeypatch, capsys):
    out = tmp_path / "run"
    signal_at(monkeypatch, 7)
    assert run_cli("--out", out, *RECIPE, "--checkpoint-every", 2) == STOPPED_EXIT_STATUS
    monkeypatch.undo()
    last, previous = out / "checkpoints" / "last.pt", out / "checkpoints" / "previous.pt"
    assert iteration_of(last) == 7 and iteration_of(previous) == 6
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()
    # --weights last readers take the intact one too.
    state, path = runs.weights_state(out, "last")
    assert path == previous and "fc.weight" in state
    assert "does not match the sha256" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "truncated or damaged" in err and f"continuing from {previous}" in err
    assert "resuming" in err and "at iteration 6/8" in err
    assert_same_weights(out, reference)
    assert_same_logs(out, reference)
    # The damaged file was not kept as the previous checkpoint: both are intact again.
    assert verify_checkpoint(last) and verify_checkpoint(previous)


def test_no_intact_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--out", out, *RECIPE, "--iters", 4, "--eval-every", 2) == 0
    (out / "results.json").unlink()
    for name in ("last.pt", "previous.pt"):
        (out / "checkpoints" / name).write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds no intact checkpoint" in err and "previous.pt" in err and "Traceback" not in err


def test_every_moment_of_a_checkpoint_write_leaves_an_intact_one(tmp_path, monkeypatch):
    # Stop the write before each of its file operations in turn, as a kill would.
    folder = tmp_path / "checkpoints"
    last, previous = folder / "last.pt", folder / "previous.pt"
    save_checkpoint(last, {"iteration": 1})
    save_checkpoint(last, {"iteration": 2}, previous=previous)
    operations = 0
    replace = os.replace

    def counting_replace(src, dst):
        nonlocal operations
        operations += 1
        if operations == fail_at:
            raise KeyboardInterrupt
        return replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", counting_replace)
    for fail_at in range(1, 10):
        operations = 0
        state = {"iteration": 3}
        try:
            save_checkpoint(last, state, previous=previous)
            completed = True
        except KeyboardInterrupt:
            completed = False
        found = runs.read_newest_checkpoint(tmp_path)
        assert found.iteration == (3 if completed else 2), fail_at
        assert not list(folder.glob(".*.tmp"))
        # Back to (last 2, previous 1) for the next case.
        monkeypatch.setattr(checkpoint_module.os, "replace", replace)
        for path in folder.iterdir():
            path.unlink()
        save_checkpoint(last, {"iteration": 1})
        save_checkpoint(last, {"iteration": 2}, previous=previous)
        monkeypatch.setattr(checkpoint_module.os, "replace", counting_replace)
        if completed:
            break
    assert fail_at > 3  # the write has several steps, and each was interrupted once


def test_digest_is_checked_on_the_bytes(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 5, "w": torch.arange(1000.0)})
    assert verify_checkpoint(path) is True
    assert digest_path(path).read_text().split()[1] == "last.pt"  # sha256sum's format
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the sha256"):
        verify_checkpoint(path)
    digest_path(path).unlink()
    assert verify_checkpoint(path) is False  # a checkpoint from before digests: loading is the check


# --- a full disk ----------------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    calls = [0]
    save = torch.save

    def filling_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] < 3:
            return save(obj, f, *args, **kwargs)
        f.write(b"\0" * 4096)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", filling_save)
    assert run_cli("--out", out, *RECIPE, "--iters", 6, "--eval-every", 2) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Nothing was replaced" in err and "at iteration 4" in err
    assert f"resnets train --resume {out}" in err and "Traceback" not in err
    checkpoints = out / "checkpoints"
    assert verify_checkpoint(checkpoints / "last.pt") and iteration_of(checkpoints / "last.pt") == 4
    assert verify_checkpoint(checkpoints / "previous.pt") and iteration_of(checkpoints / "previous.pt") == 2
    assert not list(checkpoints.glob(".*.tmp")) and not (out / "results.json").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0


# --- relaunching the same command -----------------------------------------------------------


def test_relaunch_with_the_same_out_continues_then_reports_a_finished_run(tmp_path, reference, monkeypatch, capsys):
    out = tmp_path / "run"
    signal_at(monkeypatch, 5, signal.SIGUSR1)
    assert run_cli("--out", out, *RECIPE) == STOPPED_EXIT_STATUS
    monkeypatch.undo()
    # Another recipe in the same --out is refused, naming the flag.
    assert run_cli("--out", out, *RECIPE, "--lr", 0.5) == 2
    assert "--lr 0.5 (run has 0.1)" in capsys.readouterr().err
    # The same command continues it; execution flags may differ.
    assert run_cli("--out", out, *RECIPE, "--checkpoint-every", "1h") == 0
    assert "resuming" in capsys.readouterr().err
    assert_same_weights(out, reference)
    results = (out / "results.json").read_text()
    # Once finished, the same command only reports it.
    assert run_cli("--out", out, *RECIPE) == 0
    captured = capsys.readouterr()
    assert "is finished" in captured.err and "tst/acc" in captured.out and str(out) in captured.out
    assert (out / "results.json").read_text() == results


def test_relaunch_of_a_run_stopped_before_its_first_checkpoint_starts_it_again(tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert run_cli("--out", out, *RECIPE) == 0
    for name in ("results.json", "model.safetensors", "checkpoints"):
        path = out / name
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
        else:
            path.unlink()
    assert run_cli("--out", out, *RECIPE) == 0
    assert "starting it again" in capsys.readouterr().err
    assert_same_weights(out, reference)
    assert [r["iter"] for r in metric_rows(out)] == [4, 8]


def test_deep_ensemble_member_stopped_by_a_signal_resumes_and_finished_members_are_kept(tmp_path, monkeypatch,
                                                                                       capsys):
    out = tmp_path / "ens"
    args = ["--method", "ensemble", "--ensemble-size", 2, "--out", out, *RECIPE, "--iters", 4, "--eval-every", 2]
    signal_at(monkeypatch, 3, seed=43)  # member_1 (seed 43), during its third step
    assert run_cli(*args) == STOPPED_EXIT_STATUS
    err = capsys.readouterr().err
    assert f"resnets train --resume {out}" in err  # the ensemble's directory, not the member's
    first = (out / "member_0" / "results.json").read_text()
    assert iteration_of(out / "member_1" / "checkpoints" / "last.pt") == 3
    monkeypatch.undo()
    assert run_cli(*args) == 0
    assert (out / "member_0" / "results.json").read_text() == first
    assert "resuming" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["ensemble_size"] == 2
    assert run_cli(*args) == 0
    assert "is finished" in capsys.readouterr().err


def test_api_raises_training_stopped(tmp_path, monkeypatch):
    signal_at(monkeypatch, 2, signal.SIGINT)
    cfg = TrainConfig(data="digits", image_size=16, batch_size=16, eval_batch_size=512, iters="4", eval_every="4",
                      progress=False, out=str(tmp_path / "run"))
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg)
    assert stopped.value.iteration == 2 and stopped.value.signal_name == "SIGINT"
    assert stopped.value.exit_status == STOPPED_EXIT_STATUS
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
