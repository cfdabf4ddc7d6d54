"""Rank-1 BNN: the ResNet-50 parameter count derived from uncertainty-baselines' model code, the
KL terms against their closed forms, the annealing schedule through the loop's generic
`extra_loss` hook, per-example sampling, and a real tiny run through train, eval, predict and export."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from resnets import create_model
from resnets.cli import main
from resnets.config import TrainConfig
from resnets.errors import UserError
from resnets.methods import METHODS, Rank1, build_method, method_from_config
from resnets.methods.rank1 import (Rank1Conv2d, Rank1Linear, Rank1Mean, cauchy_kl_estimate, kl_scale, normal_kl,
                                   rank1_layers)
from tiny_runs import tiny_run


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet20", num_classes=10, image_size=16)


# -- ResNet-50 parameter count from uncertainty-baselines' model code --------------------------


def _ub_resnet50_rank1(members: int, classes: int = 1000) -> int:
    """Trainable weights of UB's models/resnet50_rank1.py, written from its code: every
    Conv2DRank1 (the 7x7 stem conv1 3->64, then per bottleneck block 1x1 cin->f, 3x3 f->f, 1x1
    f->4f, and a 1x1 cin->4f projection in the first block of each group [3, 4, 6, 3] with filters
    [64, 128, 256, 512]; no bias) has its kernel plus alpha [M, in] and gamma [M, out], each a
    trainable_normal with a mean and a stddev variable; every BatchNormalization (one per conv,
    shared by the members) gamma and beta; DenseRank1 fc1000 a kernel 2048x1000, alpha [M, 2048],
    gamma [M, 1000] (mean + stddev) and ensemble_bias [M, 1000]."""
    def rank1(cin, cout, k):
        return k * k * cin * cout + 2 * members * (cin + cout)

    total = rank1(3, 64, 7) + 2 * 64
    channels = 64
    for blocks, f in zip([3, 4, 6, 3], [64, 128, 256, 512]):
        for i in range(blocks):
            total += rank1(channels, f, 1) + 2 * f + rank1(f, f, 3) + 2 * f + rank1(f, 4 * f, 1) + 2 * 4 * f
            if i == 0:
                total += rank1(channels, 4 * f, 1) + 2 * 4 * f
            channels = 4 * f
    return total + 2048 * classes + 2 * members * (2048 + classes) + members * classes


def test_resnet50_rank1_parameter_count_matches_ub():
    timm = pytest.importorskip("timm")
    base = sum(p.numel() for p in timm.create_model("resnet50", pretrained=False).parameters())
    # With no members the formula is the plain ResNet-50 minus its fc bias: timm's count.
    assert _ub_resnet50_rank1(0) + 1000 == base == 25_557_032
    torch.manual_seed(0)
    model = Rank1(ensemble_size=4).prepare_model(create_model("resnet50", num_classes=1000, image_size=224))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == _ub_resnet50_rank1(4)
    assert isinstance(model.stem.conv, Rank1Conv2d) and isinstance(model.fc, Rank1Linear)
    assert model.fc.bias.shape == (4, 1000) and model.fc.r_rho.shape == (4, 2048)


# -- the KL terms ------------------------------------------------------------------------------


def test_gaussian_kl_equals_the_closed_form_and_torch():
    torch.manual_seed(1)
    loc, scale = torch.randn(3, 5).double(), torch.rand(3, 5).double() + 0.05
    prior_loc, prior_scale = 1.0, 0.05
    # KL(N(m, s²) || N(m0, s0²)) = log(s0 / s) + (s² + (m - m0)²) / (2 s0²) - 1/2
    closed = (math.log(prior_scale) - torch.log(scale) + (scale ** 2 + (loc - prior_loc) ** 2) / (2 * prior_scale ** 2)
              - 0.5)
    ours = normal_kl(loc, scale, prior_loc, prior_scale)
    torch.testing.assert_close(ours, closed, rtol=1e-12, atol=1e-12)
    theirs = kl_divergence(Normal(loc, scale), Normal(torch.full_like(loc, prior_loc), torch.full_like(loc, prior_scale)))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_layer_kl_sums_both_factors_with_softplus_scales():
    torch.manual_seed(2)
    layer = Rank1Conv2d(nn.Conv2d(3, 4, 3, bias=False), 2, "normal", 0.75, 1e-3)
    want = 0.0
    for name in ("r", "s"):
        loc, rho = getattr(layer, name).detach().double(), getattr(layer, f"{name}_rho").detach().double()
        q = Normal(loc, torch.nn.functional.softplus(rho) + 1e-7)  # edward2's Softplus constraint
        want += kl_divergence(q, Normal(torch.ones_like(loc), torch.full_like(loc, 0.1))).sum().item()
    assert layer.kl(0.1).item() == pytest.approx(want, rel=1e-5)


def test_cauchy_kl_estimate_is_unbiased_for_the_closed_form():
    torch.manual_seed(3)
    loc, scale = torch.tensor([0.5, 1.0, -1.0]).double(), torch.tensor([0.2, 0.05, 1.0]).double()
    prior_loc, prior_scale = 1.0, 0.1
    # Chyzak & Nielsen (2019): KL(C(l1, s1) || C(l2, s2)) = log(((s1 + s2)² + (l1 - l2)²) / (4 s1 s2)).
    closed = torch.log(((scale + prior_scale) ** 2 + (loc - prior_loc) ** 2) / (4 * scale * prior_scale))
    draws = torch.stack([cauchy_kl_estimate(loc, scale, prior_loc, prior_scale) for _ in range(20000)])
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - closed).abs() < 5 * stderr).all(), (draws.mean(0), closed)


# -- the annealing schedule and the loop's generic hook -----------------------------------------


def test_kl_scale_follows_ubs_schedule():
    # UB: kl_scale = min(1, (optimizer.iterations + 1) / (steps_per_epoch * kl_annealing_epochs)).
    for step, want in [(1, 1 / 900), (450, 0.5), (899, 899 / 900), (900, 1.0), (5000, 1.0)]:
        assert kl_scale(step, 10, 90) == pytest.approx(want, rel=1e-12)
    assert kl_scale(1, 10, 0) == 1.0


def test_extra_loss_is_the_annealed_kl_over_the_dataset_size():
    method = Rank1(ensemble_size=2, kl_annealing_epochs=3)
    model = method.prepare_model(tiny_resnet())
    kl = method.kl(model).item()
    for iteration in (0, 14, 29, 100):
        want = kl * min(1.0, (iteration + 1) / (10 * 3)) / 1257
        assert method.extra_loss(model, iteration, 10, 1257).item() == pytest.approx(want, rel=1e-5)
    assert METHODS["deterministic"]().extra_loss(model, 0, 10, 1257) is None


def test_the_loop_adds_the_extra_loss_at_every_step(tmp_path, monkeypatch):
    calls = []
    original = Rank1.extra_loss

    def recording(self, model, iteration, steps_per_epoch, train_size):
        term = original(self, model, iteration, steps_per_epoch, train_size)
        calls.append((iteration, steps_per_epoch, train_size, term.requires_grad))
        return term

    monkeypatch.setattr(Rank1, "extra_loss", recording)
    tiny_run(tmp_path / "run", method="rank1", ensemble_size=2, iters="3", eval_every="3")
    import yaml
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    resolved = {k: v for section in resolved.values() if isinstance(section, dict) for k, v in section.items()}
    assert [c[0] for c in calls] == [0, 1, 2]  # the 0-based iteration of each step, once per step
    assert all(c[3] for c in calls)  # differentiable: it reaches the gradients
    assert {c[1:3] for c in calls} == {(resolved["steps_per_epoch"], resolved["train_size"])}


# -- layers: per-example draws, members, the mean network --------------------------------------


def test_draws_are_per_example_with_the_posterior_moments():
    torch.manual_seed(4)
    layer = Rank1Linear(nn.Linear(3, 2), 2, "normal", 0.5, 0.2)
    draws = layer.factor("r", 20000, torch.float32)  # M × examples × C
    torch.testing.assert_close(draws.mean(1), layer.r.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(draws.std(1), layer.scale("r").detach(), atol=0.02, rtol=0.05)
    assert draws.abs().max() <= 10.0
    layer.deterministic = True
    assert torch.equal(layer.factor("r", 5, torch.float32), layer.r.detach().unsqueeze(1))


def test_locations_start_with_ubs_random_sign_and_scales_at_the_dropout_rate():
    torch.manual_seed(5)
    layer = Rank1Linear(nn.Linear(4000, 10), 4, "normal", 0.75, 1e-3)
    assert set(layer.r.detach().unique().tolist()) == {-1.0, 1.0}
    assert (layer.r == 1).float().mean().item() == pytest.approx(0.75, abs=0.01)
    # The raw scale starts around softplus⁻¹(sqrt(p / (1 - p))): the scale itself around sqrt(p / (1 - p)).
    assert layer.scale("r").mean().item() == pytest.approx(math.sqrt(1e-3 / (1 - 1e-3)), rel=0.05)
    cauchy = Rank1Linear(nn.Linear(8, 10), 2, "cauchy", -0.5, 1e-3)
    assert torch.allclose(cauchy.scale("s"), torch.full_like(cauchy.s, math.sqrt(1e-3 / (1 - 1e-3))), rtol=1e-4)


def test_members_differ_and_sampling_happens_at_test_time():
    method = Rank1(ensemble_size=3, eval_samples=2)
    model = method.prepare_model(tiny_resnet()).eval()
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(6)
    first = method.predict(model, x)
    assert first.member_probs.shape == (3, 4, 10) and first.probs.shape == (4, 10)
    torch.testing.assert_close(first.probs, first.member_probs.mean(0))
    assert (first.member_probs[0] - first.member_probs[1]).abs().max() > 1e-4
    second = method.predict(model, x)
    assert not torch.allclose(first.member_probs, second.member_probs)  # a fresh draw
    mean = Rank1Mean(ensemble_size=3)
    torch.testing.assert_close(mean.predict(model, x).probs, mean.predict(model, x).probs)
    assert not any(layer.deterministic for layer in rank1_layers(model))


def test_param_groups_leave_factors_undecayed():
    method = Rank1(ensemble_size=2, fast_weight_lr_mult=0.5)
    model = method.prepare_model(tiny_resnet())
    from resnets.recipe import parameter_groups
    groups = method.param_groups(model, parameter_groups(model, TrainConfig(weight_decay=1e-3)))
    group_of = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("r", "s", "r_rho", "s_rho"):
            assert group_of[id(p)]["weight_decay"] == 0.0 and group_of[id(p)]["lr_mult"] == 0.5, name
        elif name.endswith("conv1.weight"):
            assert group_of[id(p)]["weight_decay"] == 1e-3 and group_of[id(p)].get("lr_mult", 1.0) == 1.0, name


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(ensemble_size=0), dict(posterior="laplace"), dict(prior_stddev=0.0),
                                 dict(random_sign_init=0.0), dict(random_sign_init=1.5), dict(dropout_rate=1.0),
                                 dict(kl_annealing_epochs=-1), dict(eval_samples=True), dict(fast_weight_lr_mult=0)])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(UserError, match="rank1 option"):
        Rank1(**bad)


def test_bad_flag_exits_2_without_traceback(capsys):
    assert main(["train", "--method", "rank1", "--rank1-posterior", "laplace", "--iters", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--rank1-posterior" in err and "Traceback" not in err


def test_registered_and_built_from_config():
    assert METHODS["rank1"] is Rank1
    m = method_from_config(TrainConfig(method="rank1", ensemble_size=3, rank1_posterior="cauchy",
                                       rank1_eval_samples=4, kl_annealing_epochs=5))
    assert (m.members, m.posterior, m.eval_samples, m.kl_annealing_epochs) == (3, "cauchy", 4, 5.0)
    assert isinstance(build_method("rank1", prior_stddev=0.2), Rank1)


# -- a real tiny run: train, eval, predict, export -----------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("rank1") / "run", method="rank1", ensemble_size=2, rank1_eval_samples=2,
                    iters="4", eval_every="4")


def test_eval_gives_member_metrics(run, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--out", str(out), "--corruptions", "gaussian_noise", "--severities", "3",
                 "--ood-data", "synthetic"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for key in ("nll", "acc", "top5", "ece", "brier", "member/nll", "member/acc", "diversity/disagreement",
                "corrupted/mean_nll", "ood/max_logit/auroc"):
        assert math.isfinite(metrics[key]), key
    assert metrics["nll"] <= metrics["member/nll"] + 1e-9


def test_predict_runs_on_an_image_folder(run, tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    assert main(["predict", str(run), str(folder)]) == 0
    assert "0.png" in capsys.readouterr().out


def test_export_traces_the_posterior_mean_and_says_so(run, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "r1.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["method"] == "rank1" and sidecar["exported_as"].startswith("rank1 mean")
    assert sidecar["members"] == 2 and any("posterior location" in note for note in sidecar["notes"])
    assert sidecar["check"]["max_abs_diff"] < 1e-4
    images = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images})[0]
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(got, session.run(None, {"images": images})[0])  # no sampling in the graph
