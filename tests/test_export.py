"""`resnets export` on tiny real runs: ONNX graphs that onnxruntime runs at any batch size with the
probabilities `resnets eval` computes, TorchScript round trips, deep ensembles, the sidecar, and
the error when the format's package is missing."""
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from resnets.cli import main
from resnets.data import TensorSplit, eval_batches, load_dataset
from resnets.prediction import predict_dataset
from resnets.runs import load_run, read_run
from tiny_runs import IMAGE_SIZE, make_runs



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def digits():
    """uint8 digits test images at the runs' size and, as the graph takes them, in [0, 1]."""
    images = load_dataset("digits", image_size=IMAGE_SIZE).test.images[:12]
    return images, images.float() / 255


def eval_probs(run, images):
    """What `resnets eval` computes for these uint8 images: the run's method through the eval pipeline."""
    loaded = load_run(run)
    _, resolved = read_run(run)
    split = TensorSplit(images, torch.zeros(len(images), dtype=torch.int64))

    def batches():
        return eval_batches(split, batch_size=5, device="cpu", mean=resolved["mean"], std=resolved["std"],
                            image_size=IMAGE_SIZE, num_workers=0)

    out = predict_dataset(loaded.model, loaded.method, batches, int(resolved["num_classes"]))
    return out.probs.numpy(), None if out.member_probs is None else out.member_probs.numpy()


def export(*argv):
    return main(["export", *map(str, argv)])


@pytest.mark.parametrize("kind", ["det", "be"])
def test_onnx_matches_eval_in_onnxruntime_at_two_batch_sizes(runs, digits, tmp_path, kind):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run = runs[kind]
    out = tmp_path / "model.onnx"
    assert export(run, "--format", "onnx", "--out", out) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    _, resolved = read_run(run)
    assert sidecar["format"] == "onnx" and sidecar["image_size"] == IMAGE_SIZE and sidecar["num_classes"] == 10
    assert sidecar["mean"] == pytest.approx(resolved["mean"]) and sidecar["std"] == pytest.approx(resolved["std"])
    assert sidecar["class_names"] == [str(d) for d in range(10)]
    assert sidecar["input"]["shape"] == ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
    assert sidecar["input"]["value_range"] == [0.0, 1.0] and sidecar["input"]["normalized_inside"] is True
    assert sidecar["method"] == {"det": "deterministic", "be": "batchensemble"}[kind]
    assert sidecar["members"] == {"det": 1, "be": 2}[kind]
    assert sidecar["check"]["max_abs_diff"] < 1e-4

    u8, images = digits
    want, want_members = eval_probs(run, u8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for rows in (slice(0, 1), slice(1, 12)):  # one file, two batch sizes
        got = session.run(None, {"images": images[rows].numpy()})[0]
        assert got.shape == (rows.stop - rows.start, 10)
        np.testing.assert_allclose(got, want[rows], rtol=0, atol=1e-4)

    if kind == "be":
        members = tmp_path / "members.onnx"
        assert export(run, "--out", members, "--members") == 0
        assert json.loads(Path(f"{members}.json").read_text())["output"]["shape"] == [2, "batch", 10]
        session = ort.InferenceSession(str(members), providers=["CPUExecutionProvider"])
        for rows in (slice(0, 3), slice(3, 10)):
            got = session.run(None, {"images": images[rows].numpy()})[0]
            assert got.shape == (2, rows.stop - rows.start, 10)
            np.testing.assert_allclose(got, want_members[:, rows], rtol=0, atol=1e-4)


def _load_torchscript(path):
    files = {"resnets.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated upstream
        return torch.jit.load(str(path), _extra_files=files), json.loads(files["resnets.json"])


def test_torchscript_round_trip(runs, digits, tmp_path):
    out = tmp_path / "model.pt"
    assert export(runs["be"], "--format", "torchscript", "--out", out) == 0
    module, embedded = _load_torchscript(out)
    assert embedded["method"] == "batchensemble" and embedded["image_size"] == IMAGE_SIZE
    assert json.loads(Path(f"{out}.json").read_text())["check"]["max_abs_diff"] < 1e-5
    u8, images = digits
    want, _ = eval_probs(runs["be"], u8)
    with torch.no_grad():
        for rows in (slice(0, 2), slice(2, 12)):
            np.testing.assert_allclose(module(images[rows]).numpy(), want[rows], rtol=0, atol=1e-5)


def test_deep_ensemble_is_one_graph_averaging_its_members(runs, digits, tmp_path):
    out = tmp_path / "ensemble.pt"
    assert export(runs["det"], runs["det2"], "--format", "torchscript", "--out", out, "--members") == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["method"] == "ensemble" and sidecar["members"] == 2 and sidecar["member_kind"] == "runs"
    module, _ = _load_torchscript(out)
    u8, images = digits
    with torch.no_grad():
        got = module(images).numpy()
    assert got.shape == (2, 12, 10)
    for index, run in enumerate((runs["det"], runs["det2"])):
        np.testing.assert_allclose(got[index], eval_probs(run, u8)[0], rtol=0, atol=1e-5)


def test_default_file_is_in_the_run(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["det"], run)
    assert export(run, "--format", "torchscript") == 0
    assert (run / "model.pt").is_file() and (run / "model.pt.json").is_file()


def test_missing_onnx_package_names_the_install_command(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    out = tmp_path / "model.onnx"
    assert export(runs["det"], "--format", "onnx", "--out", out) == 2
    err = capsys.readouterr().err
    assert "pip install 'onnx>=1.15' 'onnxruntime>=1.17'" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("tta", ["flip", "flip+crops"])
def test_onnx_graph_with_tta_equals_eager_tta(runs, digits, tmp_path, tta):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from resnets.tta import with_tta

    out = tmp_path / "tta.onnx"
    assert export(runs["det"], "--out", out, "--tta", tta) == 0
    assert json.loads(Path(f"{out}.json").read_text())["tta"] == tta
    # Eager: the run's method under the same TTA, through the eval pipeline.
    u8, images = digits
    loaded = load_run(runs["det"])
    _, resolved = read_run(runs["det"])
    split = TensorSplit(u8, torch.zeros(len(u8), dtype=torch.int64))
    batches = lambda: eval_batches(split, batch_size=5, device="cpu", mean=resolved["mean"], std=resolved["std"],  # noqa: E731
                                   image_size=IMAGE_SIZE, num_workers=0)
    want = predict_dataset(loaded.model, with_tta(loaded.method, tta), batches, 10).probs.numpy()
    plain = predict_dataset(loaded.model, loaded.method, batches, 10).probs.numpy()
    assert np.abs(want - plain).max() > 1e-4  # the views change the prediction
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# --- timm's Hugging Face layout -------------------------------------------------------------------


def test_timm_format_gives_timm_the_same_logits(tmp_path):
    timm = pytest.importorskip("timm")
    from tiny_runs import tiny_run

    # An ImageNet-style ResNet-18 (7x7 stem: images above 64 px) on digits upsampled to 72 px.
    run = tiny_run(tmp_path / "r18", model="resnet18", image_size=72, batch_size=8, eval_batch_size=64)
    out = tmp_path / "timm"
    assert export(run, "--format", "timm", "--out", out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [3, 72, 72]
    loaded = load_run(run)
    x = torch.randn(3, 3, 72, 72, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = loaded.model.eval()(x)
        # The issue's command: timm keeps the backbone but drops the head, because its default
        # pretrained_cfg says 1000 classes (timm/models/_builder.py, load_pretrained) ...
        issue = timm.create_model("resnet18", pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"))).eval()
        pooled = issue.forward_head(issue.forward_features(x), pre_logits=True)
        assert (pooled - loaded.model.forward_features(x)).abs().max().item() <= 1e-5
        assert (issue(x) - want).abs().max().item() > 1e-3  # its head is a fresh one
        # ... so the overlay names the classes too, and then the logits are the run's.
        peer = timm.create_model("resnet18", pretrained=True, num_classes=10,
                                 pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"),
                                                             num_classes=10)).eval()
        assert (peer(x) - want).abs().max().item() <= 1e-5
        # config.json alone tells timm the architecture, classes and preprocessing.
        local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert (local(x) - want).abs().max().item() <= 1e-5
        assert local.pretrained_cfg["mean"] == pytest.approx(read_run(run)[1]["mean"])


@pytest.mark.parametrize("name", ["resnetrs50", "resnet50"])
def test_timm_key_mapping_round_trips_through_timm(name, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    from torch import nn

    from resnets import create_model
    from resnets.models.weights import export_weights_to_timm

    torch.manual_seed(0)
    ours = create_model(name, num_classes=7)
    g = torch.Generator().manual_seed(1)
    for m in ours.modules():  # fresh BN is the identity, which would hide a wrong BN mapping
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    ours.eval()
    save_file(export_weights_to_timm(ours), str(tmp_path / "model.safetensors"))
    peer = timm.create_model(name, pretrained=True, num_classes=7,
                             pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"),
                                                         num_classes=7)).eval()
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        assert (peer(x) - ours(x)).abs().max().item() <= 1e-5


def test_timm_format_refuses_what_timm_cannot_build(runs, tmp_path, capsys):
    # The tiny runs are ResNet-20s (CIFAR-style): not in timm.
    assert export(runs["det"], "--format", "timm", "--out", tmp_path / "timm") == 2
    assert "no timm counterpart" in capsys.readouterr().err
    assert export(runs["det"], "--format", "timm") == 2
    assert "--out DIR" in capsys.readouterr().err
    assert not (tmp_path / "timm").exists()
