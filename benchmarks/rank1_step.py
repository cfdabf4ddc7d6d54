"""The training step of --method rank1 against our deterministic and BatchEnsemble steps, in one process.

    python benchmarks/rank1_step.py                  # CPU, fp32, the digits job
    python benchmarks/rank1_step.py --resnet50       # also ResNet-50, 1000 classes, 64 px
    python benchmarks/rank1_step.py --device cuda

The issue asks for each method's training step against TorchUncertainty's implementation where it
has one. TorchUncertainty has no rank-1 BNN (see benchmarks/results/peers_rank1_cpu.md for what was
checked), so the step is compared, as benchmarks/sngp_het_step.py does, with our own steps of the
same model: deterministic (what the method costs) and BatchEnsemble with the same members (what the
Bayesian factors cost on top of BatchEnsemble's deterministic ones).

Each job builds the three models (same seed, same ResNet), then times the loop's training step
(method.train_batch, forward, cross-entropy + method.extra_loss, backward, SGD momentum 0.9 step) in
paired rounds whose order rotates, and repeats the whole comparison 3 times. Figures are medians;
each ratio is the median of per-round ratios. Writes benchmarks/results/peers_rank1_<device>.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import resnets  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))

import torch
import torch.nn.functional as F

from resnets import create_model  # noqa: E402
from resnets.devices import device_name  # noqa: E402
from resnets.methods import Method, build_method  # noqa: E402

# (label, model, image size, batch, classes, train size, steps per epoch, BatchEnsemble options, rank1 options)
DIGITS_JOB = ("digits resnet20", "resnet20", 32, 64, 10, 1257, 19, dict(ensemble_size=4, init="random_sign"),
              dict(ensemble_size=4, prior_stddev=0.1, random_sign_init=0.5, kl_annealing_epochs=25))
RESNET50_JOB = ("resnet50, 1000 classes", "resnet50", 64, 8, 1000, 1281167, 1251, dict(ensemble_size=4),
                dict(ensemble_size=4))


def _setup(model_name, size, classes, method: Method, device):
    torch.manual_seed(0)
    model = method.prepare_model(create_model(model_name, num_classes=classes, image_size=size)).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, optimizer


def _steps(model, optimizer, method, x, y, n, device, steps_per_epoch, train_size) -> float:
    """Seconds per step over n steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(n):
        xb, yb = method.train_batch(x, y)
        loss = F.cross_entropy(model(xb), yb)
        extra = method.extra_loss(model, i, steps_per_epoch, train_size)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / n


def compare(job, device, iters, rounds, repeats, warmup):
    label, model_name, size, batch, classes, train_size, per_epoch, be_options, options = job
    methods = {"det": Method(), "batchensemble": build_method("batchensemble", **be_options),
               "rank1": build_method("rank1", **options)}
    built = {k: _setup(model_name, size, classes, m, device) for k, m in methods.items()}
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)

    def run(k, n):
        return _steps(*built[k], methods[k], x, y, n, device, per_epoch, train_size)

    for k in built:
        run(k, warmup)
    names = list(built)
    times = {k: [] for k in built}
    vs_det, vs_be = [], []
    for _ in range(repeats):
        for r in range(rounds):
            order = names[r % 3:] + names[:r % 3]
            got = {k: run(k, iters) for k in order}
            for k, t in got.items():
                times[k].append(t)
            vs_det.append(got["det"] / got["rank1"])  # rank1 img/s over det img/s
            vs_be.append(got["batchensemble"] / got["rank1"])
    params = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, (m, _) in built.items()}
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return dict(label=label, options=options, batch=batch, size=size, params=params, ms=ms,
                vs_det=statistics.median(vs_det), vs_be=statistics.median(vs_be), ratios=(vs_det, vs_be))


def _torch_uncertainty() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"torch-uncertainty {version('torch-uncertainty')}"
    except PackageNotFoundError:
        return "torch-uncertainty not installed"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--resnet50", action="store_true", help="also time ResNet-50 (1000 classes, 64 px, batch 8)")
    parser.add_argument("--iters", type=int, default=None, help="steps per round (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per repeat (the order rotates)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    iters = args.iters or (3 if device.type == "cpu" else 20)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    started = dt.datetime.now()
    jobs = [DIGITS_JOB] + ([RESNET50_JOB] if args.resnet50 else [])
    results = []
    for job in jobs:
        print(f"== {job[0]}: rank1 vs deterministic and batchensemble", flush=True)
        results.append(compare(job, device, iters, args.rounds, args.repeats, warmup=1 if device.type == "cpu" else 5))
        r = results[-1]
        print(f"   ms/step {r['ms']}, rank1/det {r['vs_det']:.3f}, rank1/batchensemble {r['vs_be']:.3f}", flush=True)
    minutes = (dt.datetime.now() - started).total_seconds() / 60
    load_end = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    lines = [
        f"# Rank-1 BNN: training step against our deterministic and BatchEnsemble steps ({args.device}, fp32)",
        "",
        f"* Command: `{command}`",
        f"* Machine: {args.device}: {device_name(device)}; load average at the start: {load}, at the end: {load_end}",
        f"* Versions: torch {torch.__version__}, {_torch_uncertainty()}, Python {sys.version.split()[0]}",
        f"* Date: {started:%Y-%m-%d %H:%M}, {minutes:.1f} min in all",
        "* Peer: TorchUncertainty has no rank-1 BNN layer or method (see below), so there is no peer step to "
        "time; the ratios are against our deterministic step and our BatchEnsemble step with the same members.",
        f"* Protocol: 1 warm-up step each, then {args.repeats} repeats x {args.rounds} rounds of {iters} steps of "
        "each method, the order rotating each round; medians; ratio = median of per-round (rank1 img/s / "
        "other img/s). Step = train_batch, forward, cross-entropy (+ rank1's KL via extra_loss), backward, "
        "SGD step; channels_last, random inputs and labels.",
        "",
        "| Job | rank1 options | Params det / BE / rank1 | det ms | BE ms | rank1 ms | rank1/det | rank1/BE |",
        "| :-- | :-- | --: | --: | --: | --: | --: | --: |",
    ]
    for r in results:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        p = r["params"]
        lines.append(f"| {r['label']}, {r['size']} px, batch {r['batch']} | {opts} | "
                     f"{p['det'] / 1e6:.3f} M / {p['batchensemble'] / 1e6:.3f} M / {p['rank1'] / 1e6:.3f} M | "
                     f"{r['ms']['det']:.0f} | {r['ms']['batchensemble']:.0f} | {r['ms']['rank1']:.0f} | "
                     f"**{r['vs_det']:.3f}** | **{r['vs_be']:.3f}** |")
    lines += ["", "Per-round ratios (rank1/det; rank1/BE):", ""]
    for r in results:
        lines.append(f"* {r['label']}: " + ", ".join(f"{v:.2f}" for v in r["ratios"][0]) + "; "
                     + ", ".join(f"{v:.2f}" for v in r["ratios"][1]))
    out = Path(args.out) if args.out else HERE / "results" / f"peers_rank1_{args.device}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
