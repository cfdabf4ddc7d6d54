"""The default job (`resnets train` with no arguments) for several seeds: accuracy, NLL, wall time.

Each seed runs the full command `resnets train --seed S` under `/usr/bin/time` (wall seconds
of the whole process: start-up, data, training, evaluation, writing the run) in a fresh
temporary folder, one at a time, and the load average is read before and after each run.

    python benchmarks/digits_default.py --seeds 1,2,3 --out benchmarks/results/digits_default_cpu.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


def command_prefix() -> list[str]:
    script = Path(sys.executable).parent / "resnets"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "resnets"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def run_seed(seed: int, time_bin: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        timing = Path(tmp) / "time.txt"
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        before = loadavg()
        done = subprocess.run([time_bin, "-f", "%e %U %S", "-o", str(timing), *command_prefix(), "train",
                               "--seed", str(seed)], cwd=tmp, env=env, capture_output=True, text=True)
        after = loadavg()
        if done.returncode:
            raise SystemExit(f"seed {seed} failed:\n{done.stderr[-3000:]}")
        wall, user, system = map(float, timing.read_text().split()[-3:])
        (results_file,) = Path(tmp).rglob("results.json")
        results = json.loads(results_file.read_text())
    row = dict(seed=seed, acc=results["tst/acc"], nll=results["tst/nll"], ece=results["tst/ece"], wall=wall,
               cpu=user + system, train_s=results["train_hours"] * 3600.0, load_before=before, load_after=after)
    print(f"seed {seed}: tst/acc {row['acc']:.4f} tst/nll {row['nll']:.4f} wall {wall:.1f} s "
          f"(load {before[0]:.2f} -> {after[0]:.2f})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", help="write the markdown report here")
    args = parser.parse_args()
    time_bin = shutil.which("time", path="/usr/bin") or shutil.which("time")
    if time_bin is None:
        raise SystemExit("needs /usr/bin/time (GNU time)")
    import torch

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    rows = [run_seed(seed, time_bin) for seed in seeds]
    acc = [r["acc"] for r in rows]
    nll = [r["nll"] for r in rows]
    wall = [r["wall"] for r in rows]
    errors = sum(round((1 - a) * 360) for a in acc)
    lines = [
        "# The default job: `resnets train` with no arguments (ResNet-20 on scikit-learn's digits, 32 px, CPU)",
        "",
        f"Command, per seed, each in a fresh folder: `/usr/bin/time -f %e resnets train --seed S` "
        f"(by `python benchmarks/digits_default.py --seeds {args.seeds}`); the preset is `digits-resnet20` "
        "(`DIGITS` in src/resnets/presets.py). Wall time is the whole process: start-up, data, "
        "training, the final evaluation and writing the run directory.",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; {started}.",
        "",
        "| Seed | tst/acc | tst/nll | tst/ece | Wall (s) | CPU (s) | load before (1/5/15 min) | load after (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lb = " / ".join(f"{x:.2f}" for x in r["load_before"])
        lines.append(f"| {r['seed']} | {r['acc']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | {r['wall']:.1f} | "
                     f"{r['cpu']:.1f} | {lb} | {r['load_after'][0]:.2f} |")
    lines.append(f"| **mean** | **{statistics.mean(acc):.4f}** | **{statistics.mean(nll):.4f}** | "
                 f"{statistics.mean(r['ece'] for r in rows):.4f} | **{statistics.mean(wall):.1f}** | "
                 f"{statistics.mean(r['cpu'] for r in rows):.1f} | | |")
    lines += ["", f"Test split: 360 images, so one image is 0.28 points; {errors} errors in {360 * len(rows)} "
              "test predictions over these seeds."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
