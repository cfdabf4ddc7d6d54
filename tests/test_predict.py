"""`resnets predict` on tiny real runs: the probabilities of `resnets eval --save-predictions` for
the same images (deterministic, BatchEnsemble, a deep ensemble, temperature scaling), the outputs,
and the mistakes a user can make."""
import csv
import json
import shutil

import numpy as np
import pytest
import yaml
from formats import write_image_folders
from PIL import Image

from resnets.cli import main
from resnets.data import load_dataset
from tiny_runs import IMAGE_SIZE, make_runs, tiny_run

COUNT = 45  # test images written as PNG files: 40 in the folder, 5 in a subfolder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The first COUNT digits test images as lossless PNGs at the runs' image size, so decoding
    them gives exactly the uint8 tensors `resnets eval` reads; (folder, test-set index per
    predicted row in the order predict lists them)."""
    folder = tmp_path_factory.mktemp("images")
    test = load_dataset("digits", image_size=IMAGE_SIZE).test
    for i in range(COUNT):
        path = folder / ("more" if i >= 40 else "") / f"img_{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(path)
    return folder, list(range(COUNT))


def predict(*argv):
    return main(["predict", *map(str, argv)])


def read_jsonl(path, num_classes=10):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    probs = np.zeros((len(rows), num_classes))
    for n, row in enumerate(rows):
        for top in row["top_k"]:
            probs[n, top["class"]] = top["prob"]
    return rows, probs


RUN_SETS = {"det": ["det"], "batchensemble": ["be"], "deep-ensemble": ["det", "det2"]}


@pytest.mark.parametrize("kind", list(RUN_SETS))
def test_probabilities_equal_eval_save_predictions(runs, images, tmp_path, kind):
    run_dirs = [runs[name] for name in RUN_SETS[kind]]
    folder, indices = images
    npz = tmp_path / "eval.npz"
    assert main(["eval", *map(str, run_dirs), "--out", str(tmp_path / "eval.json"),
                 "--save-predictions", str(npz)]) == 0
    out = tmp_path / "preds.jsonl"
    # Batches of 7 cross the folder's end and the chunk boundaries at other places than eval's.
    assert predict(*run_dirs, folder, "--top-k", 10, "--batch-size", 7, "--out", out, "--no-progress") == 0
    rows, probs = read_jsonl(out)
    saved = np.load(npz)
    assert [row["path"] for row in rows] == (
        [str(folder / f"img_{i:03d}.png") for i in range(40)] + [str(folder / "more" / f"img_{i:03d}.png")
                                                                 for i in range(40, COUNT)])
    np.testing.assert_allclose(probs, saved["probs"][indices], rtol=0, atol=1e-6)
    expected_entropy = -(saved["probs"][indices] * np.log(saved["probs"][indices])).sum(1)
    np.testing.assert_allclose([row["entropy"] for row in rows], expected_entropy, rtol=1e-5)
    assert all(row["top_k"][0]["name"] == str(row["top_k"][0]["class"]) for row in rows)  # digits' names
    if kind == "det":
        assert all(row["disagreement"] is None for row in rows)
    else:
        members = saved["member_probs"][:, indices]
        expected = (members.argmax(-1) != saved["probs"][indices].argmax(-1)).mean(0)
        np.testing.assert_allclose([row["disagreement"] for row in rows], expected)
    assert all(row["abstain"] is None for row in rows)


def test_temperature_scaling_is_evals(runs, images, tmp_path):
    folder, indices = images
    npz = tmp_path / "eval.npz"
    assert main(["eval", str(runs["det"]), "--out", str(tmp_path / "eval.json"), "--temperature-scale",
                 "--save-predictions", str(npz)]) == 0
    out = tmp_path / "preds.jsonl"
    assert predict(runs["det"], folder, "--temperature-scale", "--top-k", 10, "--out", out, "--no-progress") == 0
    _, probs = read_jsonl(out)
    np.testing.assert_allclose(probs, np.load(npz)["probs"][indices], rtol=0, atol=1e-6)


def test_tta_flip_is_evals(runs, images, tmp_path):
    folder, indices = images
    npz = tmp_path / "eval.npz"
    assert main(["eval", str(runs["det"]), "--out", str(tmp_path / "eval.json"), "--tta", "flip",
                 "--save-predictions", str(npz)]) == 0
    out = tmp_path / "preds.jsonl"
    assert predict(runs["det"], folder, "--tta", "flip", "--top-k", 10, "--out", out, "--no-progress") == 0
    _, probs = read_jsonl(out)
    np.testing.assert_allclose(probs, np.load(npz)["probs"][indices], rtol=0, atol=1e-6)


def test_csv_and_abstain_parse_back(runs, images, tmp_path):
    folder, _ = images
    jsonl = tmp_path / "preds.jsonl"
    assert predict(runs["be"], folder, "--out", jsonl, "--no-progress") == 0
    rows, _ = read_jsonl(jsonl)
    assert all(len(row["top_k"]) == 5 for row in rows)
    top1 = sorted(row["top_k"][0]["prob"] for row in rows)
    threshold = (top1[len(top1) // 2 - 1] + top1[len(top1) // 2]) / 2  # some above, some below
    out = tmp_path / "preds.csv"
    assert predict(runs["be"], folder, "--abstain-below", threshold, "--top-k", 3, "--out", out,
                   "--no-progress") == 0
    with open(out, newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == len(rows) == COUNT
    assert list(lines[0]) == ["path", "top1_class", "top1_name", "top1_prob", "top2_class", "top2_name", "top2_prob",
                              "top3_class", "top3_name", "top3_prob", "entropy", "disagreement", "abstain"]
    for line, row in zip(lines, rows):
        assert line["path"] == row["path"]
        for r in range(3):
            assert int(line[f"top{r + 1}_class"]) == row["top_k"][r]["class"]
            assert float(line[f"top{r + 1}_prob"]) == row["top_k"][r]["prob"]
        assert float(line["entropy"]) == row["entropy"]
        assert float(line["disagreement"]) == row["disagreement"]
        assert line["abstain"] == ("true" if row["top_k"][0]["prob"] < threshold else "false")
    assert {line["abstain"] for line in lines} == {"true", "false"}


def test_table_on_the_terminal(runs, images, capsys):
    folder, _ = images
    assert predict(runs["det"], runs["det2"], folder / "img_001.png", folder / "more", "--top-k", 3,
                   "--abstain-below", 1.0) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ensemble of 2 runs (ensemble, best weights, 16 px): 6 images")
    assert out[1].split() == ["image", "top-1", "prob", "entropy", "disagree", "abstain", "top-2..3"]
    assert len(out) == 2 + 6 and out[2].startswith(str(folder / "img_001.png"))
    assert all(" yes " in line for line in out[2:])  # no softmax of an untrained model reaches 1


def test_unreadable_image_is_skipped_and_named(runs, images, tmp_path, capsys):
    folder, _ = images
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("img_000.png", "img_001.png"):
        shutil.copy(folder / name, mixed / name)
    (mixed / "broken.png").write_bytes(b"not a png at all")
    (mixed / "cut.png").write_bytes((folder / "img_002.png").read_bytes()[:40])
    (mixed / "notes.txt").write_text("not an image name: never read")
    out = tmp_path / "preds.jsonl"
    assert predict(runs["det"], mixed, "--out", out) == 0
    err = capsys.readouterr().err
    assert str(mixed / "broken.png") in err and str(mixed / "cut.png") in err and "notes.txt" not in err
    assert "2 images predicted, 2 skipped" in err and "Traceback" not in err
    rows, _ = read_jsonl(out)
    assert [row["path"] for row in rows] == [str(mixed / "img_000.png"), str(mixed / "img_001.png")]


def test_only_unreadable_images_is_a_user_error(runs, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert predict(runs["det"], bad, "--no-progress") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "none of the 1 images could be read" in err and "Traceback" not in err


def test_empty_folder_is_a_user_error(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    assert predict(runs["det"], empty) == 2
    err = capsys.readouterr().err
    assert f"folder {empty} holds no images" in err and "JPEG or PNG" in err and "Traceback" not in err


def test_missing_paths_and_bad_flags_are_user_errors(runs, images, tmp_path, capsys):
    folder, _ = images
    assert predict(runs["det"], tmp_path / "nowhere.png") == 2
    assert f"{tmp_path / 'nowhere.png'} does not exist" in capsys.readouterr().err
    assert predict(tmp_path / "no-run", folder) == 2
    assert f"run directory {tmp_path / 'no-run'} does not exist" in capsys.readouterr().err
    assert predict(runs["det"]) == 2
    assert "no images given after the run directory" in capsys.readouterr().err
    assert predict(runs["det"], folder, "--out", tmp_path / "preds.txt") == 2
    assert ".csv or .jsonl" in capsys.readouterr().err
    assert predict(runs["det"], folder, "--abstain-below", 1.5) == 2
    assert "--abstain-below must be a probability" in capsys.readouterr().err
    assert not (tmp_path / "preds.txt").exists()


def test_run_without_weights_is_the_runs_user_error(runs, images, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["det"], run)
    (run / "model.safetensors").unlink()
    (run / "checkpoints" / "best.safetensors").unlink()
    folder, _ = images
    assert predict(run, folder, "--no-progress") == 2
    err = capsys.readouterr().err
    assert f"run {run} has no best weights" in err and "Traceback" not in err


def test_ensemble_run_folder_predicts_with_its_members(runs, images, tmp_path):
    # The layout `resnets train --method ensemble` writes: member_<k>/ run directories and a
    # config.yaml naming them.
    root = tmp_path / "ensemble"
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(dict(config=dict(method="ensemble", ensemble_size=2),
                                                          resolved=dict(members=["member_0", "member_1"]))))
    shutil.copytree(runs["det"], root / "member_0")
    shutil.copytree(runs["det2"], root / "member_1")
    folder, _ = images
    assert predict(root, folder, "--top-k", 10, "--out", tmp_path / "root.jsonl", "--no-progress") == 0
    assert predict(runs["det"], runs["det2"], folder, "--top-k", 10, "--out", tmp_path / "runs.jsonl",
                   "--no-progress") == 0
    np.testing.assert_array_equal(read_jsonl(tmp_path / "root.jsonl")[1], read_jsonl(tmp_path / "runs.jsonl")[1])


def test_photo_folder_run_gets_evals_resize_and_center_crop(tmp_path):
    # A run on JPEG folders (the imagenet layout): predicting its val folder must give what
    # `resnets eval --split val` gives, through the resize-shorter-side + center-crop transform.
    data = tmp_path / "imagenet"
    write_image_folders(data / "train", ["n01", "n02", "n03"], per_folder=4, size=(40, 28))
    write_image_folders(data / "val", ["n01", "n02", "n03"], per_folder=2, size=(22, 37), seed=9)
    run = tiny_run(tmp_path / "run", data="imagenet", data_dir=str(data), batch_size=6, augment="crop-flip",
                   num_workers=0)
    npz = tmp_path / "eval.npz"
    assert main(["eval", str(run), "--out", str(tmp_path / "eval.json"), "--save-predictions", str(npz),
                 "--num-workers", "0"]) == 0
    out = tmp_path / "preds.jsonl"
    assert predict(run, data / "val", "--top-k", 3, "--out", out, "--no-progress") == 0
    rows, probs = read_jsonl(out, num_classes=3)
    assert [row["path"] for row in rows] == [str(data / "val" / c / f"img_{k}.JPEG") for c in ("n01", "n02", "n03")
                                             for k in range(2)]
    assert rows[0]["top_k"][0]["name"] in ("n01", "n02", "n03")
    np.testing.assert_allclose(probs, np.load(npz)["probs"], rtol=0, atol=1e-6)
