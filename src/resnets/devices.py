"""Which device and precision a command runs on, and how the machine is described in results."""
from __future__ import annotations

import contextlib
import os
import platform

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


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise UserError(f"--precision {name!r} is unknown: expected auto, {', '.join(PRECISIONS)}")
    return name


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
