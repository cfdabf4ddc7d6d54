"""A training run's log: where its training points, evaluations and notes go.

`RunLog` hands each record to its loggers. Two are built in: `RunFiles` (metrics.jsonl,
train_metrics.jsonl and train.log, in the format runs.py owns and reads back) and
`TensorBoardLog` (the run's tb/ folder). The experiment trackers `MLflowLog` and `WandbLog`
are chosen by --logger; another destination is one more `Logger` subclass passed to
`RunLog.open(..., extra=[...])`; it gets the same calls.

A resume first drops what a killed run logged after its checkpoint, so nothing is doubled:
`runs.truncate_logs` for the files, TensorBoard's purge_step for its events.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import runs
from .distributed import DistEnv
from .errors import UserError

# Evaluation entries that TensorBoard gets from the dense training points instead.
DENSE_KEYS = ("trn/loss", "trn/acc", "lr")


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class Logger:
    """One destination of a run's log. Every method may be left as it is (it does nothing)."""

    def train_point(self, iteration: int, values: Mapping[str, float]) -> None:
        """A dense training point, every --log-every iterations (trn/loss, trn/acc, lr, img_per_sec...)."""

    def evaluation(self, iteration: int, total: int, values: Mapping[str, float]) -> None:
        """An evaluation: the window's training statistics and the val/ and tst/ metrics."""

    def note(self, line: str) -> None:
        """A line of text about the run (its header, a resume, a stop), already formatted."""

    def finished(self, values: Mapping[str, float]) -> None:
        """The run's results (results.json's metrics: the best evaluation, or the final weights')."""

    def close(self, status: str = "finished") -> None:
        """The run finished ("finished") or was stopped by a signal ("stopped")."""


class RunFiles(Logger):
    """metrics.jsonl (evaluations), train_metrics.jsonl (training points) and train.log (both, as text)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def train_point(self, iteration, values):
        runs.append_train_metrics(self.run_dir, iteration, values)

    def evaluation(self, iteration, total, values):
        runs.append_metrics(self.run_dir, iteration, values)
        runs.append_log(self.run_dir, runs.log_line(iteration, total, values))

    def note(self, line):
        runs.append_log(self.run_dir, line)


class TensorBoardLog(Logger):
    """Scalars in the run's tb/ folder: training points densely, evaluations without their copies of those."""

    def __init__(self, run_dir: Path, resumed_at: int | None = None):
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops events a killed run wrote after its checkpoint (those at the
        # checkpoint's own step were written before it, so they stay).
        self.writer = SummaryWriter(str(run_dir / runs.TENSORBOARD_DIR),
                                    purge_step=resumed_at + 1 if resumed_at is not None else None)

    def train_point(self, iteration, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, iteration)

    def evaluation(self, iteration, total, values):
        for key, value in values.items():
            if key not in DENSE_KEYS:  # those are drawn from the dense training points
                self.writer.add_scalar(key, value, iteration)
        self.writer.flush()

    def close(self, status="finished"):
        self.writer.close()


def _tracker_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / runs.TRACKERS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_tracker_id(run_dir: Path, name: str, run_id: str) -> None:
    ids = _tracker_ids(run_dir)
    ids[name] = run_id
    runs.write_json(run_dir / runs.TRACKERS_FILE, ids, flag="run directory")


def _flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config as tracker parameters: strings of at most 500 characters (MLflow's limit)."""
    return {key: str(value)[:500] for key, value in config.items()}


class MLflowLog(Logger):
    """An MLflow run (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME as MLflow reads them): the config
    as parameters, every training point and evaluation as metrics at its iteration, the results
    at the end. A resume continues the same MLflow run (its id is kept in trackers.json)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], run_name: str):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        run_id = _tracker_ids(run_dir).get("mlflow")
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "resnets")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=run_name)
            run_id = run.info.run_id
            params = [Param(key, value) for key, value in _flat_params(config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
                self.client.log_batch(run_id, params=params[start:start + 100])
            _save_tracker_id(run_dir, "mlflow", run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _log(self, iteration: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, iteration) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def train_point(self, iteration, values):
        self._log(iteration, values)

    def evaluation(self, iteration, total, values):
        self._log(iteration, {k: v for k, v in values.items() if k not in DENSE_KEYS})

    def finished(self, values):
        self._log(int(values.get("iter", 0) or 0), {f"final/{k}": v for k, v in values.items() if k != "iter"})

    def close(self, status="finished"):
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "finished" else "KILLED")


class WandbLog(Logger):
    """A Weights & Biases run (WANDB_PROJECT, default "resnets"; WANDB_MODE=offline works without
    a network): the config, every training point and evaluation at its iteration, the results in
    the summary. A resume continues the same run (its id is kept in trackers.json)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], run_name: str):
        import wandb

        ids = _tracker_ids(run_dir)
        run_id = ids.get("wandb") or secrets.token_hex(4)  # W&B run ids are [a-z0-9]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "resnets"), name=run_name, id=run_id,
                              resume="allow", config=dict(config), dir=os.environ.get("WANDB_DIR", str(run_dir)))
        if "wandb" not in ids:
            _save_tracker_id(run_dir, "wandb", run_id)

    def train_point(self, iteration, values):
        self.run.log(dict(values), step=iteration)

    def evaluation(self, iteration, total, values):
        self.run.log({k: v for k, v in values.items() if k not in DENSE_KEYS}, step=iteration)

    def finished(self, values):
        self.run.summary.update({k: v for k, v in values.items() if k != "iter"})

    def close(self, status="finished"):
        self.run.finish(exit_code=0 if status == "finished" else 1)


# --logger NAME: the tracker and the package it needs.
TRACKERS = {"mlflow": (MLflowLog, "mlflow"), "wandb": (WandbLog, "wandb")}
LOGGER_NAMES = ("tensorboard", *TRACKERS, "none")
TRACKER_SETTINGS = {"mlflow": "MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME", "wandb": "WANDB_PROJECT, WANDB_MODE, wandb login"}


def logger_names(text: str) -> list[str]:
    """--logger's comma-separated names, checked; their packages must import (a one-paragraph
    error with the pip line otherwise, before anything of the run is written)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGER_NAMES]
    if unknown or not names:
        raise UserError(f"--logger {text!r}: expected one or more of {', '.join(LOGGER_NAMES)}, comma-separated "
                        "(e.g. tensorboard,mlflow); the run's own files are always written")
    for name in names:
        if name in TRACKERS:
            package = TRACKERS[name][1]
            try:
                __import__(package)
            except ImportError as error:
                raise UserError(f"--logger {name} needs the {package} package, which cannot be imported here "
                                f"({error}). Install it with `pip install {package}`, or leave {name} out of "
                                f"--logger") from None
    return names


class RunLog:
    """The loggers of one run; on processes other than the main one it has none."""

    def __init__(self, loggers: Sequence[Logger] = ()):
        self.loggers = list(loggers)

    @classmethod
    def open(cls, run_dir: Path, env: DistEnv, resumed_at: int | None = None,
             extra: Sequence[Logger] = (), names: Sequence[str] = ("tensorboard",),
             config: Mapping[str, Any] | None = None, run_name: str | None = None) -> "RunLog":
        """The run's log; `resumed_at`: the iteration a resume continues from (later entries are
        dropped); `names`: --logger's destinations beside the run's files; `config`: what a
        tracker records as the run's parameters."""
        if not env.is_main:
            return cls()
        if resumed_at is not None:
            runs.truncate_logs(run_dir, resumed_at)
        loggers: list[Logger] = [RunFiles(run_dir)]
        if "tensorboard" in names:
            loggers.append(TensorBoardLog(run_dir, resumed_at))
        for name in names:
            if name in TRACKERS:
                try:
                    loggers.append(TRACKERS[name][0](run_dir, config or {}, run_name or run_dir.name))
                except UserError:
                    raise
                except Exception as error:  # the tracker's own errors: a bad URI, no server, no login
                    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise UserError(f"--logger {name} could not open a run ({type(error).__name__}: {first}). "
                                    f"Check the tracker's settings ({TRACKER_SETTINGS[name]}), or leave {name} "
                                    "out of --logger; the run's files and checkpoints are untouched") from None
        return cls([*loggers, *extra])

    def train_point(self, iteration: int, values: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.train_point(iteration, values)

    def evaluation(self, iteration: int, total: int, values: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.evaluation(iteration, total, values)

    def note(self, text: str, stamped: bool = True) -> None:
        """`# [time] text` (or `# text`) to every logger."""
        line = f"# [{_stamp()}] {text}" if stamped else f"# {text}"
        for logger in self.loggers:
            logger.note(line)

    def finished(self, values: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.finished(values)

    def close(self, status: str = "finished") -> None:
        for logger in self.loggers:
            logger.close(status)
