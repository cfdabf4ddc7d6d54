"""Uncertainty methods: each one adapts the single training loop through `Method`'s hooks."""
from __future__ import annotations

import inspect
from typing import Any

from ..errors import UserError
from .base import Method, Prediction
from .batchensemble import BatchEnsemble
from .ensemble import DeepEnsemble, check_compatible
from .heteroscedastic import Heteroscedastic
from .mcdropout import MCDropout
from .mimo import MIMO
from .rank1 import Rank1
from .sngp import SNGP
from .swag import SWA, SWAG
from .temperature import apply_temperature, fit_temperature

# Every method by its --method name; adding one is a file in this folder and a line here.
# A deep ensemble (separate_runs) is trained as several runs and built from their weights.
METHODS: dict[str, type[Method]] = {
    "deterministic": Method,
    "batchensemble": BatchEnsemble,
    "mcdropout": MCDropout,
    "swa": SWA,
    "swag": SWAG,
    "ensemble": DeepEnsemble,
    "sngp": SNGP,
    "heteroscedastic": Heteroscedastic,
    "rank1": Rank1,
    "mimo": MIMO,
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"--method {name!r} is unknown: expected one of {', '.join(METHODS)}.")
    return METHODS[name]


def method_from_config(cfg) -> Method:
    """The method a TrainConfig describes (a deep ensemble's members each use the deterministic one)."""
    return method_class(cfg.method).from_config(cfg)


def method_options(name: str) -> dict[str, Any]:
    """The options of method `name` with their defaults."""
    params = inspect.signature(METHODS[name].__init__).parameters
    return {k: p.default for k, p in list(params.items())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_method(name: str, **options: Any) -> Method:
    """The method called `name`, configured with `options` (e.g. ensemble_size=4)."""
    method_class(name)
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(known) if known else "none"
        raise UserError(f"method {name!r} has no option(s) {', '.join(unknown)}: its options are {allowed}.")
    return METHODS[name](**options)


__all__ = [
    "METHODS", "SNGP", "SWA", "SWAG", "BatchEnsemble", "DeepEnsemble", "Heteroscedastic", "MCDropout", "MIMO", "Method", "Rank1",
    "Prediction",
    "apply_temperature", "build_method", "check_compatible", "fit_temperature", "method_class",
    "method_from_config", "method_options",
]
