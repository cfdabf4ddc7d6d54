"""SNGP and the heteroscedastic head: parity of their layers with the formulas they implement,
ResNet-50 parameter counts derived from uncertainty-baselines' model code, the per-epoch reset of
the GP precision, and real tiny runs through train, eval, predict and export."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets import create_model
from resnets.cli import main
from resnets.config import TrainConfig
from resnets.errors import UserError
from resnets.methods import METHODS, Heteroscedastic, SNGP, build_method, method_from_config
from resnets.methods.heteroscedastic import HeteroscedasticHead
from resnets.methods.sngp import RandomFeatureGP, SpectralNormConv2d, orthogonal_random_features
from tiny_runs import tiny_run


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet20", num_classes=10, image_size=32)


# -- spectral normalization --------------------------------------------------------------------


def _true_norm(conv):
    return torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (32, 16, 1, 1)])
def test_power_iteration_reaches_the_reshaped_kernels_norm_times_the_bound(shape):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], shape[0], shape[2], padding=shape[2] // 2, bias=False)
    with torch.no_grad():
        conv.weight.mul_(20.0)  # well above the bound, so the bound acts
    bound = 0.9
    layer = SpectralNormConv2d(conv, bound, iterations=1).train()
    x = torch.randn(2, shape[1], 6, 6)
    for _ in range(200):  # UB's one iteration per training step; a random kernel's top two are close
        layer(x)
    sigma = _true_norm(conv)
    assert sigma > bound
    assert layer.sigma().item() == pytest.approx(sigma, rel=0.01)
    effective = torch.linalg.matrix_norm(layer.normalized_weight().detach().flatten(1), ord=2).item()
    assert effective == pytest.approx(bound, rel=0.01)
    # The layer is the convolution with that kernel.
    want = F.conv2d(x, conv.weight * (bound / layer.sigma()), padding=shape[2] // 2)
    torch.testing.assert_close(layer.eval()(x), want, rtol=1e-5, atol=1e-5)


def test_spectral_norm_leaves_a_small_kernel_alone_and_is_fixed_in_eval():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    layer = SpectralNormConv2d(conv, bound=6.0, iterations=5).train()
    x = torch.randn(1, 4, 5, 5)
    layer(x)
    assert _true_norm(conv) < 6.0
    torch.testing.assert_close(layer.normalized_weight(), conv.weight)
    layer.eval()
    u = layer.u.clone()
    layer(x)
    assert torch.equal(layer.u, u)  # no power iteration outside training


def test_spectral_norm_gradient_reaches_the_kernel():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(50.0)
    layer = SpectralNormConv2d(conv, bound=1.0, iterations=3).train()
    layer(torch.randn(2, 3, 4, 4)).square().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


# -- the GP output layer -----------------------------------------------------------------------


def _direct(layer, x, train_batches, discount=-1.0):
    """The RFF features, logits, precision and mean-field logits written from the formulas (float64)."""
    w = layer.feature_weight.double().numpy()
    b = layer.feature_bias.double().numpy()
    beta = layer.weight.detach().double().numpy()
    bias = layer.logit_bias.double().numpy()
    ridge, scale, lam = layer.ridge_penalty, 1.0 / layer.input_scale ** 2, layer.mean_field_factor

    def phi(z):
        return np.cos(z.double().numpy() / np.sqrt(scale) @ w.T + b)

    precision = ridge * np.eye(layer.hidden_dim)
    for batch in train_batches:
        p = phi(batch)
        if discount > 0:
            precision = discount * precision + (1 - discount) * p.T @ p / len(p)
        else:
            precision = precision + p.T @ p
    f = phi(x)
    logits = f @ beta.T + bias
    variance = ridge * np.einsum("ni,ij,nj->n", f, np.linalg.inv(precision), f)
    return logits, precision, variance, logits / np.sqrt(1 + lam * variance)[:, None]


@pytest.mark.parametrize("discount", [-1.0, 0.9])
def test_gp_layer_equals_the_direct_computation(discount):
    torch.manual_seed(3)
    layer = RandomFeatureGP(5, 3, hidden_dim=8, scale=2.0, bias=0.5, random_features="rff", ridge_penalty=0.7,
                            cov_discount_factor=discount, mean_field_factor=1.3)
    with torch.no_grad():
        layer.weight.normal_()  # O(1) weights so the logits are not all close to the bias
    batches = [torch.randn(4, 5), torch.randn(3, 5)]
    layer.train()
    train_logits = [layer(b) for b in batches]
    x = torch.randn(6, 5)
    logits, precision, variance, mean_field = _direct(layer, x, batches, discount)
    np.testing.assert_allclose(layer.precision.double().numpy(), precision, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(train_logits[0].detach().double().numpy(), _direct(layer, batches[0], [])[0],
                               rtol=1e-5, atol=1e-5)
    layer.eval()
    np.testing.assert_allclose(layer.variance(layer.features(x)).double().numpy(), variance, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer(x).detach().double().numpy(), mean_field, rtol=1e-4, atol=1e-5)
    assert (variance > 0).all() and not np.allclose(mean_field, logits)


def test_gp_variance_is_larger_far_from_the_training_features():
    torch.manual_seed(4)
    layer = RandomFeatureGP(4, 2, hidden_dim=64, scale=1.0, random_features="rff", ridge_penalty=1.0)
    with torch.no_grad():
        layer.feature_weight.normal_()  # unit-variance frequencies: an RBF kernel of length-scale 1
    layer.train()
    for _ in range(20):
        layer(torch.randn(32, 4) * 0.1)
    layer.eval()
    near, far = torch.randn(16, 4) * 0.1, torch.randn(16, 4) * 0.1 + 5.0
    assert layer.variance(layer.features(far)).min() > 3 * layer.variance(layer.features(near)).max()


def test_orthogonal_random_features_are_orthogonal_within_a_block():
    torch.manual_seed(5)
    w = orthogonal_random_features(24, 16, stddev=0.05)
    assert w.shape == (24, 16)
    block = w[:16]
    gram = block @ block.T
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 1e-5 * gram.diagonal().max()
    # Row lengths are those of N(0, 0.05²) vectors in 16 dimensions: about 0.05·4.
    assert 0.05 * 2 < w.norm(dim=1).mean() < 0.05 * 6


def test_sngp_converts_convs_outside_the_stem_and_the_head():
    model = tiny_resnet()
    stem_convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    SNGP(gp_hidden_dim=32).prepare_model(model)
    assert all(isinstance(m, nn.Conv2d) for m in stem_convs) and stem_convs[0] is model.stem.conv
    assert sum(isinstance(m, SpectralNormConv2d) for m in model.modules()) == n_convs - len(stem_convs)
    assert isinstance(model.fc, RandomFeatureGP) and model.fc.weight.shape == (10, 32)
    keys = model.state_dict()
    assert "fc.precision" in keys and "fc.feature_weight" in keys and "layer1.0.conv1.u" in keys
    assert "fc.covariance" not in keys  # derived from the precision, not saved
    # Only beta (and the body) train: the random features and the bias are fixed, as in UB.
    assert {n for n, _ in model.fc.named_parameters()} == {"weight"}


def test_on_epoch_start_resets_the_precision_only_for_the_exact_mode():
    model = SNGP(gp_hidden_dim=16, gp_ridge_penalty=2.0).prepare_model(tiny_resnet())
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert not torch.allclose(model.fc.precision, 2.0 * torch.eye(16))
    SNGP(gp_hidden_dim=16, gp_ridge_penalty=2.0).on_epoch_start(model, 1)
    torch.testing.assert_close(model.fc.precision, 2.0 * torch.eye(16))
    moving = SNGP(gp_hidden_dim=16, gp_cov_discount_factor=0.99).prepare_model(tiny_resnet()).train()
    moving(torch.randn(4, 3, 32, 32))
    before = moving.fc.precision.clone()
    SNGP(gp_cov_discount_factor=0.99).on_epoch_start(moving, 1)
    assert torch.equal(moving.fc.precision, before)


def test_eval_covariance_follows_a_loaded_precision():
    model = SNGP(gp_hidden_dim=16).prepare_model(tiny_resnet()).eval()
    x = torch.randn(3, 3, 32, 32)
    first = model(x)
    state = model.state_dict()
    state["fc.precision"] = state["fc.precision"] * 0.01  # a much less certain posterior
    model.load_state_dict(state)
    assert not torch.allclose(model(x), first)


# -- the heteroscedastic head ------------------------------------------------------------------


def test_heteroscedastic_head_is_the_mc_average_of_the_formula():
    torch.manual_seed(6)
    loc = nn.Linear(7, 5)
    head = HeteroscedasticHead(loc, num_factors=2, temperature=1.5, mc_samples=400).train()
    x = torch.randn(3, 7)
    torch.manual_seed(7)
    out = head(x)
    torch.manual_seed(7)
    eps_r, eps_k = torch.randn(400, 2), torch.randn(400, 5)
    # u = mu + V eps_R + d * eps_K, V = scale(x) as 5 × 2, d = softplus(diag(x)) + 1e-3 (edward2).
    mu = x @ loc.weight.T + loc.bias
    v = (x @ head.scale.weight.T + head.scale.bias).reshape(3, 5, 2)
    d = torch.log1p(torch.exp(x @ head.diag.weight.T + head.diag.bias)) + 1e-3
    u = mu[:, None, :] + torch.einsum("nkr,sr->nsk", v, eps_r) + d[:, None, :] * eps_k[None]
    want = torch.softmax(u / 1.5, dim=-1).mean(1).clamp_min(1e-5).log()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    # The loop's cross-entropy on this output is the NLL of the averaged probabilities.
    y = torch.tensor([0, 3, 4])
    probs = torch.softmax(u / 1.5, dim=-1).mean(1)
    torch.testing.assert_close(F.cross_entropy(out, y), -probs[torch.arange(3), y].log().mean(), rtol=1e-4, atol=1e-6)


def test_heteroscedastic_covariance_is_low_rank_plus_diagonal():
    """With many samples the latent logits have mean mu and covariance V Vᵀ + diag(d²)."""
    torch.manual_seed(8)
    head = HeteroscedasticHead(nn.Linear(4, 6), num_factors=2, temperature=1.0, mc_samples=1)
    x = torch.randn(1, 4)
    with torch.no_grad():
        u = head.sample_logits(x, torch.randn(40000, 2), torch.randn(40000, 6))[0]
        v = head.scale(x).reshape(6, 2)
        d = F.softplus(head.diag(x))[0] + 1e-3
        cov = v @ v.T + torch.diag(d ** 2)
    torch.testing.assert_close(u.mean(0), head.loc(x)[0].detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(u.T), cov, atol=0.05 * cov.abs().max().item(), rtol=0)


def test_heteroscedastic_rejects_more_factors_than_classes_and_bad_options():
    with pytest.raises(UserError, match="--het-num-factors 15 is more than the 10 classes"):
        Heteroscedastic().prepare_model(tiny_resnet())
    for bad in (dict(num_factors=0), dict(mc_samples=True), dict(temperature=0.0)):
        with pytest.raises(UserError):
            Heteroscedastic(**bad)
    for bad in (dict(spec_norm_bound=0), dict(gp_random_features="sobol"), dict(gp_cov_discount_factor=1.5),
                dict(gp_hidden_dim=0)):
        with pytest.raises(UserError):
            SNGP(**bad)


def test_methods_are_registered_and_built_from_config():
    assert METHODS["sngp"] is SNGP and METHODS["heteroscedastic"] is Heteroscedastic
    sngp = method_from_config(TrainConfig(method="sngp", gp_hidden_dim=64, spec_norm_bound=3.0))
    assert sngp.gp["hidden_dim"] == 64 and sngp.spec_norm_bound == 3.0
    het = method_from_config(TrainConfig(method="heteroscedastic", het_num_factors=4, het_mc_samples=9))
    assert (het.num_factors, het.mc_samples, het.temperature) == (4, 9, 1.5)
    assert isinstance(build_method("heteroscedastic", num_factors=2), Heteroscedastic)


# -- ResNet-50 parameter counts from uncertainty-baselines' model code -------------------------


def _ub_resnet50_body() -> int:
    """Trainable weights of UB's ResNet-50 without its classifier (models/resnet50_*.py): a 7x7
    stem conv (no bias) + BN, then groups of bottleneck blocks [3, 4, 6, 3] with filters
    [64, 128, 256, 512]: 1x1 -> 3x3 -> 1x1 (x4) convs without bias, each with a BN (gamma, beta),
    and a 1x1 projection + BN where the shape changes (the first block of each group)."""
    total = 7 * 7 * 3 * 64 + 2 * 64
    channels = 64
    for blocks, f in zip([3, 4, 6, 3], [64, 128, 256, 512]):
        for i in range(blocks):
            total += channels * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + 2 * 4 * f
            if i == 0:
                total += channels * 4 * f + 2 * 4 * f
            channels = 4 * f
    return total


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_resnet50_sngp_parameter_count_matches_ub():
    assert _ub_resnet50_body() + 2048 * 1000 + 1000 == 25_557_032  # the formula's body is torchvision's
    torch.manual_seed(0)
    model = SNGP().prepare_model(create_model("resnet50", num_classes=1000, image_size=224))
    # edward2's RandomFeatureGaussianProcess: the output Dense (num_inducing -> classes, no bias)
    # trains; the random-feature Dense and the output bias are trainable=False; the precision
    # matrix and SN's u, v are non-trainable weights.
    assert _trainable(model) == _ub_resnet50_body() + 1024 * 1000
    assert model.fc.precision.shape == (1024, 1024) and model.fc.feature_weight.shape == (1024, 2048)


def test_resnet50_heteroscedastic_parameter_count_matches_ub():
    torch.manual_seed(0)
    model = Heteroscedastic().prepare_model(create_model("resnet50", num_classes=1000, image_size=224))
    # edward2's MCSoftmaxDenseFA: loc Dense(1000), scale Dense(1000 * 15), diag Dense(1000), all with bias.
    assert _trainable(model) == _ub_resnet50_body() + (2048 + 1) * (1000 + 1000 * 15 + 1000)


# -- real tiny runs: train, eval, predict, export ------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sngp_het")
    return dict(
        sngp=tiny_run(root / "sngp", method="sngp", gp_hidden_dim=32, iters="4", eval_every="4"),
        het=tiny_run(root / "het", method="heteroscedastic", het_num_factors=2, het_mc_samples=50,
                     iters="4", eval_every="4"),
    )


@pytest.mark.parametrize("kind", ["sngp", "het"])
def test_eval_reproduces_the_runs_own_test_metrics(runs, tmp_path, kind, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(runs[kind]), "--out", str(out), "--corruptions", "gaussian_noise", "--severities", "3",
                 "--ood-data", "synthetic"]) == 0
    report = json.loads(out.read_text())
    results = json.loads((runs[kind] / "results.json").read_text())
    for key in ("nll", "acc", "top5", "ece", "brier", "corrupted/mean_nll", "ood/max_logit/auroc",
                "ood/energy/auroc"):
        assert math.isfinite(report["metrics"][key]), key
    if kind == "sngp":  # deterministic: the saved precision gives back the run's own figures
        assert report["metrics"]["nll"] == pytest.approx(results["tst/nll"], rel=1e-5)
        assert report["metrics"]["acc"] == pytest.approx(results["tst/acc"])


def test_sngp_run_saves_the_epochs_precision(runs):
    from safetensors.torch import load_file
    weights = load_file(str(next(Path(runs["sngp"]).glob("*.safetensors"))))
    precision = weights["fc.precision"]
    # 4 iterations of batch 32 over 1257 images: one epoch, so P = I + the features of 128 images.
    assert not torch.allclose(precision, torch.eye(32))
    assert torch.linalg.eigvalsh(precision.double()).min() >= 1.0 - 1e-4


def test_heteroscedastic_exports_its_mean_and_says_so(runs, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "het.onnx"
    assert main(["export", str(runs["het"]), "--out", str(out)]) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["method"] == "heteroscedastic" and sidecar["exported_as"].startswith("heteroscedastic mean")
    assert any("MC samples" in note for note in sidecar["notes"])
    images = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # Deterministic: the same input twice gives the same output (no sampling in the graph).
    again = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    np.testing.assert_array_equal(got, again)


def test_sngp_exports_mean_field_probabilities(runs, tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "sngp.onnx"
    assert main(["export", str(runs["sngp"]), "--out", str(out)]) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["exported_as"] == "sngp" and sidecar["check"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("kind", ["sngp", "het"])
def test_predict_runs_on_an_image_folder(runs, tmp_path, kind, capsys):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    assert main(["predict", str(runs[kind]), str(folder)]) == 0
    assert "0.png" in capsys.readouterr().out


# -- exact resume: the GP precision and the MC noise carry on across a stop --------------------

# 10 steps of batch 256 over 1257 digits: epochs of 4 steps start at iterations 0, 4 and 8.
RESUME = ["--image-size", 16, "--batch-size", 256, "--eval-batch-size", 512, "--iters", 10, "--eval-every", 5,
          "--no-progress"]
RESUME_METHODS = {"sngp": ["--gp-hidden-dim", 32],
                  "heteroscedastic": ["--het-num-factors", 2, "--het-mc-samples", 20]}


@pytest.mark.parametrize("method", RESUME_METHODS)
def test_stop_and_resume_ends_bit_identical(tmp_path, monkeypatch, method):
    import os
    import signal

    from safetensors.torch import load_file

    from resnets import train as train_module

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    epochs = []
    monkeypatch.setattr(METHODS[method], "on_epoch_start",
                        lambda self, model, epoch, _orig=METHODS[method].on_epoch_start:
                        (epochs.append(epoch), _orig(self, model, epoch)))
    recipe = ["--method", method, *RESUME_METHODS[method], *RESUME]
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert main(["train", "--out", str(reference), *map(str, recipe)]) == 0
    assert epochs == [0, 1, 2]
    step = train_module._Trainer.step

    def stop_at_6(self, x, y, sums):
        step(self, x, y, sums)
        if self.progress.iteration + 1 == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module._Trainer, "step", stop_at_6)
    assert main(["train", "--out", str(out), *map(str, recipe)]) == train_module.STOPPED_EXIT_STATUS
    monkeypatch.setattr(train_module._Trainer, "step", step)
    epochs.clear()
    assert main(["train", "--resume", str(out)]) == 0
    assert epochs == [2]  # mid-epoch 1 is not reset again; epoch 2 starts at iteration 8
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    if method == "sngp":
        assert not torch.allclose(ours["fc.precision"], torch.eye(32))
