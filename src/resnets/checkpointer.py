"""A training run's checkpoints: what one holds, writing it with rotation, and reading it back.

The loop (train.py) decides when to checkpoint; the `Checkpointer` decides what goes in and
where. A checkpoint holds everything a resume needs to end bit for bit as an uninterrupted run:
config, progress, model, optimizer, grad scaler, method, EMA, RNG states and the loop's running
sums. Each write goes through `checkpoint.save_checkpoint` (atomic, with its sha256 sidecar) and
keeps the `last.pt` it replaces as `previous.pt`, unless that file was the damaged one a resume
fell back from (`runs.read_newest_checkpoint` chooses between the two; runs.py owns the names).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import runs
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import TrainConfig
from .distributed import DistEnv
from .errors import UserError
from .methods.base import Method


@dataclass
class TrainingParts:
    """The stateful parts of a run that a checkpoint saves and a resume restores."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    method: Method
    ema: nn.Module | None = None


@dataclass
class Restored:
    """What a checkpoint gives back besides the parts' own state (restored in place)."""
    path: Path
    progress: dict[str, Any]
    # This process's running sums since the last log point (None: none saved, all zero), and
    # the loss sum, correct and count since the last evaluation.
    sums: torch.Tensor | None = None
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    skipped: list[str] = field(default_factory=list)


class Checkpointer:
    """Writes and reads one run's checkpoints (`save` writes only on the main process).

    `write`: the function that writes a checkpoint file, `checkpoint.save_checkpoint`'s signature.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, env: DistEnv, device: torch.device, parts: TrainingParts,
                 resume_command: str = "", write: Callable[..., str] = save_checkpoint):
        self.cfg, self.run_dir, self.env, self.device, self.parts = cfg, run_dir, env, device, parts
        self.resume_command, self._write = resume_command, write
        self.saved_at: int | None = None  # the iteration of the newest checkpoint written or resumed from
        self._rotate = True  # whether last.pt is a good checkpoint, kept as previous.pt by the next write

    @property
    def last(self) -> Path:
        return self.run_dir / runs.LAST_CHECKPOINT

    def remove_stale_temporaries(self) -> None:
        """Delete what a write killed halfway left in the checkpoints folder (main process)."""
        if self.env.is_main:
            remove_stale_temporaries(self.last.parent)

    def state(self, iteration: int, progress: dict[str, Any], sums: torch.Tensor | None,
              window: list[float]) -> dict[str, Any]:
        """The checkpoint's content. `sums`: every process's sums since the last log point, one row per rank."""
        parts = self.parts
        if sums is None:
            sums = torch.zeros(self.env.world_size, 4, dtype=torch.float64)
        state = dict(
            config=self.cfg.to_dict(), iteration=iteration, progress=progress,
            model=parts.model.state_dict(), optimizer=parts.optimizer.state_dict(),
            scaler=parts.scaler.state_dict(), method=parts.method.state_dict(),
            world_size=self.env.world_size, cpu_rng=torch.get_rng_state(),
            # Every process's sums since the last log point (one row per rank) and the window since
            # the last evaluation: a resume between two of them logs what an uninterrupted run does.
            loop=dict(sums=sums, window=list(window)),
        )
        if parts.ema is not None:
            state["ema"] = parts.ema.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, iteration: int, progress: dict[str, Any], sums: torch.Tensor | None = None,
             window: list[float] = (0.0, 0.0, 0.0)) -> None:
        """Write the checkpoint at `iteration` (main process only), keeping the one before as previous.pt."""
        if self.env.is_main:
            last = self.last
            try:
                self._write(last, self.state(iteration, progress, sums, window),
                            previous=self.run_dir / runs.PREVIOUS_CHECKPOINT if self._rotate else None)
            except OSError as error:
                raise self._write_error(last, iteration, error) from None
            self._rotate = True
        self.saved_at = iteration

    def restore(self, resume: runs.FoundCheckpoint | Path) -> Restored:
        """Load `resume` (found by runs.read_newest_checkpoint, or a path) into the parts and the RNGs."""
        parts = self.parts
        if isinstance(resume, runs.FoundCheckpoint):
            path, state, skipped = resume.path, resume.state, list(resume.skipped)
        else:
            path, skipped = Path(resume), []
            state = load_checkpoint(path)
        if state.get("world_size", 1) != self.env.world_size and not self.cfg.allow_world_size_change:
            raise UserError(f"{path} was written by {state.get('world_size', 1)} process(es) and this resume runs "
                            f"{self.env.world_size}: resume with the same --nproc-per-node x --nnodes, since the "
                            "per-process batches and BN statistics depend on it (or accept a different result with "
                            "--allow-world-size-change)")
        try:
            parts.model.load_state_dict(state["model"])
            parts.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise UserError(f"{path} does not match this run's model and optimizer ({str(error).splitlines()[0]}): "
                            "expected a checkpoint of the same config") from None
        parts.scaler.load_state_dict(state["scaler"])
        parts.method.load_state_dict(state["method"])
        if parts.ema is not None:
            parts.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["cpu_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        restored = Restored(path=path, progress=dict(state["progress"]), skipped=skipped)
        loop = state.get("loop")  # absent in checkpoints written only at evaluations: all zero there
        if isinstance(loop, dict):
            rows = loop.get("sums")
            if torch.is_tensor(rows) and rows.dim() == 2 and rows.shape[1] == 4:
                if rows.shape[0] == self.env.world_size:
                    restored.sums = rows[self.env.rank]
                elif self.env.is_main:  # another process count (--allow-world-size-change): rank 0 carries all
                    combined = rows.sum(0)
                    combined[3] = rows[0, 3]  # skipped steps are the same on every process
                    restored.sums = combined
            restored.window = [float(v) for v in loop.get("window", restored.window)]
        self.saved_at = int(restored.progress.get("iteration", state.get("iteration", 0)))
        # A resume from previous.pt leaves the damaged last.pt to be overwritten, not kept.
        self._rotate = path.name == Path(runs.LAST_CHECKPOINT).name
        return restored

    def _write_error(self, path: Path, iteration: int, error: OSError) -> UserError:
        reason = error.strerror or str(error)
        if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            reason += " (the disk or quota is full)"
        kept = (f"the newest intact checkpoint, at iteration {self.saved_at}, is kept in {path.parent}"
                if self.saved_at is not None else "no checkpoint had been written before")
        return UserError(f"cannot write checkpoint {path} at iteration {iteration}: {reason}. Nothing "
                         f"was replaced: {kept}. Free space, then continue with `{self.resume_command}`")
