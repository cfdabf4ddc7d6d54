"""Where and how a command runs (device, precision, memory layout, loader workers), resolved
here once for train, eval and bench alike, and how the machine is described in results."""
from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import torch

from .errors import UserError

# Autocast dtype of each --precision (fp32: no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' (or None) picks CUDA when there is a GPU; anything else must be cpu, cuda or cuda:N."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r} is not supported: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but this machine has no usable CUDA GPU: use --device cpu")
    return device


def resolve_precision(name: str, device: torch.device, preferred: str | None = None) -> str:
    """'auto' is `preferred` (a recipe's own low precision) or bf16 on CUDA, and fp32 on the CPU,
    where bf16/fp16 autocast is several times slower than fp32."""
    if preferred is not None and preferred not in PRECISIONS:
        raise UserError(f"--seed-precision {preferred!r} is unknown: expected {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return preferred or "bf16"
    if name not in PRECISIONS:
        raise UserError(f"--precision {name!r} is unknown: expected auto, {', '.join(PRECISIONS)}")
    return name


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32, bf16 or fp16 (never "auto")
    channels_last: bool
    num_workers: int

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def default_num_workers() -> int:
    """DataLoader workers per process for decoded (JPEG) datasets when none are asked for: the
    machine's cores shared among the processes torchrun starts on it (LOCAL_WORLD_SIZE), at least 1."""
    local_processes = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        local_processes = max(1, int(local_processes))
    except ValueError:
        raise UserError(f"LOCAL_WORLD_SIZE={local_processes!r} is not a number of processes; torchrun sets it "
                        f"to the processes per machine.") from None
    return max(1, cpu_cores() // local_processes)


def resolve_runtime(device: str | torch.device | None = "auto", precision: str = "auto",
                    channels_last: bool | None = None, num_workers: int | None = None,
                    preferred_precision: str | None = None) -> Runtime:
    """The defaults of every command: CUDA when there is a GPU, bf16 and channels_last there,
    fp32 and contiguous on the CPU, and the machine's cores shared among its processes as loader
    workers (`default_num_workers`)."""
    resolved = resolve_device(device)
    if num_workers is not None and num_workers < 0:
        raise UserError(f"--num-workers must be 0 or more, got {num_workers}.")
    return Runtime(
        device=resolved,
        precision=resolve_precision(precision, resolved, preferred_precision),
        channels_last=resolved.type == "cuda" if channels_last is None else bool(channels_last),
        num_workers=default_num_workers() if num_workers is None else num_workers,
    )


@contextlib.contextmanager
def kernel_choice(device: torch.device, deterministic: bool):
    """Which kernels a run may use, set for its duration and put back after.

    By default, cuDNN times its convolution algorithms once per input shape and keeps the
    fastest (the shapes of a training run are fixed; timm's and torchvision's training scripts do
    the same). `deterministic` (--use-deterministic-algorithms) asks torch for deterministic
    kernels everywhere instead, so that a CUDA run repeats bit for bit, at some cost in speed.
    """
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic)
    if deterministic:
        # cuBLAS needs a fixed workspace for deterministic matrix products; it reads this when
        # its first handle is created.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        cudnn.benchmark, cudnn.deterministic = False, True
    elif device.type == "cuda":
        cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        cudnn.benchmark, cudnn.deterministic = saved[1], saved[2]


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cores() -> int:
    # Affinity, not os.cpu_count(): containers and job schedulers often pin us to fewer cores.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({cpu_cores()} cores, {torch.get_num_threads()} torch threads)"


def device_description(device: torch.device, world_size: int = 1) -> str:
    """The `device` of results.json: the GPU's name or the CPU's, and the number of processes."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{world_size}"
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads) x{world_size}"
