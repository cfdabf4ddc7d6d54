"""The run directory: its file names, the config.yaml and results.json schemas, and every read
and write of them. `resnets train`, `eval`, `report` and the deep ensemble go through here only.

Reading order: the file names, `RunResults` (results.json), `SavedConfig` (config.yaml), the
logs, `new_run_dir`, then reading a finished run's weights and model (`load_run`).

A run directory holds:

* config.yaml: ``{config: <TrainConfig fields>, resolved: <what the run resolved>}``;
* train.log (one line per evaluation), metrics.jsonl (one JSON object per evaluation),
  train_metrics.jsonl (train loss, accuracy, LR, img/s every --log-every iterations), tb/;
* checkpoints/last.pt: the resume state, and checkpoints/previous.pt, the one before it, each
  with a sha256 file beside it (last.pt.sha256); readers take the newest intact one
  (`read_newest_checkpoint`); checkpoints/best.safetensors: the evaluation
  weights at the best val/acc (EMA weights when EMA was on; the finalized weights for
  SWA/SWAG); model.safetensors: the evaluation weights at the end; results.json.
* a deep ensemble: member_0/, member_1/, ... (each a run directory) and its own config.yaml
  and results.json.

The method's own state (SWA mean, SWAG moments) lives only in the checkpoint, so it is read
from there whichever weights are chosen.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from .checkpoint import load_checkpoint, load_weights, verify_checkpoint
from .config import TrainConfig
from .errors import UserError
from .methods import METHODS, Method
from .recipe import build_run_model

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"  # dense training points, every --log-every iterations
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tb"
LAST_CHECKPOINT = "checkpoints/last.pt"
PREVIOUS_CHECKPOINT = "checkpoints/previous.pt"  # the checkpoint before last.pt
CHECKPOINTS = (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT)  # newest first
BEST_WEIGHTS = "checkpoints/best.safetensors"
FINAL_WEIGHTS = "model.safetensors"
EVAL_FILE = "eval.json"
MEMBER_PREFIX = "member_"
TRACKERS_FILE = "trackers.json"  # the MLflow / W&B run ids of this run, so a resume continues them
LOCK_FILE = "train.lock"  # held (fcntl.lockf) by the process training the run; its host and PID inside

WEIGHTS = ("best", "final", "last")


def member_dir(root: str | Path, index: int) -> Path:
    """The run directory of a deep ensemble's member `index`."""
    return Path(root) / f"{MEMBER_PREFIX}{index}"


# ---------------------------------------------------------------------------------------------
# results.json


@dataclass
class RunResults:
    """results.json: the metrics at the best val/acc (val/*, tst/*, trn/*; the final ones for
    methods that finalize) and what produced them. Written flat: metric keys beside the rest."""
    metrics: dict[str, float] = field(default_factory=dict)
    iters: int | None = None
    best_iter: int | None = None
    iter_per_min: float | None = None
    img_per_sec: float | None = None
    params: int | None = None
    train_hours: float | None = None
    nan_grad_steps: int | None = None
    device: str | None = None
    precision: str | None = None
    seed_precision: str | None = None  # the precision of the seed's row, where the preset names one
    method: str | None = None
    ensemble_size: int | None = None
    test_ms_per_example: float | None = None
    model: str | None = None
    width: int | None = None
    data: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    preset: str | None = None
    config_path: str | None = CONFIG_FILE
    log_path: str | None = LOG_FILE
    checkpoint: str | None = FINAL_WEIGHTS
    members: list[str] | None = None
    run_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "metrics"}
        if values["members"] is None:
            del values["members"]
        return {**self.metrics, **values}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunResults":
        """Any results.json a version of `resnets train` wrote: unknown keys with a '/' are
        metrics, other unknown keys are ignored, missing ones are None."""
        names = {f.name for f in dataclasses.fields(cls)} - {"metrics"}
        metrics = {k: v for k, v in data.items() if "/" in k and k not in names}
        return cls(metrics=metrics, **{k: v for k, v in data.items() if k in names})


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, values: Mapping[str, Any], flag: str = "--out") -> None:
    """A JSON file (NaN and inf written as null), with a UserError naming `flag` if it fails."""
    path = Path(path)
    try:
        path.write_text(json.dumps(_json_safe(dict(values)), indent=2) + "\n")
    except OSError as error:
        raise UserError(f"{flag} {str(path)!r} cannot be written: {error.strerror or error}; expected a writable "
                        "file path.") from None


def write_results(run_dir: str | Path, results: RunResults) -> None:
    write_json(Path(run_dir) / RESULTS_FILE, results.to_json(), flag="results file")


def read_results(run_dir: str | Path) -> RunResults:
    path = Path(run_dir) / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: expected a run directory with a {RESULTS_FILE} (a run that "
                        "`resnets train` finished).") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read as JSON ({error}); expected the {RESULTS_FILE} a run writes.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, expected an object of metrics.")
    return RunResults.from_json(data)


# ---------------------------------------------------------------------------------------------
# config.yaml


@dataclass
class SavedConfig:
    """config.yaml: the run's TrainConfig fields as given, and what it resolved from them
    (num_classes, image_size, total_iters, peak_lr, mean/std, precision, world_size, ...)."""
    config: dict[str, Any]
    resolved: dict[str, Any]
    path: Path

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, source=str(self.path))


def write_config(run_dir: str | Path, cfg: TrainConfig, resolved: Mapping[str, Any]) -> None:
    text = yaml.safe_dump(dict(config=cfg.to_dict(), resolved=dict(resolved)), sort_keys=False)
    (Path(run_dir) / CONFIG_FILE).write_text(text)


def read_config(run_dir: str | Path) -> SavedConfig:
    """config.yaml of `run_dir`; a flat mapping of TrainConfig fields is read as the config with
    nothing resolved."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist: expected a folder written by `resnets train`.")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a resnets run directory: expected {path}")
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a resnets run config: expected a mapping with 'config' and 'resolved'")
    if isinstance(saved.get("config"), dict):
        resolved = saved.get("resolved")
        return SavedConfig(saved["config"], resolved if isinstance(resolved, dict) else {}, path)
    return SavedConfig(saved, {}, path)


def read_run(run_dir: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's TrainConfig and its `resolved` values (num_classes, image_size, ...)."""
    saved = read_config(run_dir)
    cfg = saved.train_config()
    if not {"num_classes", "image_size"} <= set(saved.resolved):
        raise UserError(f"{saved.path} has no 'resolved' section with num_classes and image_size: "
                        "expected a config.yaml written by `resnets train` (the run may have been stopped before "
                        "its data was loaded).")
    return cfg, saved.resolved


def architecture(cfg: TrainConfig, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The config as `check_compatible` compares it: the recipe plus the resolved data shape."""
    return dict(cfg.to_dict(), num_classes=resolved["num_classes"], image_size=resolved["image_size"])


# ---------------------------------------------------------------------------------------------
# Logs


def append_metrics(run_dir: str | Path, iteration: int, values: Mapping[str, float]) -> None:
    record = dict(iter=iteration, **{k: float(v) for k, v in values.items()})
    with open(Path(run_dir) / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def append_train_metrics(run_dir: str | Path, iteration: int, values: Mapping[str, float]) -> None:
    record = dict(iter=iteration, **{k: float(v) for k, v in values.items()})
    with open(Path(run_dir) / TRAIN_METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def append_log(run_dir: str | Path, line: str) -> None:
    with open(Path(run_dir) / LOG_FILE, "a") as handle:
        handle.write(line.rstrip("\n") + "\n")


def log_line(iteration: int, total: int, values: Mapping[str, Any]) -> str:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    text = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    return f"[iter {iteration}/{total}] [{stamp}] {text}"


def truncate_logs(run_dir: str | Path, iteration: int) -> None:
    """Drop log entries a killed run wrote after its last checkpoint, so they are not doubled."""
    for name in (METRICS_FILE, TRAIN_METRICS_FILE):
        path = Path(run_dir) / name
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["iter"] <= iteration]
            path.write_text("".join(line + "\n" for line in kept))
    log_path = Path(run_dir) / LOG_FILE
    if log_path.exists():
        kept = [line for line in log_path.read_text().splitlines()
                if not line.startswith("[iter ") or int(line[6:].split("/")[0]) <= iteration]
        log_path.write_text("".join(line + "\n" for line in kept))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl, one per evaluation (an empty list when the run has none yet)."""
    return _read_jsonl(Path(run_dir) / METRICS_FILE, "evaluation")


def read_train_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of train_metrics.jsonl, one per --log-every iterations (empty for older runs)."""
    return _read_jsonl(Path(run_dir) / TRAIN_METRICS_FILE, "training log point")


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{path}, line {number}, is not JSON: expected one JSON object per {what} "
                            "as `resnets train` writes them.") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# New run directories


def default_run_name(cfg: TrainConfig) -> str:
    """Seed 001's naming: resnet_20x1-iter_48k-wd_0.0010[-fp16], with batch and LR when the batch is not 256."""
    depth = cfg.model.removeprefix("resnet")
    parts = [f"resnet_{depth}x{cfg.width}"]
    if cfg.batch_size != 256:
        parts.append(f"batch_{cfg.batch_size}")
    iters = str(cfg.iters).strip()
    if iters.isdigit() and int(iters) % 1000 == 0:
        iters = f"{int(iters) // 1000}k"
    parts.append(f"iter_{iters}")
    if cfg.batch_size != 256:
        parts.append(f"lr_{cfg.lr:g}")
    parts.append(f"wd_{cfg.weight_decay:.4f}")
    method = METHODS.get(cfg.method, Method)
    if method is not Method:
        parts.append(cfg.method + (f"{cfg.ensemble_size}" if method.sized_by_ensemble_size else ""))
    if cfg.precision in ("fp16", "bf16"):
        parts.append(cfg.precision)
    return "-".join(parts)


def new_run_dir(cfg: TrainConfig) -> Path:
    """`--out`, or runs_root/data/name/seed/timestamp; refused when it holds anything."""
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        name = cfg.name or default_run_name(cfg)
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        run_dir = Path(cfg.runs_root) / cfg.data / name / str(cfg.seed) / stamp
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} already exists and is not empty: choose another --out, or "
                        f"continue that run with --resume {run_dir}")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create run directory {run_dir}: {error.strerror}") from None
    return run_dir


class RunLock:
    """An exclusive lock on a run directory while one process trains it: a POSIX record lock
    (fcntl.lockf) on LOCK_FILE, which the kernel releases when the process ends however it ends, so
    a lock file left by a dead process is simply taken over. Inside: the holder's host and PID, for
    the second launch's error.

    Why a record lock and not flock: an flock belongs to the open file, which forked children
    (DataLoader workers) share, so a SIGKILLed trainer's workers kept its run locked until they
    noticed their parent had gone; a record lock belongs to the process alone. Its one trap: the
    kernel also drops it when the process closes any descriptor of the file, so nothing else in
    the holding process opens LOCK_FILE, and a second RunLock on the same directory in one process
    is refused here rather than by the kernel (which never refuses a process its own lock)."""

    _held: set[Path] = set()  # resolved lock paths this process holds

    def __init__(self, run_dir: str | Path):
        import fcntl
        import os
        import socket
        self.path = Path(run_dir) / LOCK_FILE
        self._key = self.path.resolve()
        if self._key in RunLock._held:
            raise UserError(f"--out {run_dir} is being trained by this process (pid {os.getpid()}): give another "
                            "--out; two trainings into one run directory would overwrite each other's checkpoints")
        self._handle = open(self.path, "a+")
        try:
            fcntl.lockf(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise UserError(f"--out {run_dir} is being trained by {holder} (it holds {self.path}): wait for it "
                            "to finish or stop it, or give another --out; two launches into one run directory "
                            "would overwrite each other's checkpoints") from None
        RunLock._held.add(self._key)
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the file releases the lock
            RunLock._held.discard(self._key)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class FoundCheckpoint:
    """The newest intact checkpoint of a run: its file, its state, and why newer ones were passed over."""
    path: Path
    state: dict[str, Any]
    skipped: list[str] = field(default_factory=list)

    @property
    def iteration(self) -> int:
        return int(self.state.get("iteration", 0))


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds any checkpoint file (intact or not)."""
    return any((Path(run_dir) / name).is_file() for name in CHECKPOINTS)


def read_newest_checkpoint(run_dir: str | Path) -> FoundCheckpoint:
    """last.pt, or previous.pt where last.pt is missing, truncated or damaged (its sha256 is checked
    before it is read); UserError naming what is wrong with each when neither is intact."""
    run_dir = Path(run_dir)
    problems = []
    for name in CHECKPOINTS:
        path = run_dir / name
        if not path.is_file():
            if name == LAST_CHECKPOINT and (run_dir / PREVIOUS_CHECKPOINT).is_file():
                problems.append(f"{path} is missing (the run was stopped while replacing it)")
            continue
        try:
            verify_checkpoint(path)
            state = load_checkpoint(path)
        except UserError as error:
            problems.append(str(error))
            continue
        return FoundCheckpoint(path, state, problems)
    if not problems:
        raise UserError(f"{run_dir} holds no checkpoint: expected {run_dir / LAST_CHECKPOINT}, written at every "
                        "evaluation and every --checkpoint-every")
    raise UserError(f"{run_dir} holds no intact checkpoint: {'; '.join(problems)}")


def _newest_checkpoint_note(found: FoundCheckpoint) -> None:
    if found.skipped:
        print(f"resnets: {'; '.join(found.skipped)}; using {found.path} (iteration {found.iteration}) instead",
              file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Finished runs: weights and models


@dataclass
class LoadedRun:
    run_dir: Path
    config: TrainConfig
    resolved: dict[str, Any]
    model: nn.Module  # eval mode, weights loaded, on the device
    method: Method
    weights_path: Path | None = None  # the file the weights came from


def weights_state(run_dir: str | Path, weights: str = "best") -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of the run's `weights` (on the CPU) and the file it came from."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights {weights!r} is unknown: expected one of {', '.join(WEIGHTS)}.")
    run_dir = Path(run_dir)
    if weights == "last":
        found = read_newest_checkpoint(run_dir)
        _newest_checkpoint_note(found)
        path, state = found.path, found.state
        ema = state.get("ema")
        if isinstance(ema, dict) and ema:
            # AveragedModel's state dict: the averaged module under 'module.' plus a counter.
            model_state = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
        else:
            model_state = state.get("model")
        if not isinstance(model_state, dict) or not model_state:
            raise UserError(f"checkpoint {path} holds no model weights: expected a checkpoint written by "
                            "`resnets train`.")
        return model_state, path
    path = run_dir / (BEST_WEIGHTS if weights == "best" else FINAL_WEIGHTS)
    if weights == "best" and not path.is_file() and (run_dir / FINAL_WEIGHTS).is_file():
        path = run_dir / FINAL_WEIGHTS  # no validation split: no best weights were ever written
    if not path.is_file():
        expected = f"{run_dir / BEST_WEIGHTS} or {run_dir / FINAL_WEIGHTS}" if weights == "best" else str(path)
        raise UserError(f"run {run_dir} has no {weights} weights: expected {expected}. A run stopped before its "
                        "end has only checkpoints/last.pt: evaluate it with --weights last, or resume it.")
    return load_weights(path), path


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """UserError naming `path` unless `state` has exactly the model's keys and shapes.

    Checked here rather than left to load_state_dict so the message names the file and the first
    few differences instead of hundreds of lines.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    raise UserError(f"foreign checkpoint {path}: its weights do not fit the model its run config describes "
                    f"({'; '.join(problems)}); expected weights written by `resnets train` for this run.")


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    check_fits(model, state, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"foreign checkpoint {path}: its weights do not load into the model ({first}).") from None


def load_method_state(run_dir: str | Path, method: Method) -> None:
    """Load the method's state (SWA/SWAG moments) from the newest intact checkpoint; methods without
    state skip the file."""
    if not method.stateful:
        return
    found = read_newest_checkpoint(run_dir)
    path, state = found.path, found.state
    try:
        method.load_state_dict(state["method"])
    except (KeyError, TypeError) as error:
        raise UserError(f"checkpoint {path} has no usable {method.name} state ({error}): expected the "
                        f"checkpoint of a run trained with --method {method.name}.") from None


def run_model(cfg: TrainConfig, resolved: Mapping[str, Any], method: Method | None = None) -> tuple[nn.Module, Method]:
    """A fresh, untrained model of the run, converted by its method."""
    return build_run_model(cfg, int(resolved["num_classes"]), int(resolved["image_size"]), method)


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", weights: str = "best",
             memory_format: torch.memory_format = torch.contiguous_format) -> LoadedRun:
    """Read a finished run: its model (eval mode, on `device`) with the chosen weights, and its method.

    SWA/SWAG methods come back with their collected state but not finalized: call
    `method.finalize(model, train_batches)` before evaluating (SWAG samples need it).
    """
    run_dir = Path(run_dir)
    cfg, resolved = read_run(run_dir)
    model, method = run_model(cfg, resolved)
    state, path = weights_state(run_dir, weights)
    load_state(model, state, path)
    load_method_state(run_dir, method)
    model = model.to(device, memory_format=memory_format).eval()
    return LoadedRun(run_dir, cfg, resolved, model, method, path)
