"""--logger mlflow / wandb: a short digits run as the trackers' own clients read it back."""
from __future__ import annotations

import builtins
import json

import pytest

from resnets import runs
from resnets.cli import main

RUN = ["train", "--iters", "20", "--eval-every", "10", "--log-every", "5", "--image-size", "16", "--device", "cpu",
       "--no-progress"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def test_mlflow_sees_the_metrics_and_the_config(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    out = tmp_path / "run"
    assert main([*RUN, "--logger", "tensorboard,mlflow", "--out", str(out)]) == 0
    found = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED"
    assert {"val/acc", "tst/ece", "tst/nll", "trn/loss", "lr"} <= set(run.data.metrics)
    params = run.data.params
    assert params["model"] == "resnet20" and params["iters"] == "20" and params["logger"] == "tensorboard,mlflow"
    # The history has both evaluations, at their iterations.
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == [10, 20]
    results = json.loads((out / runs.RESULTS_FILE).read_text())
    assert run.data.metrics["final/val/acc"] == pytest.approx(results["val/acc"])
    assert (out / runs.TENSORBOARD_DIR).is_dir()


def test_wandb_offline_run_records_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    (tmp_path / "wandb").mkdir()
    assert main([*RUN, "--logger", "wandb", "--out", str(out)]) == 0
    run_id = json.loads((out / runs.TRACKERS_FILE).read_text())["wandb"]
    records = list((tmp_path / "wandb").rglob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(records) == 1
    # The run file is W&B's protobuf log; its keys are stored as plain strings.
    data = records[0].read_bytes()
    assert all(key in data for key in (b"val/acc", b"tst/ece", b"trn/loss", b"resnet20"))
    assert not (out / runs.TENSORBOARD_DIR).exists()  # only the named loggers


class FakeWandbRun:
    def __init__(self, calls, **kwargs):
        self.calls, self.summary = calls, {}
        calls.append(("init", kwargs))

    def log(self, values, step):
        self.calls.append(("log", step, dict(values)))

    def finish(self, exit_code):
        self.calls.append(("finish", exit_code, dict(self.summary)))


def test_wandb_gets_the_config_every_point_the_results_and_the_same_id_on_resume(tmp_path, monkeypatch):
    import sys
    import types

    calls: list = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: FakeWandbRun(calls, **kwargs)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    assert main([*RUN, "--logger", "wandb", "--out", str(out)]) == 0
    init = calls[0][1]
    assert init["config"]["model"] == "resnet20" and init["config"]["iters"] == "20" and init["resume"] == "allow"
    steps = [c[1] for c in calls if c[0] == "log"]
    assert steps == sorted(steps) and {5, 10, 15, 20} <= set(steps)
    logged = {k for c in calls if c[0] == "log" for k in c[2]}
    assert {"val/acc", "tst/ece", "trn/loss", "lr"} <= logged
    finish = calls[-1]
    results = json.loads((out / runs.RESULTS_FILE).read_text())
    assert finish[:2] == ("finish", 0) and finish[2]["val/acc"] == pytest.approx(results["val/acc"])
    first_id = init["id"]
    assert json.loads((out / runs.TRACKERS_FILE).read_text())["wandb"] == first_id
    # A resume opens the run's log again and continues the same W&B run.
    calls.clear()
    from resnets.run_log import WandbLog
    WandbLog(out, {}, "run")
    assert calls[0][1]["id"] == first_id


def test_a_missing_tracker_package_names_the_pip_line(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    out = tmp_path / "run"
    assert main([*RUN, "--logger", "mlflow", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install mlflow" in err and "Traceback" not in err
    assert not (out / runs.CONFIG_FILE).exists()


def test_an_unknown_logger_is_a_one_paragraph_error(tmp_path, capsys):
    assert main([*RUN, "--logger", "tensorboard,comet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--logger" in err and "mlflow" in err and "Traceback" not in err
