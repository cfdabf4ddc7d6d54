"""`--data folder`: your own photos in torchvision's ImageFolder layout, as small real JPEG folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from formats import write_image_folders, write_jpeg
from resnets.cli import main
from resnets.data import FolderSplit, load_dataset
from resnets.data.sources import VAL_FRACTION
from resnets.errors import UserError

CLASSES = ["cat", "dog", "eel"]


def labels_by_class(split: FolderSplit) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for path, label in split.samples:
        found.setdefault(Path(path).parent.name, set()).add(label)
    return found


def test_train_val_test_layout(tmp_path):
    write_image_folders(tmp_path / "train", CLASSES, per_folder=4)
    write_image_folders(tmp_path / "val", CLASSES, per_folder=2, seed=1)
    write_image_folders(tmp_path / "test", ["dog"], per_folder=3, seed=2)  # a test set may lack classes
    bundle = load_dataset("folder", tmp_path)
    assert bundle.class_names == CLASSES and bundle.num_classes == 3 and bundle.image_size == 224
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 6, 3)
    # Labels are the positions of the sorted class folder names, as torchvision's ImageFolder numbers them.
    from torchvision.datasets import ImageFolder

    reference = ImageFolder(str(tmp_path / "train"))
    assert reference.classes == CLASSES
    assert sorted(bundle.train.samples) == sorted(reference.samples)
    assert labels_by_class(bundle.val) == {"cat": {0}, "dog": {1}, "eel": {2}}
    assert labels_by_class(bundle.test) == {"dog": {1}}
    assert load_dataset("folder", tmp_path, val_size=0).val is None
    assert load_dataset("folder", tmp_path / "train").test is None  # train/ itself is a one-folder dataset


def test_one_folder_is_split_by_val_size_with_every_class_held_out(tmp_path):
    write_image_folders(tmp_path, CLASSES, per_folder=10)
    bundle = load_dataset("folder", tmp_path)
    n_val = round(30 * VAL_FRACTION)
    assert len(bundle.val) == n_val and len(bundle.train) == 30 - n_val and bundle.test is None
    assert set(labels_by_class(bundle.val)) == set(CLASSES)  # class-balanced tail, not the last class only
    assert not set(bundle.train.samples) & set(bundle.val.samples)
    three = load_dataset("folder", tmp_path, val_size=3)
    assert sorted(label for _, label in three.val.samples) == [0, 1, 2]
    assert load_dataset("folder", tmp_path, val_size=0).val is None
    assert len(load_dataset("folder", tmp_path, val_size=0).train) == 30


def test_bad_folders_are_clear_errors(tmp_path):
    def error(path, **kwargs) -> str:
        with pytest.raises(UserError) as caught:
            load_dataset("folder", path, **kwargs)
        return str(caught.value)

    assert "is not a folder" in error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "empty" in error(tmp_path / "empty") and "ImageFolder" in error(tmp_path / "empty")
    write_jpeg(tmp_path / "loose" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    assert "1 images directly" in error(tmp_path / "loose")
    write_image_folders(tmp_path / "hole", ["a", "b"], per_folder=2)
    (tmp_path / "hole" / "c").mkdir()
    assert str(tmp_path / "hole" / "c") in error(tmp_path / "hole")
    write_image_folders(tmp_path / "odd" / "train", ["a", "b"], per_folder=2)
    write_image_folders(tmp_path / "odd" / "val", ["a", "z"], per_folder=1)
    assert "z" in error(tmp_path / "odd") and str(tmp_path / "odd" / "val") in error(tmp_path / "odd")
    write_image_folders(tmp_path / "ok" / "train", ["a", "b"], per_folder=2)
    write_image_folders(tmp_path / "ok" / "val", ["a", "b"], per_folder=1)
    assert "--val-size" in error(tmp_path / "ok", val_size=2)
    assert "--num-classes" in error(tmp_path / "ok", num_classes=5)
    write_image_folders(tmp_path / "noval", ["val", "test", "x"], per_folder=1)
    assert "train/" in error(tmp_path / "noval")


def test_resnets_train_on_a_folder_then_predict_names_the_classes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "photos"
    write_image_folders(data / "train", CLASSES, per_folder=6, size=(40, 36))
    write_image_folders(data / "val", CLASSES, per_folder=2, size=(30, 44), seed=3)
    out = tmp_path / "run"
    assert main(["train", "--data", "folder", "--data-dir", str(data), "--out", str(out), "--model", "resnet18",
                 "--image-size", "32", "--num-workers", "0", "--iters", "2", "--eval-every", "2", "--batch-size", "6",
                 "--eval-batch-size", "16", "--no-progress", "--device", "cpu"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["resolved"]["num_classes"] == 3 and saved["resolved"]["class_names"] == CLASSES
    assert json.loads((out / "results.json").read_text())["val/acc"] is not None
    predictions = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), str(data / "val" / "dog"), "--out", str(predictions), "--no-progress",
                 "--num-workers", "0"]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 2 and all(row["top_k"][0]["name"] in CLASSES for row in rows)
    capsys.readouterr()
    assert main(["train", "--data", "folder", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nothing" in err and "Traceback" not in err
