"""The typed configuration of a training run.

Every field is a `resnets train` flag of the same name (underscores become dashes); a preset
is a named set of field values (presets.py) and the CLI overrides any of them. Durations
(`iters`, `warmup`, `milestones`) are strings with a unit so that one field serves recipes
written in iterations (seed 001), epochs (seeds 000/003) or a fraction of training:
"48000" or "48k" iterations, "90ep" epochs, "10%" of the total.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class TrainConfig:
    # What to train.
    model: str = field(default="resnet20", metadata=dict(help="zoo model name (resnets zoo lists them)"))
    width: int = field(default=1, metadata=dict(help="width multiplier of the stages"))
    head_bias: bool | None = field(default=None, metadata=dict(
        help="give the classifier head a bias (default: the model's, yes)"))
    head_init: str | None = field(default=None, metadata=dict(
        help="head init: default (PyTorch's), zero or normal (std 0.01) (default: the model's)"))
    dropout: float | None = field(default=None, metadata=dict(help="dropout before the head (default: the model's)"))
    drop_path_rate: float | None = field(default=None, metadata=dict(help="stochastic depth rate (default: the model's)"))
    zero_init_last_bn: bool | None = field(default=None, metadata=dict(
        help="zero-init the last BN scale of each block (default: the model's, yes)"))
    bn_momentum: float | None = field(default=None, metadata=dict(
        help="BN running-statistics momentum, PyTorch's convention (default: the model's, 0.1)"))
    pretrained: str | None = field(default=None, metadata=dict(
        help="start a new run from weights: torchvision, timm (their ImageNet weights, from torch hub's or the "
             "Hugging Face cache, downloaded there by the library when missing and online) or a .pth/.pt/.safetensors state dict (either library's, or a run's "
             "model.safetensors); a head of another class count is replaced. The architecture follows the "
             "weights: resnet18..152 keep the 7x7 ImageNet stem whatever --image-size"))
    freeze: int = field(default=0, metadata=dict(
        help="freeze the stem and the first N stages (no gradients; their BN keeps its running statistics)"))
    method: str = field(default="deterministic", metadata=dict(
        help="deterministic, batchensemble, mcdropout, swa, swag, sngp, heteroscedastic, rank1, mimo, or ensemble "
             "(ensemble_size runs, seeds seed+k)"))
    ensemble_size: int = field(default=4, metadata=dict(help="members of batchensemble, rank1, mimo (its inputs and heads) or ensemble"))
    be_init: str = field(default="normal", metadata=dict(help="BatchEnsemble fast-weight init: normal or random_sign"))
    fast_weight_lr_mult: float = field(default=0.25, metadata=dict(
        help="BatchEnsemble and rank1: LR multiplier of the per-member factors, biases and BN"))
    mc_samples: int = field(default=10, metadata=dict(help="MC dropout test samples"))
    swa_start: float = field(default=0.75, metadata=dict(help="SWA/SWAG: fraction of training before collecting"))
    swa_every: int = field(default=100, metadata=dict(help="SWA/SWAG: iterations between snapshots"))
    swa_lr: float | None = field(default=None, metadata=dict(help="SWA/SWAG: constant LR after swa_start"))
    swag_rank: int = field(default=20, metadata=dict(help="SWAG deviation rank"))
    swag_samples: int = field(default=30, metadata=dict(help="SWAG test samples"))
    # SNGP (defaults: uncertainty-baselines baselines/imagenet/sngp.py's flags).
    spec_norm_bound: float = field(default=6.0, metadata=dict(
        help="SNGP: bound on each conv's spectral norm (kernel scaled by min(1, bound/sigma))"))
    spec_norm_iterations: int = field(default=1, metadata=dict(help="SNGP: power iterations per training step"))
    gp_hidden_dim: int = field(default=1024, metadata=dict(help="SNGP: random features of the GP output layer"))
    gp_scale: float = field(default=1.0, metadata=dict(help="SNGP: RBF length-scale (inputs divided by its root)"))
    gp_bias: float = field(default=0.0, metadata=dict(help="SNGP: constant (untrained) bias of the GP logits"))
    gp_random_features: str = field(default="orf", metadata=dict(
        help="SNGP: orf (orthogonal random features) or rff (i.i.d. Gaussian)"))
    gp_ridge_penalty: float = field(default=1.0, metadata=dict(help="SNGP: ridge of the GP posterior precision"))
    gp_cov_discount_factor: float = field(default=-1.0, metadata=dict(
        help="SNGP: -1 = exact precision of each epoch (reset at its start), else its moving-average factor"))
    gp_mean_field_factor: float = field(default=1.0, metadata=dict(
        help="SNGP: test logits / sqrt(1 + factor * variance); -1 = the posterior mode (raw logits)"))
    # Heteroscedastic (defaults: uncertainty-baselines baselines/imagenet/heteroscedastic.py's flags).
    het_num_factors: int = field(default=15, metadata=dict(
        help="heteroscedastic: rank of the low-rank part of the logit covariance"))
    het_temperature: float = field(default=1.5, metadata=dict(help="heteroscedastic: softmax temperature"))
    het_mc_samples: int = field(default=5000, metadata=dict(
        help="heteroscedastic: MC samples of the logits (training and test)"))

    # Rank-1 BNN (defaults: uncertainty-baselines baselines/imagenet/rank1_bnn.py's flags; it also
    # uses ensemble_size and fast_weight_lr_mult).
    rank1_posterior: str = field(default="normal", metadata=dict(
        help="rank1: distribution of the rank-1 factors, normal (UB's trainable_normal with "
             "normal_kl_divergence) or cauchy (trainable_cauchy with cauchy_kl_divergence)"))
    rank1_prior_stddev: float = field(default=0.05, metadata=dict(
        help="rank1: scale of the prior N(1, s) or Cauchy(1, s) of every factor"))
    rank1_random_sign_init: float = field(default=0.75, metadata=dict(
        help="rank1: factor locations start +-1 with P(+1) = value (> 0), or N(1, -value) (< 0)"))
    rank1_dropout_rate: float = field(default=1e-3, metadata=dict(
        help="rank1: the factor scales start at sqrt(p / (1 - p)) for this p"))
    kl_annealing_epochs: float = field(default=90.0, metadata=dict(
        help="rank1: epochs over which the KL weight rises linearly to 1 (0: 1 from the start)"))
    rank1_eval_samples: int = field(default=1, metadata=dict(
        help="rank1: sampled forward passes per member at test time (UB's num_eval_samples)"))
    # MIMO (defaults: uncertainty-baselines baselines/imagenet/mimo.py's flags; it also uses ensemble_size).
    mimo_input_repetition: float = field(default=0.6, metadata=dict(
        help="mimo: fraction of each training batch whose rows give every input the same image "
             "(UB's input_repetition_probability)"))
    mimo_batch_repetitions: int = field(default=2, metadata=dict(
        help="mimo: times each image of a training batch appears in it (UB's batch_repetitions; the step runs "
             "batch x this rows)"))

    # Data.
    data: str = field(default="digits", metadata=dict(help="dataset: digits, cifar10, cifar100, tinyimagenet, "
                                                       "imagenet32, imagenet64, npy, imagenet, synthetic"))
    data_dir: str | None = field(default=None, metadata=dict(help="folder holding the dataset files"))
    download: bool = field(default=False, metadata=dict(help="download the dataset with torchvision (CIFAR)"))
    image_size: int | None = field(default=None, metadata=dict(help="input resolution (default: the dataset's)"))
    val_size: int | None = field(default=None, metadata=dict(help="held-out tail of train used for validation"))
    augment: str = field(default="crop-flip", metadata=dict(help="crop-flip, crop (no mirroring) or none"))
    randaugment_magnitude: int | None = field(default=None, metadata=dict(help="RandAugment magnitude (2 layers)"))
    num_workers: int | None = field(default=None, metadata=dict(
        help="DataLoader workers per process for JPEG datasets (default: the cores divided among the processes on the machine, LOCAL_WORLD_SIZE)"))

    # Optimization.
    iters: str = field(default="48k", metadata=dict(help="training length: 48000, 48k, 90ep"))
    batch_size: int = field(default=256, metadata=dict(help="global batch size (all processes together)"))
    grad_accum_steps: int = field(default=1, metadata=dict(
        help="gradient accumulation (timm's name): each optimizer step averages the gradients of N "
             "micro-batches of batch_size/N (per process: batch_size/N/processes); the LR schedule and "
             "--iters count optimizer steps. BatchNorm normalizes over each micro-batch, not the whole batch; "
             "'auto' (saved as 0 until resolved) takes N from --micro-batch-size",
        parse=lambda text: 0 if text == "auto" else int(text)))
    micro_batch_size: int | None = field(default=None, metadata=dict(
        help="images per process per forward pass: sets --grad-accum-steps to batch_size / (processes x this), "
             "e.g. --batch-size 4096 --micro-batch-size 256 on 2 GPUs accumulates 8 micro-batches"))
    lr: float = field(default=0.1, metadata=dict(help="peak learning rate (for lr_base_batch: at that batch)"))
    lr_base_batch: int | None = field(default=None, metadata=dict(
        help="scale lr linearly by batch_size / lr_base_batch (e.g. 256)"))
    optimizer: str = field(default="sgd", metadata=dict(
        help="sgd (with momentum), adamw (torch.optim.AdamW: decoupled weight decay, betas 0.9/0.999), "
             "lamb (LAMB as timm's Lamb: betas 0.9/0.999, gradient norm clipped at 1) or lars (LARS as "
             "timm's Lars: trust coefficient 0.001, with --momentum/--nesterov)"))
    head_lr_mult: float = field(default=1.0, metadata=dict(help="LR multiplier of the classifier head"))
    momentum: float = field(default=0.9, metadata=dict(help="SGD and LARS momentum"))
    nesterov: bool = field(default=False, metadata=dict(help="Nesterov momentum"))
    weight_decay: float = field(default=1e-3, metadata=dict(help="coupled L2: grad += wd * param"))
    decay_bn: bool | None = field(default=None, metadata=dict(
        help="apply weight decay to BN parameters (with adamw/lamb/lars: and biases) too (default: yes with "
             "sgd, as seed 001; no with adamw, lamb and lars); off for seeds 000/003"))
    schedule: str = field(default="cosine", metadata=dict(help="cosine or step (after linear warmup)"))
    warmup: str = field(default="10%", metadata=dict(help="linear warmup from 0: 10%%, 5ep or iterations"))
    milestones: str = field(default="", metadata=dict(help="step schedule: comma-separated, e.g. 30ep,60ep,80ep"))
    lr_decay: float = field(default=0.1, metadata=dict(help="step schedule: factor at each milestone"))
    label_smoothing: float = field(default=0.0, metadata=dict(help="cross-entropy label smoothing"))
    # Batch mixing and erasing (data/mixing.py), named and drawn as timm's train.py does.
    mixup: float = field(default=0.0, metadata=dict(
        help="mixup alpha (timm's --mixup): each batch is mixed with itself reversed by lambda ~ Beta(a, a), "
             "targets mixed alike; 0 is off"))
    cutmix: float = field(default=0.0, metadata=dict(
        help="CutMix alpha (timm's --cutmix): a box of area 1-lambda is pasted from the reversed batch; 0 is off"))
    mixup_prob: float = field(default=1.0, metadata=dict(
        help="probability that a batch is mixed at all (timm's --mixup-prob)"))
    mixup_switch_prob: float = field(default=0.5, metadata=dict(
        help="with both --mixup and --cutmix: probability of CutMix for a batch (timm's --mixup-switch-prob)"))
    reprob: float = field(default=0.0, metadata=dict(
        help="random erasing probability per image (timm's --reprob; area 2-33%%, per-pixel normal noise)"))
    ema_decay: float | None = field(default=None, metadata=dict(help="EMA of weights (evaluated instead), e.g. 0.9999"))
    grad_clip: float | None = field(default=None, metadata=dict(help="clip the gradient norm to this value"))

    # Precision and speed.
    device: str = field(default="auto", metadata=dict(help="auto, cpu, cuda or cuda:N"))
    precision: str = field(default="auto", metadata=dict(
        help="auto (seed_precision, else bf16, on CUDA; fp32 on the CPU), fp32, bf16, fp16"))
    seed_precision: str | None = field(default=None, metadata=dict(
        help="the precision the seed's row ran in (bf16 on TPUs); --precision auto uses it on CUDA only"))
    channels_last: bool | None = field(default=None, metadata=dict(help="channels_last memory (default: on CUDA)"))
    compile: bool = field(default=False, metadata=dict(help="torch.compile the training step's model"))
    use_deterministic_algorithms: bool = field(default=False, metadata=dict(
        help="deterministic kernels only (torch.use_deterministic_algorithms, no cuDNN autotuning): a CUDA run "
             "repeats bit for bit, more slowly"))
    sync_bn: bool = field(default=False, metadata=dict(help="synchronise BN statistics across processes"))
    allow_world_size_change: bool = field(default=False, metadata=dict(
        help="let --resume continue with another number of processes (the result then differs)"))

    # The run.
    seed: int = field(default=42, metadata=dict(help="seed of initialization, data order and augmentation"))
    eval_every: str = field(default="1000", metadata=dict(help="between evaluations and checkpoints: 1000 or 1ep"))
    checkpoint_every: str = field(default="30min", metadata=dict(
        help="checkpoints besides the one at every evaluation: wall-clock (30min, 2h, 90s), iterations (5000, 5k), "
             "epochs (1ep) or 0 for evaluations only"))
    eval_batch_size: int = field(default=1024, metadata=dict(help="batch size of evaluation"))
    eval_train: bool = field(default=False, metadata=dict(
        help="at the end, also evaluate the train split without augmentation (trn/*)"))
    log_every: int = field(default=100, metadata=dict(help="iterations between loss checks and TensorBoard points"))
    name: str | None = field(default=None, metadata=dict(help="run name (default: from model, iters, wd, precision)"))
    runs_root: str = field(default="runs", metadata=dict(help="where run directories are made"))
    out: str | None = field(default=None, metadata=dict(
        help="exact run directory (new, or a run of the same recipe, which is continued)"))
    progress: bool = field(default=True, metadata=dict(help="show a progress bar"))
    logger: str = field(default="tensorboard", metadata=dict(
        help="where the run's log goes besides its own files: tensorboard, mlflow (MLFLOW_TRACKING_URI), "
             "wandb (WANDB_PROJECT, WANDB_MODE), comma-separated for several, or none"))
    preset: str | None = field(default=None, metadata=dict(help="the preset this config started from"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{source} has unknown field(s) {unknown}: expected fields of TrainConfig such as "
                            "model, data, iters, batch_size, lr")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _checked(name, value, hints[name], source) for name, value in values.items()})


def field_type(hint) -> type:
    """The value type of a TrainConfig field's annotation ('int | None' -> int)."""
    if isinstance(hint, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)][0]
    return hint


def _checked(name: str, value: Any, hint, source: str) -> Any:
    """`value` as the field's type, or the error a wrong --flag value gets, naming `source`."""
    kind = field_type(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if value is None and optional:
        return None
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # durations written as numbers: iters: 48000
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    flag = "--" + name.replace("_", "-")
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    raise UserError(f"{source}: {name} is {value!r}, but {flag} takes {expected}"
                    f"{' (or null for the default)' if optional else ''}.")


def load_config_file(path: str) -> dict[str, Any]:
    """The TrainConfig fields of a YAML file (`--print-config`'s output, or a run's config.yaml)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file; expected a YAML file of recipe fields, as "
                        "`resnets train --preset NAME --print-config` writes one") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"--config {path} cannot be read as YAML ({str(error).splitlines()[0]}); expected a "
                        "mapping of recipe fields such as model, data, iters, lr") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict):
        loaded = loaded["config"]  # a run directory's config.yaml
    if not isinstance(loaded, dict):
        raise UserError(f"--config {path} holds a YAML {type(loaded).__name__}, not a mapping of recipe fields "
                        "such as model, data, iters, lr")
    return loaded


# Fields that set an option of the zoo model; None keeps the model's own default.
MODEL_OPTION_FIELDS = ("width", "head_bias", "head_init", "zero_init_last_bn", "dropout", "drop_path_rate",
                       "bn_momentum")

# Fields that change how a run is executed but not what it computes: a resume may change them.
EXECUTION_FIELDS = {"device", "num_workers", "progress", "data_dir", "download", "out", "runs_root",
                    "eval_batch_size", "compile", "allow_world_size_change", "checkpoint_every",
                    "use_deterministic_algorithms"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(k|ep|%)?\s*$")


def parse_duration(text: str, *, total_iters: int | None, steps_per_epoch: int, flag: str) -> int:
    """Iterations for '48000', '48k', '90ep' or '10%' (of total_iters)."""
    match = _DURATION.match(str(text))
    if not match:
        raise UserError(f"--{flag} {text!r} is not a duration: expected iterations (48000 or 48k), "
                        "epochs (90ep) or a percentage of training (10%)")
    value, unit = float(match.group(1)), match.group(2)
    if unit == "k":
        return round(value * 1000)
    if unit == "ep":
        return round(value * steps_per_epoch)
    if unit == "%":
        if total_iters is None:
            raise UserError(f"--{flag} cannot be a percentage")
        return round(value / 100 * total_iters)
    return round(value)


_WALL_CLOCK = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|h)\s*$")
_WALL_CLOCK_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class CheckpointInterval:
    """`--checkpoint-every` resolved: a wall-clock interval or an iteration count (neither: only
    the checkpoints of evaluations)."""
    seconds: float | None = None
    iterations: int | None = None


def parse_checkpoint_every(text: str, *, total_iters: int, steps_per_epoch: int) -> CheckpointInterval:
    """'30min', '2h', '90s' (wall clock), any duration of `parse_duration` (iterations), or '0'/'off'."""
    text = str(text).strip()
    if text.lower() in ("0", "off", "none"):
        return CheckpointInterval()
    match = _WALL_CLOCK.match(text)
    if match:
        seconds = float(match.group(1)) * _WALL_CLOCK_SECONDS[match.group(2)]
        if seconds <= 0:
            raise UserError(f"--checkpoint-every {text!r} is not a positive interval: expected e.g. 30min, or 0 "
                            "for checkpoints at evaluations only")
        return CheckpointInterval(seconds=seconds)
    if not _DURATION.match(text):
        raise UserError(f"--checkpoint-every {text!r} is not an interval: expected wall-clock time (30min, 2h, "
                        "90s), iterations (5000 or 5k), epochs (1ep), or 0 for checkpoints at evaluations only")
    iterations = parse_duration(text, total_iters=total_iters, steps_per_epoch=steps_per_epoch,
                                flag="checkpoint-every")
    return CheckpointInterval(iterations=iterations) if iterations >= 1 else CheckpointInterval()


def describe_duration(text: str) -> str:
    """A duration as a person reads it: '90ep' -> '90 epochs', '48k' -> '48k iterations'."""
    match = _DURATION.match(str(text))
    if not match:
        return str(text)
    value, unit = match.group(1), match.group(2)
    if unit == "ep":
        return f"{value} epochs"
    if unit == "%":
        return f"{value}% of training"
    return f"{value}{unit or ''} iterations"


@dataclass
class Schedule:
    """A config's durations resolved against the dataset: everything in iterations."""
    total_iters: int
    eval_every: int
    warmup_iters: int
    milestones: list[int]
    steps_per_epoch: int
    peak_lr: float

    def lr_at(self, iteration: int) -> float:
        """LR of the 0-based `iteration`: linear warmup from 0, then cosine to 0 or steps."""
        if iteration < self.warmup_iters:
            return self.peak_lr * iteration / self.warmup_iters
        return self.peak_lr * self._after_warmup(iteration)

    def _after_warmup(self, iteration: int) -> float:
        raise NotImplementedError


@dataclass
class CosineSchedule(Schedule):
    def _after_warmup(self, iteration: int) -> float:
        span = max(self.total_iters - self.warmup_iters, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (iteration - self.warmup_iters) / span))


@dataclass
class StepSchedule(Schedule):
    decay: float = 0.1

    def _after_warmup(self, iteration: int) -> float:
        return self.decay ** sum(iteration >= m for m in self.milestones)


def resolve_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    total = parse_duration(cfg.iters, total_iters=None, steps_per_epoch=steps_per_epoch, flag="iters")
    if total < 1:
        raise UserError(f"--iters {cfg.iters!r} gives {total} iterations: expected at least 1")
    warmup = parse_duration(cfg.warmup, total_iters=total, steps_per_epoch=steps_per_epoch, flag="warmup")
    if warmup >= total:
        raise UserError(f"--warmup {cfg.warmup!r} ({warmup} iterations) is not shorter than training ({total})")
    milestones = [parse_duration(m, total_iters=total, steps_per_epoch=steps_per_epoch, flag="milestones")
                  for m in cfg.milestones.split(",") if m.strip()]
    eval_every = parse_duration(cfg.eval_every, total_iters=total, steps_per_epoch=steps_per_epoch, flag="eval-every")
    if eval_every < 1:
        raise UserError(f"--eval-every {cfg.eval_every!r} gives {eval_every} iterations: expected at least 1")
    peak = cfg.lr * (cfg.batch_size / cfg.lr_base_batch if cfg.lr_base_batch else 1.0)
    common = dict(total_iters=total, eval_every=eval_every, warmup_iters=warmup, milestones=milestones,
                  steps_per_epoch=steps_per_epoch, peak_lr=peak)
    if cfg.schedule == "cosine":
        return CosineSchedule(**common)
    if cfg.schedule == "step":
        if not milestones:
            raise UserError("--schedule step needs --milestones, e.g. 30ep,60ep,80ep")
        return StepSchedule(**common, decay=cfg.lr_decay)
    raise UserError(f"--schedule {cfg.schedule!r} is unknown: expected cosine or step")
