"""`resnets bench`: training and inference throughput of a zoo model on random data.

The figures are meant to be compared, so the protocol is fixed: warm-up steps first (they
pay for cuDNN autotuning, compilation and allocator growth), then several timed rounds with
the device synchronized at both ends of each, and the median round reported, which a single
hiccup on a shared machine cannot move. With `--compare`, a peer library's model of the same
architecture is timed in the same process in alternating rounds, so slow drift (thermal
throttling, a neighbour's job) lands on both, and the ratio is taken round by round.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .devices import PRECISIONS, device_name, resolve_device, resolve_runtime
from .errors import UserError
from .models import create_model, list_models
from .models.stats import count_flops, count_parameters

MODES = ("train", "infer", "both")
PEERS = ("timm", "torchvision")
# Seed 003's latency protocol: the first batch tried, halved until a step fits.
AUTO_START_BATCH = 128
CPU_DEFAULT_BATCH = 32
# Small enough that hundreds of steps on random labels never diverge: NaN and denormal
# arithmetic would make later rounds slower than earlier ones on some CPUs.
_LR = 1e-3


# ---------------------------------------------------------------- machine description

def _peak_rss_mb() -> float | None:
    try:
        import resource  # Unix only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    # The second is the CPU allocator's wording.
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- models

def _import_peer(library: str):
    try:
        if library == "timm":
            import timm
            return timm
        import torchvision.models
        return torchvision.models
    except ImportError as e:
        raise UserError(
            f"--compare {library} needs the {library} package, which cannot be imported here ({e}). "
            f"Install it (pip install {library}) or leave out --compare."
        ) from None


def build_peer(library: str, name: str, num_classes: int) -> nn.Module:
    """The peer library's own model of that name, randomly initialised (no download)."""
    module = _import_peer(library)
    if library == "timm":
        if not module.is_model(name):
            raise UserError(_no_peer_message(library, name))
        return module.create_model(name, pretrained=False, num_classes=num_classes)
    if name not in module.list_models():
        raise UserError(_no_peer_message(library, name))
    return module.get_model(name, weights=None, num_classes=num_classes)


def _no_peer_message(library: str, name: str) -> str:
    hint = ""
    if name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"):
        hint = " The CIFAR ResNets (resnet20..110) exist in neither timm nor torchvision."
    return (f"--compare {library}: {library} has no model named {name!r}, so there is nothing of the same "
            f"architecture to time against --model {name}.{hint} Leave out --compare, or pick a model "
            f"{library} also has (e.g. resnet50" + (", resnetrs50" if library == "timm" else "") + ").")


def _forward_flops(build: Callable[[], nn.Module], image_size: int, in_chans: int = 3) -> int | None:
    # Built on the meta device, the count costs no memory or compute even for the largest models.
    try:
        with torch.device("meta"):
            model = build()
        return count_flops(model, image_size, in_chans)
    except Exception:  # noqa: BLE001 - a peer whose init cannot run on meta: the figure is optional
        return None


# ---------------------------------------------------------------- timing

@dataclass
class _Timed:
    """One model under test, with everything a step needs already on the device."""

    label: str
    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    image_size: int
    num_classes: int
    in_chans: int = 3
    step_model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    inputs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    round_ms: dict[str, list[float]] = field(default_factory=lambda: {"train": [], "infer": []})
    peak_mb: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=memory_format)
        self.step_model = torch.compile(self.model) if self.compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=_LR, momentum=0.9)
        # Only fp16 has a narrow enough exponent for gradients to underflow without scaling.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def set_batch(self, batch_size: int) -> None:
        self.inputs = self.labels = None
        _free_memory(self.device)
        x = torch.randn(batch_size, self.in_chans, self.image_size, self.image_size, device=self.device)
        self.inputs = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        self.labels = torch.randint(0, self.num_classes, (batch_size,), device=self.device)

    def release(self) -> None:
        """Drop the batch and gradients after a failed step, so the next try starts clean."""
        self.inputs = self.labels = None
        self.optimizer.zero_grad(set_to_none=True)
        _free_memory(self.device)

    def _autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def train_step(self) -> None:
        with self._autocast():
            loss = F.cross_entropy(self.step_model(self.inputs), self.labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def infer_step(self) -> None:
        with torch.inference_mode(), self._autocast():
            self.step_model(self.inputs)

    def steps(self, mode: str, count: int) -> None:
        self.model.train(mode == "train")
        step = self.train_step if mode == "train" else self.infer_step
        for _ in range(count):
            step()

    def time_round(self, mode: str, iters: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.train(mode == "train")
        step = self.train_step if mode == "train" else self.infer_step
        _synchronize(self.device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        _synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.round_ms[mode].append(1000.0 * elapsed / iters)
        peak = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda"
                else _peak_rss_mb())
        if peak is not None:
            self.peak_mb[mode] = max(self.peak_mb.get(mode, 0.0), peak)


def probe_batch_size(try_step: Callable[[int], None], cleanup: Callable[[], None],
                     start: int = AUTO_START_BATCH) -> int:
    """Seed 003's protocol: the largest of start, start/2, ... 1 for which one step fits."""
    batch = start
    while batch >= 1:
        failed = False
        try:
            try_step(batch)
            return batch
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            failed = True
        # Cleaning up outside the handler: the exception's traceback keeps the failed step's
        # activations alive until the except block is left.
        if failed:
            cleanup()
            batch //= 2
    raise UserError(
        "--batch-size auto: not even one image fits in memory for one step; try a smaller --image-size, "
        "--precision bf16, or --device cpu."
    )


def _summary(timed: _Timed, mode: str, batch_size: int, memory_kind: str) -> dict[str, Any]:
    rounds = timed.round_ms[mode]
    ms = statistics.median(rounds)
    return {
        "img_per_sec": batch_size * 1000.0 / ms,
        "ms_per_step": ms,
        "iter_per_min": 60_000.0 / ms,
        "peak_memory_mb": timed.peak_mb.get(mode),
        "memory_kind": memory_kind,
        "round_ms": rounds,
    }


def _check_positive(flag: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise UserError(f"{flag} must be an integer >= {minimum}, got {value!r}.")


def benchmark(
    model_name: str,
    *,
    image_size: int | None = None,
    batch_size: int | str = CPU_DEFAULT_BATCH,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    mode: str = "both",
    device: str | torch.device | None = None,
    iters: int = 20,
    warmup: int = 5,
    num_classes: int = 1000,
    compare: str | None = None,
    rounds: int = 5,
    verbose: bool = False,
) -> dict[str, Any]:
    """Time training and/or inference steps of a zoo model (and a peer's, with `compare`).

    `iters` steps are timed per round, `rounds` rounds per model and mode after `warmup`
    untimed steps; the reported figures are medians over rounds. `batch_size="auto"` probes
    128, 64, ... with the most demanding requested mode. The returned dict is what
    `--json` writes; `ratio` is ours/peer img/s, the median of the per-round ratios.
    """
    if model_name not in list_models():
        raise UserError(f"--model {model_name!r} is not in the zoo: expected one of {', '.join(list_models())}.")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}.")
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}.")
    if compare is not None and compare not in PEERS:
        raise UserError(f"--compare {compare!r}: expected one of {', '.join(PEERS)}.")
    if batch_size != "auto":
        _check_positive("--batch-size", batch_size)
    _check_positive("--iters", iters)
    _check_positive("--rounds", rounds)
    _check_positive("--warmup", warmup, minimum=0)
    _check_positive("--num-classes", num_classes)
    if image_size is not None:
        _check_positive("--image-size", image_size)
    dev = resolve_device(device)
    dtype = PRECISIONS[precision]
    modes = ["train", "infer"] if mode == "both" else [mode]

    def say(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    torch.manual_seed(0)
    ours_model = create_model(model_name, num_classes=num_classes, image_size=image_size)
    image_size = ours_model.image_size
    in_chans = 3
    settings = dict(device=dev, dtype=dtype, channels_last=channels_last, compile=compile,
                    image_size=image_size, num_classes=num_classes, in_chans=in_chans)
    timed = [_Timed(f"resnets/{model_name}", ours_model, **settings)]
    result: dict[str, Any] = {
        "model": model_name,
        "image_size": image_size,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile,
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "params": count_parameters(ours_model),
        "gflops": None,
        "iters": iters,
        "warmup": warmup,
        "rounds": rounds,
    }
    flops = _forward_flops(lambda: create_model(model_name, num_classes=num_classes, image_size=image_size),
                           image_size, in_chans)
    result["gflops"] = None if flops is None else flops / 1e9
    if compare is not None:
        peer_model = build_peer(compare, model_name, num_classes)
        timed.append(_Timed(f"{compare}/{model_name}", peer_model, **settings))
        peer_flops = _forward_flops(lambda: build_peer(compare, model_name, num_classes), image_size, in_chans)
        result["compare"] = {
            "library": compare,
            "version": _peer_version(compare),
            "model": model_name,
            "params": count_parameters(peer_model),
            "gflops": None if peer_flops is None else peer_flops / 1e9,
        }

    old_cudnn_benchmark = torch.backends.cudnn.benchmark
    # Shapes never change here, so letting cuDNN pick the fastest kernels is what a real run gets.
    torch.backends.cudnn.benchmark = True
    try:
        if batch_size == "auto":
            probe_mode = modes[0]
            batch = AUTO_START_BATCH
            for t in timed:
                def try_step(b: int, t: _Timed = t) -> None:
                    say(f"[bench] {t.label}: trying batch {b}")
                    t.set_batch(b)
                    t.steps(probe_mode, 1)
                    _synchronize(dev)
                # The peer starts where ours stopped, so both are timed at the same batch.
                batch = probe_batch_size(try_step, t.release, start=batch)
            result["batch_size_auto"] = True
        else:
            batch = batch_size
            result["batch_size_auto"] = False
        result["batch_size"] = batch
        for t in timed:
            t.set_batch(batch)
        memory_kind = "cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS"
        for m in modes:
            for t in timed:
                say(f"[bench] {t.label} {m}: {warmup} warm-up step(s)")
                t.steps(m, warmup)
            _synchronize(dev)
            # Alternating rounds: whatever drifts during the run affects ours and the peer alike.
            for r in range(rounds):
                for t in timed:
                    t.time_round(m, iters)
                    say(f"[bench] {t.label} {m} round {r + 1}/{rounds}: {t.round_ms[m][-1]:.1f} ms/step")
            result[m] = _summary(timed[0], m, batch, memory_kind)
            if compare is not None:
                result["compare"][m] = _summary(timed[1], m, batch, memory_kind)
                paired = [peer / ours for ours, peer in zip(timed[0].round_ms[m], timed[1].round_ms[m])]
                result.setdefault("ratio", {})[m] = statistics.median(paired)
    finally:
        torch.backends.cudnn.benchmark = old_cudnn_benchmark
    return result


def _peer_version(library: str) -> str | None:
    try:
        module = __import__(library)
        return getattr(module, "__version__", None)
    except ImportError:
        return None


# ---------------------------------------------------------------- output

def format_result(result: dict[str, Any]) -> str:
    """The human-readable table `resnets bench` prints."""
    flags = [result["precision"], "channels_last" if result["channels_last"] else "NCHW",
             "compiled" if result["compile"] else "eager"]
    batch = f"batch {result['batch_size']}" + (" (auto)" if result.get("batch_size_auto") else "")
    gflops = "?" if result.get("gflops") is None else f"{result['gflops']:.2f}"
    lines = [
        f"{result['model']} @ {result['image_size']} px, {batch}, {', '.join(flags)}",
        f"device: {result['device']} ({result['device_name']}), torch {result['torch']}",
        f"params {result['params'] / 1e6:.2f} M, {gflops} GFLOPs/image forward (multiply-add = 2)",
        f"median of {result['rounds']} rounds x {result['iters']} steps, after {result['warmup']} warm-up steps",
        "",
    ]
    rows = [("model", "mode", "img/s", "ms/step", "iter/min", "peak MB")]
    entries = [(f"resnets/{result['model']}", result)]
    if "compare" in result:
        entries.append((f"{result['compare']['library']}/{result['model']}", result["compare"]))
    for mode in ("train", "infer"):
        for label, source in entries:
            s = source.get(mode)
            if s is None:
                continue
            peak = "" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}"
            rows.append((label, mode, f"{s['img_per_sec']:.1f}", f"{s['ms_per_step']:.2f}",
                         f"{s['iter_per_min']:.1f}", peak))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    memory = (result.get("train") or result.get("infer"))["memory_kind"]
    lines.append(f"peak MB: {memory}" + (" (process-wide: covers both models)" if "compare" in result
                                         and memory == "process peak RSS" else ""))
    if "compare" in result:
        peer = result["compare"]
        ratios = ", ".join(f"{mode} {value:.3f}" for mode, value in result["ratio"].items())
        lines.append(f"ratio ours/{peer['library']} img/s (median of paired rounds): {ratios}")
        if peer["params"] != result["params"] or (
                peer.get("gflops") and result.get("gflops")
                and abs(peer["gflops"] - result["gflops"]) > 0.01 * result["gflops"]):
            lines.append(f"note: {peer['library']}'s {result['model']} differs from ours here "
                         f"({peer['params'] / 1e6:.2f} M params, {peer.get('gflops') or 0:.2f} GFLOPs): "
                         "the ratio compares different architectures.")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="NAME",
                        help=f"zoo model: one of {', '.join(list_models())}")
    parser.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the model's)")
    parser.add_argument("--batch-size", default=None, metavar="N|auto",
                        help=f"images per step, or 'auto': {AUTO_START_BATCH} halved until a step fits (a training "
                             f"step unless --mode infer) (default: auto on CUDA, {CPU_DEFAULT_BATCH} on CPU)")
    parser.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                        help="autocast precision; fp16 training uses a gradient scaler (default: auto, as `resnets "
                             "train`: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory format for model and inputs (default: on CUDA, as `resnets train`)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (compilation happens in the warm-up steps: keep --warmup >= 1)")
    parser.add_argument("--mode", default="both", choices=MODES, help="what to time (default: both)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="default: cuda if available, else cpu")
    parser.add_argument("--iters", type=int, default=20, help="timed steps per round (default: 20)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, per model and mode (default: 5)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default: 1000)")
    parser.add_argument("--compare", default=None, choices=PEERS,
                        help="also time the peer library's model of the same name, in alternating rounds")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _parse_batch_size(value: str | int | None, device: torch.device) -> int | str:
    if value is None:
        return "auto" if device.type == "cuda" else CPU_DEFAULT_BATCH
    if isinstance(value, int) or value == "auto":
        return value
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise UserError(f"--batch-size {value!r}: expected a positive integer or 'auto'.")
    return batch


def run(args: argparse.Namespace) -> int:
    runtime = resolve_runtime(args.device, args.precision, args.channels_last)
    device = runtime.device
    result = benchmark(
        args.model,
        image_size=args.image_size,
        batch_size=_parse_batch_size(args.batch_size, device),
        precision=runtime.precision,
        channels_last=runtime.channels_last,
        compile=args.compile,
        mode=args.mode,
        device=device,
        iters=args.iters,
        warmup=args.warmup,
        num_classes=args.num_classes,
        compare=args.compare,
        rounds=args.rounds,
        verbose=not getattr(args, "quiet", False),
    )
    print(format_result(result))
    if args.json:
        path = Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise UserError(f"--json {args.json}: cannot write the results there ({e.strerror}).") from None
    return 0
