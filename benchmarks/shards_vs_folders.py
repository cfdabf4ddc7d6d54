"""Preparing shards does not change what is learned: short runs from shards against the JPEG folders.

scikit-learn's digits (the same train / val / test split as ``--data digits``) are upscaled to
``--side`` px (bicubic) and written as JPEG folders (quality 95) in torchvision's ImageFolder layout;
``resnets prepare`` writes them into shards at ``--max-side`` (re-encoded at quality 90, so the
shards hold other pixels than the folders). The same recipe (the digits preset's, from
``--data folder``: ResNet-20, 32 px, batch 64, 300 iterations, cosine, pad-free crop augmentation
of the encoded path: RandomResizedCrop without flips) then trains from each, for each seed; the
table gives tst/acc per seed and the difference's mean against its spread across seeds.

    python benchmarks/shards_vs_folders.py --seeds 0 1 2 --out benchmarks/results/shards_vs_folders_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from resnets.data import load_dataset, prepare_shards  # noqa: E402
from resnets.devices import cpu_cores, cpu_name  # noqa: E402


def write_digit_folders(root: Path, side: int) -> dict[str, int]:
    from PIL import Image

    bundle = load_dataset("digits")
    counts = {}
    for split in ("train", "val", "test"):
        data = getattr(bundle, split)
        for k, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            array = image.permute(1, 2, 0).numpy()
            Image.fromarray(array).resize((side, side), Image.Resampling.BICUBIC).save(
                folder / f"{k:04d}.jpg", "JPEG", quality=95)
        counts[split] = len(data)
    return counts


def train_run(data_dir: Path, out: Path, seed: int, iters: int) -> dict:
    command = [sys.executable, "-m", "resnets", "train", "--preset", "digits-resnet20", "--data", "folder",
               "--data-dir", str(data_dir), "--out", str(out), "--seed", str(seed), "--iters", str(iters),
               "--image-size", "32", "--augment", "crop", "--num-workers", "1", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--side", type=int, default=96, help="side of the JPEGs written (default 96)")
    parser.add_argument("--max-side", type=int, default=64, help="--max-side of resnets prepare (default 64)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    lines = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folders, shards = Path(tmp) / "folders", Path(tmp) / "shards"
        counts = write_digit_folders(folders, args.side)
        prepare_shards("folder", folders, shards, max_side=args.max_side, quality=90, workers=os.cpu_count(),
                       log=lambda *_: None)
        log(f"digits as JPEG folders at {args.side} px: {counts}; shards at longest side {args.max_side} px, quality 90")
        for seed in args.seeds:
            start = time.perf_counter()
            from_folders = train_run(folders, Path(tmp) / f"folders-{seed}", seed, args.iters)
            from_shards = train_run(shards, Path(tmp) / f"shards-{seed}", seed, args.iters)
            rows.append((seed, from_folders["tst/acc"], from_shards["tst/acc"], from_folders["tst/nll"],
                         from_shards["tst/nll"]))
            log(f"seed {seed}: tst/acc folders {from_folders['tst/acc']:.4f} shards {from_shards['tst/acc']:.4f}; "
                f"tst/nll {from_folders['tst/nll']:.4f} / {from_shards['tst/nll']:.4f} ({time.perf_counter() - start:.0f} s)")
    load_after = os.getloadavg()
    differences = [s - f for _, f, s, _, _ in rows]
    folder_accs, shard_accs = [r[1] for r in rows], [r[2] for r in rows]
    spread = statistics.stdev(folder_accs + shard_accs) if len(rows) > 1 else float("nan")
    log(f"tst/acc mean: folders {statistics.mean(folder_accs):.4f}, shards {statistics.mean(shard_accs):.4f}; "
        f"difference (shards - folders) {statistics.mean(differences):+.4f}, per seed "
        f"{', '.join(f'{d:+.4f}' for d in differences)}; std across all runs {spread:.4f}; "
        f"load average {load_before[0]:.2f} → {load_after[0]:.2f}")
    if args.out:
        command = "python benchmarks/shards_vs_folders.py " + " ".join(sys.argv[1:])
        out = [
            "# Shards against folders: the same tst/acc from the same recipe (CPU)",
            "",
            f"Machine: {cpu_name()}, {cpu_cores()} cores available, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}. Load average (1 min) "
            f"{load_before[0]:.2f} → {load_after[0]:.2f} (the machine is shared).",
            "",
            f"Command: `{command}`",
            "",
            f"scikit-learn's digits as JPEG folders at {args.side} px (quality 95); `resnets prepare --max-side "
            f"{args.max_side}` re-encodes them at quality 90. Recipe: `--preset digits-resnet20 --data folder "
            f"--image-size 32 --augment crop --iters {args.iters}`, one run per seed and source; tst/acc on the "
            f"{counts['test']} test digits.",
            "",
            "| seed | tst/acc folders | tst/acc shards | shards - folders | tst/nll folders | tst/nll shards |",
            "|---|---|---|---|---|---|",
        ]
        for (seed, fa, sa, fn, sn), d in zip(rows, differences):
            out.append(f"| {seed} | {fa:.4f} | {sa:.4f} | {d:+.4f} | {fn:.4f} | {sn:.4f} |")
        out += ["", "Log:", "", "```", *lines, "```", ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
