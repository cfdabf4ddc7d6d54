"""Transfer on the bundled digits: pretrain ResNet-20 on digits 0-4, fine-tune on 5-9 from 10% of their images.

For each seed, through the CLI as a user would run it:

1. `resnets train --data npy` on digits 0-4 (all their training images) -> RUN/model.safetensors;
2. on digits 5-9 (relabelled 0-4), with a stratified 10% of their training images (drawn with the
   seed), `resnets train --pretrained RUN/model.safetensors` and, for comparison, the same command
   without --pretrained (from scratch): same iterations, batch, LR schedule and augmentation;
   with SGD and with AdamW (`VARIANTS`: two LRs for SGD, and AdamW fine-tuning also at a lower
   LR, with and without a 10x head LR, compared with AdamW from scratch at its own LR).

Test accuracy is on all digits 5-9 of the test split. The 5-class head of the pretrained run fits
the 5 new classes, so it loads too and is fine-tuned with the rest. The data are .npy files
(the npy layout) written to a temporary folder: scikit-learn's digits, 8x8 grey scaled to 0-255,
upsampled to 16x16 RGB. The train/test split is fixed (stratified, 20% test, random_state 0).

    python benchmarks/finetune_digits.py --seeds 1,2,3 --out benchmarks/results/finetune_digits_cpu.md
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resnets import runs  # noqa: E402
from resnets.cli import main  # noqa: E402
from resnets.devices import cpu_name  # noqa: E402

IMAGE_SIZE = 16
COMMON = ["--model", "resnet20", "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--precision", "fp32",
          "--no-progress", "--augment", "crop", "--eval-every", "100%", "--eval-batch-size", "512"]
PRETRAIN = ["--iters", "300", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "5e-4"]
FINETUNE_ITERS = "150"
# Fine-tuning recipes. Each runs from the pretrained weights and is compared with the from-scratch
# runs of `baseline` (the same iterations and batch; scratch runs only for recipes that list it).
VARIANTS = [
    # key (run folder prefix), label, flags, starts, baseline
    ("sgd", "SGD, lr 0.02", ["--optimizer", "sgd", "--lr", "0.02", "--weight-decay", "5e-4"],
     ("scratch", "pretrained"), "sgd"),
    ("sgd_lr0.1", "SGD, lr 0.1 (the default job's)", ["--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "5e-4"],
     ("scratch", "pretrained"), "sgd_lr0.1"),
    ("adamw", "AdamW, lr 0.001", ["--optimizer", "adamw", "--lr", "0.001", "--weight-decay", "0.05"],
     ("scratch", "pretrained"), "adamw"),
    ("adamw_lr0.0001", "AdamW, lr 0.0001", ["--optimizer", "adamw", "--lr", "0.0001", "--weight-decay", "0.05"],
     ("pretrained",), "adamw"),
    ("adamw_lr0.0001_head10", "AdamW, lr 0.0001, --head-lr-mult 10",
     ["--optimizer", "adamw", "--lr", "0.0001", "--weight-decay", "0.05", "--head-lr-mult", "10"],
     ("pretrained",), "adamw"),
    # The same two recipes at a third of the iterations: how much of the gap is convergence speed.
    ("sgd_lr0.1_50it", "SGD, lr 0.1, 50 iterations",
     ["--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "5e-4", "--iters", "50"],
     ("scratch", "pretrained"), "sgd_lr0.1_50it"),
    ("adamw_50it", "AdamW, lr 0.001, 50 iterations",
     ["--optimizer", "adamw", "--lr", "0.001", "--weight-decay", "0.05", "--iters", "50"],
     ("scratch", "pretrained"), "adamw_50it"),
]
# Folders of runs made before the variants had their own prefixes (reused as they are).
_FOLDERS = {("adamw_lr0.0001", "pretrained"): "adamw_pretrained_lr0.0001"}
FRACTION = 0.10


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.float32))[:, None]
    big = torch.nn.functional.interpolate(grey, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
    labels = digits.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    return images[train], labels[train], images[test], labels[test]


def _write(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", train), ("test", test)):
        np.save(folder / f"{split}_images.npy", np.ascontiguousarray(x))
        np.save(folder / f"{split}_labels.npy", y)
    return folder


def _train(argv: list[str]) -> tuple[dict, float, tuple[float, float] | None]:
    """Metrics, training seconds (results.json's train_hours) and the 1-minute load before and after
    (None for a run finished by an earlier invocation with the same --work-dir, which is not trained again)."""
    out = Path(argv[argv.index("--out") + 1])
    reused = (out / runs.RESULTS_FILE).is_file()
    before = os.getloadavg()[0]
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        status = main(["train", *argv])
    if status:
        raise SystemExit(f"resnets train {shlex.join(argv)} failed ({status}):\n{err.getvalue()[-3000:]}")
    results = runs.read_results(out)
    return results.metrics, results.train_hours * 3600.0, None if reused else (before, os.getloadavg()[0])


def _load_text(load: tuple[float, float] | None) -> str:
    return "reused" if load is None else f"{load[0]:.2f} -> {load[1]:.2f}"


def run(seeds: list[int], work: Path) -> list[dict]:
    from sklearn.model_selection import train_test_split

    x_train, y_train, x_test, y_test = _digits()
    old, new = y_train < 5, y_train >= 5
    source = _write(work / "data_0-4", (x_train[old], y_train[old]), (x_test[y_test < 5], y_test[y_test < 5]))
    rows = []
    for seed in seeds:
        pretrained = work / f"pretrain_s{seed}"
        metrics, wall, load = _train(["--data", "npy", "--data-dir", str(source), "--val-size", "0", *COMMON,
                                      *PRETRAIN, "--seed", str(seed), "--out", str(pretrained)])
        print(f"seed {seed}: pretrained on 0-4, tst/acc {metrics['tst/acc']:.4f} ({wall:.0f} s training, load "
              f"{_load_text(load)})", flush=True)
        few = np.flatnonzero(new)
        few, _ = train_test_split(few, train_size=FRACTION, stratify=y_train[few], random_state=seed)
        target = _write(work / f"data_5-9_s{seed}", (x_train[few], y_train[few] - 5),
                        (x_test[y_test >= 5], y_test[y_test >= 5] - 5))
        for key, _, recipe, starts, _ in VARIANTS:
            for start in starts:
                extra = ["--pretrained", str(pretrained / runs.FINAL_WEIGHTS)] if start == "pretrained" else []
                out = work / f"{_FOLDERS.get((key, start), f'{key}_{start}')}_s{seed}"
                metrics, wall, load = _train(["--data", "npy", "--data-dir", str(target), "--val-size", "0",
                                              *COMMON, "--iters", FINETUNE_ITERS, "--batch-size", "32", *recipe,
                                              *extra, "--seed", str(seed), "--out", str(out)])
                rows.append(dict(seed=seed, key=key, start=start, acc=metrics["tst/acc"],
                                 nll=metrics["tst/nll"], wall=wall, load=load, train_images=len(few)))
                print(f"seed {seed} {key} {start}: tst/acc {metrics['tst/acc']:.4f} tst/nll "
                      f"{metrics['tst/nll']:.4f} ({wall:.0f} s training, load {_load_text(load)})", flush=True)
    return rows


def report(rows: list[dict], seeds: list[int], command: str, started: str, load_start, load_end) -> str:
    lines = [
        "# Fine-tuning on digits: pretrained on 0-4, then 5-9 from 10% of their training images",
        "",
        f"Command: `{command}` (benchmarks/finetune_digits.py: each run is `resnets train --data npy ...` "
        "through the CLI's `main`, in one process).",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; {started}. Load average "
        f"(1/5/15 min) {' / '.join(f'{v:.2f}' for v in load_start)} at the start, "
        f"{' / '.join(f'{v:.2f}' for v in load_end)} at the end.",
        "",
        f"Recipe: ResNet-20 at {IMAGE_SIZE} px, pad-4 crops, fp32. Pretraining on digits 0-4 "
        f"({' '.join(PRETRAIN)}, cosine, 10% warmup). Fine-tuning and from scratch on digits 5-9: "
        f"{rows[0]['train_images']} training images (10%, stratified, drawn with the seed), "
        f"--iters {FINETUNE_ITERS} (unless the flags say otherwise) --batch-size 32 for every recipe below (its "
        "flags in the table), the same for both starts. Test: all "
        "digits 5-9 of the test split (180 images: one image is 0.56 points).",
        "",
        "| Recipe | Flags | Start | tst/acc (mean of seeds) | per seed | tst/nll (mean) | over scratch (points) |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    scratch = {}
    for key, label, recipe, starts, baseline in VARIANTS:
        for start in starts:
            chosen = [r for r in rows if r["key"] == key and r["start"] == start]
            mean = statistics.mean(r["acc"] for r in chosen)
            if start == "scratch":
                scratch[key] = mean
                gain = ""
            else:
                gain = f"**{100 * (mean - scratch[baseline]):+.1f}**" + ("" if baseline == key else f" (vs {baseline})")
            lines.append(f"| {label} | `{' '.join(recipe)}` | {start} | {mean:.4f} | "
                         f"{', '.join(format(r['acc'], '.4f') for r in chosen)} | "
                         f"{statistics.mean(r['nll'] for r in chosen):.4f} | {gain} |")
    lines += ["", "Goal: the pretrained start at least 5 points above scratch (mean of 3 seeds).", "",
              "Per run: training seconds (results.json's train_hours) and the 1-minute load average before -> "
              "after the run (\"reused\": finished by an earlier invocation with the same --work-dir).", "",
              "| Seed | Recipe | Start | tst/acc | Training (s) | Load |", "|---:|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['key']} | {r['start']} | {r['acc']:.4f} | {r['wall']:.0f} | "
                     f"{_load_text(r['load'])} |")
    return "\n".join(lines) + "\n"


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--work-dir", default=None, help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(seeds, Path(args.work_dir or tmp))
    text = report(rows, seeds, "python " + shlex.join(["benchmarks/finetune_digits.py", *sys.argv[1:]]), started,
                  load_start, os.getloadavg())
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main_cli()
