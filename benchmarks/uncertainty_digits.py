"""Deterministic vs BatchEnsemble vs deep ensemble vs MC dropout vs SWAG on the bundled digits.

Every method trains and evaluates through the CLI (`resnets train`, `resnets eval`), from the
digits preset (ResNet-20, 32 px); the table (test NLL, accuracy, ECE, Brier, parameters,
training time) is written as markdown.

    python benchmarks/uncertainty_digits.py --out benchmarks/results/uncertainty_digits_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def resnets(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    subprocess.run([sys.executable, "-m", "resnets", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def evaluate(run_dirs: list[Path], out: Path) -> dict:
    resnets("eval", *map(str, run_dirs), "--split", "test", "--out", str(out))
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--extra", default="", help="extra flags for every `resnets train`, e.g. '--iters 200'")
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()
    extra = args.extra.split()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def train(name: str, *flags: str) -> tuple[Path, dict]:
            run_dir = root / name
            resnets("train", "--out", str(run_dir), "--no-progress", *flags, *extra)
            return run_dir, json.loads((run_dir / "results.json").read_text())

        def row(label: str, run_dirs: list[Path], results: list[dict], params: int) -> None:
            report = evaluate(run_dirs, root / f"{label}.json")
            metrics = report["metrics"]
            hours = sum(r["train_hours"] for r in results)
            rows.append((label, metrics, params, hours * 3600, report))
            print(label, {k: metrics.get(k) for k in ("nll", "acc", "ece")}, flush=True)

        det_dir, det = train("deterministic")
        row("Deterministic", [det_dir], [det], det["params"])
        be_dir, be = train("batchensemble", "--method", "batchensemble", "--ensemble-size", str(args.members))
        row(f"BatchEnsemble ({args.members})", [be_dir], [be], be["params"])
        members = [train(f"member{k}", "--seed", str(42 + k)) for k in range(args.members)]
        row(f"Deep ensemble ({args.members})", [d for d, _ in members], [r for _, r in members],
            sum(r["params"] for _, r in members))
        mc_dir, mc = train("mcdropout", "--method", "mcdropout", "--dropout", "0.2", "--mc-samples", "10")
        row("MC dropout (p=0.2, 10 samples)", [mc_dir], [mc], mc["params"])
        swag_dir, swag = train("swag", "--method", "swag", "--swa-start", "0.5", "--swa-every", "10",
                               "--swag-rank", "10", "--swag-samples", "10")
        row("SWAG (rank 10, 10 samples)", [swag_dir], [swag], swag["params"])

    lines = [
        "# Uncertainty methods on scikit-learn's digits (ResNet-20, 32 px, CPU)",
        "",
        f"Command: `python benchmarks/uncertainty_digits.py --members {args.members}"
        + (f" --extra '{args.extra}'" if args.extra else "") + "`",
        "Each method starts from the `digits-resnet20` preset; test split of 360 images; metrics from "
        "`resnets eval` (ECE with 15 bins).",
        "",
        "| Method | Test NLL | Test acc | Test ECE | Brier | member NLL (mean) | member acc (mean) | # Params | "
        "Train time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, m, params, seconds, _ in rows:
        def f(key):
            return "-" if m.get(key) is None else f"{m[key]:.4f}"
        lines.append(f"| {label} | {f('nll')} | {f('acc')} | {f('ece')} | {f('brier')} | {f('member/nll')} | "
                     f"{f('member/acc')} | {params:,} | {seconds:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
