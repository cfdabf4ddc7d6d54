"""Prepared shards (`resnets prepare`, data/sources/shards.py) on tiny real JPEG folders made in tmp."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from formats import write_image_folders, write_jpeg
from resnets.cli import main
from resnets.data import FolderSplit, ShardSplit, load_dataset, prepare_shards
from resnets.errors import UserError

CLASSES = ["cat", "dog", "eel"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def smooth_image(rng, height, width) -> np.ndarray:
    """A photo-like image (smooth gradients): JPEG's error on it is small, unlike on noise."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    a, b, c = rng.uniform(0.5, 3, 3)
    channels = [np.sin(a * 3 * x + b) * np.cos(c * 2 * y), np.cos(b * 2 * x - a * y), np.sin(c * (x + y))]
    return np.clip(np.stack(channels, -1) * 100 + 128, 0, 255).astype(np.uint8)


def write_smooth_folders(root, classes, per_folder, size, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        for k in range(per_folder):
            write_jpeg(root / name / f"img_{k}.JPEG", smooth_image(rng, *size), quality=95)


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)))


def prepare_cli(*args) -> int:
    return main(["prepare", *map(str, args), "--workers", "1"])


def test_prepare_then_load_gives_the_folders_labels_classes_and_pixels(tmp_path):
    data = tmp_path / "photos"
    write_smooth_folders(data / "train", CLASSES, per_folder=4, size=(96, 72))  # larger than --max-side
    write_image_folders(data / "val", CLASSES, per_folder=2, size=(24, 20), seed=1)  # smaller: kept as they are
    assert prepare_cli("--data", "folder", "--data-dir", data, "--out", tmp_path / "shards", "--max-side", 48) == 0
    shards, folders = load_dataset("folder", tmp_path / "shards"), load_dataset("folder", data)
    assert isinstance(shards.train, ShardSplit) and isinstance(folders.train, FolderSplit)
    assert shards.class_names == folders.class_names == CLASSES and shards.num_classes == 3
    for split in ("train", "val"):
        assert np.array_equal(getattr(shards, split).labels, getattr(folders, split).labels)
    from torchvision.transforms.v2 import functional as TF

    for k, (path, _) in enumerate(folders.train.samples):
        ours = decoded(shards.train.read_encoded(k))
        assert ours.shape == (48, 36, 3)  # 96×72 → longest side 48, aspect kept
        # The oracle: torchvision's antialiased resize of the source at the same size.
        source = torch.from_numpy(decoded(Path(path).read_bytes()).astype(np.uint8)).permute(2, 0, 1)
        reference = TF.resize(source, [48, 36], antialias=True).permute(1, 2, 0).numpy().astype(np.float64)
        assert psnr(ours, reference) >= 30, path
    for k, (path, _) in enumerate(folders.val.samples):  # already within --max-side: the same bytes
        assert shards.val.read_encoded(k) == Path(path).read_bytes()
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["dataset"] == "folder" and manifest["options"] == {"max_side": 48, "quality": 90, "on_bad_image": "skip"}
    assert manifest["source"]["data_dir"] == str(data.resolve()) and len(manifest["source"]["fingerprint"]) == 16


def test_one_folder_shards_hold_out_the_same_tail_as_the_folders(tmp_path):
    write_image_folders(tmp_path / "photos", CLASSES, per_folder=7)
    prepare_shards("folder", tmp_path / "photos", tmp_path / "shards", workers=2, log=lambda *_: None)
    for val_size in (None, 3, 0):
        shards = load_dataset("folder", tmp_path / "shards", val_size=val_size)
        folders = load_dataset("folder", tmp_path / "photos", val_size=val_size)
        assert np.array_equal(shards.train.labels, folders.train.labels)
        assert (shards.val is None) == (folders.val is None)
        if folders.val is not None:
            assert np.array_equal(shards.val.labels, folders.val.labels)
            # The same images, not only the same labels.
            for k, (path, _) in enumerate(folders.val.samples):
                assert shards.val.read_encoded(k) == Path(path).read_bytes()


def test_imagenet_layout_is_detected_and_a_pickled_split_reads_in_another_process(tmp_path):
    wnids = ["n01440764", "n01443537"]
    write_image_folders(tmp_path / "imagenet" / "train", wnids, per_folder=3)
    write_image_folders(tmp_path / "imagenet" / "val", wnids, per_folder=2, seed=2)
    prepare_shards("imagenet", tmp_path / "imagenet", tmp_path / "shards", workers=1, log=lambda *_: None)
    bundle = load_dataset("imagenet", tmp_path / "shards")
    assert (len(bundle.train), len(bundle.val), bundle.test) == (6, 4, None) and bundle.class_names == wnids
    assert load_dataset("imagenet", tmp_path / "shards", val_size=0).val is None
    import pickle

    bundle.train.read_encoded(0)  # opens a reader, which must not travel with the split
    clone = pickle.loads(pickle.dumps(bundle.train))
    assert clone._reader is None and clone.read_encoded(5) == bundle.train.read_encoded(5)


def test_train_and_eval_from_shards_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "photos"
    write_image_folders(data / "train", CLASSES, per_folder=6, size=(40, 36))
    write_image_folders(data / "val", CLASSES, per_folder=2, size=(30, 44), seed=3)
    write_image_folders(data / "test", CLASSES, per_folder=2, size=(30, 44), seed=4)
    assert prepare_cli("--data", "folder", "--data-dir", data, "--out", tmp_path / "shards") == 0
    assert "train from it: resnets train --data folder --data-dir" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", "--data", "folder", "--data-dir", str(tmp_path / "shards"), "--out", str(out), "--model",
                 "resnet20", "--image-size", "16", "--num-workers", "0", "--iters", "2", "--eval-every", "2",
                 "--batch-size", "6", "--eval-batch-size", "16", "--no-progress", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["val/acc"] is not None and results["tst/acc"] is not None
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--out", str(report), "--corruptions", "gaussian_noise", "--severities", "1",
                 "--num-workers", "0"]) == 0
    evaluated = json.loads(report.read_text())
    assert "gaussian_noise" in json.dumps(evaluated)


# ----------------------------------------------------------------------------- bad input


def _prepared(tmp_path, **kwargs) -> Path:
    write_image_folders(tmp_path / "photos" / "train", CLASSES, per_folder=3)
    write_image_folders(tmp_path / "photos" / "val", CLASSES, per_folder=1, seed=1)
    prepare_shards("folder", tmp_path / "photos", tmp_path / "shards", workers=1, log=lambda *_: None, **kwargs)
    return tmp_path / "shards"


def _train_error(shards: Path, capsys, data="folder") -> str:
    capsys.readouterr()
    assert main(["train", "--data", data, "--data-dir", str(shards), "--out", str(shards.parent / "run"),
                 "--model", "resnet20", "--image-size", "16", "--num-workers", "0", "--iters", "1",
                 "--batch-size", "3", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err  # one paragraph
    return err


def test_a_truncated_shard_is_named(tmp_path, capsys):
    shards = _prepared(tmp_path)
    chunk = next((shards / "train").glob("chunk-*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:-100])
    err = _train_error(shards, capsys)
    assert str(chunk) in err and "truncated" in err


def test_a_damaged_or_truncated_index_is_named(tmp_path, capsys):
    shards = _prepared(tmp_path)
    index = shards / "train" / "index.json"
    original = index.read_bytes()
    index.write_bytes(original[: len(original) // 2])
    err = _train_error(shards, capsys)
    assert str(index) in err and "damaged or truncated" in err
    index.unlink()
    assert str(index) in _train_error(shards, capsys)


def test_a_damaged_sample_inside_a_shard_is_named(tmp_path, capsys):
    shards = _prepared(tmp_path)
    chunk = next((shards / "train").glob("chunk-*.bin"))
    raw = bytearray(chunk.read_bytes())
    start = raw.find(b"\xff\xd8")  # the first JPEG: its header overwritten, the size unchanged
    raw[start:start + 64] = bytes(64)
    chunk.write_bytes(bytes(raw))
    split = load_dataset("folder", shards).train
    from resnets.data.sources.decode import decode_encoded_rgb

    with pytest.raises(UserError) as error:
        for k in range(len(split)):
            decode_encoded_rgb(split.read_encoded(k), split.describe(k))
    assert str(chunk) in str(error.value)


def test_shards_of_another_dataset_or_preparation_are_refused(tmp_path, capsys):
    shards = _prepared(tmp_path)
    err = _train_error(shards, capsys, data="imagenet")
    assert str(shards / "manifest.json") in err and "'folder'" in err
    assert "cannot read" in _train_error(shards, capsys, data="cifar10")
    # A split folder swapped in from another preparation (other options) no longer matches the manifest.
    write_image_folders(tmp_path / "other" / "train", CLASSES, per_folder=4, seed=9)
    prepare_shards("folder", tmp_path / "other", tmp_path / "other_shards", max_side=16, workers=1, log=lambda *_: None)
    shutil.rmtree(shards / "train")
    shutil.copytree(tmp_path / "other_shards" / "train", shards / "train")
    err = _train_error(shards, capsys)
    assert str(shards / "train" / "index.json") in err and "another preparation" in err


def test_out_that_holds_shards_or_files_is_refused_and_left_alone(tmp_path, capsys):
    shards = _prepared(tmp_path)
    before = {p: p.read_bytes() for p in shards.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert prepare_cli("--data", "folder", "--data-dir", tmp_path / "photos", "--out", shards) == 2
    err = capsys.readouterr().err
    assert str(shards) in err and "already holds shards" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in shards.rglob("*") if p.is_file()} == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert prepare_cli("--data", "folder", "--data-dir", tmp_path / "photos", "--out", tmp_path / "busy") == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_an_unreadable_jpeg_is_skipped_and_named_or_stops_the_preparation(tmp_path, capsys):
    data = tmp_path / "photos"
    write_image_folders(data / "train", CLASSES, per_folder=3)
    bad = data / "train" / "dog" / "img_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    capsys.readouterr()
    assert prepare_cli("--data", "folder", "--data-dir", data, "--out", tmp_path / "stopped", "--on-bad-image", "stop") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "--on-bad-image skip" in err and "Traceback" not in err
    assert not (tmp_path / "stopped").exists() and not list(tmp_path.glob(".stopped.partial-*"))
    assert prepare_cli("--data", "folder", "--data-dir", data, "--out", tmp_path / "skipped") == 0
    captured = capsys.readouterr()
    assert f"skipped {bad}" in captured.err and "1 undecodable images skipped" in captured.out
    manifest = json.loads((tmp_path / "skipped" / "manifest.json").read_text())
    assert manifest["skipped"] == [str(bad)]
    bundle = load_dataset("folder", tmp_path / "skipped", val_size=0)
    assert sorted(bundle.train.labels.tolist()) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_bad_preparation_options_are_user_errors(tmp_path, capsys):
    write_image_folders(tmp_path / "photos", CLASSES, per_folder=2)
    for flags, needle in ((["--max-side", "4"], "--max-side"), (["--quality", "100"], "--quality")):
        assert prepare_cli("--data", "folder", "--data-dir", tmp_path / "photos", "--out", tmp_path / "s", *flags) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- resume and torchrun


def _train_subprocess(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    return subprocess.Popen([sys.executable, "-m", "resnets", "train", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_then_resume_on_shards_ends_bit_identical(tmp_path):
    data = tmp_path / "photos"
    write_image_folders(data, CLASSES, per_folder=8, size=(28, 24))
    prepare_shards("folder", data, tmp_path / "shards", workers=1, log=lambda *_: None)
    recipe = ["--data", "folder", "--data-dir", tmp_path / "shards", "--model", "resnet20", "--image-size", 16,
              "--iters", 16, "--eval-every", 4, "--batch-size", 6, "--eval-batch-size", 32, "--num-workers", 1,
              "--log-every", 4, "--no-progress", "--device", "cpu"]
    reference = _train_subprocess(["--out", tmp_path / "reference", *recipe])
    killed = tmp_path / "killed"
    victim = _train_subprocess(["--out", killed, *recipe])
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere between two checkpoints
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "results.json").exists()
    resumed = _train_subprocess(["--resume", killed, "--no-progress"])
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert reference.wait() == 0, reference.stderr.read().decode()
    ours, theirs = load_file(killed / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert [json.loads(line)["iter"] for line in metrics.read_text().splitlines()] == [4, 8, 12, 16]


_RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    from resnets.data import load_dataset, train_batches
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    split = load_dataset("folder", sys.argv[1], val_size=0).train
    batches = train_batches(split, batch_size=8, start_iteration=0, seed=3, device="cpu", mean=(0, 0, 0),
                            std=(1, 1, 1), image_size=8, augment="none", rank=rank, world_size=world, num_workers=1)
    seen = []
    for _ in range(3):
        x, y = next(batches)
        seen.append([[round(v) for v in (x[k].mean(dim=(1, 2)) * 255).tolist()] for k in range(x.shape[0])])
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    dist.destroy_process_group()
""")


def _colors(batches) -> list[list[tuple]]:
    return [[tuple(c) for c in batch] for batch in batches]


@pytest.mark.slow
def test_two_torchrun_processes_read_disjoint_samples_from_shards(tmp_path):
    # Every image one solid colour, so a sample is known by its colour after any crop.
    rng = np.random.default_rng(0)
    colors = rng.choice(np.arange(20, 236, 8), size=(24, 3))
    for k, color in enumerate(colors):
        write_jpeg(tmp_path / "photos" / CLASSES[k % 3] / f"img_{k}.JPEG",
                   np.broadcast_to(color.astype(np.uint8), (16, 16, 3)).copy(), quality=100)
    prepare_shards("folder", tmp_path / "photos", tmp_path / "shards", workers=1, log=lambda *_: None)
    script = tmp_path / "ranks.py"
    script.write_text(_RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(tmp_path / "shards"), str(tmp_path)], env=env, capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    ranks = [_colors(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in range(2)]
    # One process reading the same global batches: the ranks' halves, in rank order, are its batches.
    from resnets.data import train_batches

    split = load_dataset("folder", tmp_path / "shards", val_size=0).train
    single = train_batches(split, batch_size=8, start_iteration=0, seed=3, device="cpu", mean=(0, 0, 0),
                           std=(1, 1, 1), image_size=8, augment="none", num_workers=0)
    for step in range(3):
        x, _ = next(single)
        whole = [tuple(round(v) for v in (x[k].mean(dim=(1, 2)) * 255).tolist()) for k in range(8)]
        assert ranks[0][step] + ranks[1][step] == whole
        assert not set(ranks[0][step]) & set(ranks[1][step])  # disjoint samples (the colours are distinct)
        assert len(set(whole)) == 8


def _solid_color_shards(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    colors = rng.permutation(np.arange(24 * 3) * 3 + 20).reshape(24, 3)  # distinct per image
    for k, color in enumerate(colors):
        write_jpeg(tmp_path / "photos" / CLASSES[k % 3] / f"img_{k}.JPEG",
                   np.broadcast_to(color.astype(np.uint8), (16, 16, 3)).copy(), quality=100)
    prepare_shards("folder", tmp_path / "photos", tmp_path / "shards", workers=1, log=lambda *_: None)
    return tmp_path / "shards"


def _batch_colors(batches, steps) -> list[list[tuple]]:
    out = []
    for _ in range(steps):
        x, _ = next(batches)
        out.append([tuple(round(v) for v in (x[k].mean(dim=(1, 2)) * 255).tolist()) for k in range(x.shape[0])])
    return out


def test_batches_from_shards_resume_exactly_and_ranks_read_disjoint_samples(tmp_path):
    # The fast, in-process half of the two slow tests above: batch i is f(seed, i) on shards.
    from resnets.data import train_batches

    split = load_dataset("folder", _solid_color_shards(tmp_path), val_size=0).train
    common = dict(batch_size=8, seed=3, device="cpu", mean=(0, 0, 0), std=(1, 1, 1), image_size=8, augment="crop-flip",
                  num_workers=0)
    whole = _batch_colors(train_batches(split, start_iteration=0, **common), 5)
    assert _batch_colors(train_batches(split, start_iteration=3, **common), 2) == whole[3:]
    halves = [_batch_colors(train_batches(split, start_iteration=0, rank=r, world_size=2, **common), 5) for r in (0, 1)]
    for step in range(5):
        assert halves[0][step] + halves[1][step] == whole[step]
        assert not set(halves[0][step]) & set(halves[1][step]) and len(set(whole[step])) == 8


def test_shards_at_a_url_read_through_the_object_store_path(tmp_path, monkeypatch, capsys):
    # litdata's "local:" scheme is its downloader for a URL without a network: the manifest, index
    # and labels come through resnets' download into the cache, the chunks through litdata's own
    # remote reader, as for s3:// or gs://; only the store's client differs.
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    shards = _prepared(tmp_path)
    url = "local://" + str(shards)
    local, remote = load_dataset("folder", shards), load_dataset("folder", url)
    assert isinstance(remote.train, ShardSplit) and remote.class_names == local.class_names
    for split in ("train", "val"):
        ours, theirs = getattr(remote, split), getattr(local, split)
        assert np.array_equal(ours.labels, theirs.labels)
        assert [ours.read_encoded(k) for k in range(len(ours))] == [theirs.read_encoded(k) for k in range(len(theirs))]
    assert any((tmp_path / "cache" / "shards").rglob("*.bin"))  # the chunks were fetched into the cache

    missing = "local://" + str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="Could not download .*nowhere.*manifest.json"):
        load_dataset("folder", missing)
    assert main(["train", "--data", "folder", "--data-dir", missing, "--iters", "1"]) == 2
    assert "nowhere" in capsys.readouterr().err
