"""A training run's log: where its training points, evaluations and notes go.

`RunLog` hands each record to its loggers. Two are built in: `RunFiles` (metrics.jsonl,
train_metrics.jsonl and train.log, in the format runs.py owns and reads back) and
`TensorBoardLog` (the run's tb/ folder). Another destination (an experiment tracker, say) is
one more `Logger` subclass passed to `RunLog.open(..., extra=[...])`; it gets the same calls.

A resume first drops what a killed run logged after its checkpoint, so nothing is doubled:
`runs.truncate_logs` for the files, TensorBoard's purge_step for its events.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

from . import runs
from .distributed import DistEnv

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

    def close(self) -> None:
        """The run stopped or finished."""


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

    def close(self):
        self.writer.close()


class RunLog:
    """The loggers of one run; on processes other than the main one it has none."""

    def __init__(self, loggers: Sequence[Logger] = ()):
        self.loggers = list(loggers)

    @classmethod
    def open(cls, run_dir: Path, env: DistEnv, resumed_at: int | None = None,
             extra: Sequence[Logger] = ()) -> "RunLog":
        """The run's log; `resumed_at`: the iteration a resume continues from (later entries are dropped)."""
        if not env.is_main:
            return cls()
        if resumed_at is not None:
            runs.truncate_logs(run_dir, resumed_at)
        return cls([RunFiles(run_dir), TensorBoardLog(run_dir, resumed_at), *extra])

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

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
