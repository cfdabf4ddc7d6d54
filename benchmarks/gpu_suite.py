"""Every GPU check and benchmark of the project in one command, in parts (issue 13).

    python benchmarks/gpu_suite.py                                  # all parts, on the GPU
    python benchmarks/gpu_suite.py --parts resnet50_peers,ddp       # some of them
    python benchmarks/gpu_suite.py --device cpu --quick --out-dir /tmp/smoke   # CPU smoke test
    python benchmarks/gpu_suite.py --list

Each part runs as its own subprocess (its own process group) with its own timeout, so one
that hangs or crashes costs only its own budget; the parts run one after another. Each writes
`<out-dir>/<part>_gpu.md` (`_gpu_quick` with --quick on a GPU, `_cpu_quick` on the CPU),
rewritten after every measurement so that a part stopped by its timeout keeps what it had
measured, and headed by the device (torch.cuda.get_device_name), the versions and the exact
commands. `<out-dir>/suite_<suffix>.md` lists the parts with their status and times.

Parts (run in this order; at most 52 min by their timeouts, an estimated 25-40 min on one H100,
not yet measured on one):

* cuda_tests        pytest tests/test_cuda.py (bf16/fp16 training, fp16 skipped steps, bit-exact
                    resume, SyncBatchNorm under NCCL, --compile vs eager); pass/fail per test.
* cifar_presets     seed 001's CIFAR-10 rows through `resnets train --preset` (synthetic 32 px
                    data, batch 256; iter/min measured as benchmarks/preset_throughput.py does)
                    against the seed's RTX 3090 figures, goal >= 4x; eager, then torch.compile.
* resnet50_peers    ResNet-50, 224 px, bf16, channels_last, training img/s against timm's in the
                    same process (`resnets bench --compare timm`), eager and compiled; goals
                    >= 4,000 img/s and ratio >= 1.0.
* jpeg_pipeline     img/s of `resnets train`'s JPEG-folder input (DataLoader workers) against
                    nvjpeg decoding + random-resized crop + flip on the GPU
                    (benchmarks/gpu_decode.py), both against the ResNet-50 step's img/s.
* resnetrs_latency  `resnets bench --model resnetrsN --image-size S --batch-size auto` (seed
                    003's protocol) for every seed-003 row, fp32 like the seed's V100 column.
* ddp               `torchrun --standalone --nproc-per-node 1 -m resnets train --sync-bn` on
                    the GPU, and the same trainer forced into an NCCL process group.

With --device cpu --quick the parts shrink to tiny sizes and a few iterations, and what needs
CUDA is skipped with a line saying so: a smoke test of the suite itself (tests/test_gpu_suite.py),
whose figures are CPU smoke figures, not GPU figures. Subprocesses are started as
`PYTHONPATH=src python -m resnets ...`, so a checkout works without `pip install`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
PY = sys.executable
IN_PROCESS_GROUP_FLAG = "--_train-in-process-group"

# name: (title, timeout on a GPU in seconds, timeout with --quick)
PARTS: dict[str, tuple[str, int, int]] = {
    "cuda_tests": ("CUDA correctness tests (tests/test_cuda.py)", 600, 300),
    "cifar_presets": ("Seed 001 CIFAR-10 presets: iter/min through `resnets train`", 600, 300),
    "resnet50_peers": ("ResNet-50 training img/s against timm (bf16, channels_last)", 600, 300),
    "jpeg_pipeline": ("JPEG input: DataLoader workers vs decoding on the GPU", 420, 300),
    "resnetrs_latency": ("ResNet-RS training-step latency, seed 003's protocol", 600, 300),
    "ddp": ("torchrun, one process, --sync-bn (NCCL)", 300, 300),
}

# Seed 001, CIFAR-10, one RTX 3090: iter/min over the last 5k of 48k iterations.
CIFAR_ROWS = (("cifar10-resnet20x1", 4545), ("cifar10-resnet20x2", 2439), ("cifar10-resnet20x4", 1132),
              ("cifar10-resnet18x1", 1327), ("cifar10-resnet18x1-fp16", 2273))
CIFAR_GOAL = 4.0
RESNET50_GOAL_IMG_S = 4000.0
# Seed 003: model, image size, V100 latency in seconds (fp32, batch 128 halved until it fits).
RESNETRS_ROWS = (("resnetrs50", 160, 0.31), ("resnetrs101", 160, 0.48), ("resnetrs101", 192, 0.70),
                 ("resnetrs152", 192, 0.99), ("resnetrs152", 224, 1.48), ("resnetrs152", 256, 1.76),
                 ("resnetrs200", 256, 2.86), ("resnetrs270", 256, 3.76), ("resnetrs350", 256, 4.72),
                 ("resnetrs350", 320, 8.48), ("resnetrs420", 320, 10.16))


def file_suffix(device: str, quick: bool) -> str:
    return ("gpu" if device == "cuda" else "cpu") + ("_quick" if quick else "")


def part_file(out_dir: Path, part: str, device: str, quick: bool) -> Path:
    return out_dir / f"{part}_{file_suffix(device, quick)}.md"


# ---------------------------------------------------------------- machine description

def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(__import__(module), "__version__", "?")
    except Exception:  # noqa: BLE001 - a broken optional install is reported, not fatal
        return "unimportable"


def header_lines(title: str, device: str, quick: bool, command: str,
                 command_note: str = "; each measurement's own command is given with it below") -> list[str]:
    import torch

    lines = [f"# {title}", ""]
    if device == "cpu":
        lines += ["**CPU smoke figures** (`--device cpu" + (" --quick" if quick else "") + "`): tiny sizes and a few "
                  "iterations, to check that the suite runs; they are not GPU figures and not benchmark figures.", ""]
    elif quick:
        lines += ["**Quick GPU run** (`--quick`): tiny sizes and a few iterations, to check that the suite runs; "
                  "not the benchmark figures.", ""]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        driver = ""
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20).stdout.split()
                driver = f", driver {out[0]}" if out else ""
            except (OSError, subprocess.SubprocessError):
                pass
        lines.append(f"* Device: cuda:0, {torch.cuda.get_device_name(0)} (compute capability "
                     f"{props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                     f"{torch.cuda.device_count()} GPU(s) visible{driver}); host {_cpu_description()}")
    else:
        lines.append(f"* Device: cpu, {_cpu_description()} (no GPU used)")
    versions = [f"torch {torch.__version__}"]
    if device == "cuda":
        versions.append(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    for module in ("torchvision", "timm"):
        versions.append(f"{module} {_version(module) or 'not installed'}")
    versions.append(f"Python {platform.python_version()}")
    lines.append(f"* torch: {', '.join(versions)}")
    if device == "cuda":
        lines.append(f"* TF32: cuDNN convolutions {torch.backends.cudnn.allow_tf32}, matmul "
                     f"{torch.backends.cuda.matmul.allow_tf32} (torch's defaults; neither `resnets train` nor "
                     "`resnets bench` changes them); `resnets train` leaves cudnn.benchmark off, `resnets bench` "
                     "turns it on")
    lines.append(f"* Command: `{command}`{command_note}")
    lines.append(f"* Date: {dt.datetime.now():%Y-%m-%d %H:%M}")
    return lines


def _cpu_description() -> str:
    sys.path.insert(0, str(SRC))
    from resnets.devices import cpu_cores, cpu_name

    return f"{cpu_name()} ({cpu_cores()} cores)"


# ---------------------------------------------------------------- running commands

def _popen_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Finished:
    rc: int | None  # None: timed out (and killed)
    seconds: float
    tail: list[str]

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def verdict(self) -> str:
        return f"timed out after {self.seconds:.0f} s" if self.rc is None else f"exit code {self.rc}"


def stream(proc: subprocess.Popen, prefix: str, keep: int = 60) -> tuple[threading.Thread, deque]:
    """Echo a child's output line by line (progress), keeping its last lines."""
    tail: deque = deque(maxlen=keep)

    def pump() -> None:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            print(f"{prefix}{line}", flush=True)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread, tail


# ---------------------------------------------------------------- one part (in its own process)

@dataclass
class Part:
    name: str
    device: str
    quick: bool
    out: Path
    deadline: float
    suite_command: str
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu_suite_")))
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # failures and their output, after the tables
    header: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: bool = False
    current: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)

    # --- output

    def add(self, *lines: str) -> None:
        self.sections.extend(lines)
        self.write()

    def write(self, status: str | None = None) -> None:
        if status is None:
            status = "in progress (or stopped before it finished)"
        notes = ["", "## Failures", *self.notes] if self.notes else []
        text = "\n".join(self.header + [""] + self.sections + notes + ["", f"Part status: {status}"]) + "\n"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.out)

    def say(self, message: str) -> None:
        print(message, flush=True)

    def fail(self, message: str, finished: Finished | None = None) -> None:
        """Note a failure below the tables (with the command's last output lines), and go on."""
        self.say(f"FAILED: {message}")
        self.failures.append(message)
        self.notes += ["", f"* **Failed:** {message}"]
        if finished is not None:
            self.notes += ["", "```", *finished.tail[-30:], "```"]
        self.write()

    def skip_line(self, what: str, why: str) -> None:
        self.say(f"skipped: {what} ({why})")
        self.add("", f"* skipped: {what} ({why})")

    # --- commands

    def remaining(self) -> float:
        return self.deadline - time.time() - 10.0

    def display(self, cmd: list[str], env_extra: dict[str, str] | None = None) -> str:
        words = ["python" if word == PY else word for word in cmd]
        text = " ".join(shlex.quote(w) for w in words)
        text = text.replace(str(self.tmp), "$TMP").replace(str(REPO) + os.sep, "")
        prefix = " ".join(f"{k}={v}" for k, v in (env_extra or {}).items())
        return f"PYTHONPATH=src {prefix + ' ' if prefix else ''}{text}"

    def run(self, cmd: list[str], timeout: float, env_extra: dict[str, str] | None = None) -> Finished:
        """One command in its own process group, echoed as it runs, killed after `timeout` s."""
        timeout = max(1.0, min(timeout, self.remaining()))
        self.say(f"$ {self.display(cmd, env_extra)}   (timeout {timeout:.0f} s)")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=_popen_env(env_extra), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        self.current = proc
        thread, tail = stream(proc, "    ")
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            rc = None
        finally:
            self.current = None
        thread.join(timeout=10)
        return Finished(rc, time.perf_counter() - start, list(tail))

    def time_left_for(self, what: str, needed: float) -> bool:
        if self.remaining() >= needed:
            return True
        self.skip_line(what, f"{self.remaining():.0f} s left of this part's budget, about {needed:.0f} s needed")
        return False

    def stop(self, signum, frame) -> None:  # SIGTERM from the suite: the part's timeout
        if self.current is not None:
            _kill_group(self.current)
        self.write(status=f"TIMED OUT after {time.time() - self.started:.0f} s (the suite stopped it); "
                          "the figures above are those measured before")
        shutil.rmtree(self.tmp, ignore_errors=True)
        os._exit(124)


def _bench_cmd(model: str, image_size: int, batch: str | int, precision: str, iters: int, rounds: int,
               warmup: int, json_path: Path, channels_last: bool = True, compare: str | None = None,
               compile: bool = False, mode: str = "train", device: str = "cuda") -> list[str]:
    cmd = [PY, "-m", "resnets", "bench", "--model", model, "--image-size", str(image_size), "--batch-size",
           str(batch), "--precision", precision, "--mode", mode, "--iters", str(iters), "--rounds", str(rounds),
           "--warmup", str(warmup), "--device", device, "--json", str(json_path)]
    cmd.append("--channels-last" if channels_last else "--no-channels-last")
    if compare:
        cmd += ["--compare", compare]
    if compile:
        cmd.append("--compile")
    return cmd


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _rate(value) -> str:
    """img/s and iter/min: whole numbers, but a decimal for the small figures of CPU smoke runs."""
    return "-" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


# --- cuda_tests

def part_cuda_tests(p: Part) -> None:
    junit = p.tmp / "junit.xml"
    cmd = [PY, "-m", "pytest", "tests/test_cuda.py", "-m", "", "-v", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    p.add("## pytest tests/test_cuda.py", "", f"Command: `{p.display(cmd)}`", "")
    done = p.run(cmd, timeout=p.remaining())
    cases = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for kind in ("failure", "error", "skipped"):
                child = case.find(kind)
                if child is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                    message = (child.get("message") or "").splitlines()[0][:160] if child.get("message") else ""
                    break
            cases.append((case.get("name"), outcome, float(case.get("time") or 0), message))
    counts = {o: sum(1 for c in cases if c[1] == o) for o in ("passed", "failed", "error", "skipped")}
    summary = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no tests ran"
    if done.ok and cases and counts["skipped"] == len(cases):
        p.skipped = True
        verdict = f"**all skipped** ({summary}): no CUDA device here"
    elif done.ok and cases:
        verdict = f"**passed** ({summary}) in {done.seconds:.0f} s"
    else:
        verdict = f"**failed** ({summary}; pytest {done.verdict()})"
    p.add(f"Result: {verdict}", "", "| test | outcome | s | message |", "|---|---|---:|---|",
          *[f"| {name} | {outcome} | {seconds:.1f} | {message.replace('|', '/')} |"
            for name, outcome, seconds, message in cases])
    if not (done.ok and cases):
        p.fail(f"tests/test_cuda.py: {summary} ({done.verdict()})", done)


# --- cifar_presets

def _preset_iter_per_min(run_dir: Path) -> dict:
    """iter/min as seed 001 measures it (and benchmarks/preset_throughput.py): iterations per
    minute of training time, evaluations excluded, between the run's last two evaluations."""
    import yaml

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    half, end = records[-2], records[-1]
    iter_per_min = 60.0 * (end["iter"] - half["iter"]) / (end["train_seconds"] - half["train_seconds"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    batch = saved["config"]["batch_size"]
    return {"precision": saved["resolved"]["precision"], "iter_per_min": iter_per_min,
            "img_per_sec": iter_per_min * batch / 60}


def part_cifar_presets(p: Part, iters: int | None) -> None:
    if p.quick:
        iters = iters or 2
        rows, variants = CIFAR_ROWS[:1], [False]
    else:
        iters = iters or 1000
        rows, variants = CIFAR_ROWS, [False, True]
    p.add("## Seed 001 CIFAR-10 presets, batch 256, synthetic 32 px data", "",
          f"Each row runs `resnets train --preset ...` unchanged but for its length ({iters} iterations, evaluated "
          "half-way and at the end) and its data (`--data synthetic`: random images of CIFAR-10's shape, held on the "
          "device and augmented there, as CIFAR-10 is). iter/min is measured as seed 001 does (and as "
          "benchmarks/preset_throughput.py does): iterations per minute of training time over a late window, here "
          "the second half, evaluations excluded, so that compilation and warm-up stay out of it. "
          f"Goal: >= {CIFAR_GOAL:.0f}x the seed's RTX 3090 figure.", "",
          "| preset | precision | mode | iter/min | img/s | seed 001 RTX 3090 iter/min | ratio | "
          f">= {CIFAR_GOAL:.0f}x | wall s |",
          "|---|---|---|---:|---:|---:|---:|---|---:|")
    commands = []
    for compiled in variants:
        for preset, seed in rows:
            mode = "compile" if compiled else "eager"
            if not p.time_left_for(f"{preset} ({mode})", 240 if compiled else 60):
                continue
            run_dir = p.tmp / f"{preset}-{mode}"
            cmd = [PY, "-m", "resnets", "train", "--preset", preset, "--data", "synthetic", "--iters", str(iters),
                   "--eval-every", str(max(1, iters // 2)), "--device", p.device, "--no-progress",
                   "--out", str(run_dir)]
            if compiled:
                cmd.append("--compile")
            commands.append(p.display(cmd))
            done = p.run(cmd, timeout=420 if compiled else 240)
            row = None
            if done.ok:
                try:
                    row = _preset_iter_per_min(run_dir)
                except (OSError, KeyError, IndexError, ValueError, ZeroDivisionError) as error:
                    p.notes += ["", f"* {preset} ({mode}): no iter/min in the run directory ({error!r})"]
            if row is None:
                p.add(f"| {preset} | - | {mode} | failed | | {seed:,} | | | {done.seconds:.0f} |")
                p.fail(f"{preset} ({mode}): {done.verdict()}, no figure", done)
                continue
            ratio = row["iter_per_min"] / seed
            p.add(f"| {preset} | {row['precision']} | {mode} | {_rate(row['iter_per_min'])} | "
                  f"{_rate(row['img_per_sec'])} | {seed:,} | {ratio:.2f} | {'yes' if ratio >= CIFAR_GOAL else 'no'} | "
                  f"{done.seconds:.0f} |")
    if p.quick:
        p.add("", "* skipped in --quick: the other presets (" + ", ".join(r for r, _ in CIFAR_ROWS[1:])
              + ") and the torch.compile rows (tests/test_compile.py covers --compile on the CPU)")
    p.add("", "Commands:", "", *[f"* `{c}`" for c in commands])


# --- resnet50_peers

def part_resnet50_peers(p: Part) -> None:
    has_timm = importlib.util.find_spec("timm") is not None
    if p.quick:
        # Above 64 px: at 64 px and below our resnet50 takes the CIFAR stem (3x3, no max-pool) and timm's does not.
        size, batch, precision, iters, rounds, warmup = 96, 2, "fp32", 1, 2, 1
    else:
        size, batch, precision, iters, rounds, warmup = 224, 256, "bf16", 20, 5, 10
    p.add(f"## ResNet-50 training step, {size} px, batch {batch}, {precision}, channels_last", "",
          "Ours and timm's `resnet50` (same parameters and FLOPs), timed in alternating rounds in one process by "
          f"`resnets bench --compare timm`: {warmup} warm-up steps, then {rounds} rounds of {iters} steps; figures are "
          "medians over rounds, the ratio the median of the per-round ratios. Training step = forward, "
          "cross-entropy, backward, SGD step. "
          f"Goals: >= {RESNET50_GOAL_IMG_S:,.0f} img/s and ratio ours/timm >= 1.0.", "")
    if not has_timm:
        p.add("* timm is not installed here: ours alone, no ratio (pip install timm for the comparison)", "")
    p.add("| variant | ours img/s | timm img/s | ratio ours/timm | ours ms/step | timm ms/step | ours peak MB | "
          f">= {RESNET50_GOAL_IMG_S:,.0f} img/s | ratio >= 1.0 |",
          "|---|---:|---:|---:|---:|---:|---:|---|---|")
    rounds_lines, commands = [], []
    variants = [False] if p.quick else [False, True]
    for compiled in variants:
        name = "torch.compile" if compiled else "eager"
        if not p.time_left_for(f"ResNet-50 {name}", 300 if compiled else 90):
            continue
        out = p.tmp / f"resnet50_{name}.json"
        cmd = _bench_cmd("resnet50", size, batch, precision, iters, rounds, warmup, out, compile=compiled,
                         compare="timm" if has_timm else None, device=p.device)
        commands.append(p.display(cmd))
        done = p.run(cmd, timeout=480 if compiled else 300)
        if not done.ok or not out.exists():
            p.add(f"| {name} | failed | | | | | | | |")
            p.fail(f"ResNet-50 {name}: {done.verdict()}", done)
            continue
        r = json.loads(out.read_text())
        ours = r["train"]
        peer = r.get("compare", {}).get("train")
        ratio = r.get("ratio", {}).get("train")
        p.add(f"| {name} | {_rate(ours['img_per_sec'])} | {_rate(peer and peer['img_per_sec'])} | "
              f"{_fmt(ratio, 3)} | {_fmt(ours['ms_per_step'], 1)} | {_fmt(peer and peer['ms_per_step'], 1)} | "
              f"{_fmt(ours['peak_memory_mb'])} | "
              f"{'yes' if ours['img_per_sec'] >= RESNET50_GOAL_IMG_S else 'no'} | "
              f"{'-' if ratio is None else ('yes' if ratio >= 1.0 else 'no')} |")
        rounds_lines.append(f"* {name}: " + ", ".join(
            f"{o:.1f}" + (f" / {q:.1f}" if peer else "")
            for o, q in zip(ours["round_ms"], (peer or ours)["round_ms"])))
    if p.quick:
        p.add("", "* skipped in --quick: the torch.compile variant (tests/test_compile.py covers --compile on the "
                  "CPU); fp32 instead of bf16 on the CPU")
    p.add("", "Per-round ms/step (ours / timm):", "", *rounds_lines, "", "Commands:", "",
          *[f"* `{c}`" for c in commands])


# --- jpeg_pipeline

def part_jpeg_pipeline(p: Part, images: int | None) -> None:
    sys.path.insert(0, str(HERE))
    import gpu_decode

    cores = os.cpu_count() or 1
    if p.quick:
        n_images, batch, size, batches, warmup = images or 24, 8, 224, 2, 1
        workers = [min(2, cores)]
    else:
        n_images, batch, size, batches, warmup = images or 768, 256, 224, 10, 2
        workers = sorted({min(8, cores), cores})
    root = p.tmp / "imagenet"
    p.say(f"making {n_images} synthetic JPEGs in {root}")
    start = time.perf_counter()
    paths = gpu_decode.make_jpeg_folder(root, n_images)
    kb = sum(path.stat().st_size for path in paths) / len(paths) / 1024
    p.add(f"## JPEG input at {size} px, batch {batch}", "",
          f"{n_images} synthetic JPEGs (smooth colour fields plus noise at ImageNet's usual sizes, 500x375 etc., "
          f"mean {kb:.0f} KB, made in {time.perf_counter() - start:.0f} s by `gpu_decode.make_jpeg_folder`) in the "
          f"ImageNet layout `train/<wnid>/*.JPEG`; {batches} timed batches after {warmup} warm-up batch(es); the "
          f"files stay in the page cache. This machine has {cores} CPU cores.")
    reference = None
    if p.quick:
        p.skip_line("the ResNet-50 step for comparison", "--quick; it is measured on the GPU")
    elif p.time_left_for("the ResNet-50 step for comparison", 60):
        out = p.tmp / "resnet50.json"
        cmd = _bench_cmd("resnet50", size, batch, "bf16", 10, 3, 5, out, device=p.device)
        done = p.run(cmd, timeout=240)
        if done.ok and out.exists():
            reference = json.loads(out.read_text())["train"]["img_per_sec"]
            p.add("", f"ResNet-50 training step (bf16, channels_last, eager, batch {batch}): "
                      f"**{reference:,.0f} img/s** (`{p.display(cmd)}`). A ratio >= 1 below means that input "
                      "path alone keeps this step fed.")
        else:
            p.fail(f"ResNet-50 step: {done.verdict()}", done)
    p.add("", "| input path | workers | img/s | / ResNet-50 step img/s |", "|---|---:|---:|---:|")

    def row(label: str, workers_text: str, img_s: float) -> None:
        share = "-" if not reference else f"{img_s / reference:.2f}"
        p.add(f"| {label} | {workers_text} | {_rate(img_s)} | {share} |")

    for count in workers:
        p.say(f"DataLoader pipeline with {count} workers")
        try:
            img_s = gpu_decode.loader_throughput(root, batch_size=batch, image_size=size, device=p.device,
                                                 num_workers=count, batches=batches, warmup=warmup)
        except Exception as error:  # noqa: BLE001 - noted; the other measurements go on
            p.fail(f"DataLoader pipeline with {count} workers: {type(error).__name__}: {error}")
            continue
        row("`resnets train` JPEG-folder pipeline: PIL decode + RandomResizedCrop + flip in DataLoader workers, "
            "pinned copy, normalize on the device", str(count), img_s)
    figures = None
    if p.device == "cuda":
        p.say("decoding on the GPU")
        try:
            figures = gpu_decode.gpu_path_throughput(paths, batch_size=batch, image_size=size, device="cuda",
                                                     batches=batches, warmup=warmup)
        except Exception as error:  # noqa: BLE001 - e.g. a torchvision built without nvjpeg
            p.fail(f"decoding on the GPU: {type(error).__name__}: {error}")
        if figures is not None:
            row("nvjpeg decode only (`decode_jpeg(list, device='cuda')`, bytes in memory)", "-", figures["decode_only"])
            row("nvjpeg decode + random-resized crop + flip + normalize on the GPU (bytes in memory)", "-",
                figures["decode_crop_flip"])
            row("the same, with the files read in the loop (one thread)", "-", figures["read_decode_crop_flip"])
            p.add("", f"Checks of the GPU path: nvjpeg against libjpeg-turbo on 8 files, max |diff| "
                      f"{figures['vs_cpu_decode_max_abs']} and mean |diff| {figures['vs_cpu_decode_mean_abs']:.3f} "
                      f"grey levels; batch shape {figures['batch_shape']}, finite {figures['finite']}; the same "
                      f"generator seed gives the same batch: {figures['same_seed_same_batch']}.")
    else:
        p.skip_line("decoding on the GPU (nvjpeg)", "needs CUDA")
        figures = gpu_decode.gpu_path_throughput(paths, batch_size=batch, image_size=size, device="cpu",
                                                 batches=batches, warmup=warmup)
        p.add("", f"* the same function with device='cpu' (libjpeg-turbo, crop on the CPU, one process), as a "
                  f"code-path check: decode only {figures['decode_only']:,.0f} img/s, with crop + flip + normalize "
                  f"{figures['decode_crop_flip']:,.0f} img/s; batch shape {figures['batch_shape']}, finite "
                  f"{figures['finite']}, same seed gives the same batch {figures['same_seed_same_batch']}")
    p.add("", f"Code: `benchmarks/gpu_decode.py` (`decode_crop_flip`, `loader_throughput`); standalone: "
              f"`PYTHONPATH=src python benchmarks/gpu_decode.py --device {p.device}`.")


# --- resnetrs_latency

def part_resnetrs_latency(p: Part) -> None:
    if p.quick:
        rows = [("resnetrs50", 32, None)]
        batch, iters, rounds, warmup = 4, 1, 1, 0
    else:
        rows = RESNETRS_ROWS
        batch, iters, rounds, warmup = "auto", 5, 3, 3
    p.add("## ResNet-RS training step, seed 003's latency protocol", "",
          f"`resnets bench --batch-size {batch}`: " + ("128 halved until a training step fits (seed 003: 'an initial "
          "training batch size of 128 images, which is divided by 2 until it fits onto the accelerator'), "
          if batch == "auto" else "") +
          f"fp32 (the seed's V100 column is fp32; cuDNN may use TF32, see above), channels_last, eager, {warmup} "
          f"warm-up steps then {rounds} rounds of {iters} steps, median. The seed does not give the batch its V100 "
          "fitted (16/32 GB against our 80+ GB), so the V100 column is a scale, not a like-for-like comparison; "
          "ms/img is the fairer figure.", "",
          "| model | px | batch | ms/step | img/s | ms/img | peak MB | seed 003 V100 s | V100 s / ours s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    commands = []
    for model, size, v100 in rows:
        if not p.time_left_for(f"{model} @ {size}", 45):
            continue
        out = p.tmp / f"{model}_{size}.json"
        cmd = _bench_cmd(model, size, batch, "fp32", iters, rounds, warmup, out, device=p.device)
        commands.append(p.display(cmd))
        done = p.run(cmd, timeout=150)
        if not done.ok or not out.exists():
            p.add(f"| {model} | {size} | failed | | | | | {_fmt(v100, 2)} | |")
            p.fail(f"{model} @ {size}: {done.verdict()}", done)
            continue
        r = json.loads(out.read_text())
        t = r["train"]
        seconds = t["ms_per_step"] / 1000
        p.add(f"| {model} | {size} | {r['batch_size']}{' (auto)' if r.get('batch_size_auto') else ''} | "
              f"{t['ms_per_step']:,.1f} | {_rate(t['img_per_sec'])} | {t['ms_per_step'] / r['batch_size']:.2f} | "
              f"{_fmt(t['peak_memory_mb'])} | {_fmt(v100, 2)} | {'-' if v100 is None else f'{v100 / seconds:.1f}'} |")
    if p.quick:
        p.add("", "* skipped in --quick: the seed's rows at their image sizes and --batch-size auto (tiny size, "
                  "fixed batch here)")
    p.add("", "Commands:", "", *[f"* `{c}`" for c in commands])


# --- ddp

def _final_weights(run_dir: Path):
    import torch

    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _max_abs_diff(a: dict, b: dict) -> float | None:
    if a.keys() != b.keys():
        return None
    diffs = [(a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()]
    return max(diffs, default=0.0)


def part_ddp(p: Part) -> None:
    import yaml

    if p.quick:
        recipe = ["--image-size", "16", "--batch-size", "16", "--iters", "4", "--eval-every", "2"]
    else:
        recipe = ["--image-size", "32", "--batch-size", "128", "--iters", "60", "--eval-every", "30"]
    common = ["--data", "digits", *recipe, "--eval-batch-size", "512", "--precision", "fp32", "--device", p.device,
              "--sync-bn", "--no-progress"]
    backend = "nccl" if p.device == "cuda" else "gloo"
    launcher = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    runs = [
        ("torchrun, 1 process", [*launcher, "-m", "resnets", "train"], "torchrun1"),
        (f"torchrun, 1 process, forced into a {backend} process group",
         [*launcher, str(HERE / "gpu_suite.py"), IN_PROCESS_GROUP_FLAG], "forced"),
        ("plain process (no torchrun), for reference", [PY, "-m", "resnets", "train"], "plain"),
    ]
    p.add("## `resnets train --sync-bn` under torchrun with one process", "",
          "Digits, ResNet-20, fp32. Note: `resnets.distributed.init_distributed` creates no process group when "
          "WORLD_SIZE is 1, so a one-process torchrun run trains exactly like a plain one (no NCCL, no DDP, no "
          "SyncBatchNorm). To run the distributed code path on one GPU anyway, the second row starts the same "
          f"trainer through `benchmarks/gpu_suite.py {IN_PROCESS_GROUP_FLAG}`, which joins a {backend} process group "
          "of one and makes `DistEnv.enabled` true, so the model is converted to SyncBatchNorm"
          + (" (torch's; at world size 1 it normalizes locally, its all-gather kernels are tested directly by "
             "tests/test_cuda.py)" if p.device == "cuda" else " (our CrossProcessBatchNorm2d on the CPU)")
          + ", wrapped in DistributedDataParallel, and the barriers and broadcasts go through the process group.", "",
          "| run | completed | process group | iter/min | tst/acc | wall s | max abs weight diff vs plain |",
          "|---|---|---|---:|---:|---:|---:|")
    commands, outcomes = [], []
    for label, prefix, name in runs:
        if not p.time_left_for(label, 30):
            continue
        run_dir = p.tmp / name
        cmd = [*prefix, *common, "--out", str(run_dir)]
        commands.append(p.display(cmd))
        done = p.run(cmd, timeout=240)
        group = next((line.split("process group:", 1)[1].strip() for line in done.tail if "process group:" in line),
                     "none")
        results = run_dir / "results.json"
        if done.ok and results.exists():
            world = yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]["world_size"]
            outcomes.append((name, label, done, group, json.loads(results.read_text()), world))
        else:
            outcomes.append((name, label, done, group, None, None))
            p.fail(f"{label}: {done.verdict()}", done)
    plain = next((o for o in outcomes if o[0] == "plain" and o[4] is not None), None)
    reference = _final_weights(p.tmp / "plain") if plain else None
    for name, label, done, group, res, world in outcomes:
        if res is None:
            p.add(f"| {label} | **no** ({done.verdict()}) | {group} | | | {done.seconds:.0f} | |")
            continue
        diff = None if reference is None else _max_abs_diff(_final_weights(p.tmp / name), reference)
        p.add(f"| {label} | yes (world_size {world}) | {group} | {_rate(res['iter_per_min'])} | "
              f"{res.get('tst/acc') or 0:.4f} | {done.seconds:.0f} | {'-' if diff is None else f'{diff:.3g}'} |")
    p.add("", "Commands:", "", *[f"* `{c}`" for c in commands])


def _train_in_process_group(argv: list[str]) -> int:
    """`resnets train` with a process group even at world size 1 (run under torchrun).

    resnets.distributed skips the process group for one process; this joins one (NCCL on
    CUDA, gloo on the CPU) and makes DistEnv.enabled follow it, so the trainer takes its
    distributed path: SyncBatchNorm conversion, DDP, barriers and broadcasts.
    """
    sys.path.insert(0, str(SRC))
    import torch
    import torch.distributed as dist

    import resnets.distributed as rd
    import resnets.train as rt
    from resnets.cli import main

    joined = []

    def init_distributed(device_kind: str) -> rd.DistEnv:
        joined.append(device_kind)
        env = rd.DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                         int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            if device_kind == "cuda":
                torch.cuda.set_device(env.local_rank)
            dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        print(f"[{IN_PROCESS_GROUP_FLAG}] process group: {dist.get_backend()}, world size {dist.get_world_size()}",
              flush=True)
        return env

    rd.DistEnv.enabled = property(lambda self: dist.is_available() and dist.is_initialized())
    rd.init_distributed = rt.init_distributed = init_distributed
    status = main(["train", *argv])
    if status == 0 and not joined:
        print(f"{IN_PROCESS_GROUP_FLAG}: the trainer never called init_distributed, so no process group was made: "
              "update this wrapper to the trainer's code", file=sys.stderr)
        return 1
    return status


PART_FUNCTIONS = {
    "cuda_tests": lambda p, a: part_cuda_tests(p),
    "cifar_presets": lambda p, a: part_cifar_presets(p, a.cifar_iters),
    "resnet50_peers": lambda p, a: part_resnet50_peers(p),
    "jpeg_pipeline": lambda p, a: part_jpeg_pipeline(p, a.jpeg_images),
    "resnetrs_latency": lambda p, a: part_resnetrs_latency(p),
    "ddp": lambda p, a: part_ddp(p),
}


def run_part(args: argparse.Namespace) -> int:
    name = args._part
    out = part_file(Path(args.out_dir), name, args.device, args.quick)
    part = Part(name=name, device=args.device, quick=args.quick, out=out, deadline=args._deadline,
                suite_command=args._suite_command)
    signal.signal(signal.SIGTERM, part.stop)
    time.sleep(args._stall)
    command = f"python benchmarks/gpu_suite.py --device {args.device}{' --quick' if args.quick else ''} --parts {name}"
    note = "; each measurement's own command is given with it below"
    if args._suite_command and args._suite_command != command:
        note = f" (this run: part of `{args._suite_command}`)" + note
    part.header = header_lines(f"{PARTS[name][0]} ({file_suffix(args.device, args.quick).replace('_', ', ')})",
                               args.device, args.quick, command, command_note=note)
    part.write()
    try:
        PART_FUNCTIONS[name](part, args)
    except Exception as error:  # noqa: BLE001 - reported in the part's file, then the suite goes on
        import traceback

        part.fail(f"{type(error).__name__}: {error}")
        part.add("", "```", *traceback.format_exc().splitlines()[-20:], "```")
    elapsed = time.time() - part.started
    if part.failures:
        status = f"FAILED after {elapsed:.0f} s: " + "; ".join(part.failures)
    elif part.skipped:
        status = f"skipped ({elapsed:.0f} s): needs CUDA"
    else:
        status = f"ok ({elapsed:.0f} s)"
    part.write(status=status)
    shutil.rmtree(part.tmp, ignore_errors=True)
    print(f"wrote {out}: {status}", flush=True)
    return 1 if part.failures else (3 if part.skipped else 0)


# ---------------------------------------------------------------- the suite

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda if there is one")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few iterations (a smoke test)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--out-dir", default=str(HERE / "results"),
                        help="where the .md files go (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per part, for every part (default: each part's own, see --list)")
    parser.add_argument("--cifar-iters", type=int, default=None, help="cifar_presets: iterations per preset "
                        "(default 1000; 2 with --quick)")
    parser.add_argument("--jpeg-images", type=int, default=None, help="jpeg_pipeline: synthetic JPEGs (default 768; "
                        "24 with --quick)")
    parser.add_argument("--list", action="store_true", help="list the parts and their timeouts, then exit")
    parser.add_argument("--_part", help=argparse.SUPPRESS)
    parser.add_argument("--_deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--_suite-command", dest="_suite_command", default="", help=argparse.SUPPRESS)
    # Tests only: each part waits this long before measuring, so that it overruns its timeout on
    # any machine (a part with too little time left skips its measurements and finishes early).
    parser.add_argument("--_stall", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _forwarded(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device, "--out-dir", args.out_dir]
    if args.quick:
        flags.append("--quick")
    if args.cifar_iters:
        flags += ["--cifar-iters", str(args.cifar_iters)]
    if args.jpeg_images:
        flags += ["--jpeg-images", str(args.jpeg_images)]
    if args._stall:
        flags += ["--_stall", str(args._stall)]
    return flags


def _fallback_file(out: Path, name: str, args: argparse.Namespace, status: str, tail: list[str]) -> None:
    """The part died before writing its file (e.g. while importing torch): say so there."""
    command = f"python benchmarks/gpu_suite.py --device {args.device}{' --quick' if args.quick else ''} --parts {name}"
    try:
        lines = header_lines(f"{PARTS[name][0]} ({file_suffix(args.device, args.quick).replace('_', ', ')})",
                             args.device, args.quick, command)
    except Exception as error:  # noqa: BLE001 - e.g. CUDA itself failing: the file must still say what happened
        lines = [f"# {PARTS[name][0]}", "", f"* Device: {args.device} (not described: {error!r})",
                 f"* Command: `{command}`"]
    lines += ["", f"Part status: {status}", "", "```", *tail[-40:], "```"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [IN_PROCESS_GROUP_FLAG]:
        return _train_in_process_group(argv[1:])
    args = parse_args(argv)
    if args._part:
        return run_part(args)
    if args.list:
        for name, (title, gpu_s, quick_s) in PARTS.items():
            print(f"{name:17} {gpu_s:4d} s ({quick_s} s with --quick)  {title}")
        return 0
    parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in parts if name not in PARTS]
    if unknown or not parts:
        print(f"gpu_suite: unknown part(s) {', '.join(unknown) or '(none given)'}: expected some of "
              f"{', '.join(PARTS)}", file=sys.stderr)
        return 2
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: --device cuda, but this machine has no usable CUDA GPU; for the CPU smoke test use "
              "--device cpu --quick", file=sys.stderr)
        return 2
    args.out_dir = str(Path(args.out_dir).resolve())
    suite_command = "python benchmarks/gpu_suite.py " + " ".join(shlex.quote(a) for a in argv)
    print(f"[suite] {len(parts)} part(s) on {args.device}{' (quick)' if args.quick else ''}: {', '.join(parts)}; "
          f"files into {args.out_dir}", flush=True)
    summary = []
    suite_start = time.time()
    for name in parts:
        timeout = args.timeout or PARTS[name][2 if args.quick else 1]
        out = part_file(Path(args.out_dir), name, args.device, args.quick)
        deadline = time.time() + timeout
        cmd = [PY, str(Path(__file__).resolve()), "--_part", name, "--_deadline", str(deadline),
               "--_suite-command", suite_command, *_forwarded(args)]
        print(f"[suite] == {name}: {PARTS[name][0]} (timeout {timeout:.0f} s)", flush=True)
        start = time.perf_counter()
        # A CPU run stays off any GPU the machine has (tests/test_cuda.py then skips, as it does without one).
        env = _popen_env({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else None)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        thread, tail = stream(proc, f"[{name}] ", keep=80)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGTERM)  # the part kills its current command and notes the timeout
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
            rc = None
        thread.join(timeout=10)
        seconds = time.perf_counter() - start
        if rc is None:
            status = f"TIMED OUT after {seconds:.0f} s"
        else:
            status = {0: "ok", 3: "skipped (needs CUDA)", 1: "FAILED"}.get(rc, f"FAILED (exit code {rc})")
        if not out.exists():
            _fallback_file(out, name, args, f"{status}; the part wrote nothing", list(tail))
        elif rc is None and "TIMED OUT" not in out.read_text():
            with open(out, "a") as handle:
                handle.write(f"\nSuite: TIMED OUT after {seconds:.0f} s (killed); the figures above are those "
                             "measured before.\n")
        print(f"[suite] == {name}: {status} ({seconds:.0f} s) -> {out}", flush=True)
        summary.append((name, status, seconds, out))
    index = Path(args.out_dir) / f"suite_{file_suffix(args.device, args.quick)}.md"
    lines = header_lines(f"GPU suite ({file_suffix(args.device, args.quick).replace('_', ', ')})", args.device,
                         args.quick, suite_command, command_note="; each part's file gives its own commands")
    lines += ["", f"{len(summary)} part(s) in {(time.time() - suite_start) / 60:.1f} min.", "",
              "| part | status | s | file |", "|---|---|---:|---|"]
    lines += [f"| {name} | {status} | {seconds:.0f} | {out.name} |" for name, status, seconds, out in summary]
    index.write_text("\n".join(lines) + "\n")
    print(f"[suite] wrote {index}", flush=True)
    bad = [name for name, status, _, _ in summary if not (status == "ok" or status.startswith("skipped"))]
    if bad:
        print(f"[suite] not ok: {', '.join(bad)}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
