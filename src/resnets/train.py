"""The one training loop: every preset, method, precision and process count goes through `train`.

Reading order: `train` sets up (data, schedule, run directory, model, optimizer, resume),
`_Trainer.run` is the loop, `_Trainer.evaluate` the periodic evaluation, and `_finish` the
final evaluation and results.json. The loop decides when to checkpoint and what to log; what a
checkpoint holds and how it is written and read back is checkpointer.py's `Checkpointer`, and
where the log goes (metrics.jsonl, train_metrics.jsonl, train.log, TensorBoard) run_log.py's `RunLog`.

Preemption: SIGTERM, SIGINT or SIGUSR1 make the loop stop at the end of the current step,
write a checkpoint and raise `TrainingStopped` (the CLI exits with `STOPPED_EXIT_STATUS`, 75);
a second SIGINT stops at once. Checkpoints are also written at every evaluation and on their
own clock (`--checkpoint-every`), and each holds everything a resume needs to end bit for bit
as an uninterrupted run, mid-evaluation-window included. `train` with an `--out` that holds a
run of the same recipe continues it (or, once finished, returns its results), so a relaunch of
the same command (torchrun --max-restarts, a Slurm requeue) just works.
"""
from __future__ import annotations

import dataclasses
import errno
import itertools
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import runs
from .checkpoint import export_weights, save_checkpoint
from .checkpointer import Checkpointer, TrainingParts
from .config import (EXECUTION_FIELDS, CheckpointInterval, Schedule, TrainConfig, parse_checkpoint_every,
                     resolve_schedule)
from .data import DatasetBundle, Normalize, dataset_spec, eval_batches, load_dataset, steps_per_epoch, train_batches
from .data.mixing import BatchMixer, check_options as check_mixing_options
from .devices import Runtime, autocast, device_description, kernel_choice, resolve_runtime
from .distributed import Agreement, DistEnv, barrier, broadcast_object, init_distributed, shutdown
from .errors import UserError
from .evaluate import EvalRequest, evaluate_runs
from .methods import method_class
from .models.stats import count_parameters
from .models.sync_batchnorm import convert_to_cross_process_bn
from .prediction import Restartable, predict_dataset
from .recipe import build_optimizer, build_run_model, parameter_groups
from .run_log import RunLog, logger_names

# Seed 001 measures throughput over the last 5,000 iterations.
THROUGHPUT_WINDOW = 5000

# The exit status of a run stopped by a signal after writing its checkpoint: EX_TEMPFAIL
# (sysexits.h), "try again later": rerun the same command or --resume to continue. A second
# Ctrl-C stops at once with 130; a run killed by the signal's default action would give 128+N.
STOPPED_EXIT_STATUS = 75
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))
# Iterations between the processes' votes on stopping and on a checkpoint by the clock (see
# distributed.Agreement): on CUDA every 10 (an all_reduce of two ints and a pinned copy per 10
# steps, read 10 steps later, so a stop lags a signal by at most 20 steps); gloo processes vote
# at every step, which costs microseconds against a CPU step.
_VOTE_EVERY = {"cuda": 10}
# The clock of --checkpoint-every (tests replace it with a fake one).
_clock = time.monotonic


class TrainingStopped(Exception):
    """A run stopped by a signal after writing its checkpoint; `resume_command` continues it."""
    exit_status = STOPPED_EXIT_STATUS

    def __init__(self, message: str, *, signal_name: str, iteration: int, checkpoint: Path, resume_command: str):
        super().__init__(message)
        self.signal_name, self.iteration, self.checkpoint = signal_name, iteration, checkpoint
        self.resume_command = resume_command


class _StopSignals:
    """While active (main thread only): the first SIGTERM, SIGINT or SIGUSR1 is recorded for the loop
    to stop at its next step boundary; a second SIGINT raises KeyboardInterrupt at once; others
    repeat the request and are ignored."""

    def __init__(self, announce: bool):
        self.announce, self.signum = announce, None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.announce:
                again = " (Ctrl-C again to quit at once, without it)" if signum == signal.SIGINT else ""
                # os.write: the handler may interrupt a buffered write to stderr (the progress bar).
                os.write(2, f"\nresnets train: {signal.Signals(signum).name} received: stopping after this step "
                            f"to write a checkpoint{again}\n".encode())
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# Setup helpers


def _recipe_changes(saved: TrainConfig, given: dict[str, Any]) -> str:
    """The recipe flags (not execution ones) of `given` that differ from `saved`, as flags."""
    changed = {k: v for k, v in given.items() if k not in EXECUTION_FIELDS and getattr(saved, k) != v}
    return ", ".join(f"--{k.replace('_', '-')} {v} (run has {getattr(saved, k)})" for k, v in changed.items())


def resume_config(run_dir: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The saved config of `run_dir`, with only execution flags (device, workers...) changeable."""
    cfg = runs.read_config(run_dir).train_config()
    flags = _recipe_changes(cfg, given)
    if flags:
        raise UserError(f"cannot resume {run_dir} with a different recipe: {flags}. A resumed run keeps its saved "
                        "config so that it ends exactly as an uninterrupted run; start a new run instead")
    for key, value in given.items():
        setattr(cfg, key, value)
    cfg.out = str(run_dir)
    return cfg


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Progress:
    """What survives a resume besides model/optimizer state (all plain values)."""
    iteration: int = 0
    best: dict[str, float] = field(default_factory=dict)
    nan_grad_steps: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    # (iteration, cumulative train seconds) at every evaluation, for throughput windows.
    timeline: list[list[float]] = field(default_factory=list)


class _Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, data: DatasetBundle, schedule: Schedule,
                 env: DistEnv, runtime: Runtime, resume: runs.FoundCheckpoint | Path | None = None,
                 interval: CheckpointInterval = CheckpointInterval(), resume_command: str = ""):
        self.cfg, self.run_dir, self.data, self.schedule = cfg, run_dir, data, schedule
        self.env, self.runtime = env, runtime
        self.device, self.precision, self.channels_last = runtime.device, runtime.precision, runtime.channels_last
        self.interval, self.resume_command = interval, resume_command
        device = self.device

        torch.manual_seed(cfg.seed)
        # A new run starts from --pretrained weights; a resume from its checkpoint.
        self.notes: list[str] = []
        model, self.method = build_run_model(cfg, data.num_classes, data.image_size,
                                             notes=self.notes if resume is None else None)
        if cfg.grad_accum_steps > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            micro = cfg.batch_size // env.world_size // cfg.grad_accum_steps
            self.notes.append(f"--grad-accum-steps {cfg.grad_accum_steps}: each optimizer step averages the "
                              f"gradients of {cfg.grad_accum_steps} micro-batches; BatchNorm normalizes over each "
                              f"micro-batch of {micro} images per process, not over the batch of {cfg.batch_size}")
        if env.is_main:
            for note in self.notes:
                print(f"resnets train: {note}", file=sys.stderr, flush=True)
        self.params = count_parameters(model)
        # Mixup/CutMix/random erasing: soft targets for the loss, drawn per (seed, step, rank).
        self.mixer = BatchMixer.from_config(cfg, data.num_classes)
        self.normalize = Normalize(data.mean, data.std, self.device)  # the pipelines hand out uint8
        if env.enabled and cfg.sync_bn:
            # torch's SyncBatchNorm runs only on GPUs; gloo (CPU) runs get an equivalent of ours.
            model = (nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda"
                     else convert_to_cross_process_bn(model))
        self.model = model.to(device, memory_format=runtime.memory_format)
        groups = self.method.param_groups(self.model, parameter_groups(self.model, cfg))
        self.optimizer = build_optimizer(groups, cfg, schedule.peak_lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay else None)
        self.progress = _Progress()
        # What the loop carries between log points and evaluations, and so every checkpoint too:
        # this process's loss sum, correct, count and skipped fp16 steps since the last log point
        # (on the device), and the loss sum, correct and count since the last evaluation.
        self._sums = torch.zeros(4, device=device, dtype=torch.float64)
        self._window = [0.0, 0.0, 0.0]
        # The writer is looked up here, so that it can be replaced in this module (tests record saves).
        self.checkpoints = Checkpointer(cfg, run_dir, env, device,
                                        TrainingParts(self.model, self.optimizer, self.scaler, self.method, self.ema),
                                        resume_command, write=save_checkpoint)
        self._last_save = _clock()
        self._window_start = self._interval_start = self._wall_start = time.perf_counter()
        restored = self.checkpoints.restore(resume) if resume is not None else None
        if restored is not None:
            self.progress = _Progress(**restored.progress)
            if restored.sums is not None:
                self._sums.copy_(restored.sums)
            self._window = restored.window

        step_model: nn.Module = self.model
        self.ddp: DistributedDataParallel | None = None
        if env.enabled:
            step_model = self.ddp = DistributedDataParallel(
                step_model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            step_model = torch.compile(step_model)
        self.step_model = step_model

        self.run_log = RunLog.open(run_dir, env, self.progress.iteration if restored is not None else None,
                                   names=logger_names(cfg.logger), config=cfg.to_dict(),
                                   run_name=cfg.name or run_dir.name)
        self.checkpoints.remove_stale_temporaries()
        if env.is_main and restored is not None:
            notes = [f"{problem}; continuing from {restored.path}, nothing lost beyond it"
                     for problem in restored.skipped]
            notes.append(f"resuming {run_dir} at iteration {self.progress.iteration}/{schedule.total_iters} "
                         f"from {restored.path}")
            for note in notes:
                print(f"resnets train: {note}", file=sys.stderr, flush=True)
                self.run_log.note(note)

    # --- checkpoints -------------------------------------------------------------------------

    def save(self, sums: torch.Tensor | None = None) -> None:
        """Write the checkpoint (main process only; see `checkpoint` for the one every process calls)."""
        if self.env.is_main:
            self.checkpoints.save(self.progress.iteration, self.progress.__dict__, sums, self._window)

    def checkpoint(self, count_time: bool = True) -> None:
        """Every process, at the same iteration: gather the running sums and write the checkpoint.

        `count_time`: add the training and wall time since they were last counted (a checkpoint
        between evaluations; an evaluation counts them itself). The write is synchronous: it
        costs well under one step at the default 30-minute interval (benchmarks/checkpoint_cost.py).
        """
        iteration = self.progress.iteration
        rows = self._gathered_sums()
        self._check_finite(float(rows[:, 0].sum()), iteration)  # never write diverged weights
        if count_time:
            now = time.perf_counter()
            self.progress.train_seconds += now - self._window_start
            self.progress.wall_seconds += now - self._wall_start
            self._window_start = self._wall_start = now
        self.save(rows)
        self.checkpoints.saved_at = iteration
        self._last_save = _clock()
        if count_time:
            self._window_start = time.perf_counter()  # the write is not training time

    def _gathered_sums(self) -> torch.Tensor:
        """Every process's running sums since the last log point, one row per rank, on the CPU."""
        if not self.env.enabled:
            return self._sums.detach().to("cpu", copy=True).unsqueeze(0)
        rows = [torch.empty_like(self._sums) for _ in range(self.env.world_size)]
        dist.all_gather(rows, self._sums)
        return torch.stack(rows).cpu()

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def export(self, relative: str) -> None:
        if self.env.is_main:
            meta = dict(model=self.cfg.model, width=str(self.cfg.width), num_classes=str(self.data.num_classes),
                        image_size=str(self.data.image_size), method=self.cfg.method,
                        iteration=str(self.progress.iteration))
            export_weights(self.run_dir / relative, self.eval_model.state_dict(), meta)

    # --- evaluation --------------------------------------------------------------------------

    def _eval_iter(self, split):
        return self.normalize.batches(eval_batches(
            split, batch_size=self.cfg.eval_batch_size, device=self.device, image_size=self.data.image_size,
            channels_last=self.channels_last, num_workers=self.runtime.num_workers))

    def evaluate_split(self, split, prefix: str) -> dict[str, float]:
        """Metrics of the evaluation weights on `split` under the method's prediction (rank 0 only)."""
        out = predict_dataset(self.eval_model, self.method, lambda: self._eval_iter(split), self.data.num_classes,
                              precision=self.precision, keep_predictions=False)
        return {f"{prefix}/{k}": v for k, v in out.metrics.items() if k != "count"}

    def evaluate(self, train_stats: dict[str, float]) -> dict[str, float]:
        results: dict[str, float] = dict(train_stats)
        if self.env.is_main:
            if self.data.val is not None:
                results.update(self.evaluate_split(self.data.val, "val"))
            if self.data.test is not None:
                results.update(self.evaluate_split(self.data.test, "tst"))
        return results

    # --- the loop ----------------------------------------------------------------------------

    def _train_stream(self, start: int):
        """uint8 training batches on the device from iteration `start` on; `self.normalize` makes them inputs."""
        return train_batches(self.data.train, batch_size=self.cfg.batch_size, start_iteration=start,
                             seed=self.cfg.seed, device=self.device, image_size=self.data.image_size,
                             augment=self.cfg.augment,
                             randaugment_magnitude=self.cfg.randaugment_magnitude,
                             channels_last=self.channels_last, rank=self.env.rank,
                             world_size=self.env.world_size, num_workers=self.runtime.num_workers)

    def _set_lr(self, iteration: int) -> float:
        lr = self.method.adjust_lr(self.schedule.lr_at(iteration), iteration, self.schedule.total_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def _no_sync(self, last: bool):
        """DDP all-reduces gradients only on the last micro-batch of an accumulation window."""
        return nullcontext() if last or self.ddp is None else self.ddp.no_sync()

    def step(self, x: torch.Tensor, y: torch.Tensor, sums: torch.Tensor) -> None:
        """One optimizer step on this process's batch: with --grad-accum-steps N, the batch is cut
        into N equal micro-batches whose losses are each divided by N, so the accumulated gradient
        is their mean. The batch itself is the step's (a function of seed and step), so a resume
        from a checkpoint, always at a step boundary, replays the same micro-batches."""
        n = self.cfg.grad_accum_steps
        for index, (x_micro, y_micro) in enumerate(zip(x.chunk(n), y.chunk(n))):
            with self._no_sync(last=index == n - 1):
                self._accumulate(x_micro, y_micro, n, sums)
        if self.cfg.grad_clip or self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            # The total norm is not finite exactly when the scaler will skip the step; counted on
            # the device, so there is no host sync inside the step.
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
            if self.scaler.is_enabled():
                sums[3] += (~torch.isfinite(norm)).to(sums.dtype)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _accumulate(self, x: torch.Tensor, y: torch.Tensor, micro_batches: int, sums: torch.Tensor) -> None:
        """Forward and backward of one micro-batch, its loss scaled by 1/micro_batches.

        y is class indices, or N×C probabilities under --mixup/--cutmix/--reprob (cross_entropy takes
        either, label smoothing included); train accuracy is then against each image's larger-weight
        label (the argmax of its target)."""
        x, y = self.method.train_batch(x, y)
        with autocast(self.device, self.precision):
            logits = self.step_model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        objective = loss * self.method.loss_scale if self.method.loss_scale != 1.0 else loss
        extra = self.method.extra_loss(self.model, self.progress.iteration, self.schedule.steps_per_epoch,
                                       len(self.data.train))
        if extra is not None:  # e.g. rank-1 BNN's annealed KL; the logged loss stays the cross-entropy
            objective = loss + extra
        self.scaler.scale(objective / micro_batches if micro_batches > 1 else objective).backward()
        # Running training statistics stay on the device until the next log point.
        hard = y if y.dim() == 1 else y.argmax(-1)
        sums[0] += loss.detach().float() * y.shape[0]
        sums[1] += (logits.detach().argmax(-1) == hard).sum()
        sums[2] += y.shape[0]

    def run(self) -> None:
        cfg, total = self.cfg, self.schedule.total_iters
        start = self.progress.iteration
        stream = self._train_stream(start)
        bar = None
        if self.env.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=start, desc=f"train {cfg.model}", unit="it", dynamic_ncols=True,
                       disable=None)
        self.model.train()
        sums = self._sums  # read (one host sync) only at log points, evaluations and checkpoints
        vote = Agreement(self.env, self.device, _VOTE_EVERY.get(self.device.type, 1))
        self._last_save = _clock()
        self._window_start = self._interval_start = self._wall_start = time.perf_counter()
        try:
            with _StopSignals(announce=self.env.is_main) as stops:
                for iteration in range(start, total):
                    if iteration % self.schedule.steps_per_epoch == 0:
                        self.method.on_epoch_start(self.model, iteration // self.schedule.steps_per_epoch)
                    lr = self._set_lr(iteration)
                    x, y = next(stream)
                    x = self.normalize(x)  # uint8 → float inputs here, on the device
                    if self.mixer is not None:
                        x, y = self.mixer(x, y, iteration, self.env.rank)
                    self.step(x, y, sums)
                    if self.ema is not None:
                        self.ema.update_parameters(self.model)
                    self.progress.iteration = iteration + 1
                    self.method.after_step(self.model, iteration + 1, total)
                    done = iteration + 1
                    if bar is not None:
                        bar.update(1)
                    at_log = done % cfg.log_every == 0
                    at_eval = done % self.schedule.eval_every == 0 or done == total
                    if at_log or at_eval:
                        self._log_point(done, lr, at_log, at_eval, bar)
                    if self._boundary(done, vote, stops):
                        vote.close()
                        self._stop(stops.signum)
                vote.close()
        finally:
            if bar is not None:
                bar.close()
        self.progress.wall_seconds += time.perf_counter() - self._wall_start
        self._wall_start = time.perf_counter()

    def _log_point(self, done: int, lr: float, at_log: bool, at_eval: bool, bar) -> None:
        """A log point (train loss, LR, img/s) and/or an evaluation, which also writes a checkpoint."""
        loss_sum, correct, count, skipped = self._read_sums(self._sums)
        now = time.perf_counter()
        self._check_finite(loss_sum, done)
        self.progress.nan_grad_steps += int(skipped)
        window = self._window = [self._window[0] + loss_sum, self._window[1] + correct, self._window[2] + count]
        if at_log:
            point = {"trn/loss": loss_sum / max(count, 1), "trn/acc": correct / max(count, 1), "lr": lr,
                     "img_per_sec": count / max(now - self._interval_start, 1e-9), "nan_grad_steps": int(skipped)}
            self.run_log.train_point(done, point)
            if bar is not None:
                bar.set_postfix(loss=f"{point['trn/loss']:.4f}", lr=f"{lr:.4g}")
        self._interval_start = now
        if not at_eval:
            return
        self.progress.train_seconds += now - self._window_start
        self.progress.timeline.append([done, self.progress.train_seconds])
        stats = {"lr": lr, "trn/loss": window[0] / max(window[2], 1), "trn/acc": window[1] / max(window[2], 1),
                 "iter_per_min": self.iter_per_min(), "train_seconds": self.progress.train_seconds}
        self._window = [0.0, 0.0, 0.0]
        results = self.evaluate(stats)
        # On a tie the later evaluation wins: it has trained longer at a lower LR.
        if "val/acc" in results and results["val/acc"] >= self.progress.best.get("val/acc", -1.0):
            self.progress.best = {k: v for k, v in results.items() if k[:4] in ("val/", "tst/")}
            self.progress.best["iter"] = done
            self.export(runs.BEST_WEIGHTS)
        self.progress.wall_seconds += time.perf_counter() - self._wall_start
        self._wall_start = time.perf_counter()
        # Log first, checkpoint second: a resume truncates entries past its checkpoint.
        self.run_log.evaluation(done, self.schedule.total_iters, results)
        self.checkpoint(count_time=False)
        barrier(self.env)
        self._window_start = self._interval_start = time.perf_counter()

    def _boundary(self, done: int, vote: Agreement, stops: _StopSignals) -> bool:
        """After step `done`: write a checkpoint when one is due, and say whether to stop. Every
        process decides the same: signals and the clock go through `vote`, iterations are shared."""

        def local() -> tuple[bool, bool]:
            due = self.interval.seconds is not None and _clock() - self._last_save >= self.interval.seconds
            return stops.signum is not None, due

        agreed = vote.collect(done, local)
        stop, due = agreed if agreed is not None else (False, False)
        stop = stop and done < self.schedule.total_iters  # at the end, finishing is the quicker way out
        if self.interval.iterations and done % self.interval.iterations == 0:
            due = True
        if (stop or due) and self.checkpoints.saved_at != done:
            self.checkpoint()
        vote.cast(done, local)
        return stop

    def _stop(self, signum: int | None) -> None:
        """Every process, after the checkpoint at this iteration: say where it is, and raise TrainingStopped."""
        it, total = self.progress.iteration, self.schedule.total_iters
        name = signal.Signals(signum).name if signum is not None else "a signal to another process"
        last = self.run_dir / runs.LAST_CHECKPOINT
        message = (f"stopped by {name} at iteration {it}/{total}: its checkpoint is {last}. Continue with "
                   f"`{self.resume_command}` (exit status {STOPPED_EXIT_STATUS})")
        if self.env.is_main:
            self.run_log.note(message)
            print(f"resnets train: {message}", file=sys.stderr, flush=True)
            self.run_log.close("stopped")
        barrier(self.env)
        raise TrainingStopped(message, signal_name=name, iteration=it, checkpoint=last,
                              resume_command=self.resume_command)

    def _read_sums(self, sums: torch.Tensor) -> list[float]:
        """The device sums as numbers (the one host sync of a log point), then zeroed."""
        if self.env.enabled:
            # The logged training loss is the global batch's; skipped steps are the same on
            # every rank (DDP averages the gradients), so they are counted once.
            dist.all_reduce(sums[:3])
        values = sums.tolist()
        sums.zero_()
        return values

    def _check_finite(self, loss_sum: float, iteration: int) -> None:
        if math.isfinite(loss_sum) or self.precision == "fp16":
            return  # fp16 steps with non-finite gradients were skipped and are counted instead
        last = self.run_dir / runs.LAST_CHECKPOINT
        if last.is_file():
            where = (f"The last good checkpoint, {last}, is kept: resume from it with a lower --lr (a resume "
                     "keeps the recipe, so start a new run from scratch if the recipe must change)")
        else:
            where = "No checkpoint had been written yet"
        raise UserError(
            f"the training loss became {loss_sum} by iteration {iteration} ({self.precision}): training "
            f"diverged. {where}. Try a lower --lr, a longer --warmup, or --grad-clip")

    def iter_per_min(self) -> float:
        timeline = self.progress.timeline
        if not timeline:
            return 0.0
        end_iter, end_time = timeline[-1]
        start_iter, start_time = 0, 0.0
        for it, seconds in timeline:
            if it <= end_iter - THROUGHPUT_WINDOW:
                start_iter, start_time = it, seconds
        return 60.0 * (end_iter - start_iter) / max(end_time - start_time, 1e-9)


# ---------------------------------------------------------------------------------------------
# Entry point


def train(cfg: TrainConfig, resume: bool = False, *, resume_dir: str | Path | None = None) -> runs.RunResults | None:
    """Train `cfg` (with `resume`, continue the run in `cfg.out`); results.json's content on the
    main process, None on the others.

    Without `resume`, an `cfg.out` that already holds a run of the same recipe is continued from
    its newest intact checkpoint (started again when it was stopped before its first one), and a
    finished one (results.json) is not trained again: its results are returned. Another recipe
    there is refused, naming the differing flags. SIGTERM, SIGINT or SIGUSR1 stop the run at the
    end of a step with a checkpoint and raise `TrainingStopped`. `resume_dir`: the directory the
    stop message says to resume (a deep ensemble's, for its members; default: the run's).
    """
    runtime = resolve_runtime(cfg.device, cfg.precision, cfg.channels_last, cfg.num_workers, cfg.seed_precision)
    env = init_distributed(runtime.device.type)
    if env.enabled and runtime.device.type == "cuda":
        runtime = dataclasses.replace(runtime, device=torch.device("cuda", env.local_rank))
    locks: list[runs.RunLock] = []
    try:
        with kernel_choice(runtime.device, cfg.use_deterministic_algorithms):
            return _train(cfg, resume, env, runtime, resume_dir, locks)
    finally:
        for lock in locks:
            lock.release()
        shutdown(env)


def _on_main(env: DistEnv, work):
    """`work()` on the main process, its (picklable) value, or its UserError, on every process."""
    value = error = None
    if env.is_main:
        try:
            value = work()
        except UserError as problem:
            error = str(problem)
    value, error = broadcast_object(env, (value, error))
    if error is not None:
        raise UserError(error)
    return value


# Files a run writes before its first checkpoint: a relaunch of a run stopped that early deletes
# them and starts it again.
_EARLY_RUN_FILES = (runs.CONFIG_FILE, runs.LOG_FILE, runs.METRICS_FILE, runs.TRAIN_METRICS_FILE,
                    runs.TENSORBOARD_DIR, str(Path(runs.LAST_CHECKPOINT).parent), runs.FINAL_WEIGHTS)


def _plan(cfg: TrainConfig, resume: bool) -> tuple[str, str | None, runs.FoundCheckpoint | None]:
    """What to do with `cfg.out` (main process): ("new" | "restart" | "resume" | "finished", run_dir, checkpoint)."""
    if resume:
        run_dir = Path(cfg.out)
        if (run_dir / runs.RESULTS_FILE).is_file():
            return "finished", str(run_dir), None
        if not runs.has_checkpoint(run_dir):
            raise UserError(f"cannot resume {run_dir}: expected {run_dir / runs.LAST_CHECKPOINT}; the run was "
                            "stopped before its first checkpoint, so start it again")
        return "resume", str(run_dir), runs.read_newest_checkpoint(run_dir)
    if not cfg.out or not Path(cfg.out).is_dir():
        return "new", cfg.out, None
    run_dir = Path(cfg.out)
    checkpoints = (run_dir / runs.LAST_CHECKPOINT).parent
    if not (run_dir / runs.CONFIG_FILE).is_file():
        # Stopped while building its model, before config.yaml: only an empty checkpoints/ is there.
        early = ([p.name for p in run_dir.iterdir() if p.name != runs.LOCK_FILE] == [checkpoints.name]
                 and not any(checkpoints.iterdir()))
        return ("restart" if early else "new"), str(run_dir), None
    saved = runs.read_config(run_dir).train_config()
    flags = _recipe_changes(saved, cfg.to_dict())
    if flags:
        raise UserError(f"--out {run_dir} holds a run of another recipe: {flags}. A run continues only with its "
                        f"own recipe: give another --out to start a new run, or continue that one with "
                        f"`resnets train --resume {shlex.quote(str(run_dir))}`")
    if (run_dir / runs.RESULTS_FILE).is_file():
        return "finished", str(run_dir), None
    if runs.has_checkpoint(run_dir):
        return "resume", str(run_dir), runs.read_newest_checkpoint(run_dir)
    return "restart", str(run_dir), None


def _resume_command(run_dir: Path, env: DistEnv) -> str:
    target = shlex.quote(str(run_dir))
    if not env.enabled:
        return f"resnets train --resume {target}"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    nodes = max(env.world_size // max(per_node, 1), 1)
    launcher = (f"torchrun --standalone --nproc-per-node {per_node}" if nodes == 1 else
                f"torchrun --nnodes {nodes} --nproc-per-node {per_node} <your rendezvous flags>")
    return f"{launcher} -m resnets train --resume {target}"


def _disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def resolve_grad_accum(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """--micro-batch-size M (or --grad-accum-steps auto with it) as the number of micro-batches
    N = batch_size / (world_size x M), which is what the run then saves and resumes with."""
    if cfg.micro_batch_size is None:
        if cfg.grad_accum_steps == 0:
            raise UserError("--grad-accum-steps auto needs --micro-batch-size M, the images per process per "
                            "forward pass (e.g. --batch-size 4096 --grad-accum-steps auto --micro-batch-size 256)")
        return cfg
    per_process = cfg.batch_size // world_size
    if cfg.micro_batch_size < 1 or per_process % cfg.micro_batch_size:
        raise UserError(f"--micro-batch-size {cfg.micro_batch_size}: expected a whole number >= 1 that divides "
                        f"each process's batch (--batch-size {cfg.batch_size} over {world_size} process(es): "
                        f"{per_process} images)")
    steps = per_process // cfg.micro_batch_size
    if cfg.grad_accum_steps not in (0, 1, steps):
        raise UserError(f"--grad-accum-steps {cfg.grad_accum_steps} and --micro-batch-size {cfg.micro_batch_size} "
                        f"disagree: {per_process} images per process in micro-batches of {cfg.micro_batch_size} "
                        f"are {steps} micro-batches; give one of the two flags (or --grad-accum-steps auto)")
    return dataclasses.replace(cfg, grad_accum_steps=steps)


def _train(cfg: TrainConfig, resume: bool, env: DistEnv, runtime: Runtime,
           resume_dir: str | Path | None = None, locks: list | None = None) -> runs.RunResults | None:
    locks = [] if locks is None else locks
    method = method_class(cfg.method)
    if not method.separate_runs:
        method.from_config(cfg)  # its option errors (e.g. --ensemble-size 0) before a run directory exists
    if cfg.ema_decay and method.averages_weights:
        raise UserError(f"--ema-decay and --method {cfg.method} both average weights and cannot be combined: "
                        "drop one of them")
    if cfg.batch_size % env.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over "
                        f"{env.world_size} processes")
    cfg = resolve_grad_accum(cfg, env.world_size)
    if cfg.grad_accum_steps < 1 or (cfg.batch_size // env.world_size) % cfg.grad_accum_steps:
        raise UserError(f"--grad-accum-steps {cfg.grad_accum_steps}: expected a whole number >= 1 that divides "
                        f"each process's batch ({cfg.batch_size} over {env.world_size} process(es): "
                        f"{cfg.batch_size // env.world_size} images) into equal micro-batches")
    check_mixing_options(cfg)
    if env.is_main:
        logger_names(cfg.logger)  # an unknown name or a missing package, before anything is written
    if dataset_spec(cfg.data).eval_only:
        raise UserError(f"--data {cfg.data} has no training split: it is a test set for `resnets eval "
                        f"RUN_DIR --shift-data {cfg.data}`")

    # Where to train: the main process reads the run directory and tells the others.
    found: list[runs.FoundCheckpoint | None] = [None]

    def plan():
        if cfg.out and Path(cfg.out).is_dir():  # before reading it: another launch may be writing it
            locks.append(runs.RunLock(cfg.out))
        mode, where, checkpoint = _plan(cfg, resume)
        found[0] = checkpoint
        return mode, where, str(checkpoint.path) if checkpoint is not None else None

    mode, where, checkpoint_path = _on_main(env, plan)
    if mode == "finished":
        if not env.is_main:
            return None
        print(f"resnets train: {where} is finished ({runs.RESULTS_FILE} is there); not training it again",
              file=sys.stderr, flush=True)
        return runs.read_results(where)

    data = load_dataset(cfg.data, cfg.data_dir, image_size=cfg.image_size, download=cfg.download,
                        val_size=cfg.val_size)
    per_epoch = steps_per_epoch(data.train, cfg.batch_size)
    schedule = resolve_schedule(cfg, per_epoch)
    interval = parse_checkpoint_every(cfg.checkpoint_every, total_iters=schedule.total_iters,
                                      steps_per_epoch=per_epoch)

    def run_directory() -> str:
        if mode == "resume":
            return where
        if mode == "restart":
            stopped = Path(where)
            print(f"resnets train: {stopped} was stopped before its first checkpoint: starting it again",
                  file=sys.stderr, flush=True)
            for name in _EARLY_RUN_FILES:
                path = stopped / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        made = runs.new_run_dir(cfg)
        if not locks:
            locks.append(runs.RunLock(made))
        return str(made)

    run_dir = Path(_on_main(env, run_directory))
    resuming = mode == "resume"
    checkpoint = (found[0] if env.is_main else Path(checkpoint_path)) if resuming else None
    trainer = _Trainer(cfg, run_dir, data, schedule, env, runtime, checkpoint, interval,
                       _resume_command(Path(resume_dir or run_dir), env))
    found[0] = checkpoint = None  # the loaded state is in the trainer now
    if env.is_main and not resuming:
        runs.write_config(run_dir, cfg, dict(
            total_iters=schedule.total_iters, warmup_iters=schedule.warmup_iters, milestones=schedule.milestones,
            eval_every=schedule.eval_every, steps_per_epoch=schedule.steps_per_epoch, peak_lr=schedule.peak_lr,
            num_classes=data.num_classes, image_size=data.image_size, mean=list(data.mean), std=list(data.std),
            precision=runtime.precision, channels_last=runtime.channels_last, world_size=env.world_size,
            device=str(runtime.device), train_size=len(data.train),
            val_size=len(data.val) if data.val is not None else 0,
            test_size=len(data.test) if data.test is not None else 0, params=trainer.params,
            class_names=data.class_names))
        trainer.run_log.note(f"resnets train: {cfg.model} on {cfg.data} ({len(data.train)} train images), "
                             f"{schedule.total_iters} iterations, batch {cfg.batch_size}, {runtime.precision}, "
                             f"{device_description(runtime.device, env.world_size)}", stamped=False)
        for note in trainer.notes:
            trainer.run_log.note(note, stamped=False)
    try:
        trainer.run()
        return _finish(trainer)
    except OSError as error:
        if not _disk_full(error):
            raise
        raise UserError(f"cannot write to {run_dir} at iteration {trainer.progress.iteration}: {error.strerror} "
                        f"({getattr(error, 'filename', None) or 'a log or weights file'}). The checkpoints are kept "
                        f"intact; free space, then continue with `{trainer.resume_command}`") from None


def _finish(trainer: _Trainer) -> runs.RunResults | None:
    cfg, data, env, progress = trainer.cfg, trainer.data, trainer.env, trainer.progress
    method = trainer.method
    final: dict[str, float] = {}
    if method.finalizes:
        # SWA/SWAG: the averaged (or sampled) weights are the result, BN re-estimated on train batches.
        total = trainer.schedule.total_iters
        method.finalize(trainer.model, Restartable(
            lambda: trainer.normalize.batches(itertools.islice(trainer._train_stream(total), 50))))
        progress.best = {}
    test_ms = None
    if env.is_main:
        for split, prefix in ((data.val, "val"), (data.test, "tst")):
            # Test is always run once more, to time it; its metrics replace the best-val ones
            # only where the final weights are the result (SWA/SWAG) or there was no validation.
            if split is None or (prefix == "val" and not method.finalizes):
                continue
            start = time.perf_counter()
            metrics = trainer.evaluate_split(split, prefix)
            if prefix == "tst":
                test_ms = 1000 * (time.perf_counter() - start) / max(len(split), 1)
            if method.finalizes or not progress.best:
                final.update(metrics)
        if cfg.eval_train:
            final.update(trainer.evaluate_split(data.train, "trn"))
        if method.finalizes:
            trainer.export(runs.BEST_WEIGHTS)
            trainer.save()
        trainer.export(runs.FINAL_WEIGHTS)
    barrier(env)
    if not env.is_main:
        return None

    best = dict(progress.best) if progress.best else {}
    best.update(final)
    best_iter = best.pop("iter", progress.iteration)
    results = runs.RunResults(
        metrics=best, best_iter=best_iter, iters=progress.iteration, iter_per_min=trainer.iter_per_min(),
        img_per_sec=trainer.iter_per_min() * cfg.batch_size / 60.0, params=trainer.params,
        train_hours=progress.wall_seconds / 3600.0, nan_grad_steps=progress.nan_grad_steps,
        device=device_description(trainer.device, env.world_size), precision=trainer.precision,
        seed_precision=cfg.seed_precision,
        method=cfg.method, ensemble_size=cfg.ensemble_size if method.sized_by_ensemble_size else 1,
        test_ms_per_example=test_ms,
        model=cfg.model, width=cfg.width, data=cfg.data, image_size=data.image_size,
        batch_size=cfg.batch_size, seed=cfg.seed, preset=cfg.preset, run_dir=str(trainer.run_dir))
    runs.write_results(trainer.run_dir, results)
    trainer.run_log.finished(dict(best, iter=best_iter))
    trainer.run_log.close()
    return results


def train_deep_ensemble(cfg: TrainConfig, resume: bool = False) -> runs.RunResults | None:
    """`--method ensemble`: M deterministic members with seeds seed, seed+1, ... trained by the
    one loop into <run>/member_<k>/, then evaluated together (evaluate.evaluate_runs).

    A resume, or a relaunch with the same --out and recipe, keeps finished members, continues
    the one that was stopped (by a signal or a kill) from its checkpoint, and starts the rest; a
    finished ensemble is not trained again.
    """
    if cfg.ensemble_size < 2:
        raise UserError(f"--ensemble-size {cfg.ensemble_size}: a deep ensemble needs at least 2 members")
    root = Path(cfg.out) if cfg.out else None
    if not resume and root is not None and (root / runs.CONFIG_FILE).is_file():
        flags = _recipe_changes(runs.read_config(root).train_config(), cfg.to_dict())
        if flags:
            raise UserError(f"--out {root} holds a run of another recipe: {flags}. A run continues only with its "
                            f"own recipe: give another --out to start a new run, or continue that one with "
                            f"`resnets train --resume {shlex.quote(str(root))}`")
        resume = True
    if resume and (root / runs.RESULTS_FILE).is_file():
        print(f"resnets train: {root} is finished ({runs.RESULTS_FILE} is there); not training it again",
              file=sys.stderr, flush=True)
        return runs.read_results(root)
    if not resume:
        checkpoints = Path(runs.LAST_CHECKPOINT).parent
        if root is not None and root.is_dir() and [p.name for p in root.iterdir()] == [checkpoints.name] \
                and not any((root / checkpoints).iterdir()):
            (root / checkpoints).rmdir()  # stopped between creating the folder and writing its config
        root = runs.new_run_dir(cfg)
    members = [runs.member_dir(root, k) for k in range(cfg.ensemble_size)]
    if not resume:
        runs.write_config(root, cfg, dict(members=[m.name for m in members]))
    member_results: list[runs.RunResults | None] = []
    for k, member in enumerate(members):
        member_cfg = dataclasses.replace(cfg, method="deterministic", seed=cfg.seed + k, out=str(member), name=None)
        if (member / runs.RESULTS_FILE).is_file():
            result = runs.read_results(member)
        else:
            # A member with a checkpoint continues from it; one stopped before its first checkpoint
            # starts again (train's relaunch of the same --out); a signal stops the whole ensemble.
            result = train(member_cfg, resume_dir=root)
        member_results.append(result)
    if any(r is None for r in member_results):
        return None  # not the main process of a torchrun
    metrics: dict[str, float] = {}
    spec = dataset_spec(cfg.data)
    for split, prefix in (("val", "val"), (spec.test_split, "tst")):
        if member_results[0].metrics.get(f"{prefix}/acc") is None:
            continue  # the run reported no such split
        report = evaluate_runs(EvalRequest(runs=members, split=split, device=cfg.device, precision=cfg.precision,
                                           num_workers=cfg.num_workers))
        metrics.update({f"{prefix}/{key}": value for key, value in report["metrics"].items()})
    first = member_results[0]
    results = runs.RunResults(
        metrics=metrics, iters=first.iters,
        iter_per_min=sum(r.iter_per_min for r in member_results) / len(members),
        img_per_sec=sum(r.img_per_sec for r in member_results) / len(members),
        params=sum(r.params for r in member_results), train_hours=sum(r.train_hours for r in member_results),
        nan_grad_steps=sum(r.nan_grad_steps for r in member_results), device=first.device,
        precision=first.precision, method=cfg.method, ensemble_size=len(members), model=cfg.model,
        width=cfg.width, data=cfg.data, image_size=first.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
        preset=cfg.preset, log_path=f"{members[0].name}/{runs.LOG_FILE}", checkpoint=None,
        members=[m.name for m in members], run_dir=str(root))
    runs.write_results(root, results)
    return results
