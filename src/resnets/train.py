"""The one training loop: every preset, method, precision and process count goes through `train`.

Reading order: `train` sets up (data, schedule, run directory, model, optimizer, resume),
`_Trainer.run` is the loop, `_Trainer.evaluate` the periodic evaluation, and `_finish` the
final evaluation and results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import export_weights, load_checkpoint, save_checkpoint
from .config import EXECUTION_FIELDS, Schedule, TrainConfig, default_run_name, resolve_schedule
from .data import DatasetBundle, eval_batches, load_dataset, steps_per_epoch, train_batches
from .devices import autocast, device_description, resolve_device, resolve_precision
from .distributed import DistEnv, barrier, broadcast_object, init_distributed, shutdown
from .errors import UserError
from .evaluate import Restartable, predict_dataset
from .methods import Method, build_method
from .models import create_model
from .models.stats import count_parameters
from .models.sync_batchnorm import convert_to_cross_process_bn

CONFIG_FILE = "config.yaml"
LAST_CHECKPOINT = "checkpoints/last.pt"
BEST_WEIGHTS = "checkpoints/best.safetensors"
FINAL_WEIGHTS = "model.safetensors"
EVAL_ONLY_DATASETS = ("imagenet-v2",)
# Seed 001 measures throughput over the last 5,000 iterations.
THROUGHPUT_WINDOW = 5000


# ---------------------------------------------------------------------------------------------
# Setup helpers


def build_model(cfg: TrainConfig, num_classes: int, image_size: int) -> nn.Module:
    overrides: dict[str, Any] = dict(width=cfg.width, head_bias=cfg.head_bias, head_init=cfg.head_init,
                                     zero_init_last_bn=cfg.zero_init_last_bn)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    if cfg.drop_path_rate is not None:
        overrides["drop_path_rate"] = cfg.drop_path_rate
    try:
        return create_model(cfg.model, num_classes=num_classes, image_size=image_size, **overrides)
    except ValueError as error:
        raise UserError(f"--model {cfg.model}: {error}") from None


def method_from_config(cfg: TrainConfig) -> Method:
    options = {
        "batchensemble": dict(ensemble_size=cfg.ensemble_size, init=cfg.be_init,
                              fast_weight_lr_mult=cfg.fast_weight_lr_mult),
        "mcdropout": dict(samples=cfg.mc_samples),
        "swa": dict(start=cfg.swa_start, collect_every=cfg.swa_every, lr=cfg.swa_lr),
        "swag": dict(start=cfg.swa_start, collect_every=cfg.swa_every, lr=cfg.swa_lr,
                     rank=cfg.swag_rank, samples=cfg.swag_samples),
    }.get(cfg.method, {})
    return build_method(cfg.method, **options)


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Coupled L2 (SGD's weight_decay: grad += wd * param) on every parameter, or all but BN's."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in bn_params and not cfg.decay_bn else decay).append(p)
    groups = [dict(params=decay, weight_decay=cfg.weight_decay, lr_mult=1.0)]
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0, lr_mult=1.0))
    return groups


def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        name = cfg.name or default_run_name(cfg)
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        run_dir = Path(cfg.runs_root) / cfg.data / name / str(cfg.seed) / stamp
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} already exists and is not empty: choose another --out, or "
                        f"continue that run with --resume {run_dir}")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create run directory {run_dir}: {error.strerror}") from None
    return run_dir


def load_run_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a resnets run directory: expected {path}")
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(saved, dict) or "config" not in saved:
        raise UserError(f"{path} is not a resnets run config: expected a mapping with a 'config' key")
    return TrainConfig.from_dict(saved["config"], source=str(path))


def resume_config(run_dir: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The saved config of `run_dir`, with only execution flags (device, workers...) changeable."""
    cfg = load_run_config(run_dir)
    changed = {k: v for k, v in given.items() if k not in EXECUTION_FIELDS and getattr(cfg, k) != v}
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {v} (run has {getattr(cfg, k)})" for k, v in changed.items())
        raise UserError(f"cannot resume {run_dir} with a different recipe: {flags}. A resumed run keeps its saved "
                        "config so that it ends exactly as an uninterrupted run; start a new run instead")
    for key, value in given.items():
        setattr(cfg, key, value)
    cfg.out = str(run_dir)
    return cfg


def _format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


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
                 env: DistEnv, device: torch.device, precision: str, resume: bool):
        self.cfg, self.run_dir, self.data, self.schedule = cfg, run_dir, data, schedule
        self.env, self.device, self.precision = env, device, precision
        self.channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.num_workers = cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)

        torch.manual_seed(cfg.seed)
        self.method = method_from_config(cfg)
        model = self.method.prepare_model(build_model(cfg, data.num_classes, data.image_size))
        self.params = count_parameters(model)
        if env.enabled and cfg.sync_bn:
            # torch's SyncBatchNorm runs only on GPUs; gloo (CPU) runs get an equivalent of ours.
            model = (nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda"
                     else convert_to_cross_process_bn(model))
        self.model = model.to(device, memory_format=self.memory_format)
        groups = self.method.param_groups(self.model, parameter_groups(self.model, cfg))
        self.optimizer = torch.optim.SGD(groups, lr=schedule.peak_lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay else None)
        self.progress = _Progress()
        if resume:
            self._load(run_dir / LAST_CHECKPOINT)

        step_model: nn.Module = self.model
        if env.enabled:
            step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            step_model = torch.compile(step_model)
        self.step_model = step_model

        self.writer = None
        if env.is_main:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step drops events a killed run wrote after its last checkpoint.
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=self.progress.iteration)
            if resume:
                self._truncate_logs(self.progress.iteration)

    # --- state -------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = dict(
            config=self.cfg.to_dict(), iteration=self.progress.iteration, progress=self.progress.__dict__,
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(), method=self.method.state_dict(),
            world_size=self.env.world_size, cpu_rng=torch.get_rng_state(),
        )
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("world_size", 1) != self.env.world_size and not self.cfg.allow_world_size_change:
            raise UserError(f"{path} was written by {state.get('world_size', 1)} process(es) and this resume runs "
                            f"{self.env.world_size}: resume with the same --nproc-per-node x --nnodes, since the "
                            "per-process batches and BN statistics depend on it (or accept a different result with "
                            "--allow-world-size-change)")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise UserError(f"{path} does not match this run's model and optimizer ({str(error).splitlines()[0]}): "
                            "expected a checkpoint of the same config") from None
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["cpu_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.progress = _Progress(**state["progress"])

    def _truncate_logs(self, iteration: int) -> None:
        """Drop log entries a killed run wrote after its last checkpoint, so they are not doubled."""
        metrics_path = self.run_dir / "metrics.jsonl"
        if metrics_path.exists():
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["iter"] <= iteration]
            metrics_path.write_text("".join(line + "\n" for line in kept))
        log_path = self.run_dir / "train.log"
        if log_path.exists():
            kept = [line for line in log_path.read_text().splitlines()
                    if not line.startswith("[iter ") or int(line[6:].split("/")[0]) <= iteration]
            log_path.write_text("".join(line + "\n" for line in kept))

    def save(self) -> None:
        if self.env.is_main:
            save_checkpoint(self.run_dir / LAST_CHECKPOINT, self._state())

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
        return eval_batches(split, batch_size=self.cfg.eval_batch_size, device=self.device, mean=self.data.mean,
                            std=self.data.std, image_size=self.data.image_size, channels_last=self.channels_last,
                            num_workers=self.num_workers)

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

    def log(self, results: dict[str, float]) -> None:
        if not self.env.is_main:
            return
        it, total = self.progress.iteration, self.schedule.total_iters
        record = dict(iter=it, **{k: float(v) for k, v in results.items()})
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with open(self.run_dir / "train.log", "a") as handle:
            handle.write(f"[iter {it}/{total}] [{stamp}] {_format_metrics(results)}\n")
        for key, value in results.items():
            self.writer.add_scalar(key, value, it)
        self.writer.flush()

    # --- the loop ----------------------------------------------------------------------------

    def _train_stream(self, start: int):
        return train_batches(self.data.train, batch_size=self.cfg.batch_size, start_iteration=start,
                             seed=self.cfg.seed, device=self.device, mean=self.data.mean, std=self.data.std,
                             image_size=self.data.image_size, augment=self.cfg.augment,
                             randaugment_magnitude=self.cfg.randaugment_magnitude,
                             channels_last=self.channels_last, rank=self.env.rank,
                             world_size=self.env.world_size, num_workers=self.num_workers)

    def _set_lr(self, iteration: int) -> float:
        lr = self.method.adjust_lr(self.schedule.lr_at(iteration), iteration, self.schedule.total_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def step(self, x: torch.Tensor, y: torch.Tensor, sums: torch.Tensor) -> None:
        x, y = self.method.train_batch(x, y)
        with autocast(self.device, self.precision):
            logits = self.step_model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        if self.scaler.is_enabled():
            # A skipped fp16 step is counted on the device: no host sync inside the step.
            found_inf = self.scaler._found_inf_per_device(self.optimizer)
            sums[3] += sum(v.to(sums.device) for v in found_inf.values())
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # Running training statistics stay on the device until the next log point.
        sums[0] += loss.detach().float() * y.shape[0]
        sums[1] += (logits.detach().argmax(-1) == y).sum()
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
        sums = torch.zeros(4, device=self.device, dtype=torch.float64)
        window_start = time.perf_counter()
        wall_start = time.perf_counter()
        for iteration in range(start, total):
            lr = self._set_lr(iteration)
            x, y = next(stream)
            self.step(x, y, sums)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.progress.iteration = iteration + 1
            self.method.after_step(self.model, iteration + 1, total)
            done = iteration + 1
            if bar is not None:
                bar.update(1)
            at_eval = done % self.schedule.eval_every == 0 or done == total
            if done % cfg.log_every == 0 or at_eval:
                self._check_finite(sums, done)
                if bar is not None:
                    bar.set_postfix(loss=f"{sums[0].item() / max(sums[2].item(), 1):.4f}", lr=f"{lr:.4g}")
            if at_eval:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                now = time.perf_counter()
                self.progress.train_seconds += now - window_start
                self.progress.timeline.append([done, self.progress.train_seconds])
                loss_sum, correct, count, nan_steps = sums.tolist()
                self.progress.nan_grad_steps += int(nan_steps)
                stats = {"lr": lr, "trn/loss": loss_sum / max(count, 1), "trn/acc": correct / max(count, 1),
                         "iter_per_min": self.iter_per_min(), "train_seconds": self.progress.train_seconds}
                results = self.evaluate(stats)
                # On a tie the later evaluation wins: it has trained longer at a lower LR.
                if "val/acc" in results and results["val/acc"] >= self.progress.best.get("val/acc", -1.0):
                    self.progress.best = {k: v for k, v in results.items() if k[:4] in ("val/", "tst/")}
                    self.progress.best["iter"] = done
                    self.export(BEST_WEIGHTS)
                self.progress.wall_seconds += time.perf_counter() - wall_start
                wall_start = time.perf_counter()
                # Log first, checkpoint second: a resume truncates entries past its checkpoint.
                self.log(results)
                self.save()
                barrier(self.env)
                sums.zero_()
                window_start = time.perf_counter()
        if bar is not None:
            bar.close()
        self.progress.wall_seconds += time.perf_counter() - wall_start

    def _check_finite(self, sums: torch.Tensor, iteration: int) -> None:
        if not math.isfinite(sums[0].item()):
            if self.precision == "fp16":
                return  # fp16 steps with non-finite gradients were skipped and are counted instead
            raise UserError(
                f"the training loss became {sums[0].item()} by iteration {iteration} ({self.precision}): training "
                f"diverged. The last good checkpoint is {self.run_dir / LAST_CHECKPOINT} (untouched). Try a lower "
                "--lr, a longer --warmup, or --grad-clip")

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


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train `cfg` (with `resume`, continue the run in `cfg.out`) and return results.json's content."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    env = init_distributed(device.type)
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    try:
        return _train(cfg, resume, env, device, precision)
    finally:
        shutdown(env)


def _train(cfg: TrainConfig, resume: bool, env: DistEnv, device: torch.device, precision: str) -> dict[str, Any]:
    if cfg.ema_decay and cfg.method in ("swa", "swag"):
        raise UserError(f"--ema-decay and --method {cfg.method} both average weights and cannot be combined: "
                        "drop one of them")
    if cfg.batch_size % env.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over "
                        f"{env.world_size} processes")
    if cfg.data in EVAL_ONLY_DATASETS:
        raise UserError(f"--data {cfg.data} has no training split: it is a test set for `resnets eval "
                        f"RUN_DIR --shift-data {cfg.data}`")
    data = load_dataset(cfg.data, cfg.data_dir, image_size=cfg.image_size, download=cfg.download,
                        val_size=cfg.val_size)
    if data.train is None:
        raise UserError(f"--data {cfg.data} has no training split: it is for evaluation only (resnets eval)")
    per_epoch = steps_per_epoch(data.train, cfg.batch_size)
    if per_epoch < 1:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(data.train)} training images of "
                        f"--data {cfg.data}")
    schedule = resolve_schedule(cfg, per_epoch)

    run_dir = None
    if env.is_main:
        run_dir = Path(cfg.out) if resume else new_run_dir(cfg)
        if resume and not (run_dir / LAST_CHECKPOINT).is_file():
            raise UserError(f"cannot resume {run_dir}: expected {run_dir / LAST_CHECKPOINT}; the run was stopped "
                            "before its first checkpoint, so start it again")
    run_dir = Path(broadcast_object(env, str(run_dir)))

    trainer = _Trainer(cfg, run_dir, data, schedule, env, device, precision, resume)
    if env.is_main and not resume:
        resolved = dict(config=cfg.to_dict(), resolved=dict(
            total_iters=schedule.total_iters, warmup_iters=schedule.warmup_iters, milestones=schedule.milestones,
            eval_every=schedule.eval_every, steps_per_epoch=schedule.steps_per_epoch, peak_lr=schedule.peak_lr,
            num_classes=data.num_classes, image_size=data.image_size, mean=list(data.mean), std=list(data.std),
            precision=precision,
            channels_last=trainer.channels_last, world_size=env.world_size, device=str(device),
            train_size=len(data.train), val_size=len(data.val) if data.val is not None else 0,
            test_size=len(data.test) if data.test is not None else 0, params=trainer.params))
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
        with open(run_dir / "train.log", "a") as handle:
            handle.write(f"# resnets train: {cfg.model} on {cfg.data} ({len(data.train)} train images), "
                         f"{schedule.total_iters} iterations, batch {cfg.batch_size}, {precision}, "
                         f"{device_description(device, env.world_size)}\n")
    trainer.run()
    return _finish(trainer)


def _finish(trainer: _Trainer) -> dict[str, Any]:
    cfg, data, env, progress = trainer.cfg, trainer.data, trainer.env, trainer.progress
    method = trainer.method
    final: dict[str, float] = {}
    finalizes = type(method).finalize is not Method.finalize
    if finalizes:
        # SWA/SWAG: the averaged (or sampled) weights are the result, BN re-estimated on train batches.
        total = trainer.schedule.total_iters
        method.finalize(trainer.model, Restartable(lambda: itertools.islice(trainer._train_stream(total), 50)))
        progress.best = {}
    test_ms = None
    if env.is_main:
        for split, prefix in ((data.val, "val"), (data.test, "tst")):
            # Test is always run once more, to time it; its metrics replace the best-val ones
            # only where the final weights are the result (SWA/SWAG) or there was no validation.
            if split is None or (prefix == "val" and not finalizes):
                continue
            start = time.perf_counter()
            metrics = trainer.evaluate_split(split, prefix)
            if prefix == "tst":
                test_ms = 1000 * (time.perf_counter() - start) / max(len(split), 1)
            if finalizes or not progress.best:
                final.update(metrics)
        if cfg.eval_train:
            final.update(trainer.evaluate_split(data.train, "trn"))
        if finalizes:
            trainer.export(BEST_WEIGHTS)
            trainer.save()
        trainer.export(FINAL_WEIGHTS)
    barrier(env)

    best = dict(progress.best) if progress.best else {}
    best.update(final)
    results: dict[str, Any] = dict(best)
    results.update({
        "best_iter": best.get("iter", progress.iteration),
        "iters": progress.iteration,
        "iter_per_min": trainer.iter_per_min(),
        "img_per_sec": trainer.iter_per_min() * cfg.batch_size / 60.0,
        "params": trainer.params,
        "train_hours": progress.wall_seconds / 3600.0,
        "nan_grad_steps": progress.nan_grad_steps,
        "device": device_description(trainer.device, env.world_size),
        "precision": trainer.precision,
        "method": cfg.method,
        "ensemble_size": cfg.ensemble_size if cfg.method == "batchensemble" else 1,
        "test_ms_per_example": test_ms,
        "model": cfg.model, "width": cfg.width, "data": cfg.data, "image_size": data.image_size,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "preset": cfg.preset,
        "config_path": CONFIG_FILE, "log_path": "train.log", "checkpoint": FINAL_WEIGHTS,
        "run_dir": str(trainer.run_dir),
    })
    results.pop("iter", None)
    if env.is_main:
        (trainer.run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        if trainer.writer is not None:
            trainer.writer.close()
    return results


def train_deep_ensemble(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """`--method ensemble`: M deterministic members with seeds seed, seed+1, ... trained by the
    one loop into <run>/member_<k>/, then evaluated together by `resnets eval`.

    A resume continues the member that was interrupted and skips finished ones.
    """
    from . import evaluate  # the `resnets eval` command itself, run on the members

    if cfg.ensemble_size < 2:
        raise UserError(f"--ensemble-size {cfg.ensemble_size}: a deep ensemble needs at least 2 members")
    root = Path(cfg.out) if resume else new_run_dir(cfg)
    if not resume:
        (root / CONFIG_FILE).write_text(yaml.safe_dump(dict(config=cfg.to_dict(), resolved=dict(
            members=[f"member_{k}" for k in range(cfg.ensemble_size)])), sort_keys=False))
    members, member_results = [], []
    for k in range(cfg.ensemble_size):
        member_dir = root / f"member_{k}"
        member_cfg = dataclasses.replace(cfg, method="deterministic", seed=cfg.seed + k, out=str(member_dir),
                                         name=None)
        if (member_dir / "results.json").is_file():
            result = json.loads((member_dir / "results.json").read_text())
        elif (member_dir / LAST_CHECKPOINT).is_file():
            result = train(member_cfg, resume=True)
        else:
            # Killed before its first checkpoint: it holds nothing worth keeping.
            shutil.rmtree(member_dir, ignore_errors=True)
            result = train(member_cfg)
        members.append(member_dir)
        member_results.append(result)

    results: dict[str, Any] = {}
    if int(os.environ.get("RANK", "0")) == 0:
        parser = argparse.ArgumentParser()
        evaluate.add_arguments(parser)
        for split, prefix in (("val", "val"), ("test", "tst")):
            if member_results[0].get(f"{prefix}/acc") is None:
                continue  # the dataset has no such split
            out = root / f"eval_{split}.json"
            args = parser.parse_args([*map(str, members), "--split", split, "--out", str(out), "--device", cfg.device,
                                      "--precision", cfg.precision])
            evaluate.run(args)
            metrics = json.loads(out.read_text())["metrics"]
            results.update({f"{prefix}/{key}": value for key, value in metrics.items() if key != "count"})
        first = member_results[0]
        results.update({
            "iters": first["iters"], "iter_per_min": sum(r["iter_per_min"] for r in member_results) / len(members),
            "img_per_sec": sum(r["img_per_sec"] for r in member_results) / len(members),
            "params": sum(r["params"] for r in member_results),
            "train_hours": sum(r["train_hours"] for r in member_results),
            "nan_grad_steps": sum(r["nan_grad_steps"] for r in member_results),
            "device": first["device"], "precision": first["precision"], "method": "ensemble",
            "ensemble_size": len(members), "model": cfg.model, "width": cfg.width, "data": cfg.data,
            "image_size": first["image_size"], "batch_size": cfg.batch_size, "seed": cfg.seed, "preset": cfg.preset,
            "config_path": CONFIG_FILE, "log_path": "member_0/train.log", "checkpoint": None,
            "members": [m.name for m in members], "run_dir": str(root),
        })
        (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
