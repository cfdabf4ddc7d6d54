"""MIMO: the ResNet-50 parameter count derived from uncertainty-baselines' model code, the input
stacking against Keras' Permute + Reshape, the training batch's shuffle (input repetition, batch
repetition, each head its own labels), the loss as the sum of the heads' losses through the loop,
test-time outputs as the mean of the heads, and a real tiny run through train, eval, predict and
export."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnets import create_model
from resnets import train as train_module
from resnets.cli import main
from resnets.config import TrainConfig
from resnets.errors import UserError
from resnets.methods import METHODS, MIMO, build_method, method_from_config
from resnets.methods.mimo import MultiHead, stack_inputs
from tiny_runs import tiny_run


def tiny_resnet(seed=0, classes=10):
    torch.manual_seed(seed)
    return create_model("resnet20", num_classes=classes, image_size=16)


# -- ResNet-50 parameter count from uncertainty-baselines' model code --------------------------


def _ub_resnet50_mimo(members: int, classes: int = 1000) -> int:
    """Trainable weights of UB's models/resnet50_mimo.py, written from its code: conv1 7x7 from the
    3·M stacked channels to 64 (no bias) and bn_conv1; per bottleneck block 1x1 cin->f, 3x3 f->f,
    1x1 f->4f, each with a BatchNormalization (gamma, beta), and a 1x1 cin->4f projection with its
    BN in the first block of each group [3, 4, 6, 3] with filters [64, 128, 256, 512]; then
    edward2's DenseMultihead fc1000: one Dense of 2048 -> M·classes with a bias."""
    total = 7 * 7 * 3 * members * 64 + 2 * 64
    channels = 64
    for blocks, f in zip([3, 4, 6, 3], [64, 128, 256, 512]):
        for i in range(blocks):
            total += channels * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + 2 * 4 * f
            if i == 0:
                total += channels * 4 * f + 2 * 4 * f
            channels = 4 * f
    return total + 2048 * members * classes + members * classes


def test_resnet50_mimo_parameter_count_matches_ub():
    timm = pytest.importorskip("timm")
    base = sum(p.numel() for p in timm.create_model("resnet50", pretrained=False).parameters())
    assert _ub_resnet50_mimo(1) == base == 25_557_032  # one member: the plain ResNet-50
    torch.manual_seed(0)
    model = MIMO(ensemble_size=2).prepare_model(create_model("resnet50", num_classes=1000, image_size=224))
    assert sum(p.numel() for p in model.parameters()) == _ub_resnet50_mimo(2) == 27_615_440
    assert model.stem.conv.in_channels == 6 and model.fc.linear.out_features == 2000
    # Fresh heads drawn as UB's RandomNormal(stddev=0.01) (the zoo's --head-init normal here).
    model = MIMO(ensemble_size=3).prepare_model(
        create_model("resnet50", num_classes=1000, image_size=224, head_init="normal"))
    assert float(model.fc.linear.weight.detach().std()) == pytest.approx(0.01, rel=0.01)
    assert not torch.equal(model.fc.linear.weight[:1000], model.fc.linear.weight[1000:2000])


# -- inputs and heads --------------------------------------------------------------------------


def test_stacked_inputs_follow_keras_permute_and_reshape():
    # UB: inputs N x M x H x W x 3 -> Permute([2, 3, 4, 1]) -> N x H x W x 3 x M -> Reshape to
    # N x H x W x 3M. The same in NumPy, then to NCHW, against ours from N x M x 3 x H x W.
    rng = np.random.default_rng(0)
    nhwc = rng.random((2, 3, 5, 4, 3), dtype=np.float32)  # N, M, H, W, C
    keras = nhwc.transpose(0, 2, 3, 4, 1).reshape(2, 5, 4, 9).transpose(0, 3, 1, 2)
    ours = stack_inputs(torch.from_numpy(nhwc).permute(0, 1, 4, 2, 3))
    np.testing.assert_array_equal(ours.numpy(), keras)


def test_multihead_rows_are_head_major_within_each_sample():
    linear = torch.nn.Linear(4, 2 * 3)
    x = torch.randn(5, 4)
    rows = MultiHead(linear, heads=2)(x)
    full = linear(x)  # edward2's DenseMultihead: outputs reshaped to (batch, heads, classes)
    assert rows.shape == (10, 3)
    for n in range(5):
        for m in range(2):
            torch.testing.assert_close(rows[n * 2 + m], full[n, m * 3:(m + 1) * 3], rtol=0, atol=0)


def _ub_rows(batch: int, members: int, repetition: float, repetitions: int) -> tuple[int, int]:
    """(rows, shuffled rows) of UB's train step: tile(range(B), R) rows, of which the first
    int(rows x (1 - p)) are shuffled again for each member."""
    total = batch * repetitions
    return total, int(total * (1.0 - repetition))


@pytest.mark.parametrize("repetition, repetitions", [(0.6, 2), (0.0, 1), (1.0, 3), (0.25, 2)])
def test_training_rows_give_each_head_its_own_examples(repetition, repetitions):
    torch.manual_seed(0)
    members, batch = 3, 64
    method = MIMO(ensemble_size=members, input_repetition=repetition, batch_repetitions=repetitions)
    # Image i is filled with i + channel / 10, so every stacked channel says which image it holds.
    x = (torch.arange(batch).view(-1, 1, 1, 1) + torch.arange(3).view(1, -1, 1, 1) / 10).expand(batch, 3, 4, 4)
    y = torch.arange(batch) * 7 % 10
    stacked, labels = method.train_batch(x.contiguous(), y)
    total, shuffled = _ub_rows(batch, members, repetition, repetitions)
    assert stacked.shape == (total, 3 * members, 4, 4) and labels.shape == (total * members,)
    image = stacked[:, :, 0, 0]  # rows x (3·M): channel c·M + m holds image(m) + c / 10
    index = image[:, ::1].view(total, 3, members)[:, 0, :].round().long()  # rows x M
    for c in range(3):
        torch.testing.assert_close(image.view(total, 3, members)[:, c, :], index + c / 10)
    # Each head's label is its own input's label.
    torch.testing.assert_close(labels.view(total, members), y[index], rtol=0, atol=0)
    # Every input sees every image R times (batch repetition) ...
    for m in range(members):
        assert torch.equal(torch.bincount(index[:, m], minlength=batch), torch.full((batch,), repetitions))
    # ... the last rows give all inputs the same image (input repetition) ...
    assert (index[shuffled:] == index[shuffled:, :1]).all()
    # ... and the first rows are the same images reshuffled for each input.
    first = [sorted(index[:shuffled, m].tolist()) for m in range(members)]
    assert first[1:] == first[:-1]
    if shuffled > 10:
        assert (index[:shuffled, 0] != index[:shuffled, 1]).any()


def test_training_rows_keep_channels_last_and_soft_targets():
    method = MIMO(ensemble_size=2)
    x = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    soft = torch.softmax(torch.randn(8, 5), -1)
    stacked, targets = method.train_batch(x, soft)
    assert stacked.is_contiguous(memory_format=torch.channels_last)
    assert targets.shape == (8 * 2 * 2, 5)
    torch.testing.assert_close(targets.sum(-1), torch.ones(32))


def test_test_time_outputs_are_the_mean_of_the_heads_on_the_same_image():
    method = MIMO(ensemble_size=3)
    model = method.prepare_model(tiny_resnet()).eval()
    x = torch.randn(4, 3, 16, 16)
    pred = method.predict(model, x)
    # By hand: every input gets x (channel c·M + m = x's channel c), heads read from the M·C outputs.
    same = torch.cat([x[:, c:c + 1].repeat(1, 3, 1, 1) for c in range(3)], dim=1)
    with torch.no_grad():
        outputs = model.fc.linear(model.forward_features(same))
    heads = torch.stack([outputs[:, m * 10:(m + 1) * 10].softmax(-1) for m in range(3)])
    torch.testing.assert_close(pred.member_probs, heads, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pred.probs, heads.mean(0), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(heads[0], heads[1], atol=1e-3)  # fresh heads differ


def test_pretrained_weights_start_every_head_as_the_loaded_network():
    loaded = tiny_resnet(seed=3).eval()
    with torch.no_grad():
        loaded.fc.weight.normal_(0, 0.1)  # a trained-looking head
    model = MIMO(ensemble_size=2, pretrained=True).prepare_model(copy.deepcopy(loaded)).eval()
    x = torch.randn(5, 3, 16, 16)
    pred = MIMO(ensemble_size=2).predict(model, x)
    with torch.no_grad():
        reference = loaded(x).softmax(-1)
    for m in range(2):
        torch.testing.assert_close(pred.member_probs[m], reference, rtol=1e-4, atol=1e-6)


# -- the loss through the loop -------------------------------------------------------------------


def test_the_loop_trains_on_the_sum_of_the_heads_losses(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    handed, expected = [], []
    step = train_module._Trainer.step

    def recording_step(self, x, y, sums):
        if not handed:
            self.optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: handed.append([p.grad.clone() for p in self.model.parameters()]))
        peer = copy.deepcopy(self.model)
        rows = {}
        original = self.method.train_batch

        def remember(x, y):
            rows["x"], rows["y"] = original(x, y)
            return rows["x"], rows["y"]

        self.method.train_batch = remember
        step(self, x, y, sums)
        self.method.train_batch = original
        # UB: reduce_mean over the batch of reduce_sum over the heads of each head's cross-entropy.
        logits = peer(rows["x"]).view(-1, 2, 10)
        labels = rows["y"].view(-1, 2)
        loss = sum(F.cross_entropy(logits[:, m], labels[:, m]) for m in range(2))
        expected.append(torch.autograd.grad(loss, list(peer.parameters())))

    monkeypatch.setattr(train_module._Trainer, "step", recording_step)
    train_module.train(TrainConfig(data="digits", model="resnet20", image_size=16, batch_size=16, iters="2",
                                   eval_every="2", eval_batch_size=512, progress=False, device="cpu", augment="crop",
                                   method="mimo", ensemble_size=2, out=str(tmp_path / "run")))
    assert len(handed) == len(expected) == 2
    for got, want in zip(handed, expected):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * max(float(b.abs().max()), 1e-3))


# -- options and registry ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(ensemble_size=0), dict(ensemble_size=1.5), dict(batch_repetitions=0),
                                 dict(input_repetition=1.5), dict(input_repetition=-0.1)])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(UserError, match="mimo option"):
        MIMO(**bad)


@pytest.mark.parametrize("flags, named", [(["--ensemble-size", "0"], "--ensemble-size"),
                                          (["--mimo-input-repetition", "2"], "--mimo-input-repetition"),
                                          (["--mimo-batch-repetitions", "0"], "--mimo-batch-repetitions")])
def test_bad_flag_exits_2_without_traceback(tmp_path, monkeypatch, capsys, flags, named):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "mimo", *flags, "--iters", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_registered_and_built_from_config():
    assert METHODS["mimo"] is MIMO
    m = method_from_config(TrainConfig(method="mimo", ensemble_size=3, mimo_input_repetition=0.5,
                                       mimo_batch_repetitions=4))
    assert (m.members, m.input_repetition, m.batch_repetitions, m.loss_scale) == (3, 0.5, 4, 3.0)
    assert isinstance(build_method("mimo", batch_repetitions=1), MIMO)


# -- a real tiny run: train, eval, predict, export -----------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("mimo") / "run", method="mimo", ensemble_size=2, iters="4",
                    eval_every="4")


def test_eval_gives_member_metrics_and_diversity(run, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--out", str(out), "--corruptions", "gaussian_noise", "--severities", "3",
                 "--ood-data", "synthetic"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for key in ("nll", "acc", "top5", "ece", "brier", "member/nll", "member/acc", "diversity/disagreement",
                "corrupted/mean_nll", "ood/max_logit/auroc", "ood/mutual_information/auroc"):
        assert math.isfinite(metrics[key]), key
    assert metrics["nll"] <= metrics["member/nll"] + 1e-9  # the mixture's NLL is at most the members' mean


def test_predict_runs_on_an_image_folder(run, tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    assert main(["predict", str(run), str(folder)]) == 0
    assert "0.png" in capsys.readouterr().out


def test_export_equals_eager_in_onnxruntime(run, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from resnets.runs import load_run

    out = tmp_path / "mimo.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert (sidecar["method"], sidecar["members"], sidecar["member_kind"]) == ("mimo", 2, "mimo members")
    images = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    # Eager: the graph's normalization (the sidecar's mean and std) and the method's predict.
    loaded = load_run(run, "cpu", "best")
    mean, std = (torch.tensor(sidecar[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))
    want = loaded.method.predict(loaded.model.eval(), (torch.from_numpy(images) - mean) / std).probs.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
