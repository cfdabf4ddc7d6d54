"""The full `resnets train` loop against the bare model step, in one process.

Same model, batch, device and synthetic data; the loop adds data indexing, on-device
augmentation, the LR schedule, metrics accumulation and the method hooks. The ratio
loop img/s / bare img/s is printed (target >= 0.95 with dense logging: a training point, one host
sync, every --log-every steps) and, with --out, written as markdown.

    python benchmarks/train_loop_overhead.py --model resnet20 --batch-size 128 --iters 30 --log-every 5
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resnets import create_model  # noqa: E402
from resnets.config import TrainConfig  # noqa: E402
from resnets.devices import device_description, resolve_device  # noqa: E402
from resnets.train import train  # noqa: E402


def bare_step_img_per_sec(model_name: str, batch: int, iters: int, device: torch.device, channels_last: bool) -> float:
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(model_name, num_classes=10, image_size=32).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    # Like the loop's figure, this includes the first (warm-up) step.
    start = time.perf_counter()
    for _ in range(iters):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * iters / (time.perf_counter() - start)


def loop_img_per_sec(model_name: str, batch: int, iters: int, device: torch.device, channels_last: bool,
                     log_every: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=model_name, data="synthetic", batch_size=batch, iters=str(iters),
                          eval_every=str(iters), eval_batch_size=1000, device=str(device), precision="fp32",
                          channels_last=channels_last, progress=False, out=str(Path(tmp) / "run"), lr=0.1,
                          log_every=log_every)
        # results' img_per_sec counts training time only (evaluations are excluded).
        return train(cfg).img_per_sec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--log-every", type=int, default=5, help="iterations between dense training points")
    parser.add_argument("--out", help="write the figures as markdown to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last

    bare, loop = [], []
    for _ in range(args.rounds):  # interleaved, so drift in machine load affects both alike
        bare.append(bare_step_img_per_sec(args.model, args.batch_size, args.iters, device, channels_last))
        loop.append(loop_img_per_sec(args.model, args.batch_size, args.iters, device, channels_last, args.log_every))
    bare_best, loop_best = max(bare), max(loop)
    ratio = loop_best / bare_best
    machine = device_description(device)
    lines = [
        f"# `resnets train` loop vs bare model step ({args.model}, batch {args.batch_size}, fp32)",
        "",
        f"Machine: {machine}; torch {torch.__version__}; Python {platform.python_version()}.",
        f"Command: `python benchmarks/train_loop_overhead.py --model {args.model} --batch-size {args.batch_size} "
        f"--iters {args.iters} --rounds {args.rounds} --device {args.device} --log-every {args.log_every}`",
        "",
        "| | img/s (best of rounds) | all rounds |",
        "|---|---:|---|",
        f"| bare step (fixed tensor batch) | {bare_best:.1f} | {', '.join(f'{v:.1f}' for v in bare)} |",
        f"| full `resnets train` loop (synthetic data, on-device crop+flip, a training point every "
        f"{args.log_every} steps) | {loop_best:.1f} | "
        f"{', '.join(f'{v:.1f}' for v in loop)} |",
        "",
        f"Ratio loop / bare: **{ratio:.3f}** (target >= 0.95).",
        "",
        f"Load average while measuring (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
