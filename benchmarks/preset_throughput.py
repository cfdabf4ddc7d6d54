"""iter/min of a preset's first K iterations, computed as seed 001 does: iterations per minute
of training time (evaluations excluded) over a late window, here the second half of the K
iterations, so that warm-up and compilation stay out of it.

The preset runs unchanged except for its length, and on synthetic data of the preset's image
size unless --data-dir points at the real dataset. With --compare-seed the ratio to the
seed table's RTX 3090 figure is printed.

    python benchmarks/preset_throughput.py cifar10-resnet20x1 cifar10-resnet18x1-fp16 --iters 200
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resnets.config import TrainConfig  # noqa: E402
from resnets.presets import get_preset  # noqa: E402
from resnets.devices import device_description, resolve_device  # noqa: E402
from resnets.train import train  # noqa: E402

# Seed 001, CIFAR-10 rows, one RTX 3090 (iter/min over the last 5k of 48k iterations).
SEED001_RTX3090 = {
    "cifar10-resnet20x1": 4545, "cifar10-resnet20x2": 2439, "cifar10-resnet20x4": 1132,
    "cifar10-resnet32x1": 2941, "cifar10-resnet44x1": 2308, "cifar10-resnet56x1": 1840,
    "cifar10-resnet18x1": 1327, "cifar10-resnet18x1-fp16": 2273,
}


def measure(preset: str, iters: int, data_dir: str | None, device: str, extra: dict) -> dict:
    values = get_preset(preset)
    if data_dir is None:
        # Synthetic images live in memory, where RandAugment (a per-image JPEG-path transform) is not run.
        values.update(data="synthetic", val_size=None, randaugment_magnitude=None)
    else:
        values.update(data_dir=data_dir)
    values.update(iters=str(iters), eval_every=str(iters // 2), device=device, progress=False, preset=preset, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        values["out"] = str(Path(tmp) / "run")
        result = train(TrainConfig.from_dict(values)).to_json()
        (half, end) = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    seconds = end["train_seconds"] - half["train_seconds"]
    result["iter_per_min"] = 60.0 * (end["iter"] - half["iter"]) / seconds
    result["img_per_sec"] = result["iter_per_min"] * values["batch_size"] / 60.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--out", help="append the rows as markdown to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    extra = dict(compile=args.compile)
    if args.channels_last is not None:
        extra["channels_last"] = args.channels_last
    rows = [f"Machine: {device_description(device)}; torch {torch.__version__}.",
            f"Command: `python benchmarks/preset_throughput.py {' '.join(args.presets)} --iters {args.iters} "
            f"--device {args.device}{' --compile' if args.compile else ''}`", "",
            "| preset | precision | iter/min | img/s | seed 001 RTX 3090 iter/min | ratio |",
            "|---|---|---:|---:|---:|---:|"]
    for preset in args.presets:
        result = measure(preset, args.iters, args.data_dir, str(device), extra)
        seed = SEED001_RTX3090.get(preset)
        ratio = f"{result['iter_per_min'] / seed:.2f}" if seed else "-"
        rows.append(f"| {preset} | {result['precision']} | {result['iter_per_min']:.0f} | "
                    f"{result['img_per_sec']:.0f} | {seed or '-'} | {ratio} |")
        print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
