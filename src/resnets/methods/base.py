"""The contract between an uncertainty method and the one training loop.

A method never copies the model or the loop: it may convert the model once
(`prepare_model`), reshape a training batch (`train_batch`), act when an epoch begins
(`on_epoch_start`), weight the loss (`loss_scale`) or add a term to it (`extra_loss`), collect state
after a step (`after_step`), and decide how probabilities are predicted (`predict`). It also
declares what it is (the class attributes below and `from_config`), so that the loop, the
evaluator and the report ask it instead of testing its name. The deterministic method is this base class itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Prediction:
    probs: torch.Tensor  # N×C final predictive distribution
    member_probs: torch.Tensor | None = None  # M×N×C for methods with members, else None
    # N×C logits for logit-based OOD scores (energy, max-logit); with members, their mean. None
    # where a method has no logits (scores that need them are then left out).
    logits: torch.Tensor | None = None


class Method:
    name = "deterministic"
    title = "Deterministic"  # as the seed tables name it
    # How many predictions one forward pass makes per input image (BatchEnsemble: M).
    members = 1
    # Whether --ensemble-size sets its number of members (and names its runs).
    sized_by_ensemble_size = False
    # Whether eval_passes yields exactly once (else the passes are averaged as members).
    single_pass = True
    # Whether `finalize` turns collected state into the result after the last step (SWA/SWAG):
    # then the final weights, not the best-val ones, are the run's result.
    finalizes = False
    # Whether it averages weights itself (and so cannot be combined with an EMA of them).
    averages_weights = False
    # Whether state_dict() holds state that evaluation needs (read back from last.pt).
    stateful = False
    # Whether it is trained as several separate runs rather than by one pass of the loop.
    separate_runs = False
    # The factor on the loop's cross-entropy, the mean over the rows the model outputs for a
    # training batch: MIMO's loss is the sum of its M heads' mean losses, M times that mean.
    loss_scale = 1.0

    @classmethod
    def from_config(cls, cfg) -> "Method":
        """The method as a TrainConfig describes it (its --method options)."""
        return cls()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Convert the freshly created model (before the optimizer exists)."""
        return model

    def param_groups(self, model: nn.Module, base: list[dict]) -> list[dict]:
        """Adjust optimizer groups (e.g. an LR multiplier via the key 'lr_mult')."""
        return base

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def adjust_lr(self, lr: float, iteration: int, total_iters: int) -> float:
        """The LR for 0-based `iteration` given the schedule's value (SWA holds it constant)."""
        return lr

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called before the first step of each 0-based `epoch` (SNGP resets its GP precision here).

        An epoch is the schedule's steps_per_epoch steps; a run resumed mid-epoch does not call it
        again for that epoch, so state kept in the model's buffers carries on exactly.
        """

    def after_step(self, model: nn.Module, iteration: int, total_iters: int) -> None:
        """Called after every optimizer step with the 1-based number of steps done."""

    def extra_loss(self, model: nn.Module, iteration: int, steps_per_epoch: int,
                   train_size: int) -> torch.Tensor | None:
        """A term the loop adds to each micro-batch's cross-entropy (None: nothing), e.g. a KL.

        Called inside the training step for the 0-based `iteration` being taken, with the epoch
        length in steps and the number of training images (a per-dataset term such as an ELBO's
        KL is divided by it). The term is differentiated with the loss and, like it, divided by
        --grad-accum-steps, so each optimizer step adds it once. `model` is the unwrapped model.
        """
        return None

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        """Eval-mode prediction for a batch of normalized inputs."""
        logits = model(x).float()
        return Prediction(F.softmax(logits, dim=-1), logits=logits)

    def export_rule(self) -> tuple["Method", str, str | None]:
        """The method whose `predict` a serving graph traces, what the sidecar calls it, and a note.

        A method that samples at test time returns a deterministic stand-in and says so (MC
        dropout: the network with dropout off); every other method traces itself.
        """
        return self, self.name, None

    def eval_passes(self, model: nn.Module) -> Iterator[None]:
        """Prepare `model` for each full pass over the evaluation data, yielding once per pass.

        The evaluator averages the probabilities of the passes (and reports them as members
        when there is more than one): SWAG samples weights here, a deep ensemble loads each
        member's weights. Most methods need a single pass.
        """
        yield

    def finalize(self, model: nn.Module, train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Called once after the last step, before the final evaluation (e.g. SWA's BN update)."""

    def state_dict(self) -> dict:
        """Extra state that must survive a resume (tensors and plain Python values only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
