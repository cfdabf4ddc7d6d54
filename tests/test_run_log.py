"""The run log: its loggers get every record, runs.py reads the files back, and another logger plugs in."""
from __future__ import annotations

from resnets import runs
from resnets.distributed import DistEnv
from resnets.run_log import Logger, RunLog


class Recording(Logger):
    def __init__(self):
        self.calls = []

    def train_point(self, iteration, values):
        self.calls.append(("train_point", iteration, dict(values)))

    def evaluation(self, iteration, total, values):
        self.calls.append(("evaluation", iteration, total, dict(values)))

    def note(self, line):
        self.calls.append(("note", line))

    def close(self, status="finished"):
        self.calls.append(("close",))


def test_an_extra_logger_gets_what_the_run_files_and_tensorboard_get(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    extra = Recording()
    log = RunLog.open(tmp_path, DistEnv(), extra=[extra])
    log.note("header", stamped=False)
    log.train_point(2, {"trn/loss": 1.5, "lr": 0.1})
    log.evaluation(4, 8, {"trn/loss": 1.25, "lr": 0.1, "val/acc": 0.5})
    log.close()
    assert extra.calls == [("note", "# header"), ("train_point", 2, {"trn/loss": 1.5, "lr": 0.1}),
                           ("evaluation", 4, 8, {"trn/loss": 1.25, "lr": 0.1, "val/acc": 0.5}), ("close",)]
    assert runs.read_train_metrics(tmp_path) == [{"iter": 2, "trn/loss": 1.5, "lr": 0.1}]
    assert runs.read_metrics(tmp_path) == [{"iter": 4, "trn/loss": 1.25, "lr": 0.1, "val/acc": 0.5}]
    lines = (tmp_path / runs.LOG_FILE).read_text().splitlines()
    assert lines[0] == "# header" and lines[1].startswith("[iter 4/8] ")
    events = EventAccumulator(str(tmp_path / runs.TENSORBOARD_DIR))
    events.Reload()
    # TensorBoard draws trn/loss and lr from the dense points only; evaluation metrics at their iteration.
    assert [(e.step, e.value) for e in events.Scalars("trn/loss")] == [(2, 1.5)]
    assert [(e.step, e.value) for e in events.Scalars("val/acc")] == [(4, 0.5)]


def test_a_resumed_log_drops_what_was_logged_after_the_checkpoint(tmp_path):
    log = RunLog.open(tmp_path, DistEnv())
    for it in (2, 4, 6):
        log.evaluation(it, 6, {"val/acc": it / 10})
    log.close()
    RunLog.open(tmp_path, DistEnv(), resumed_at=4).close()
    assert [row["iter"] for row in runs.read_metrics(tmp_path)] == [2, 4]


def test_other_processes_log_nothing(tmp_path):
    log = RunLog.open(tmp_path, DistEnv(rank=1, world_size=2, local_rank=1))
    log.evaluation(1, 1, {"val/acc": 1.0})
    log.note("x")
    assert log.loggers == [] and not any(tmp_path.iterdir())
