"""End to end through the real writer: run directories made by `resnets train` (tiny settings)
and read back by `resnets eval` and `resnets report`, with default worker counts."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest
from formats import write_image_folders

from resnets import runs as run_files
from resnets.cli import main

TINY = ["--model", "resnet20", "--image-size", "16", "--batch-size", "6", "--iters", "2", "--eval-every", "2",
        "--eval-batch-size", "64", "--no-progress", "--device", "cpu"]
WNIDS = ["n01", "n02", "n03"]


def cli(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory):
    """ImageNet's train/<wnid> and val/<wnid> layout and ImageNet-V2's numbered folders."""
    root = tmp_path_factory.mktemp("jpeg")
    write_image_folders(root / "imagenet" / "train", WNIDS, per_folder=4)
    write_image_folders(root / "imagenet" / "val", WNIDS, per_folder=2, seed=7)
    write_image_folders(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val", ["0", "1", "2"],
                        per_folder=2, seed=8)
    return root


@pytest.fixture(scope="module")
def jpeg_run(jpeg_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "imagenet"
    assert main(["train", "--data", "imagenet", "--data-dir", str(jpeg_data / "imagenet"), "--out", str(run),
                 *TINY]) == 0
    return run


def test_eval_of_a_jpeg_run_reports_what_training_reported(jpeg_run, capsys):
    # ImageNet ships no test set: training reports the official val set, and so does eval by default.
    capsys.readouterr()
    cli(capsys, "eval", jpeg_run)
    report = json.loads((jpeg_run / run_files.EVAL_FILE).read_text())
    results = run_files.read_results(jpeg_run)
    assert report["split"] == "val"
    for key in ("nll", "acc", "ece", "brier"):
        assert report["metrics"][key] == pytest.approx(results.metrics[f"val/{key}"], rel=1e-6, abs=1e-9)


def test_eval_with_imagenet_v2_shift_and_default_workers(jpeg_run, jpeg_data, capsys, tmp_path):
    out = cli(capsys, "eval", jpeg_run, "--shift-data", "imagenet-v2", "--shift-data-dir", jpeg_data / "imagenetv2",
              "--out", tmp_path / "eval.json")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["shift"]["data"] == "imagenet-v2" and report["shift"]["count"] == 6
    assert 0.0 <= report["metrics"]["shift/acc"] <= 1.0
    assert "shift: imagenet-v2/test (6 images)" in out


def test_deep_ensemble_on_jpeg_folders_with_default_workers(jpeg_data, tmp_path, capsys):
    out = cli(capsys, "train", "--data", "imagenet", "--data-dir", jpeg_data / "imagenet", "--method", "ensemble",
              "--ensemble-size", "2", "--out", tmp_path / "ens", *TINY)
    results = run_files.read_results(tmp_path / "ens")
    assert results.method == "ensemble" and results.members == ["member_0", "member_1"]
    assert {"val/nll", "val/acc", "val/member/acc", "val/diversity/disagreement"} <= set(results.metrics)
    assert out.count("run directory:") == 1


def test_report_merges_seeds_of_one_config(tmp_path, capsys):
    for seed in (1, 2, 3):
        cli(capsys, "train", "--runs-root", tmp_path / "runs", "--seed", seed, *TINY)
    text = cli(capsys, "report", tmp_path / "runs", "--table", "seed001")
    rows = [line for line in text.splitlines() if line.startswith("|") and "20" in line.split("|")[1]]
    assert len(rows) == 1, text
    accuracies = [run_files.read_results(p.parent).metrics["tst/acc"]
                  for p in (tmp_path / "runs").rglob(run_files.RESULTS_FILE)]
    mean = sum(accuracies) / 3
    assert re.search(rf"{mean:.3f} ± \d\.\d{{3}}", rows[0]), rows[0]
    assert "3 seeds" in rows[0], rows[0]

    table = list(csv.DictReader(io.StringIO(cli(capsys, "report", tmp_path / "runs", "--table", "seed001",
                                                "--format", "csv"))))
    assert len(table) == 1
    assert any("±" in value for value in table[0].values())
