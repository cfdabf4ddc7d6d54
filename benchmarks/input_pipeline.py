"""The JPEG input pipeline against torchvision's reference recipe, per core, in one process.

The benchmark makes its own JPEGs from real photographs (scikit-learn's china.jpg and
flower.jpg, matplotlib's grace_hopper.jpg): random crops of 50-100 % of the area, resized to a
shorter side of 333-500 px (ImageNet's range) and re-encoded at quality 75-95, in an
ImageFolder layout. Peers, each with the same number of DataLoader workers and batch size:

- reference train: torchvision ImageFolder + RandomResizedCrop(S) + RandomHorizontalFlip +
  PILToTensor (PIL decode at full size), shuffled;
- resnets train: ``resnets.data.train_batches`` on the same files (crop-flip; at 160 px also
  with ResNet-RS's RandAugment, magnitude 10), uint8 N×3×S×S batches like the reference's (the
  training loop normalizes them where the model runs: on the device with a GPU);
- reference eval: ImageFolder + Resize(round(S/0.875)) + CenterCrop(S) + PILToTensor;
- resnets eval: ``resnets.data.eval_batches``;
- resnets on shards (``--only shards224,shards160,shardseval224``): the same JPEGs written once by
  ``resnets prepare`` at a longest side of 320 px (quality 90) and read through ``ShardSplit``,
  against the reference on the original JPEGs.

Each comparison runs in paired rounds, the order alternating, repeated ``--repeats`` times;
a measurement is the wall time from creating the loader to receiving ``--images`` images.
The ratio is resnets img/s / reference img/s. Also: resnets' 2 workers against 1 (scaling),
and simplejpeg against Pillow's ``Image.draft`` as resnets' decoder. The load average is printed
before and after each comparison (this machine may be shared).

    python benchmarks/input_pipeline.py --images 512 --repeats 3 --out benchmarks/results/input_pipeline_cpu.md
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resnets.data import crops  # noqa: E402
from resnets.data.pipelines import eval_batches, train_batches  # noqa: E402
from resnets.data.preparation import prepare_shards  # noqa: E402
from resnets.data.sources import FolderSplit, load_dataset  # noqa: E402
from resnets.devices import cpu_cores, cpu_name  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photographs() -> list[np.ndarray]:
    from matplotlib import cbook
    from PIL import Image
    from sklearn.datasets import load_sample_image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg"), hopper]


def write_jpegs(root: Path, count: int, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` JPEGs of ImageNet's sizes and qualities in root/<class>/, one class per photograph."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    samples = []
    for k in range(count):
        label = k % 3
        photo = photographs_cache[label]
        height, width = photo.shape[:2]
        area = rng.uniform(0.5, 1.0)
        aspect = rng.uniform(0.8, 1.25)
        crop_h = min(height, int(round(height * np.sqrt(area * aspect))))
        crop_w = min(width, int(round(width * np.sqrt(area / aspect))))
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
        scale = rng.integers(333, 501) / min(image.size)
        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BICUBIC)
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{k:04d}.jpg"
        image.save(path, "JPEG", quality=int(rng.integers(75, 96)))
        samples.append((str(path), label))
    return sorted(samples)


photographs_cache: list[np.ndarray] = []


def reference_loader(root: Path, size: int, train: bool, workers: int, batch: int):
    from torchvision import datasets, transforms

    if train:
        steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size)]
    dataset = datasets.ImageFolder(str(root), transform=transforms.Compose(steps + [transforms.PILToTensor()]))
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=train, drop_last=train, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0))


def images_per_second(make_batches, images: int) -> float:
    start = time.perf_counter()
    seen = 0
    iterator = iter(make_batches())
    while seen < images:
        try:
            x, _ = next(iterator)
        except StopIteration:  # an evaluation pass ended: start the next one
            iterator = iter(make_batches())
            continue
        seen += len(x)
    elapsed = time.perf_counter() - start
    del iterator  # shuts the workers down
    return seen / elapsed


def images_per_cpu_second(make_batches, images: int) -> float:
    """Images per second of this process's CPU time (no workers: decoding runs here), which other
    jobs on a shared machine barely change, unlike wall time."""
    start = time.process_time()
    seen = 0
    iterator = iter(make_batches())
    while seen < images:
        try:
            x, _ = next(iterator)
        except StopIteration:
            iterator = iter(make_batches())
            continue
        seen += len(x)
    return seen / (time.process_time() - start)


def paired(name: str, peer_a, peer_b, images: int, repeats: int, log, rate=None) -> dict:
    """Ratios b/a over paired rounds (order alternating); returns the figures for the report."""
    load_before = os.getloadavg()
    ratios, rates_a, rates_b = [], [], []
    for repeat in range(repeats):
        rate = rate or images_per_second
        if repeat % 2 == 0:
            a = rate(peer_a, images)
            b = rate(peer_b, images)
        else:
            b = rate(peer_b, images)
            a = rate(peer_a, images)
        rates_a.append(a)
        rates_b.append(b)
        ratios.append(b / a)
    load_after = os.getloadavg()
    result = dict(name=name, ratios=ratios, a=rates_a, b=rates_b, load=(load_before[0], load_after[0]))
    log(f"{name}: ratios {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}); "
        f"img/s {statistics.median(rates_a):.0f} → {statistics.median(rates_b):.0f}; "
        f"load average {load_before[0]:.2f} → {load_after[0]:.2f}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=240, help="JPEGs to make (default 240)")
    parser.add_argument("--images", type=int, default=512, help="images per measurement (default 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of both peers (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated subset of: train224,train160,ra160,eval224,"
                                                      "eval160,decoder,scaling,shards224,shards160,shardseval224,cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the main process only collects uint8 batches: the workers are measured
    photographs_cache.extend(photographs())
    lines = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    wanted = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        samples = write_jpegs(root, args.files)
        split = FolderSplit(samples)
        log(f"{len(samples)} JPEGs, shorter side 333-500 px, quality 75-95, from china.jpg, flower.jpg, "
            f"grace_hopper.jpg; {args.workers} worker(s) each, batch {args.batch_size}, "
            f"{args.images} images per measurement")

        shard_split = None
        if wanted is None or wanted & {"shards224", "shards160", "shardseval224", "cpu"}:
            start = time.perf_counter()
            prepare_shards("folder", root, Path(tmp) / "shards", max_side=320, quality=90, workers=os.cpu_count(),
                           log=lambda *_: None)
            shard_split = load_dataset("folder", Path(tmp) / "shards", val_size=0).train
            log(f"prepared {len(shard_split)} shard samples at longest side 320 px, quality 90, in "
                f"{time.perf_counter() - start:.1f} s")

        def ours_train(size, randaugment=None, workers=args.workers, source=None):
            return lambda: train_batches(source or split, batch_size=args.batch_size, start_iteration=0, seed=0, device="cpu",
                                         image_size=size,
                                         randaugment_magnitude=randaugment, num_workers=workers)

        def ours_eval(size, source=None):
            return lambda: eval_batches(source or split, batch_size=args.batch_size, device="cpu",
                                        image_size=size, num_workers=args.workers)

        def ref(size, train):
            return lambda: reference_loader(root, size, train, args.workers, args.batch_size)

        results = []
        plan = [
            ("train224", "train 224 px crop+flip: resnets / torchvision reference", ref(224, True), ours_train(224)),
            ("train160", "train 160 px crop+flip: resnets / torchvision reference", ref(160, True), ours_train(160)),
            ("ra160", "train 160 px + TF RandAugment m10: resnets / reference crop+flip (no RandAugment)",
             ref(160, True), ours_train(160, randaugment=10)),
            ("eval224", "eval 224 px resize+center crop: resnets / torchvision reference", ref(224, False), ours_eval(224)),
            ("eval160", "eval 160 px resize+center crop: resnets / torchvision reference", ref(160, False), ours_eval(160)),
            ("shards224", "train 224 px crop+flip: resnets on shards (320 px) / torchvision reference on the JPEGs",
             ref(224, True), ours_train(224, source=shard_split)),
            ("shards160", "train 160 px crop+flip: resnets on shards (320 px) / torchvision reference on the JPEGs",
             ref(160, True), ours_train(160, source=shard_split)),
            ("shardseval224", "eval 224 px resize+center crop: resnets on shards (320 px) / torchvision reference "
             "on the JPEGs", ref(224, False), ours_eval(224, source=shard_split)),
        ]
        for key, name, a, b in plan:
            if wanted is None or key in wanted:
                results.append(paired(name, a, b, args.images, args.repeats, log))
        if wanted is None or "cpu" in wanted:
            # Per CPU-second in one process (num_workers=0): robust to a loaded machine. Both sides stop
            # at uint8 batches (the training loop normalizes where the model runs).
            for size in (224, 160):
                for source, what in ((split, "JPEGs"), (shard_split, "shards (320 px)")):
                    results.append(paired(
                        f"per CPU-second, train {size} px crop+flip: resnets on {what} / reference on the JPEGs",
                        lambda size=size: reference_loader(root, size, True, 0, args.batch_size),
                        ours_train(size, workers=0, source=source), args.images, args.repeats, log,
                        rate=images_per_cpu_second))
        if wanted is None or "decoder" in wanted:
            saved = crops.simplejpeg

            def pillow_decoder():
                crops.simplejpeg = None  # forked workers inherit the choice
                return ours_train(224)()

            def simplejpeg_decoder():
                crops.simplejpeg = saved
                return ours_train(224)()

            if saved is not None:
                results.append(paired("decoder, train 224 px: simplejpeg / Pillow draft", pillow_decoder,
                                      simplejpeg_decoder, args.images, args.repeats, log))
            crops.simplejpeg = saved
        if wanted is None or "scaling" in wanted:
            results.append(paired("workers, train 224 px: resnets 2 workers / 1 worker", ours_train(224, workers=1),
                                  ours_train(224, workers=2), args.images, args.repeats, log))
    if args.out is not None:
        write_markdown(args, results, lines)
    return 0


def write_markdown(args, results, lines) -> None:
    command = "python benchmarks/input_pipeline.py " + " ".join(sys.argv[1:])
    out = [
        "# Input pipeline, CPU: resnets against torchvision's reference recipe",
        "",
        f"Machine: {cpu_name()}, {cpu_cores()} cores available to the process, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"Pillow {__import__('PIL').__version__}, simplejpeg "
        f"{getattr(crops.simplejpeg, '__version__', 'absent')}.",
        "",
        f"Command: `{command}`",
        "",
        "Each row: paired rounds in alternating order, one ratio per round (resnets or the second peer "
        "over the first), img/s as medians. Load average (1 min) before → after the row.",
        "",
        "| comparison | ratios per round | median | img/s first → second | load average |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        out.append(f"| {r['name']} | {', '.join(f'{x:.2f}' for x in r['ratios'])} | "
                   f"{statistics.median(r['ratios']):.2f} | {statistics.median(r['a']):.0f} → "
                   f"{statistics.median(r['b']):.0f} | {r['load'][0]:.2f} → {r['load'][1]:.2f} |")
    out += ["", "Log:", "", "```", *lines, "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
