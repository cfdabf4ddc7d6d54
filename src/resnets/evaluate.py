"""`resnets eval`: finished runs (one, or several as a deep ensemble) on a split of a dataset,
with optional temperature scaling, corruptions, a shifted test set and OOD detection.

Reading order: `EvalRequest` (what to evaluate, checked before any work), `evaluate_runs` (does
it and returns the report; the deep ensemble's training calls it directly), then `run`, the
command: flags to a request, the report printed and written to eval.json.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import runs as run_files
from .data import FolderSplit, Normalize, ShardSplit, TensorSplit, dataset_spec, load_dataset, train_batches
from .data.corruptions import CORRUPTIONS, LEFT_OUT, corrupt, default_param_set
from .devices import Runtime, resolve_runtime
from .errors import UserError, writable_path
from .methods import DeepEnsemble, Method, apply_temperature, check_compatible, fit_temperature, method_class
from .methods import method_from_config
from .metrics import (CONFORMAL_METHODS, OOD_SCORES, ClassificationMetrics, conformal_metrics, ood_metrics, ood_scores,
                      risk_coverage_points, selective_metrics)
from .plots import reliability_diagram, risk_coverage_plot
from .prediction import EvalOutput, Predictor, Restartable, save_predictions
from .tta import HELP as TTA_HELP, TTA_MODES, check_mode as check_tta, with_tta

SPLITS = ("test", "val", "train")
SUMMARY_KEYS = ("nll", "acc", "ece", "brier")
SELECTIVE_KEYS = ("aurc", "augrc", "risk_at_80_coverage", "coverage_at_5_risk")
DEFAULT_ALPHA = 0.1  # the miscoverage of Angelopoulos & Bates' gentle introduction's examples
# Images corrupted per call: corruptions work in float64, so whole splits at once would need
# gigabytes for no speed-up.
_CORRUPT_CHUNK = 256


def add_device_arguments(group) -> None:
    """--device and --precision of the commands that evaluate trained runs (eval, predict)."""
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    group.add_argument("--precision", default="auto",
                       help="auto (bf16 on CUDA, else fp32), fp32, bf16 or fp16 (default: auto)")


def add_arguments(parser) -> None:
    """The flags of `resnets eval` (the caller sets the handler to `run`)."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories written by `resnets train`; several are evaluated as a deep ensemble")
    parser.add_argument("--weights", choices=run_files.WEIGHTS, default="best",
                        help="best: checkpoints/best.safetensors (model.safetensors if the run had no validation "
                             "split); final: model.safetensors; last: the model of checkpoints/last.pt. SWA/SWAG "
                             "runs are re-finalized from their collected state whichever is chosen (default: best)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="NAME", default=None,
                      help="evaluate on this dataset instead of the run's own (same classes; resized to the run's "
                           "image size)")
    data.add_argument("--data-dir", metavar="DIR", default=None,
                      help="folder of --data (alone: where the run's own dataset now lives)")
    data.add_argument("--split", choices=SPLITS, default=None,
                      help="split to evaluate (default: the one `resnets train` reports as tst/*: test, or val "
                           "where the dataset has no test set, as ImageNet)")
    run_group = parser.add_argument_group("execution")
    add_device_arguments(run_group)
    run_group.add_argument("--batch-size", type=int, default=None, metavar="N",
                           help="evaluation batch size (default: the run's eval_batch_size)")
    run_group.add_argument("--num-workers", type=int, default=None, metavar="N",
                           help="DataLoader workers for image-folder datasets (default: the run's)")
    run_group.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
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
    extra.add_argument("--alpha", type=float, default=None, metavar="A",
                       help="miscoverage of the conformal prediction sets (THR, APS, RAPS), calibrated on the run's "
                            f"own val split; coverage and mean set size on the evaluated split (default: "
                            f"{DEFAULT_ALPHA}, skipped with a note when the run has no val split; given explicitly, "
                            "a run without one is an error)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", metavar="FILE", default=None,
                         help=f"where to write the results (default: <first RUN_DIR>/{run_files.EVAL_FILE})")
    outputs.add_argument("--save-predictions", metavar="FILE.npz", default=None,
                         help="write probs (N×C), labels, logits (N×C, the members' mean for methods with members) "
                              "and member_probs (M×N×C, for methods with members); with --ood-data also ood_probs, "
                              "ood_logits and ood_member_probs; with --temperature-scale probs are the scaled ones and uncalibrated_probs "
                              "the raw ones (logits stay unscaled)")
    outputs.add_argument("--reliability-diagram", metavar="FILE.png", default=None,
                         help="write a reliability diagram of the final predictive distribution")
    outputs.add_argument("--risk-coverage", metavar="FILE.png", default=None,
                         help="write the risk-coverage curve (selective and generalized risk, confidence = max prob)")


# --- the request, checked before any work --------------------------------------------------


@dataclass
class EvalRequest:
    """What `resnets eval` evaluates; the fields are its flags (see add_arguments)."""
    runs: list
    weights: str = "best"
    data: str | None = None
    data_dir: str | None = None
    split: str | None = None  # None: the dataset's test split (DatasetSpec.test_split)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    seed: int = 0
    tta: str = "none"  # test-time augmentation (tta.TTA_MODES)
    temperature_scale: bool = False
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)
    shift_data: str | None = None
    shift_data_dir: str | None = None
    ood_data: str | None = None
    ood_data_dir: str | None = None
    alpha: float | None = None  # None: DEFAULT_ALPHA where the run has a val split, else skipped
    save_predictions: Path | None = None
    reliability_diagram: Path | None = None
    risk_coverage: Path | None = None

    def __post_init__(self) -> None:
        for name_flag, dir_flag in (("shift_data", "shift_data_dir"), ("ood_data", "ood_data_dir")):
            if getattr(self, dir_flag) and not getattr(self, name_flag):
                raise UserError(f"--{dir_flag.replace('_', '-')} was given without --{name_flag.replace('_', '-')}: "
                                f"name the dataset of that folder with --{name_flag.replace('_', '-')} NAME.")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"--batch-size must be a positive number of images, got {self.batch_size}.")
        if self.num_workers is not None and self.num_workers < 0:
            raise UserError(f"--num-workers must be 0 or more, got {self.num_workers}.")
        if self.alpha is not None and not (math.isfinite(self.alpha) and 0 < self.alpha < 1):
            raise UserError(f"--alpha must be a miscoverage strictly between 0 and 1 (e.g. 0.1 for sets that hold "
                            f"the label 90% of the time), got {self.alpha}.")
        check_tta(self.tta)
        if not 0 <= self.seed < 2**31:
            raise UserError(f"--seed must be an integer from 0 to {2**31 - 1}, got {self.seed}.")
        if self.save_predictions is not None:
            self.save_predictions = writable_path(self.save_predictions, "--save-predictions", "an .npz file path")
        if self.reliability_diagram is not None:
            self.reliability_diagram = writable_path(self.reliability_diagram, "--reliability-diagram",
                                                     "a .png file path")
        if self.risk_coverage is not None:
            self.risk_coverage = writable_path(self.risk_coverage, "--risk-coverage", "a .png file path")

    @classmethod
    def from_args(cls, args) -> "EvalRequest":
        corruptions = parse_corruptions(args.corruptions) if args.corruptions else []
        return cls(
            runs=list(args.runs), weights=args.weights, data=args.data, data_dir=args.data_dir, split=args.split,
            device=args.device, precision=args.precision, batch_size=args.batch_size,
            num_workers=args.num_workers, seed=args.seed, tta=args.tta, temperature_scale=args.temperature_scale,
            corruptions=corruptions, severities=parse_severities(args.severities) if corruptions else [],
            shift_data=args.shift_data, shift_data_dir=args.shift_data_dir, ood_data=args.ood_data,
            ood_data_dir=args.ood_data_dir, alpha=args.alpha, save_predictions=args.save_predictions,
            reliability_diagram=args.reliability_diagram, risk_coverage=args.risk_coverage)


def parse_corruptions(text: str) -> list[str]:
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


# --- data ----------------------------------------------------------------------------------


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
class RunData:
    """What the runs need from data: their classes, input size and training normalization."""
    cfg: Any  # the first run's TrainConfig
    resolved: dict
    num_classes: int
    image_size: int
    own: Any = None  # the run's own DatasetBundle, once loaded

    @classmethod
    def of(cls, cfg, resolved: dict) -> "RunData":
        return cls(cfg, resolved, int(resolved["num_classes"]), int(resolved["image_size"]))

    def own_data_dir(self, args):
        # --data-dir without another --data points at the run's own dataset (moved since training).
        own = not args.data or args.data == self.cfg.data
        return args.data_dir if (args.data_dir and own) else self.cfg.data_dir

    def load_own(self, args, why: str | None = None):
        """The run's own dataset; `why` says what needs it when evaluating on other data."""
        if self.own is None:
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
        flexible = dataset_spec(name).num_classes is None  # read from the files or chosen here
        num_classes = self.num_classes if (check_classes and flexible) else None
        bundle = load_dataset(name, data_dir, image_size=self.image_size, num_classes=num_classes)
        if check_classes and bundle.num_classes != self.num_classes:
            raise UserError(f"{flag} {name} has {bundle.num_classes} classes but the run predicts {self.num_classes}: "
                            f"evaluation data must have the run's classes (data with other classes is "
                            f"out-of-distribution: use --ood-data).")
        return bundle

    def normalization(self, args, fallback=None) -> tuple[tuple, tuple]:
        """The training data's mean/std: the model expects its inputs normalized as in training,
        whatever data it is evaluated on. Without a `fallback` bundle an unreadable training set
        is a UserError instead of a warning."""
        if self.own is not None:
            return self.own.mean, self.own.std
        saved = self.resolved.get("mean"), self.resolved.get("std")
        if all(isinstance(v, (list, tuple)) and len(v) == 3 for v in saved):
            return tuple(saved[0]), tuple(saved[1])
        published = dataset_spec(self.cfg.data).stats
        if published is not None:
            return published
        try:
            own = self.load_own(args)
        except UserError as error:
            if fallback is None:
                raise
            print(f"resnets eval: warning: cannot read the run's training data {self.cfg.data!r} for its "
                  f"normalization ({error}); normalizing with {fallback.name!r}'s own statistics instead.",
                  file=sys.stderr)
            return fallback.mean, fallback.std
        return own.mean, own.std


def _image_seeds(seed: int, index: torch.Tensor | range) -> list[int]:
    # One seed per image, from its index: a corrupted image does not depend on the batch size.
    return [seed * 2**32 + int(i) for i in index]


def corruption_hook(name: str, severity: int, seed: int):
    """An image hook for the evaluation pipeline that corrupts each image with its own seed."""
    def hook(images: torch.Tensor, indices: range) -> torch.Tensor:
        out = torch.empty_like(images)
        for start in range(0, len(images), _CORRUPT_CHUNK):
            stop = min(start + _CORRUPT_CHUNK, len(images))
            out[start:stop] = corrupt(images[start:stop], name, severity,
                                      seed=_image_seeds(seed, indices[start:stop]))
        return out
    return hook


def _plain_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "count"}


def _scaled_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float):
    metrics = ClassificationMetrics(num_classes)
    scaled = apply_temperature(probs, temperature)
    metrics.update(scaled, labels)
    return _plain_metrics(metrics.compute()), scaled


def _ood_results(inside: EvalOutput, outside: EvalOutput, temperature: float | None = None
                 ) -> dict[str, dict[str, float]]:
    """Detection metrics of every OOD score the predictions allow (metrics.OOD_SCORES): max_prob
    and entropy always; max_logit and energy where the method gives logits (divided by the
    temperature when one is given); mutual_information where it has several members (not
    temperature-scaled)."""
    def inputs(out: EvalOutput):
        if temperature is None:
            return dict(probs=out.probs, logits=out.logits, member_probs=out.member_probs)
        logits = None if out.logits is None else out.logits / temperature
        return dict(probs=apply_temperature(out.probs, temperature), logits=logits, member_probs=None)

    a, b = inputs(inside), inputs(outside)
    kinds = ["max_prob", "entropy"]
    if a["logits"] is not None and b["logits"] is not None:
        kinds += ["max_logit", "energy"]
    if a["member_probs"] is not None and b["member_probs"] is not None and a["member_probs"].shape[0] > 1:
        kinds.append("mutual_information")
    return {kind: ood_metrics(ood_scores(a["probs"], kind, logits=a["logits"], member_probs=a["member_probs"]),
                              ood_scores(b["probs"], kind, logits=b["logits"], member_probs=b["member_probs"]))
            for kind in kinds}


def build_evaluated_model(request: EvalRequest, runs, runtime: Runtime):
    """(model, method, weight files, description): one run's own method, or a deep ensemble."""
    if len(runs) == 1:
        loaded = run_files.load_run(request.runs[0], runtime.device, request.weights, runtime.memory_format)
        return loaded.model, loaded.method, [loaded.weights_path], dict(method=loaded.config.method)
    configs = [cfg for cfg, _ in runs]
    classes = [method_class(cfg.method) for cfg in configs]
    first = configs[0]
    # Members keep the prediction rule they were trained for where it is one of weights (MC
    # dropout's sampling, BatchEnsemble's members); methods that finalize (SWA/SWAG) contribute
    # their mean weights.
    same = len({cfg.method for cfg in configs}) == 1
    base = method_from_config(first) if same and not classes[0].finalizes else Method()
    if any(c.finalizes and not c.single_pass for c in classes):
        print("resnets eval: note: SWAG runs in an ensemble contribute their SWA-mean weights (no SWAG sampling).",
              file=sys.stderr)
    model, _ = run_files.run_model(first, runs[0][1], base)
    states, paths = [], []
    for run_dir in request.runs:
        state, path = run_files.weights_state(run_dir, request.weights)
        run_files.check_fits(model, state, path)
        states.append(state)
        paths.append(path)
    method = DeepEnsemble(states, names=[str(r) for r in request.runs], base=base)
    method.load_member(model, 0)  # the model is already converted by `base`
    model = model.to(runtime.device, memory_format=runtime.memory_format).eval()
    return model, method, paths, dict(method=DeepEnsemble.name, base_method=base.name, ensemble_size=len(runs))


def finalize_for_eval(args: EvalRequest, request: RunData, model: nn.Module, method: Method, runtime: Runtime) -> None:
    """SWA/SWAG: average the collected weights and re-estimate BN on the batches training used."""
    cfg, resolved = request.cfg, request.resolved
    own = request.load_own(args)
    if own.train is None:
        raise UserError(f"the {cfg.method} run needs its training split {cfg.data!r} to re-estimate BatchNorm "
                        "statistics, but the dataset has none here.")
    # The batches training's own finalize used: the stream from the last iteration on (rank 0's
    # share when it ran on several processes), a pure function of (seed, iteration).
    options = dict(batch_size=cfg.batch_size, start_iteration=int(resolved.get("total_iters", 0)), seed=cfg.seed,
                   device=runtime.device, image_size=request.image_size,
                   augment=cfg.augment, randaugment_magnitude=cfg.randaugment_magnitude,
                   channels_last=runtime.channels_last, rank=0, world_size=int(resolved.get("world_size", 1)),
                   num_workers=runtime.num_workers)
    normalize = Normalize(own.mean, own.std, runtime.device)
    method.finalize(model, Restartable(lambda: normalize.batches(train_batches(own.train, **options))))
    model.eval()


def read_runs(run_dirs) -> list[tuple[Any, dict]]:
    """(TrainConfig, resolved) of each run; several runs must fit one ensemble (same model, classes,
    image size and dataset). Shared with `resnets predict` and `resnets export`."""
    runs = [run_files.read_run(run_dir) for run_dir in run_dirs]
    if len(runs) > 1:
        names = [str(r) for r in run_dirs]
        check_compatible([run_files.architecture(cfg, resolved) for cfg, resolved in runs], names)
        for name, (cfg, _) in zip(names[1:], runs[1:]):
            if cfg.data != runs[0][0].data:
                raise UserError(f"ensemble members {names[0]!r} and {name!r} were trained on different data "
                                f"({runs[0][0].data} and {cfg.data}): every member run must be trained on the same "
                                "dataset, whose normalization the ensemble's inputs get.")
    return runs


def temperature_split(args: EvalRequest, request: RunData):
    """The split --temperature-scale fits on: the run's own val split (UserError when it has none)."""
    val = _own_val_split(args, request, "--temperature-scale")
    if val is None:
        raise UserError(_no_val_message(request, "--temperature-scale", "fits the temperature"))
    return val


def _own_val_split(args: EvalRequest, request: RunData, flag: str):
    """The run's own val split, or None when it has none (UserError when its data is unreadable)."""
    own = request.load_own(args, why=flag)
    return own.val if own.val is not None and len(own.val) else None


def _no_val_message(request: RunData, flag: str, what: str) -> str:
    return (f"{flag} {what} on the val split of the run's dataset {request.cfg.data!r}, which has none (the run "
            f"was trained with --val-size 0); leave {flag} out, or train with a validation split.")


def fit_run_temperature(ev: Predictor, val_split) -> tuple[float, EvalOutput]:
    """(temperature, the val predictions it was fit on) for the model and method of `ev`."""
    val = ev.predict(ev.batches(val_split), keep=True)
    return fit_temperature(val.probs.log(), val.labels), val


def evaluate_runs(args: EvalRequest) -> dict[str, Any]:
    """Evaluate the request's runs (several: as a deep ensemble); the report that eval.json holds.

    Writes only what the request names (predictions, reliability diagram)."""
    corruptions, severities = args.corruptions, args.severities
    runs = read_runs(args.runs)
    predictions_path, diagram_path = args.save_predictions, args.reliability_diagram
    cfg, resolved = runs[0]
    runtime = resolve_runtime(args.device, args.precision, cfg.channels_last,
                              cfg.num_workers if args.num_workers is None else args.num_workers)
    request = RunData.of(cfg, resolved)

    # Every dataset is read before the model runs, so a wrong folder fails before the work.
    data_name = args.data or cfg.data
    if args.data and args.data != cfg.data:
        data = request.load(args.data, args.data_dir, "--data")
    else:
        data = request.load_own(args)
    split_name = args.split or dataset_spec(data_name).test_split
    split = _split_of(data, split_name, "--split", data_name)
    val_split = None
    if args.temperature_scale:
        # The temperature belongs to the model: it is fit on the run's own held-out data and then
        # applied unchanged to whatever is evaluated (another test set, corruptions, shift, OOD).
        val_split = temperature_split(args, request)
        if split_name == "val" and data is request.own:
            print("resnets eval: warning: --split val with --temperature-scale fits and scores the temperature on the "
                  "same images; its ts/* metrics are optimistic.", file=sys.stderr)
    # Conformal sets are calibrated on the run's own val split, as the temperature is; without
    # one they are skipped (with a note), unless --alpha asked for them.
    conformal_split, conformal_skipped = None, None
    try:
        conformal_split = _own_val_split(args, request, "--alpha")
    except UserError as error:
        if args.alpha is not None:
            raise
        conformal_skipped = f"the run's own dataset, whose val split calibrates them, cannot be read: {error}"
    if conformal_split is None and conformal_skipped is None:
        if args.alpha is not None:
            raise UserError(_no_val_message(request, "--alpha", "calibrates the conformal prediction sets"))
        conformal_skipped = (f"the run's dataset {cfg.data!r} has no val split to calibrate them on (the run was "
                             "trained with --val-size 0)")
    if conformal_split is not None and split_name == "val" and data is request.own:
        print("resnets eval: warning: --split val calibrates and scores the conformal sets on the same images; "
              "their conformal/* coverage is optimistic.", file=sys.stderr)
    # Methods that finalize (SWA/SWAG) keep their result in collected state, not in the weights alone.
    finalizes = len(runs) == 1 and method_class(cfg.method).finalizes
    if finalizes:
        request.load_own(args, why=f"re-estimating BatchNorm for the {cfg.method} run")
    if corruptions and not isinstance(split, (TensorSplit, FolderSplit, ShardSplit)):
        raise UserError(f"--corruptions: the {split_name} split of {data_name!r} is neither in-memory images, "
                        "image files nor prepared shards, so it cannot be corrupted.")
    shift = shift_split = None
    if args.shift_data:
        shift = request.load(args.shift_data, args.shift_data_dir, "--shift-data")
        shift_split_name, shift_split = _first_split(shift, "--shift-data", args.shift_data)
    ood = ood_split = None
    if args.ood_data:
        ood = request.load(args.ood_data, args.ood_data_dir, "--ood-data", check_classes=False)
        ood_split_name, ood_split = _first_split(ood, "--ood-data", args.ood_data)
    mean, std = request.normalization(args, data)

    model, method, weight_files, method_info = build_evaluated_model(args, runs, runtime)
    if finalizes:
        finalize_for_eval(args, request, model, method, runtime)
    method = with_tta(method, args.tta)  # every prediction below, temperature and conformal fits included

    ev = Predictor(model, method, request.num_classes, request.image_size, mean, std, runtime,
                   args.batch_size or cfg.eval_batch_size, args.seed)
    keep = True  # selective prediction and conformal sets rank the whole split's predictions

    report: dict[str, Any] = dict(
        runs=[str(r) for r in args.runs], weights=args.weights, weight_files=[str(p) for p in weight_files],
        **method_info, model=cfg.model, width=cfg.width, image_size=request.image_size,
        num_classes=request.num_classes, data=data_name,
        data_dir=args.data_dir if data is not request.own else request.own_data_dir(args),
        split=split_name, device=str(runtime.device), precision=runtime.precision, seed=args.seed, tta=args.tta,
    )
    if len(runs) == 1 and method.sized_by_ensemble_size:
        report["ensemble_size"] = cfg.ensemble_size

    main = ev.predict(ev.batches(split), keep)
    report["count"] = main.metrics["count"]
    metrics = _plain_metrics(main.metrics)
    metrics.update({f"selective/{k}": v for k, v in selective_metrics(main.probs, main.labels).items()})
    report["risk_coverage"] = risk_coverage_points(main.probs, main.labels)
    if args.risk_coverage is not None:
        risk_coverage_plot(main.probs, main.labels, args.risk_coverage,
                           title=f"{', '.join(Path(r).name for r in args.runs)} on {data_name}/{split_name}")
        report["risk_coverage_plot"] = str(args.risk_coverage)
    final = main
    temperature = val = None
    if val_split is not None:
        temperature, val = fit_run_temperature(ev, val_split)
        val_scaled, _ = _scaled_metrics(val.probs, val.labels, request.num_classes, temperature)
        scaled_metrics, scaled = _scaled_metrics(main.probs, main.labels, request.num_classes, temperature)
        metrics["temperature"] = temperature
        metrics.update({f"ts/{k}": v for k, v in scaled_metrics.items()})  # before/after on the same split
        report["temperature"] = temperature
        report["temperature_fit"] = dict(data=cfg.data, split="val", count=val.metrics["count"],
                                         nll=val.metrics["nll"], ts_nll=val_scaled["nll"])
        final = EvalOutput(main.metrics, scaled, main.labels, main.member_probs, main.logits)
        metrics.update({f"ts/selective/{k}": v for k, v in selective_metrics(scaled, main.labels).items()})
    alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
    if conformal_split is not None:
        # The uncalibrated probabilities: conformal calibration needs no temperature.
        if val is None:
            val = ev.predict(ev.batches(conformal_split), keep=True)
        sets = conformal_metrics(val.probs, val.labels, main.probs, main.labels, alpha, seed=args.seed)
        for method, values in sets.items():
            metrics.update({f"conformal/{method}/{k}": values[k] for k in ("coverage", "set_size")})
        report["conformal"] = dict(alpha=alpha, calibration=dict(data=cfg.data, split="val",
                                                                 count=val.metrics["count"]), methods=sets)
    else:
        report["conformal"] = dict(alpha=alpha, skipped=conformal_skipped)

    if diagram_path is not None:
        title = f"{', '.join(Path(r).name for r in args.runs)} on {data_name}/{split_name}"
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
        out = ood_out = ev.predict(ev.batches(ood_split, zero_labels=True), keep=True)
        detection = _ood_results(main, out)
        if temperature is not None:
            scaled = _ood_results(main, out, temperature)
            detection.update({f"ts/{kind}": values for kind, values in scaled.items()})
        for kind, values in detection.items():
            metrics.update({_prefixed("ood/", f"{kind}/{k}"): v for k, v in values.items()})
        report["ood"] = dict(data=args.ood_data, data_dir=args.ood_data_dir, split=ood_split_name,
                             count=out.metrics["count"], in_split=split_name, scores=detection)

    if predictions_path is not None:
        extra = {} if temperature is None else {"temperature": temperature, "uncalibrated_probs": main.probs}
        if ood is not None:
            extra["ood_probs"] = ood_out.probs
            for key, value in (("ood_logits", ood_out.logits), ("ood_member_probs", ood_out.member_probs)):
                if value is not None:
                    extra[key] = value
        save_predictions(predictions_path, final, extra)
        report["predictions"] = str(predictions_path)
    report["metrics"] = metrics
    return report


def run(args) -> int:
    """`resnets eval`: evaluate, print a table, write eval.json (see add_arguments)."""
    request = EvalRequest.from_args(args)
    out_path = writable_path(args.out or Path(args.runs[0]) / run_files.EVAL_FILE, "--out", "a .json file path")
    report = evaluate_runs(request)
    run_files.write_json(out_path, report)
    print(format_report(report))
    for key in ("predictions", "reliability_diagram", "risk_coverage_plot"):
        if key in report:
            print(f"{key.replace('_', ' ')}: {report[key]}")
    print(f"results: {out_path}")
    return 0


def _prefixed(prefix: str, key: str) -> str:
    """'shift/' + 'nll' -> 'shift/nll', and 'shift/' + 'ts/nll' -> 'ts/shift/nll': every
    temperature-scaled key starts with ts/."""
    if key.startswith("ts/"):
        return "ts/" + prefix + key[3:]
    return prefix + key


def _scored(ev: Predictor, out: EvalOutput, temperature: float | None) -> dict[str, float]:
    """The metrics of `out`, plus ts/* ones when a temperature was fitted."""
    entry = _plain_metrics(out.metrics)
    if temperature is not None:
        scaled, _ = _scaled_metrics(out.probs, out.labels, ev.num_classes, temperature)
        entry.update({f"ts/{k}": v for k, v in scaled.items()})
    return entry


def _evaluate_corruptions(ev: Predictor, split, names: list[str], severities: list[int],
                          temperature: float | None) -> dict[str, Any]:
    """Every corruption at every severity, and the means over all of them (corrupted/mean_*)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    values: dict[str, list[float]] = {}
    for name in names:
        results[name] = {}
        for severity in severities:
            batches = ev.batches(split, image_hook=corruption_hook(name, severity, ev.seed))
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


def format_report(report: dict) -> str:
    """The metrics as a plain-text table (raw and, when fitted, temperature-scaled columns)."""
    metrics = report["metrics"]
    runs = report["runs"]
    what = runs[0] if len(runs) == 1 else f"ensemble of {len(runs)} runs"
    lines = [(f"{what} ({report['method']}, {report['weights']} weights) on {report['data']}/{report['split']}: "
              f"{report['count']} images")]
    keys = [k for k in metrics if not k.startswith(("ts/", "corrupted/", "shift/", "ood/", "selective/", "conformal/"))
            and k != "temperature"]
    ts = "temperature" in metrics
    header = f"  {'metric':<32}{'value':>10}" + (f"{'T=' + format(metrics['temperature'], '.3f'):>12}" if ts else "")
    lines.append(header)

    def row(label: str, key: str) -> str:
        value = metrics.get(key)
        text = f"  {label:<32}{_fmt(value):>10}"
        if ts:
            text += f"{_fmt(metrics.get('ts/' + key)):>12}"
        return text

    lines += [row(k, k) for k in keys]
    if any(k.startswith("selective/") for k in metrics):
        lines.append("selective prediction (confidence = max prob):")
        lines += [row(f"selective/{k}", f"selective/{k}") for k in SELECTIVE_KEYS]
    conformal = report.get("conformal") or {}
    if "methods" in conformal:
        cal = conformal["calibration"]
        lines.append(f"conformal sets, alpha {conformal['alpha']:g} (calibrated on {cal['data']}/{cal['split']}, "
                     f"{cal['count']} images):")
        lines += [f"  {'conformal/' + m + '/' + k:<32}{_fmt(metrics.get(f'conformal/{m}/{k}')):>10}"
                  for m in CONFORMAL_METHODS for k in ("coverage", "set_size")]
    elif conformal.get("skipped"):
        lines.append(f"conformal sets skipped: {conformal['skipped']}")
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
        for kind in [k for k in OOD_SCORES if k in o["scores"]]:
            lines += [row(f"ood/{kind}/{k}", f"ood/{kind}/{k}") for k in ("auroc", "aupr_in", "aupr_out", "fpr95")]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "nan"
    return str(value)
