"""The training step of --method sngp and --method heteroscedastic, timed in one process.

    python benchmarks/sngp_het_step.py                  # CPU, fp32
    python benchmarks/sngp_het_step.py --device cuda

The issue asks for each method's training step against TorchUncertainty's implementation where
it has one. TorchUncertainty (checked: torch-uncertainty 0.13.0, the version this script finds)
has neither SNGP nor a heteroscedastic head: its `methods` are BatchEnsemble, deep ensembles,
EMA, MC dropout, SWA/SWAG and its layers have no spectral-normalized conv, random-feature GP or
MC-softmax head (post_processing.LaplaceApprox is the post-hoc `laplace` package). So the step
is compared with the one peer that exists for it, our own deterministic step of the same model:
the ratio method/deterministic img/s is what each method costs.

Each job builds the deterministic model and the method's (same seed, same ResNet), then times
the loop's training step (method.train_batch, forward, cross-entropy, backward, SGD momentum 0.9
step) in paired rounds whose order alternates (det first, then method first), and repeats the
whole comparison 3 times. Figures are medians; the ratio is the median of per-round ratios.
Writes benchmarks/results/peers_sngp_het_<device>.md with the command, machine and load.
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

# (label, model, image size, batch, classes, method, its options): the digits presets' options
# on their ResNet-20 job, and UB's ImageNet options on ResNet-50 at a CPU-sized 64 px.
JOBS = [
    ("digits resnet20", "resnet20", 32, 64, 10, "sngp", dict(gp_hidden_dim=128)),
    ("digits resnet20", "resnet20", 32, 64, 10, "heteroscedastic", dict(num_factors=3, mc_samples=1000)),
    ("resnet50, 1000 classes", "resnet50", 64, 8, 1000, "sngp", dict()),
    ("resnet50, 1000 classes", "resnet50", 64, 8, 1000, "heteroscedastic", dict()),
]


def _setup(model_name, size, classes, method: Method, device):
    torch.manual_seed(0)
    model = method.prepare_model(create_model(model_name, num_classes=classes, image_size=size)).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, optimizer


def _steps(model, optimizer, method, x, y, n, device) -> float:
    """Seconds per step over n steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        xb, yb = method.train_batch(x, y)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / n


def compare(job, device, iters, rounds, repeats, warmup):
    label, model_name, size, batch, classes, name, options = job
    methods = {"det": Method(), name: build_method(name, **options)}
    built = {k: _setup(model_name, size, classes, m, device) for k, m in methods.items()}
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    for k, (model, opt) in built.items():
        _steps(model, opt, methods[k], x, y, warmup, device)
    times = {k: [] for k in built}
    ratios = []
    for _ in range(repeats):
        for r in range(rounds):
            order = list(built) if r % 2 == 0 else list(built)[::-1]
            got = {k: _steps(*built[k], methods[k], x, y, iters, device) for k in order}
            for k, t in got.items():
                times[k].append(t)
            ratios.append(got["det"] / got[name])  # method img/s over det img/s
    params = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, (m, _) in built.items()}
    return dict(label=label, method=name, options=options, batch=batch, size=size, params=params,
                det_ms=1e3 * statistics.median(times["det"]), method_ms=1e3 * statistics.median(times[name]),
                det_ips=batch / statistics.median(times["det"]), method_ips=batch / statistics.median(times[name]),
                ratio=statistics.median(ratios), ratios=ratios)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iters", type=int, default=None, help="steps per round (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--rounds", type=int, default=4, help="paired rounds per repeat (order alternates)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    iters = args.iters or (3 if device.type == "cpu" else 20)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    started = dt.datetime.now()
    try:
        import torch_uncertainty
        tu = f"torch-uncertainty {getattr(torch_uncertainty, '__version__', '?')}"
    except Exception as error:  # the package imports lightning at the top level; the version is what counts
        from importlib.metadata import PackageNotFoundError, version
        try:
            tu = f"torch-uncertainty {version('torch-uncertainty')} (not importable here: {type(error).__name__})"
        except PackageNotFoundError:
            tu = "torch-uncertainty not installed"
    results = []
    for job in JOBS:
        print(f"== {job[0]}: {job[5]} vs deterministic", flush=True)
        results.append(compare(job, device, iters, args.rounds, args.repeats, warmup=1 if device.type == "cpu" else 5))
        r = results[-1]
        print(f"   det {r['det_ms']:.0f} ms/step, {r['method']} {r['method_ms']:.0f} ms/step, "
              f"ratio {r['ratio']:.3f}", flush=True)
    minutes = (dt.datetime.now() - started).total_seconds() / 60
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    lines = [
        f"# SNGP and heteroscedastic: training step against the deterministic one ({args.device}, fp32)",
        "",
        f"* Command: `{command}`",
        f"* Machine: {args.device}: {device_name(device)}; load average when started: {load}",
        f"* Versions: torch {torch.__version__}, {tu}, Python {sys.version.split()[0]}",
        f"* Date: {started:%Y-%m-%d %H:%M}, {minutes:.1f} min in all",
        "* Peer: TorchUncertainty has neither method (its methods: BatchEnsemble, deep ensembles, EMA, MC dropout, "
        "SWA, SWAG; no spectral-normalized conv, GP output layer or MC-softmax head), so there is no peer step "
        "to time; the ratio is against our deterministic step of the same model, i.e. each method's cost.",
        f"* Protocol: 1 warm-up step each, then {args.repeats} repeats x {args.rounds} paired rounds of {iters} "
        "steps, the order alternating each round; medians; ratio = median of per-round "
        "(method img/s / deterministic img/s). Step = train_batch, forward, cross-entropy, backward, SGD step; "
        "channels_last, random inputs and labels.",
        "",
        "| Job | Method (options) | Params det / method | det ms/step | method ms/step | det img/s | method img/s "
        "| ratio method/det |",
        "| :-- | :-- | --: | --: | --: | --: | --: | --: |",
    ]
    for r in results:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "UB's defaults"
        lines.append(f"| {r['label']}, {r['size']} px, batch {r['batch']} | {r['method']} ({opts}) | "
                     f"{r['params']['det'] / 1e6:.3f} M / {r['params'][r['method']] / 1e6:.3f} M | {r['det_ms']:.0f} | "
                     f"{r['method_ms']:.0f} | {r['det_ips']:.1f} | {r['method_ips']:.1f} | **{r['ratio']:.3f}** |")
    lines += ["", "Per-round ratios:", ""]
    for r in results:
        lines.append(f"* {r['label']} {r['method']}: " + ", ".join(f"{v:.2f}" for v in r["ratios"]))
    out = Path(args.out) if args.out else HERE / "results" / f"peers_sngp_het_{args.device}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
