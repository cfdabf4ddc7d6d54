"""The training step of --method mimo against TorchUncertainty's MIMO ResNet, in one process.

    pip download --no-deps torch-uncertainty && unzip -q torch_uncertainty-*.whl -d /tmp/tu && pip install einops
    python benchmarks/mimo_step.py --torch-uncertainty /tmp/tu          # CPU, fp32, the digits job
    python benchmarks/mimo_step.py --torch-uncertainty /tmp/tu --device cuda

TorchUncertainty (torch-uncertainty 0.13.0) has a MIMO ResNet (models/classification/resnet/mimo.py:
a ResNet with in_channels·M inputs and classes·M outputs, rearranged with einops) and the MIMO batch
format (transforms/batch.py MIMOBatchFormat: batch repetition and input repetition rho, as
uncertainty-baselines). Its package __init__ imports Lightning; the two modules themselves need only
torch and einops, so they are loaded from the unpacked wheel without running the package __init__
files (`--torch-uncertainty DIR`). Both sides: the same ResNet-20 (CIFAR stem, no conv bias), M, rho
and batch repetitions; the step is the batch format, forward, cross-entropy, backward and an SGD
momentum 0.9 step, channels_last, random inputs. Paired rounds whose order alternates, the whole
comparison repeated 3 times; medians; each ratio is the median of per-round ratios (ours img/s over
theirs). Also our deterministic step on the same model, for what MIMO costs. Writes
benchmarks/results/peers_mimo_<device>.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import shlex
import statistics
import sys
import time
import types
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
from resnets.methods import MIMO, Method  # noqa: E402

# label, image size, batch (images from the loader), classes, M, input repetition, batch repetitions
DIGITS_JOB = ("digits resnet20", 32, 64, 10, 2, 0.6, 2)


def _load_without_package_init(root: Path, dotted: str):
    """Import module `dotted` from the unpacked wheel at `root`, its parent packages as bare
    namespaces (their __init__ files, which import Lightning, are not run)."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*parts[:i]))]
            sys.modules[name] = package
    spec = importlib.util.spec_from_file_location(dotted, root.joinpath(*parts[:-1], parts[-1] + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[dotted] = module
    spec.loader.exec_module(module)
    return module


class _TheirStep:
    """TorchUncertainty's MIMO: MIMOBatchFormat, then the (M·B) rows through mimo_resnet."""

    def __init__(self, root: Path, classes: int, members: int, rho: float, repeats: int, device):
        mimo = _load_without_package_init(root, "torch_uncertainty.models.classification.resnet.mimo")
        batch = _load_without_package_init(root, "torch_uncertainty.transforms.batch")
        torch.manual_seed(0)
        self.model = mimo.mimo_resnet(in_channels=3, num_classes=classes, arch=20, num_estimators=members,
                                      conv_bias=False, style="cifar").to(device)
        self.format = batch.MIMOBatchFormat(num_estimators=members, rho=rho, batch_repeat=repeats)

    def batch(self, x, y):
        return self.format((x, y))


class _OurStep:
    def __init__(self, method: Method, classes: int, size: int, device):
        torch.manual_seed(0)
        self.method = method
        self.model = method.prepare_model(create_model("resnet20", num_classes=classes, image_size=size)).to(device)

    def batch(self, x, y):
        return self.method.train_batch(x, y)


def _time(side, optimizer, x, y, n, device) -> float:
    """Seconds per step over n steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        xb, yb = side.batch(x, y)
        F.cross_entropy(side.model(xb), yb).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / n


def compare(job, root, device, iters, rounds, repeats, warmup):
    label, size, batch, classes, members, rho, reps = job
    sides = {"ours": _OurStep(MIMO(ensemble_size=members, input_repetition=rho, batch_repetitions=reps),
                              classes, size, device),
             "torch-uncertainty": _TheirStep(root, classes, members, rho, reps, device),
             "det": _OurStep(Method(), classes, size, device)}
    optimizers = {}
    for k, side in sides.items():
        side.model = side.model.to(memory_format=torch.channels_last).train()
        optimizers[k] = torch.optim.SGD(side.model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    for k in sides:
        _time(sides[k], optimizers[k], x, y, warmup, device)
    names = list(sides)
    times = {k: [] for k in sides}
    vs_peer, vs_det = [], []
    for _ in range(repeats):
        for r in range(rounds):
            order = names[r % 3:] + names[:r % 3]
            got = {k: _time(sides[k], optimizers[k], x, y, iters, device) for k in order}
            for k, t in got.items():
                times[k].append(t)
            vs_peer.append(got["torch-uncertainty"] / got["ours"])  # our img/s over theirs
            vs_det.append(got["det"] / got["ours"])
    params = {k: sum(p.numel() for p in s.model.parameters()) for k, s in sides.items()}
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return dict(label=label, size=size, batch=batch, members=members, rho=rho, reps=reps, params=params, ms=ms,
                vs_peer=statistics.median(vs_peer), vs_det=statistics.median(vs_det), ratios=(vs_peer, vs_det))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-uncertainty", required=True, type=Path,
                        help="folder of the unpacked torch-uncertainty wheel (holds torch_uncertainty/)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iters", type=int, default=None, help="steps per round (default: 10 on CPU (3 gave per-round ratios from 0.63 to 1.20), 20 on CUDA)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per repeat (the order rotates)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    root = args.torch_uncertainty.resolve()
    if not (root / "torch_uncertainty" / "models" / "classification" / "resnet" / "mimo.py").is_file():
        parser.error(f"--torch-uncertainty {root}: no torch_uncertainty/models/classification/resnet/mimo.py there "
                     "(unzip the torch-uncertainty wheel into it)")
    version = next((p.name.split("-")[1].removesuffix(".dist") for p in root.glob("torch_uncertainty-*.dist-info")), "?")
    device = torch.device(args.device)
    iters = args.iters or (10 if device.type == "cpu" else 20)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    started = dt.datetime.now()
    print(f"== {DIGITS_JOB[0]}: mimo vs torch-uncertainty {version} and our deterministic step", flush=True)
    r = compare(DIGITS_JOB, root, device, iters, args.rounds, args.repeats, warmup=1 if device.type == "cpu" else 5)
    print(f"   ms/step {r['ms']}, ours/torch-uncertainty {r['vs_peer']:.3f}, ours/det {r['vs_det']:.3f}", flush=True)
    minutes = (dt.datetime.now() - started).total_seconds() / 60
    load_end = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    p = r["params"]
    lines = [
        f"# MIMO: training step against TorchUncertainty's MIMO ResNet ({args.device}, fp32)",
        "",
        f"* Command: `{command}`",
        f"* Machine: {args.device}: {device_name(device)}; load average at the start: {load}, at the end: {load_end}",
        f"* Versions: torch {torch.__version__}, torch-uncertainty {version} (modules loaded from the unpacked "
        f"wheel, see the script's doc), Python {sys.version.split()[0]}",
        f"* Date: {started:%Y-%m-%d %H:%M}, {minutes:.1f} min in all",
        f"* Protocol: 1 warm-up step each, then {args.repeats} repeats x {args.rounds} rounds of {iters} steps of "
        "each, the order rotating each round; medians; ratio = median of per-round (ours img/s / other img/s). "
        "Step = batch format (ours: MIMO.train_batch; theirs: MIMOBatchFormat), forward, cross-entropy, "
        "backward, SGD step; channels_last, random inputs and labels.",
        "",
        "| Job | M, rho, batch repetitions | Params ours / theirs / det | ours ms | theirs ms | det ms "
        "| ours/TorchUncertainty | ours/det |",
        "| :-- | :-- | --: | --: | --: | --: | --: | --: |",
        f"| {r['label']}, {r['size']} px, batch {r['batch']} ({r['batch'] * r['reps']} rows) | "
        f"{r['members']}, {r['rho']}, {r['reps']} | {p['ours']:,} / {p['torch-uncertainty']:,} / {p['det']:,} | "
        f"{r['ms']['ours']:.0f} | {r['ms']['torch-uncertainty']:.0f} | {r['ms']['det']:.0f} | "
        f"**{r['vs_peer']:.3f}** | **{r['vs_det']:.3f}** |",
        "",
        "Per-round ratios (ours/TorchUncertainty; ours/det): "
        + ", ".join(f"{v:.2f}" for v in r["ratios"][0]) + "; " + ", ".join(f"{v:.2f}" for v in r["ratios"][1]),
    ]
    out = Path(args.out) if args.out else HERE / "results" / f"peers_mimo_{args.device}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
