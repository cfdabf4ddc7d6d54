"""Our models against the same architectures in timm, timed in one process.

    python benchmarks/compare_peers.py                                   # CPU, fp32
    python benchmarks/compare_peers.py --device cuda --precision bf16 --compile

Times a training step (forward, cross-entropy, backward, SGD step) of our resnet50 and
resnetrs50 against timm's at 224 px, batch 16, channels_last, in alternating rounds so drift
on a shared machine hits both; the ratio is ours/peer img/s, the median of the per-round
ratios (target: >= 1.0). Then our CIFAR resnet20 alone, training and inference at batch 256,
32 px. Writes a markdown file into benchmarks/results/ with the figures, the exact command,
the machine and the versions.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import resnets  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))

import torch

from resnets.bench import benchmark  # noqa: E402
from resnets.devices import device_name  # noqa: E402

PAIRS = ("resnet50", "resnetrs50")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peer", default="timm", choices=["timm", "torchvision"],
                        help="torchvision has resnet50 but no resnetrs50, which is then skipped")
    parser.add_argument("--batch-size", type=int, default=16, help="for the peer comparisons (default: 16)")
    parser.add_argument("--image-size", type=int, default=224, help="for the peer comparisons (default: 224)")
    parser.add_argument("--cifar-batch-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=None, help="timed steps per round (default: 2 on CPU, 20 on CUDA)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 10 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=None, help="markdown file (default: benchmarks/results/peers_<device>.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = args.device == "cpu"
    iters = args.iters or (2 if cpu else 20)
    warmup = args.warmup if args.warmup is not None else (1 if cpu else 10)
    common = dict(precision=args.precision, compile=args.compile, device=args.device, iters=iters,
                  warmup=warmup, rounds=args.rounds)
    started = dt.datetime.now()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"

    pairs = []
    for name in PAIRS:
        if args.peer == "torchvision" and name.startswith("resnetrs"):
            continue
        print(f"== {name} vs {args.peer}/{name}: training step", flush=True)
        pairs.append(benchmark(name, image_size=args.image_size, batch_size=args.batch_size, channels_last=True,
                               mode="train", compare=args.peer, verbose=True, **common))
        print(f"   ratio ours/{args.peer}: {pairs[-1]['ratio']['train']:.3f}", flush=True)
    print("== resnet20 (CIFAR), training and inference", flush=True)
    cifar = benchmark("resnet20", image_size=32, batch_size=args.cifar_batch_size, channels_last=False,
                      mode="both", num_classes=10, verbose=True, **common)
    minutes = (dt.datetime.now() - started).total_seconds() / 60

    out = Path(args.out) if args.out else HERE / "results" / f"peers_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix()), *(argv or sys.argv[1:])])
    out.write_text(render(args, pairs, cifar, command, started, minutes, iters, warmup, load))
    print(f"wrote {out}")
    return 0


def _peer_version(pairs: list[dict]) -> str:
    return next((f"{p['compare']['library']} {p['compare']['version']}" for p in pairs), "")


def render(args, pairs, cifar, command, started, minutes, iters, warmup, load) -> str:
    machine = device_name(torch.device(args.device))
    lines = [
        f"# Our ResNets against {args.peer}: training throughput ({args.device}, {args.precision})",
        "",
        f"* Command: `{command}`",
        f"* Machine: {args.device}: {machine}",
        f"* Versions: torch {torch.__version__}, {_peer_version(pairs)}, Python {sys.version.split()[0]}",
        f"* Date: {started:%Y-%m-%d %H:%M}, {minutes:.1f} min in all",
        (f"* Protocol: {warmup} untimed warm-up step(s) per model, then {args.rounds} rounds of {iters} timed "
         f"step(s), ours and {args.peer}'s alternating round by round in one process; figures are medians over "
         "rounds, the ratio is the median of the per-round ratios (so drift common to both cancels)."),
        (f"* Settings: {args.precision}, channels_last, {'torch.compile' if args.compile else 'eager'}; "
         "training step = forward, cross-entropy on random labels, backward, SGD (momentum 0.9) step."),
    ]
    if args.device == "cpu":
        lines.append(f"* Load average when started: {load}. The CPU may be shared with other jobs, so absolute "
                     "figures move from run to run; the interleaved ratio is the figure to read. Peak memory "
                     "is the process's peak RSS, which covers both models, so it is left out.")
    lines += ["", f"## Training step, {args.image_size} px, batch {args.batch_size}", "",
              (f"| Model | Params (ours / {args.peer}) | GFLOPs/img | ours img/s | {args.peer} img/s | "
               f"ours ms/step | {args.peer} ms/step | ratio ours/{args.peer} |"),
              "| :-- | --: | --: | --: | --: | --: | --: | --: |"]
    for p in pairs:
        ours, peer = p["train"], p["compare"]["train"]
        lines.append(
            f"| {p['model']} | {p['params'] / 1e6:.2f} M / {p['compare']['params'] / 1e6:.2f} M | {p['gflops']:.2f} | "
            f"{ours['img_per_sec']:.2f} | {peer['img_per_sec']:.2f} | {ours['ms_per_step']:.0f} | "
            f"{peer['ms_per_step']:.0f} | **{p['ratio']['train']:.3f}** |")
    lines += ["", "Per-round ms/step (ours / peer):", ""]
    for p in pairs:
        rounds = ", ".join(f"{o:.0f} / {q:.0f}" for o, q in zip(p["train"]["round_ms"],
                                                                   p["compare"]["train"]["round_ms"]))
        lines.append(f"* {p['model']}: {rounds}")
    lines += ["", f"## CIFAR resnet20, 32 px, batch {cifar['batch_size']} (10 classes, no peer in timm)", "",
              "| Mode | img/s | ms/step | iter/min |", "| :-- | --: | --: | --: |"]
    for mode in ("train", "infer"):
        s = cifar[mode]
        lines.append(f"| {mode} | {s['img_per_sec']:.0f} | {s['ms_per_step']:.1f} | {s['iter_per_min']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
