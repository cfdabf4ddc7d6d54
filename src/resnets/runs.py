"""Finished training runs read back for evaluation: config, weights and method state.

A run directory (written by `resnets train`) holds three sets of weights:

* ``best``:  checkpoints/best.safetensors, the evaluation weights at the best val/acc (EMA
  weights when EMA was on; the finalized weights for SWA/SWAG). A run trained without a
  validation split never writes it, so ``best`` falls back to model.safetensors.
* ``final``: model.safetensors, the evaluation weights at the end of training.
* ``last``:  the model in checkpoints/last.pt, the resume checkpoint (its EMA weights when the
  run used EMA, since those are what the run evaluated).

The method's own state (SWA mean, SWAG moments) lives only in last.pt, so it is read from
there whichever weights are chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from .checkpoint import load_checkpoint, load_weights
from .config import TrainConfig
from .errors import UserError
from .methods import Method
from .train import (
    BEST_WEIGHTS,
    CONFIG_FILE,
    FINAL_WEIGHTS,
    LAST_CHECKPOINT,
    build_model,
    load_run_config,
    method_from_config,
)

WEIGHTS = ("best", "final", "last")


@dataclass
class LoadedRun:
    run_dir: Path
    config: TrainConfig
    resolved: dict[str, Any]
    model: nn.Module  # eval mode, weights loaded, on the device
    method: Method
    weights_path: Path | None = None  # the file the weights came from


def read_run(run_dir: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's TrainConfig and its `resolved` values (num_classes, image_size, ...)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist: expected a folder written by `resnets train`.")
    cfg = load_run_config(run_dir)
    saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    resolved = saved.get("resolved")
    if not isinstance(resolved, dict) or not {"num_classes", "image_size"} <= set(resolved):
        raise UserError(f"{run_dir / CONFIG_FILE} has no 'resolved' section with num_classes and image_size: "
                        "expected a config.yaml written by `resnets train` (the run may have been stopped before "
                        "its data was loaded).")
    return cfg, resolved


def architecture(cfg: TrainConfig, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The config as `check_compatible` compares it: the recipe plus the resolved data shape."""
    return dict(cfg.to_dict(), num_classes=resolved["num_classes"], image_size=resolved["image_size"])


def weights_state(run_dir: str | Path, weights: str = "best") -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of the run's `weights` (on the CPU) and the file it came from."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights {weights!r} is unknown: expected one of {', '.join(WEIGHTS)}.")
    run_dir = Path(run_dir)
    if weights == "last":
        path = run_dir / LAST_CHECKPOINT
        state = load_checkpoint(path)
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


def build_run_model(cfg: TrainConfig, resolved: Mapping[str, Any], method: Method) -> nn.Module:
    """A fresh model as the run built it, converted by its method (e.g. BatchEnsemble layers)."""
    return method.prepare_model(build_model(cfg, int(resolved["num_classes"]), int(resolved["image_size"])))


def load_method_state(run_dir: str | Path, method: Method) -> None:
    """Load the method's state (SWA/SWAG moments) from last.pt; methods without state skip the file."""
    if type(method).load_state_dict is Method.load_state_dict:
        return
    path = Path(run_dir) / LAST_CHECKPOINT
    state = load_checkpoint(path)
    try:
        method.load_state_dict(state["method"])
    except (KeyError, TypeError) as error:
        raise UserError(f"checkpoint {path} has no usable {method.name} state ({error}): expected the "
                        f"checkpoint of a run trained with --method {method.name}.") from None


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", weights: str = "best",
             memory_format: torch.memory_format = torch.contiguous_format) -> LoadedRun:
    """Read a finished run: its model (eval mode, on `device`) with the chosen weights, and its method.

    SWA/SWAG methods come back with their collected state but not finalized: call
    `method.finalize(model, train_batches)` before evaluating (SWAG samples need it).
    """
    run_dir = Path(run_dir)
    cfg, resolved = read_run(run_dir)
    method = method_from_config(cfg)
    model = build_run_model(cfg, resolved, method)
    state, path = weights_state(run_dir, weights)
    load_state(model, state, path)
    load_method_state(run_dir, method)
    model = model.to(device, memory_format=memory_format).eval()
    return LoadedRun(run_dir, cfg, resolved, model, method, path)
