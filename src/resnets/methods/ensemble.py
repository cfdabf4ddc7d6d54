"""Deep ensembles (Lakshminarayanan et al. 2017) of separately trained runs.

The members share one model instance: each evaluation pass loads one member's weights into
it, so evaluating M members costs one model's memory plus M state dicts (kept wherever the
caller loaded them, typically the CPU), and the evaluator averages the passes.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import UserError
from .base import Method, Prediction

# Config fields that must agree for members' weights to load into one model and predict the
# same classes at the same input size.
COMPATIBLE_FIELDS = ("model", "width", "num_classes", "image_size", "head_bias", "ensemble_size")


def _run_names(configs: Sequence[Mapping[str, Any]], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(configs):
            raise ValueError(f"got {len(names)} run names for {len(configs)} configs")
        return [str(n) for n in names]
    return [str(c.get("name") or f"member {i + 1}") for i, c in enumerate(configs)]


def check_compatible(configs: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> None:
    """Raise UserError unless every run config agrees with the first on the architecture.

    `names` are the runs' names (e.g. their directories); without them a config's `name` is used.
    A field missing from every config is not compared; BatchEnsemble members must also agree on
    being BatchEnsembles, since their converted layers carry different weights.
    """
    if not configs:
        raise UserError("an ensemble needs at least one member run; none was given.")
    labels = _run_names(configs, names)
    first = configs[0]

    def arch(config: Mapping[str, Any]) -> dict[str, Any]:
        values = {k: config.get(k) for k in COMPATIBLE_FIELDS if k != "ensemble_size"}
        values["batchensemble"] = config.get("method") == "batchensemble"
        if values["batchensemble"]:
            values["ensemble_size"] = config.get("ensemble_size")
        return values

    reference = arch(first)
    for label, config in zip(labels[1:], configs[1:]):
        values = arch(config)
        for key in sorted(set(reference) | set(values)):
            if reference.get(key) != values.get(key):
                raise UserError(
                    f"ensemble members {labels[0]!r} and {label!r} are incompatible: {key} is "
                    f"{reference.get(key)!r} in {labels[0]!r} but {values.get(key)!r} in {label!r}; "
                    f"every member run must use the same model, width, number of classes and image size."
                )


class DeepEnsemble(Method):
    """One evaluation pass per member state dict.

    `base` is the method the members were trained with (default: deterministic); it converts
    the model (e.g. BatchEnsemble layers) and predicts each pass (e.g. MC dropout samples).
    """

    name = "ensemble"
    title = "Ensemble"
    sized_by_ensemble_size = True
    single_pass = False
    separate_runs = True

    @classmethod
    def from_config(cls, cfg) -> "DeepEnsemble":
        raise UserError("a deep ensemble is built from its members' finished runs (DeepEnsemble(states)), "
                        "not from one config: train it with `resnets train --method ensemble`.")

    def __init__(self, members: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None,
                 base: Method | None = None):
        if not members:
            raise UserError("an ensemble needs at least one member run; none was given.")
        self.member_states = list(members)
        self.names = [f"member {i + 1}" for i in range(len(members))] if names is None else [str(n) for n in names]
        if len(self.names) != len(self.member_states):
            raise ValueError(f"got {len(self.names)} names for {len(self.member_states)} members")
        self.base = base if base is not None else Method()
        self.members = self.base.members

    def __len__(self) -> int:
        return len(self.member_states)

    def load_member(self, model: nn.Module, index: int) -> None:
        try:
            model.load_state_dict(self.member_states[index])
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            raise UserError(
                f"the weights of ensemble member {self.names[index]!r} do not fit the model built for the "
                f"ensemble ({first_line}); every member must be trained with the same model and method."
            ) from None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = self.base.prepare_model(model)
        self.load_member(model, 0)
        return model

    def predict(self, model: nn.Module, x: torch.Tensor) -> Prediction:
        return self.base.predict(model, x)

    def eval_passes(self, model: nn.Module) -> Iterator[None]:
        try:
            for index in range(len(self.member_states)):
                self.load_member(model, index)
                yield
        finally:
            # Leave the model as prepare_model left it, whether or not the evaluation finished.
            self.load_member(model, 0)
