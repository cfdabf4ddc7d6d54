"""Predict a whole evaluation set with an uncertainty method and score the predictions.

A method may need several passes over the data (SWAG samples, deep-ensemble members): the
predictive distribution is the mean of the passes' probabilities and the passes are the
members. A single pass may still have members of its own (BatchEnsemble, MC dropout).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .devices import PRECISIONS, autocast, resolve_device, resolve_precision
from .errors import UserError
from .methods.base import Method
from .metrics import ClassificationMetrics



@dataclass
class EvalOutput:
    metrics: dict[str, float]  # ClassificationMetrics.compute()
    probs: torch.Tensor | None  # N×C on the CPU; None when predictions were not kept
    labels: torch.Tensor  # N on the CPU (kept even when streaming: it is only N integers)
    member_probs: torch.Tensor | None  # M×N×C on the CPU, or None (no members, or not kept)


def _single_pass(method: Method) -> bool:
    # The base class's eval_passes yields exactly once; an override may yield any number of
    # times, and whether a second pass comes is only known after the first one ends.
    return type(method).eval_passes is Method.eval_passes


@torch.no_grad()
def _run_pass(model: nn.Module, method: Method, batches: Iterable, precision: str,
              metrics: ClassificationMetrics | None, keep: bool):
    """Predict every batch, streaming metrics; returns (probs, members, labels, batch sizes) with
    probs/members as CPU tensors when `keep`, else None."""
    probs, members, labels, sizes = [], [], [], []
    for x, y in batches:
        with autocast(x.device, precision):
            pred = method.predict(model, x)
        p = pred.probs.float()
        mp = None if pred.member_probs is None else pred.member_probs.float()
        if metrics is not None:
            metrics.update(p, y, mp)
        labels.append(y.detach())  # moved to the CPU once, after the pass: no sync per batch
        sizes.append(y.shape[0])
        if keep:
            probs.append(p.cpu())
            if mp is not None:
                members.append(mp.cpu())
    if not labels:
        raise UserError("the evaluation data gave no batches; check the evaluation split is not empty.")
    return (torch.cat(probs) if keep else None,
            torch.cat(members, dim=1) if keep and members else None,
            torch.cat(labels).cpu(), sizes)


def predict_dataset(model: nn.Module, method: Method,
                    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], num_classes: int,
                    precision: str = "fp32", keep_predictions: bool = True) -> EvalOutput:
    """Evaluate `model` with `method` on the data that `batches()` yields.

    `batches()` must return a fresh iterator over (normalized x, y) on the model's device, in
    the same order every call. With `keep_predictions=False` a single-pass method only streams
    metrics (probs and member_probs come back None); a multi-pass method still keeps every
    pass's probabilities on the CPU, which averaging the passes needs.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not supported for evaluation: expected one of "
                        f"{', '.join(PRECISIONS)}.")
    was_training = model.training
    model.eval()
    single = _single_pass(method)
    metrics = ClassificationMetrics(num_classes)
    passes: list[torch.Tensor] = []
    first_members = labels = sizes = None
    generator = method.eval_passes(model)
    try:
        for index, _ in enumerate(generator):
            # The first pass streams its metrics, which stand if no second pass follows; with
            # several passes their mean is scored at the end instead.
            keep = keep_predictions or not single
            probs, members, pass_labels, pass_sizes = _run_pass(
                model, method, batches(), precision, metrics if index == 0 else None, keep)
            if index == 0:
                labels, sizes, first_members = pass_labels, pass_sizes, members
            elif not torch.equal(pass_labels, labels):
                raise ValueError("batches() gave different labels on two evaluation passes; it must return "
                                 "the same data in the same order on every call")
            if probs is not None:
                passes.append(probs)
    finally:
        generator.close()
        model.train(was_training)

    if labels is None:
        raise RuntimeError(f"{type(method).__name__}.eval_passes yielded no pass; it must yield at least once")
    if len(passes) <= 1:
        probs = passes[0] if passes and keep_predictions else None
        member_probs = first_members if keep_predictions else None
        return EvalOutput(metrics.compute(), probs, labels, member_probs)

    # Several passes: the passes are the members (a pass's own members are averaged into it).
    metrics = ClassificationMetrics(num_classes)
    stacked = None
    if keep_predictions:
        stacked = torch.stack(passes)
        passes.clear()
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        chunk = stacked[:, rows] if stacked is not None else torch.stack([p[rows] for p in passes])
        metrics.update(chunk.mean(0), labels[rows], chunk)
        start += size
    mean = stacked.mean(0) if stacked is not None else None
    return EvalOutput(metrics.compute(), mean, labels, stacked)


def save_predictions(path: str | Path, out: EvalOutput, extra: dict[str, Any] | None = None) -> None:
    """Write `probs`, `labels` and (if any) `member_probs` to an .npz file at exactly `path`.

    `extra` adds more arrays (e.g. the temperature and the uncalibrated probabilities).
    """
    if out.probs is None:
        raise ValueError("this EvalOutput has no predictions: evaluate with keep_predictions=True to save them")
    arrays = {"probs": out.probs.float().numpy(), "labels": out.labels.long().numpy()}
    if out.member_probs is not None:
        arrays["member_probs"] = out.member_probs.float().numpy()
    for key, value in (extra or {}).items():
        arrays[key] = value.float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # An open file keeps numpy from appending '.npz' to a path that lacks it.
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as error:
        raise UserError(f"cannot write predictions to {str(path)!r}: {error.strerror or error}; expected a "
                        f"writable file path.") from None


# =============================================================================================
# `resnets eval`: finished runs (one run, or several as a deep ensemble) on a split of a
# dataset, with optional temperature scaling, corruptions, a shifted test set and OOD detection.

SPLITS = ("test", "val", "train")
OOD_SCORE_KINDS = ("max_prob", "entropy")
SUMMARY_KEYS = ("nll", "acc", "ece", "brier")
# Images corrupted per call: corruptions work in float64, so whole splits at once would need
# gigabytes for no speed-up.
_CORRUPT_CHUNK = 256
# Datasets whose class count is read from the files or chosen by the caller; the others have a
# fixed count that load_dataset refuses to change.
_FLEXIBLE_CLASSES = ("npy", "imagenet32", "imagenet64", "imagenet-v2", "synthetic")


def add_arguments(parser) -> None:
    """The flags of `resnets eval` (the caller sets the handler to `run`)."""
    from .runs import WEIGHTS

    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories written by `resnets train`; several are evaluated as a deep ensemble")
    parser.add_argument("--weights", choices=WEIGHTS, default="best",
                        help="best: checkpoints/best.safetensors (model.safetensors if the run had no validation "
                             "split); final: model.safetensors; last: the model of checkpoints/last.pt. SWA/SWAG "
                             "runs are re-finalized from their collected state whichever is chosen (default: best)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="NAME", default=None,
                      help="evaluate on this dataset instead of the run's own (same classes; resized to the run's "
                           "image size)")
    data.add_argument("--data-dir", metavar="DIR", default=None,
                      help="folder of --data (alone: where the run's own dataset now lives)")
    data.add_argument("--split", choices=SPLITS, default="test", help="split to evaluate (default: test)")
    run_group = parser.add_argument_group("execution")
    run_group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    run_group.add_argument("--precision", default="auto",
                           help="auto (bf16 on CUDA, else fp32), fp32, bf16 or fp16 (default: auto)")
    run_group.add_argument("--batch-size", type=int, default=None, metavar="N",
                           help="evaluation batch size (default: the run's eval_batch_size)")
    run_group.add_argument("--num-workers", type=int, default=None, metavar="N",
                           help="DataLoader workers for image-folder datasets (default: the run's)")
    run_group.add_argument("--seed", type=int, default=0,
                           help="seed of MC-dropout draws and corruption noise (default: 0)")
    extra = parser.add_argument_group("calibration, robustness and OOD")
    extra.add_argument("--temperature-scale", action="store_true",
                       help="fit a temperature on the run's own val split and also report every metric "
                            "with it applied (ts/*), on the evaluated data, corruptions, shift and OOD")
    extra.add_argument("--corruptions", metavar="all|NAME,NAME", default=None,
                       help="also evaluate the split under these corruptions (ImageNet-C/CIFAR-10-C style)")
    extra.add_argument("--severities", metavar="1,2,3,4,5", default="1,2,3,4,5",
                       help="corruption severities (default: 1,2,3,4,5)")
    extra.add_argument("--shift-data", metavar="NAME", default=None,
                       help="a shifted test set with the run's classes (e.g. imagenet-v2): metrics as shift/*")
    extra.add_argument("--shift-data-dir", metavar="DIR", default=None, help="folder of --shift-data")
    extra.add_argument("--ood-data", metavar="NAME", default=None,
                       help="an out-of-distribution dataset: detection metrics against the evaluated split")
    extra.add_argument("--ood-data-dir", metavar="DIR", default=None, help="folder of --ood-data")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", metavar="FILE", default=None,
                         help="where to write the results (default: <first RUN_DIR>/eval.json)")
    outputs.add_argument("--save-predictions", metavar="FILE.npz", default=None,
                         help="write probs (N×C), labels and member_probs (M×N×C, for methods with members); with "
                              "--temperature-scale probs are the scaled ones and uncalibrated_probs the raw ones")
    outputs.add_argument("--reliability-diagram", metavar="FILE.png", default=None,
                         help="write a reliability diagram of the final predictive distribution")


# --- checking the request before any work --------------------------------------------------


def _check_output_path(path: str | Path, flag: str, expected: str) -> Path:
    """UserError unless a file can be written at `path`: checked before evaluating, which may
    take hours, so that a typo fails at once."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder: expected {expected}.")
    if not folder.is_dir():
        raise UserError(f"{flag} {str(path)!r}: the folder {str(folder)!r} does not exist; create it first or "
                        f"give {expected} in an existing folder.")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{flag} {str(path)!r} cannot be written (permission denied): expected {expected} "
                        "in a folder you can write to.")
    return path


def parse_corruptions(text: str) -> list[str]:
    from .data.corruptions import CORRUPTIONS, LEFT_OUT

    if text.strip() == "all":
        return list(CORRUPTIONS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError(f"--corruptions {text!r} names no corruption: expected 'all' or a comma-separated list "
                        f"of {', '.join(CORRUPTIONS)}.")
    for name in names:
        if name not in CORRUPTIONS:
            why = f" ({name} is left out: {LEFT_OUT[name]})" if name in LEFT_OUT else ""
            raise UserError(f"--corruptions: {name!r} is not a known corruption{why}; expected 'all' or a "
                            f"comma-separated list of {', '.join(CORRUPTIONS)}.")
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    try:
        severities = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        severities = []
    if not severities or any(not 1 <= s <= 5 for s in severities):
        raise UserError(f"--severities {text!r} is not a list of severities: expected comma-separated integers "
                        "from 1 to 5, e.g. 1,2,3,4,5 or 3.")
    return sorted(set(severities))


def _check_pairs(args) -> None:
    for name_flag, dir_flag in (("shift_data", "shift_data_dir"), ("ood_data", "ood_data_dir")):
        if getattr(args, dir_flag) and not getattr(args, name_flag):
            raise UserError(f"--{dir_flag.replace('_', '-')} was given without --{name_flag.replace('_', '-')}: "
                            f"name the dataset of that folder with --{name_flag.replace('_', '-')} NAME.")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive number of images, got {args.batch_size}.")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError(f"--num-workers must be 0 or more, got {args.num_workers}.")
    if not 0 <= args.seed < 2**31:
        raise UserError(f"--seed must be an integer from 0 to {2**31 - 1}, got {args.seed}.")


# --- data ----------------------------------------------------------------------------------


def _published_stats(name: str):
    """Normalization constants that do not depend on the files (sources' module doc), or None."""
    from .data import sources

    if name == "cifar10":
        return sources.CIFAR10_MEAN, sources.CIFAR10_STD
    if name == "cifar100":
        return sources.CIFAR100_MEAN, sources.CIFAR100_STD
    if name in ("tinyimagenet", "imagenet32", "imagenet64", "imagenet", "imagenet-v2"):
        return sources.IMAGENET_MEAN, sources.IMAGENET_STD
    if name == "synthetic":
        return sources.NOISE_MEAN, sources.NOISE_STD
    return None


def _split_of(bundle, split: str, flag: str, data: str):
    chosen = getattr(bundle, split)
    if chosen is None or len(chosen) == 0:
        present = [s for s in SPLITS if getattr(bundle, s) is not None and len(getattr(bundle, s))]
        raise UserError(f"{flag} {split}: dataset {data!r} has no {split} split here; it has "
                        f"{', '.join(present) or 'no split'}.")
    return chosen


def _first_split(bundle, flag: str, data: str):
    for name in ("test", "val"):
        split = getattr(bundle, name)
        if split is not None and len(split):
            return name, split
    raise UserError(f"{flag} {data}: the dataset has neither a test nor a val split to evaluate.")


@dataclass
class _RunData:
    """What the runs need from data: their classes, input size and training normalization."""
    cfg: Any  # the first run's TrainConfig
    resolved: dict
    num_classes: int
    image_size: int
    own: Any = None  # the run's own DatasetBundle, once loaded

    def own_data_dir(self, args):
        # --data-dir without another --data points at the run's own dataset (moved since training).
        own = not args.data or args.data == self.cfg.data
        return args.data_dir if (args.data_dir and own) else self.cfg.data_dir

    def load_own(self, args, why: str | None = None):
        """The run's own dataset; `why` says what needs it when evaluating on other data."""
        if self.own is None:
            from .data import load_dataset

            try:
                self.own = load_dataset(self.cfg.data, self.own_data_dir(args), image_size=self.image_size,
                                        val_size=self.cfg.val_size)
            except UserError as error:
                if why is None:
                    raise
                raise UserError(f"{why} needs the run's own dataset {self.cfg.data!r} (from its config: data_dir "
                                f"{self.cfg.data_dir}), which cannot be read: {error}") from None
            if self.own.num_classes != self.num_classes:
                raise UserError(f"dataset {self.cfg.data!r} now has {self.own.num_classes} classes but the run was "
                                f"trained on {self.num_classes}: expected the same data as at training time.")
        return self.own

    def load(self, name: str, data_dir, flag: str, check_classes: bool = True):
        from .data import load_dataset

        num_classes = self.num_classes if (check_classes and name in _FLEXIBLE_CLASSES) else None
        bundle = load_dataset(name, data_dir, image_size=self.image_size, num_classes=num_classes)
        if check_classes and bundle.num_classes != self.num_classes:
            raise UserError(f"{flag} {name} has {bundle.num_classes} classes but the run predicts {self.num_classes}: "
                            f"evaluation data must have the run's classes (data with other classes is "
                            f"out-of-distribution: use --ood-data).")
        return bundle

    def normalization(self, args, fallback) -> tuple[tuple, tuple]:
        """The training data's mean/std: the model expects its inputs normalized as in training,
        whatever data it is evaluated on."""
        if self.own is not None:
            return self.own.mean, self.own.std
        saved = self.resolved.get("mean"), self.resolved.get("std")
        if all(isinstance(v, (list, tuple)) and len(v) == 3 for v in saved):
            return tuple(saved[0]), tuple(saved[1])
        published = _published_stats(self.cfg.data)
        if published is not None:
            return published
        try:
            own = self.load_own(args)
        except UserError as error:
            print(f"resnets eval: warning: cannot read the run's training data {self.cfg.data!r} for its "
                  f"normalization ({error}); normalizing with {fallback.name!r}'s own statistics instead.",
                  file=sys.stderr)
            return fallback.mean, fallback.std
        return own.mean, own.std


def _image_seeds(seed: int, index: torch.Tensor | range) -> list[int]:
    # One seed per image, from its index: a corrupted image does not depend on the batch size.
    return [seed * 2**32 + int(i) for i in index]


def _corrupt_tensor_split(split, name: str, severity: int, seed: int):
    from .data import TensorSplit
    from .data.corruptions import corrupt

    images = torch.empty_like(split.images)
    for start in range(0, len(split), _CORRUPT_CHUNK):
        stop = min(start + _CORRUPT_CHUNK, len(split))
        images[start:stop] = corrupt(split.images[start:stop], name, severity, seed=_image_seeds(seed, range(start, stop)))
    return TensorSplit(images, split.labels)


class _DecodedFolder(torch.utils.data.Dataset):
    """uint8 images of a folder split at the evaluation size (resize + center crop), with their index."""

    def __init__(self, samples, image_size: int):
        from torchvision.transforms import v2

        from .data.pipelines import EVAL_CROP_FRACTION

        self.samples = samples
        self.transform = v2.Compose([v2.Resize(round(image_size / EVAL_CROP_FRACTION), antialias=True),
                                     v2.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from .data.sources import decode_rgb

        path, label = self.samples[index]
        try:
            image = decode_rgb(path)
        except UserError as error:
            return str(error), index, label  # raised in the main process, without a worker traceback
        return self.transform(image), index, label


def _collate_decoded(items):
    for image, _, _ in items:
        if isinstance(image, str):
            return image
    return (torch.stack([image for image, _, _ in items]), torch.tensor([i for _, i, _ in items]),
            torch.tensor([label for _, _, label in items], dtype=torch.int64))


# --- the evaluator ---------------------------------------------------------------------------


@dataclass
class _Evaluator:
    model: nn.Module
    method: Method
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    device: torch.device
    precision: str
    batch_size: int
    channels_last: bool
    num_workers: int
    seed: int

    def batches(self, split, zero_labels: bool = False):
        from .data import eval_batches

        def make():
            batches = eval_batches(split, batch_size=self.batch_size, device=self.device, mean=self.mean,
                                   std=self.std, image_size=self.image_size, channels_last=self.channels_last,
                                   num_workers=self.num_workers)
            # OOD labels mean nothing to this model (and may exceed its classes).
            return ((x, torch.zeros_like(y)) for x, y in batches) if zero_labels else batches
        return make

    def folder_corrupted_batches(self, split, name: str, severity: int):
        from torch.utils.data import DataLoader

        from .data.corruptions import corrupt

        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)

        def make():
            loader = DataLoader(_DecodedFolder(split.samples, self.image_size), batch_size=self.batch_size,
                                shuffle=False, num_workers=self.num_workers, collate_fn=_collate_decoded)
            for batch in loader:
                if isinstance(batch, str):
                    raise UserError(batch)
                images, index, labels = batch
                images = corrupt(images, name, severity, seed=_image_seeds(self.seed, index))
                x = (images.to(self.device).float() / 255 - mean) / std
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, labels.to(self.device)
        return make

    def predict(self, batches, keep: bool) -> EvalOutput:
        # Reseeded per evaluation: MC-dropout draws do not depend on which other evaluations ran.
        torch.manual_seed(self.seed)
        return predict_dataset(self.model, self.method, batches, self.num_classes, self.precision, keep)


def _plain_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "count"}


def _scaled_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float):
    from .methods import apply_temperature

    metrics = ClassificationMetrics(num_classes)
    scaled = apply_temperature(probs, temperature)
    metrics.update(scaled, labels)
    return _plain_metrics(metrics.compute()), scaled


def _ood_results(in_probs: torch.Tensor, out_probs: torch.Tensor) -> dict[str, dict[str, float]]:
    from .metrics import ood_metrics, ood_scores

    return {kind: ood_metrics(ood_scores(in_probs, kind), ood_scores(out_probs, kind)) for kind in OOD_SCORE_KINDS}


def _build_evaluated_model(args, runs, device: torch.device, memory_format):
    """(model, method, weight files, description): one run's own method, or a deep ensemble."""
    from .methods import DeepEnsemble
    from .runs import build_run_model, check_fits, load_run, weights_state
    from .train import method_from_config

    if len(runs) == 1:
        loaded = load_run(args.runs[0], device, args.weights, memory_format)
        return loaded.model, loaded.method, [loaded.weights_path], dict(method=loaded.config.method)
    configs = [cfg for cfg, _ in runs]
    methods = {cfg.method for cfg in configs}
    first = configs[0]
    # Members keep the prediction rule they were trained for where it is one of weights (MC
    # dropout's sampling, BatchEnsemble's members); SWA/SWAG members contribute their mean weights.
    base_name = first.method if len(methods) == 1 and first.method in ("mcdropout", "batchensemble") else "deterministic"
    base = method_from_config(first) if base_name != "deterministic" else Method()
    if "swag" in methods:
        print("resnets eval: note: SWAG runs in an ensemble contribute their SWA-mean weights (no SWAG sampling).",
              file=sys.stderr)
    model = build_run_model(first, runs[0][1], base)
    states, paths = [], []
    for run_dir in args.runs:
        state, path = weights_state(run_dir, args.weights)
        check_fits(model, state, path)
        states.append(state)
        paths.append(path)
    method = DeepEnsemble(states, names=[str(r) for r in args.runs], base=base)
    method.load_member(model, 0)  # the model is already converted by `base`
    model = model.to(device, memory_format=memory_format).eval()
    return model, method, paths, dict(method="ensemble", base_method=base_name, ensemble_size=len(runs))


def _finalize(args, request: _RunData, model: nn.Module, method: Method, device, channels_last: bool) -> None:
    """SWA/SWAG: average the collected weights and re-estimate BN on the batches training used."""
    from .data import train_batches

    cfg, resolved = request.cfg, request.resolved
    own = request.load_own(args)
    if own.train is None:
        raise UserError(f"the {cfg.method} run needs its training split {cfg.data!r} to re-estimate BatchNorm "
                        "statistics, but the dataset has none here.")
    # The batches training's own finalize used: the stream from the last iteration on (rank 0's
    # share when it ran on several processes), a pure function of (seed, iteration).
    options = dict(batch_size=cfg.batch_size, start_iteration=int(resolved.get("total_iters", 0)), seed=cfg.seed,
                   device=device, mean=own.mean, std=own.std, image_size=request.image_size, augment=cfg.augment,
                   randaugment_magnitude=cfg.randaugment_magnitude, channels_last=channels_last, rank=0,
                   world_size=int(resolved.get("world_size", 1)), num_workers=cfg.num_workers)
    method.finalize(model, Restartable(lambda: train_batches(own.train, **options)))
    model.eval()


class Restartable:
    """An iterable that starts the stream afresh on every pass. SWAG re-estimates BN once per
    weight sample; a one-shot iterator would make it keep its BN batches (normalized, on the
    device: ~30 GB for 50 ImageNet batches of 1024), where regenerating them costs only time."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


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


def run(args) -> int:
    """`resnets eval`: evaluate, print a table, write eval.json (see add_arguments)."""
    from .data import FolderSplit, TensorSplit
    from .runs import architecture, read_run

    _check_pairs(args)
    corruptions = parse_corruptions(args.corruptions) if args.corruptions else []
    severities = parse_severities(args.severities) if corruptions else []

    runs = [read_run(run_dir) for run_dir in args.runs]
    if len(runs) > 1:
        from .methods import check_compatible

        names = [str(r) for r in args.runs]
        check_compatible([architecture(cfg, resolved) for cfg, resolved in runs], names)
        for name, (cfg, _) in zip(names[1:], runs[1:]):
            if cfg.data != runs[0][0].data:
                raise UserError(f"ensemble members {names[0]!r} and {name!r} were trained on different data "
                                f"({runs[0][0].data} and {cfg.data}): every member run must be trained on the same "
                                "dataset, whose normalization the ensemble's inputs get.")
    out_path = _check_output_path(args.out or Path(args.runs[0]) / "eval.json", "--out", "a .json file path")
    predictions_path = (_check_output_path(args.save_predictions, "--save-predictions", "an .npz file path")
                        if args.save_predictions else None)
    diagram_path = (_check_output_path(args.reliability_diagram, "--reliability-diagram", "a .png file path")
                    if args.reliability_diagram else None)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    cfg, resolved = runs[0]
    request = _RunData(cfg, resolved, int(resolved["num_classes"]), int(resolved["image_size"]))

    # Every dataset is read before the model runs, so a wrong folder fails before the work.
    data_name = args.data or cfg.data
    if args.data and args.data != cfg.data:
        data = request.load(args.data, args.data_dir, "--data")
    else:
        data = request.load_own(args)
    split = _split_of(data, args.split, "--split", data_name)
    val_split = None
    if args.temperature_scale:
        # The temperature belongs to the model: it is fit on the run's own held-out data and then
        # applied unchanged to whatever is evaluated (another test set, corruptions, shift, OOD).
        own = request.load_own(args, why="--temperature-scale")
        if own.val is None or len(own.val) == 0:
            raise UserError(f"--temperature-scale fits the temperature on the val split of the run's dataset "
                            f"{cfg.data!r}, which has none (the run was trained with --val-size 0); leave "
                            "--temperature-scale out, or train with a validation split.")
        if args.split == "val" and data is own:
            print("resnets eval: warning: --split val with --temperature-scale fits and scores the temperature on the "
                  "same images; its ts/* metrics are optimistic.", file=sys.stderr)
        val_split = own.val
    from .methods import METHODS

    # Methods that finalize (SWA/SWAG) keep their result in collected state, not in the weights alone.
    finalizes = len(runs) == 1 and METHODS[cfg.method].finalize is not Method.finalize
    if finalizes:
        request.load_own(args, why=f"re-estimating BatchNorm for the {cfg.method} run")
    if corruptions and not isinstance(split, (TensorSplit, FolderSplit)):
        raise UserError(f"--corruptions: the {args.split} split of {data_name!r} is neither in-memory images nor "
                        "image files, so it cannot be corrupted.")
    shift = shift_split = None
    if args.shift_data:
        shift = request.load(args.shift_data, args.shift_data_dir, "--shift-data")
        shift_split_name, shift_split = _first_split(shift, "--shift-data", args.shift_data)
    ood = ood_split = None
    if args.ood_data:
        ood = request.load(args.ood_data, args.ood_data_dir, "--ood-data", check_classes=False)
        ood_split_name, ood_split = _first_split(ood, "--ood-data", args.ood_data)
    mean, std = request.normalization(args, data)

    channels_last = device.type == "cuda" if cfg.channels_last is None else bool(cfg.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model, method, weight_files, method_info = _build_evaluated_model(args, runs, device, memory_format)
    if finalizes:
        _finalize(args, request, model, method, device, channels_last)

    ev = _Evaluator(model, method, request.num_classes, request.image_size, mean, std, device, precision,
                    args.batch_size or cfg.eval_batch_size, channels_last,
                    cfg.num_workers if args.num_workers is None else args.num_workers, args.seed)
    keep = bool(args.temperature_scale or predictions_path or diagram_path or ood is not None)

    report: dict[str, Any] = dict(
        runs=[str(r) for r in args.runs], weights=args.weights, weight_files=[str(p) for p in weight_files],
        **method_info, model=cfg.model, width=cfg.width, image_size=request.image_size,
        num_classes=request.num_classes, data=data_name,
        data_dir=args.data_dir if data is not request.own else request.own_data_dir(args),
        split=args.split, device=str(device), precision=precision, seed=args.seed,
    )
    if method_info["method"] == "batchensemble":
        report["ensemble_size"] = cfg.ensemble_size

    main = ev.predict(ev.batches(split), keep)
    report["count"] = main.metrics["count"]
    metrics = _plain_metrics(main.metrics)
    final = main
    temperature = None
    if val_split is not None:
        from .methods import fit_temperature

        val = ev.predict(ev.batches(val_split), keep=True)
        temperature = fit_temperature(val.probs.log(), val.labels)
        val_scaled, _ = _scaled_metrics(val.probs, val.labels, request.num_classes, temperature)
        scaled_metrics, scaled = _scaled_metrics(main.probs, main.labels, request.num_classes, temperature)
        metrics["temperature"] = temperature
        metrics.update({f"ts/{k}": v for k, v in scaled_metrics.items()})  # before/after on the same split
        report["temperature"] = temperature
        report["temperature_fit"] = dict(data=cfg.data, split="val", count=val.metrics["count"],
                                         nll=val.metrics["nll"], ts_nll=val_scaled["nll"])
        final = EvalOutput(main.metrics, scaled, main.labels, main.member_probs)

    if predictions_path is not None:
        extra = {} if temperature is None else {"temperature": temperature, "uncalibrated_probs": main.probs}
        save_predictions(predictions_path, final, extra)
        report["predictions"] = str(predictions_path)
    if diagram_path is not None:
        from .plots import reliability_diagram

        title = f"{', '.join(Path(r).name for r in args.runs)} on {data_name}/{args.split}"
        if temperature is not None:
            title += f" (T = {temperature:.3f})"
        reliability_diagram(final.probs, final.labels, diagram_path, title=title)
        report["reliability_diagram"] = str(diagram_path)

    if corruptions:
        report["corruptions"] = _evaluate_corruptions(ev, split, corruptions, severities, temperature)
        metrics.update(report["corruptions"]["mean"])
    if shift is not None:
        out = ev.predict(ev.batches(shift_split), keep=temperature is not None)
        entry = _scored(ev, out, temperature)
        metrics.update({_prefixed("shift/", k): v for k, v in entry.items()})
        report["shift"] = dict(data=args.shift_data, data_dir=args.shift_data_dir, split=shift_split_name,
                               count=out.metrics["count"], metrics=entry)
    if ood is not None:
        out = ev.predict(ev.batches(ood_split, zero_labels=True), keep=True)
        detection = _ood_results(main.probs, out.probs)
        if temperature is not None:
            from .methods import apply_temperature

            scaled = _ood_results(final.probs, apply_temperature(out.probs, temperature))
            detection.update({f"ts/{kind}": values for kind, values in scaled.items()})
        for kind, values in detection.items():
            metrics.update({_prefixed("ood/", f"{kind}/{k}"): v for k, v in values.items()})
        report["ood"] = dict(data=args.ood_data, data_dir=args.ood_data_dir, split=ood_split_name,
                             count=out.metrics["count"], in_split=args.split, scores=detection)

    report["metrics"] = metrics
    _write_json(out_path, report)
    print(format_report(report))
    print(f"results: {out_path}")
    return 0


def _prefixed(prefix: str, key: str) -> str:
    """'shift/' + 'nll' -> 'shift/nll', and 'shift/' + 'ts/nll' -> 'ts/shift/nll': every
    temperature-scaled key starts with ts/."""
    if key.startswith("ts/"):
        return "ts/" + prefix + key[3:]
    return prefix + key


def _scored(ev: _Evaluator, out: EvalOutput, temperature: float | None) -> dict[str, float]:
    """The metrics of `out`, plus ts/* ones when a temperature was fitted."""
    entry = _plain_metrics(out.metrics)
    if temperature is not None:
        scaled, _ = _scaled_metrics(out.probs, out.labels, ev.num_classes, temperature)
        entry.update({f"ts/{k}": v for k, v in scaled.items()})
    return entry


def _evaluate_corruptions(ev: _Evaluator, split, names: list[str], severities: list[int],
                          temperature: float | None) -> dict[str, Any]:
    """Every corruption at every severity, and the means over all of them (corrupted/mean_*)."""
    from .data import FolderSplit, TensorSplit
    from .data.corruptions import default_param_set

    results: dict[str, dict[str, dict[str, float]]] = {}
    values: dict[str, list[float]] = {}
    for name in names:
        results[name] = {}
        for severity in severities:
            if isinstance(split, FolderSplit):
                batches = ev.folder_corrupted_batches(split, name, severity)
            else:
                batches = ev.batches(_corrupt_tensor_split(split, name, severity, ev.seed))
            entry = _scored(ev, ev.predict(batches, keep=temperature is not None), temperature)
            results[name][str(severity)] = entry
            for key in SUMMARY_KEYS + tuple(f"ts/{k}" for k in SUMMARY_KEYS):
                if key in entry:
                    values.setdefault(key, []).append(entry[key])
            # Progress: a full sweep on a large test set takes a while.
            print(f"  {name:<18} severity {severity}  acc {entry['acc']:.4f}  nll {entry['nll']:.4f}  "
                  f"ece {entry['ece']:.4f}", flush=True)
    means = {_prefixed("corrupted/mean_", key): sum(v) / len(v) for key, v in values.items()}
    size = int(split.images.shape[-1]) if isinstance(split, TensorSplit) else ev.image_size
    return dict(names=names, severities=severities, param_set=default_param_set(size, size), results=results,
                mean=means)


def _write_json(path: Path, report: dict) -> None:
    try:
        path.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    except OSError as error:
        raise UserError(f"--out {str(path)!r} cannot be written: {error.strerror or error}; expected a writable "
                        "file path.") from None


def format_report(report: dict) -> str:
    """The metrics as a plain-text table (raw and, when fitted, temperature-scaled columns)."""
    metrics = report["metrics"]
    runs = report["runs"]
    what = runs[0] if len(runs) == 1 else f"ensemble of {len(runs)} runs"
    lines = [(f"{what} ({report['method']}, {report['weights']} weights) on {report['data']}/{report['split']}: "
              f"{report['count']} images")]
    keys = [k for k in metrics if not k.startswith(("ts/", "corrupted/", "shift/", "ood/")) and k != "temperature"]
    ts = "temperature" in metrics
    header = f"  {'metric':<24}{'value':>10}" + (f"{'T=' + format(metrics['temperature'], '.3f'):>12}" if ts else "")
    lines.append(header)

    def row(label: str, key: str) -> str:
        value = metrics.get(key)
        text = f"  {label:<24}{_fmt(value):>10}"
        if ts:
            text += f"{_fmt(metrics.get('ts/' + key)):>12}"
        return text

    lines += [row(k, k) for k in keys]
    if "corruptions" in report:
        c = report["corruptions"]
        lines.append(f"corruptions ({len(c['names'])} x severities {','.join(map(str, c['severities']))}, "
                     f"{c['param_set']} parameters), mean:")
        lines += [row(f"corrupted/mean_{k}", f"corrupted/mean_{k}") for k in SUMMARY_KEYS]
    if "shift" in report:
        s = report["shift"]
        lines.append(f"shift: {s['data']}/{s['split']} ({s['count']} images):")
        lines += [row(f"shift/{k}", f"shift/{k}") for k in ("nll", "acc", "top5", "ece", "brier")]
    if "ood" in report:
        o = report["ood"]
        lines.append(f"OOD: {o['data']}/{o['split']} ({o['count']} images) vs {report['data']}/{o['in_split']}:")
        for kind in OOD_SCORE_KINDS:
            lines += [row(f"ood/{kind}/{k}", f"ood/{kind}/{k}") for k in ("auroc", "aupr_in", "aupr_out", "fpr95")]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "nan"
    return str(value)
