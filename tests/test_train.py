"""`resnets train` end to end: real formats, presets, exact resume after SIGKILL, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from formats import write_cifar10, write_downsampled, write_image_folders, write_npy, write_tinyimagenet
from resnets.cli import main
from resnets.config import TrainConfig
from resnets.presets import PRESETS
from resnets.train import train

TINY = ["--iters", "4", "--eval-every", "2", "--batch-size", "16", "--eval-batch-size", "256", "--no-progress"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def run_cli(*args) -> int:
    return main(["train", *map(str, args)])


def results(run_dir) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def test_digits_run_writes_the_whole_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--out", out, "--image-size", 16, *TINY) == 0
    summary = capsys.readouterr().out
    assert "tst/acc" in summary and str(out) in summary
    res = results(out)
    for key in ("val/acc", "tst/acc", "tst/nll", "tst/top5", "tst/ece", "iter_per_min", "params", "train_hours",
                "nan_grad_steps", "device"):
        assert key in res, key
    assert res["params"] == 272_464 and res["iters"] == 4 and res["nan_grad_steps"] == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["config"]["preset"] == "digits-resnet20" and saved["resolved"]["total_iters"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [2, 4]
    # Test metrics are those of the evaluation with the best val/acc.
    top = max(r["val/acc"] for r in records)
    best = [r for r in records if r["val/acc"] == top][-1]  # ties go to the later evaluation
    assert res["tst/acc"] == best["tst/acc"] and res["best_iter"] == best["iter"]
    assert len((out / "train.log").read_text().splitlines()) == 3
    assert list((out / "tb").iterdir())
    weights = load_file(out / "model.safetensors")
    assert "fc.weight" in weights and (out / "checkpoints" / "best.safetensors").is_file()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 4


def test_default_run_directory_follows_seed001_naming(tmp_path):
    assert run_cli("--runs-root", tmp_path, "--image-size", 16, *TINY) == 0
    (run_dir,) = [p.parent for p in tmp_path.rglob("results.json")]
    assert run_dir.relative_to(tmp_path).parts[:3] == ("digits", "resnet_20x1-batch_16-iter_4-lr_0.1-wd_0.0005", "42")


def test_every_preset_is_a_valid_config():
    assert len(PRESETS) >= 48
    for name, values in PRESETS.items():
        TrainConfig.from_dict(values)
    assert PRESETS["cifar10-resnet18x1-fp16"]["precision"] == "fp16"
    rs = PRESETS["resnetrs350-i320"]
    assert rs["dropout"] == 0.4 and rs["drop_path_rate"] == 0.1 and rs["image_size"] == 320
    be = PRESETS["ub-imagenet-resnet50-batchensemble"]
    assert be["method"] == "batchensemble" and be["milestones"] == "45ep,90ep,120ep"


def test_list_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(PRESETS) and listed[1].startswith("cifar10-resnet20x1")


def test_preset_with_overrides_on_cifar_pickles(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=20)
    out = tmp_path / "run"
    assert run_cli("--preset", "cifar10-resnet20x1", "--data-dir", tmp_path / "data", "--out", out, *TINY) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    cfg, resolved = saved["config"], saved["resolved"]
    assert cfg["preset"] == "cifar10-resnet20x1" and cfg["head_bias"] is False and cfg["iters"] == "4"
    # Seed 001's held-out tail of train: 100 images -> 18 validation images.
    assert resolved["train_size"] == 82 and resolved["val_size"] == 18 and resolved["test_size"] == 20
    assert resolved["num_classes"] == 10
    assert results(out)["params"] == 272_464


@pytest.mark.parametrize("kind", ["imagenet32", "npy", "tinyimagenet", "imagenet"])
def test_trains_on_each_real_format(tmp_path, kind):
    data = tmp_path / "data"
    extra: list = []
    if kind == "imagenet32":
        rng = np.random.default_rng(0)
        write_downsampled(data, "train_data_batch_1.npz", rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                          rng.integers(1, 1001, 40))
        write_downsampled(data, "val_data.npz", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
                          rng.integers(1, 1001, 10))
        expected_classes = 1000
    elif kind == "npy":
        data.mkdir()
        write_npy(data, n_train=40)
        expected_classes = 7
    elif kind == "tinyimagenet":
        write_tinyimagenet(data / "tiny-imagenet-200", per_class=8)
        extra = ["--image-size", 32]
        expected_classes = 3
    else:
        for split in ("train", "val"):
            write_image_folders(data / split, ["n01", "n02", "n03"], per_folder=6)
        extra = ["--image-size", 32, "--num-workers", 0, "--model", "resnet18"]
        expected_classes = 3
    out = tmp_path / "run"
    assert run_cli("--data", kind, "--data-dir", data, "--out", out, *extra, *TINY) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["resolved"]["num_classes"] == expected_classes
    assert results(out)["val/acc"] is not None


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    def error_of(*args) -> str:
        assert run_cli(*TINY, "--runs-root", tmp_path / "runs", *args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "cifar-10-batches-py" in error_of("--data", "cifar10", "--data-dir", tmp_path / "nowhere")
    assert "--preset" in error_of("--preset", "cifar10-resnet21x1")
    assert "--model" in error_of("--model", "resnet19", "--out", tmp_path / "m")
    assert "--iters" in error_of("--iters", "ten")
    assert "training split" in error_of("--data", "imagenet-v2", "--data-dir", tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert "already exists" in error_of("--out", tmp_path / "busy")
    with pytest.raises(SystemExit):
        run_cli("--no-such-flag")


def test_diverging_fp32_loss_stops_with_checkpoints_intact(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", out, "--image-size", 16, "--iters", 8, "--eval-every", 8, "--log-every", 1, "--warmup", 0,
            "--batch-size", 16, "--no-progress"]
    assert run_cli(*args, "--lr", 1e12) == 2
    err = capsys.readouterr().err
    # Diverged within the first steps, before the first checkpoint (iteration 8): none is named.
    assert "diverged" in err and "No checkpoint had been written yet" in err and "last.pt" not in err
    assert not (out / "results.json").exists()
    # Checkpoints every 2 iterations: the message names the last one, which is intact.
    later = tmp_path / "later"
    args = ["--out", later, "--image-size", 16, "--iters", 8, "--eval-every", 2, "--log-every", 1, "--warmup", 4,
            "--batch-size", 16, "--no-progress", "--lr", 1e12]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and str(later / "checkpoints" / "last.pt") in err
    kept = torch.load(later / "checkpoints" / "last.pt", weights_only=True)
    assert kept["iteration"] >= 2 and all(v.isfinite().all() for v in kept["model"].values() if v.is_floating_point())


def test_resume_refuses_a_different_recipe_and_missing_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--out", out, "--image-size", 16, *TINY) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "--lr 0.5" in capsys.readouterr().err
    # A finished run is not trained again.
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "is finished" in capsys.readouterr().err
    # A damaged checkpoint of a version without digest files is never unpickled.
    (out / "results.json").unlink()
    for name in ("previous.pt", "previous.pt.sha256", "last.pt.sha256"):
        (out / "checkpoints" / name).unlink()
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    assert "cannot be read safely" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a resnets run directory" in capsys.readouterr().err


def _train_subprocess(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    return subprocess.Popen([sys.executable, "-m", "resnets", "train", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def test_sigkill_then_resume_ends_bit_identical(tmp_path):
    # Dropout, stochastic depth and EMA make the RNG state and the EMA part of what must resume.
    recipe = ["--image-size", 16, "--iters", 24, "--eval-every", 6, "--batch-size", 16, "--eval-batch-size", 512,
              "--dropout", 0.2, "--drop-path-rate", 0.2, "--ema-decay", 0.9, "--log-every", 4, "--no-progress"]
    reference = _train_subprocess(["--out", tmp_path / "reference", *recipe])
    killed_dir = tmp_path / "killed"
    victim = _train_subprocess(["--out", killed_dir, *recipe])
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere between two checkpoints
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed_dir / "results.json").exists()
    resumed = _train_subprocess(["--resume", killed_dir, "--no-progress"])
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert reference.wait() == 0, reference.stderr.read().decode()
    ours, theirs = load_file(killed_dir / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    last = torch.load(killed_dir / "checkpoints" / "last.pt", weights_only=True)
    reference_last = torch.load(tmp_path / "reference" / "checkpoints" / "last.pt", weights_only=True)
    for key, value in reference_last["model"].items():
        assert torch.equal(last["model"][key], value), key
    iters = [json.loads(line)["iter"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert iters == [6, 12, 18, 24]
    # No log point twice, in the dense log and in TensorBoard, and none lost.
    dense = [json.loads(line)["iter"] for line in (killed_dir / "train_metrics.jsonl").read_text().splitlines()]
    assert dense == [4, 8, 12, 16, 20, 24]
    assert tensorboard_steps(killed_dir, "trn/loss") == dense
    assert tensorboard_steps(killed_dir, "val/acc") == [6, 12, 18, 24]


def tensorboard_steps(run_dir, tag) -> list[int]:
    """The steps of `tag` in the run's TensorBoard events, as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_dense_training_points_every_log_every_iterations(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--out", out, "--image-size", 16, "--iters", 10, "--eval-every", 5, "--log-every", 3,
                   "--batch-size", 16, "--no-progress") == 0
    rows = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [3, 6, 9]  # floor(10 / 3) points
    for row in rows:
        assert {"trn/loss", "trn/acc", "lr", "img_per_sec", "nan_grad_steps"} <= set(row)
        assert row["trn/loss"] > 0 and 0 <= row["trn/acc"] <= 1 and row["img_per_sec"] > 0
    for tag in ("trn/loss", "trn/acc", "lr", "img_per_sec"):
        assert tensorboard_steps(out, tag) == [3, 6, 9], tag
    assert tensorboard_steps(out, "val/acc") == [5, 10]


def test_batchensemble_and_swa_train_from_the_api(tmp_path):
    common = dict(data="digits", image_size=16, iters="6", eval_every="3", batch_size=16, eval_batch_size=512,
                  progress=False)
    be = train(TrainConfig(**common, method="batchensemble", ensemble_size=2, out=str(tmp_path / "be"))).to_json()
    assert be["ensemble_size"] == 2 and "tst/member/acc" in be
    swa = train(TrainConfig(**common, method="swa", swa_start=0.5, swa_every=1, out=str(tmp_path / "swa"))).to_json()
    assert swa["method"] == "swa" and swa["tst/acc"] is not None


@pytest.mark.slow
def test_default_digits_run_reaches_98_percent(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, "-m", "resnets", "train", "--runs-root", str(tmp_path), "--no-progress"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (result,) = tmp_path.rglob("results.json")
    assert json.loads(result.read_text())["tst/acc"] >= 0.98


def test_deep_ensemble_trains_members_with_consecutive_seeds(tmp_path):
    out = tmp_path / "ens"
    assert run_cli("--method", "ensemble", "--ensemble-size", 2, "--out", out, "--image-size", 16, *TINY) == 0
    res = results(out)
    seeds = [yaml.safe_load((out / f"member_{k}" / "config.yaml").read_text())["config"]["seed"] for k in (0, 1)]
    assert seeds == [42, 43]
    assert res["method"] == "ensemble" and res["ensemble_size"] == 2
    assert res["params"] == 2 * results(out / "member_0")["params"]
    # -log of a mean probability never exceeds the mean of -logs (Jensen).
    assert res["tst/nll"] <= res["tst/member/nll"] + 1e-9
    assert "tst/diversity/disagreement" in res


def test_fp16_steps_with_non_finite_gradients_are_skipped_and_counted(tmp_path, monkeypatch):
    import functools

    # A loss scale this large overflows every fp16 backward pass: each step must be skipped.
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 120))
    cfg = TrainConfig(data="digits", image_size=16, iters="4", eval_every="2", batch_size=16, eval_batch_size=512,
                      precision="fp16", progress=False, out=str(tmp_path / "run"))
    res = train(cfg).to_json()  # skipped steps are not divergence: no error
    assert res["nan_grad_steps"] == 4 and res["precision"] == "fp16"



@pytest.mark.parametrize("preset", ["resnetrs50-i160", "ub-imagenet-resnet50-batchensemble",
                                    "imagenet-resnet50x1-b2048-fp16"])
def test_imagenet_presets_run_on_jpeg_folders(tmp_path, preset):
    # RandAugment, label smoothing, EMA, epoch-based schedules and BatchEnsemble on the JPEG path,
    # shrunk to 32 px and a handful of images.
    data = tmp_path / "imagenet"
    for split in ("train", "val"):
        write_image_folders(data / split, ["n01", "n02", "n03"], per_folder=4)
    out = tmp_path / "run"
    assert run_cli("--preset", preset, "--data-dir", data, "--out", out, "--image-size", 32, "--batch-size", 4,
                   "--iters", 2, "--warmup", 1, "--eval-every", 1, "--precision", "fp32", "--num-workers", 0,
                   "--no-eval-train",
                   "--no-progress") == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["config"]["preset"] == preset and saved["resolved"]["steps_per_epoch"] == 3
    assert results(out)["val/acc"] is not None


def test_deterministic_algorithms_hold_for_the_run_and_are_put_back(tmp_path, monkeypatch):
    import resnets.train as train_module

    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic)
    during = []
    monkeypatch.setattr(train_module, "_train", lambda *a: during.append(
        (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic)))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that monkeypatch removes it again afterwards
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    common = dict(data="digits", image_size=16, iters="2", device="cpu", progress=False)
    train(TrainConfig(**common, use_deterministic_algorithms=True, out=str(tmp_path / "a")))
    assert during[-1] == (True, False, True)
    # The value cuBLAS documents for deterministic GEMMs (CUDA toolkit docs, "Results reproducibility").
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic) == before
    train(TrainConfig(**common, out=str(tmp_path / "b")))
    assert during[-1] == before  # on the CPU the default changes nothing (cuDNN autotuning is for CUDA)


def test_a_run_with_deterministic_algorithms_trains(tmp_path):
    # Every op of the loop, the evaluation and the checkpoint has a deterministic kernel on the CPU
    # (torch raises otherwise), and the flag is recorded in the run's config.
    out = tmp_path / "run"
    assert run_cli("--data", "digits", "--image-size", "16", "--iters", "3", "--eval-every", "3",
                   "--batch-size", "16", "--use-deterministic-algorithms", "--no-progress", "--out", str(out)) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["use_deterministic_algorithms"] is True
    assert not torch.are_deterministic_algorithms_enabled()
