import numpy as np
import pytest
import torch

from resnets import create_model
from resnets.errors import UserError
from resnets.prediction import EvalOutput, predict_dataset, save_predictions
from resnets.methods import SWAG, BatchEnsemble, DeepEnsemble, MCDropout, Method


def tiny_resnet(seed=0, **overrides):
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=10, image_size=32, **overrides)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(2):
            model(torch.randn(8, 3, 8, 8))
    return model


def make_batches(n_batches=3, batch=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(batch, 3, 8, 8, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(n_batches)]
    return lambda: iter(data), data


def test_single_pass_matches_softmax_and_restores_mode():
    model = tiny_resnet()
    batches, data = make_batches()
    out = predict_dataset(model, Method(), batches, num_classes=10)
    assert model.training  # the caller's mode comes back
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(x).softmax(-1) for x, _ in data])
    torch.testing.assert_close(out.probs, expected)
    assert torch.equal(out.labels, torch.cat([y for _, y in data]))
    assert out.member_probs is None
    assert out.metrics["count"] == 15
    assert set(out.metrics) >= {"nll", "acc", "top5", "ece", "brier"}
    assert not any(k.startswith("member/") for k in out.metrics)


def test_streaming_gives_same_metrics():
    model = tiny_resnet()
    batches, _ = make_batches()
    for method in (Method(), MCDropout(samples=3)):
        if isinstance(method, MCDropout):
            model = tiny_resnet(dropout=0.3)
            method.prepare_model(model)
        torch.manual_seed(0)
        kept = predict_dataset(model, method, batches, 10)
        torch.manual_seed(0)
        streamed = predict_dataset(model, method, batches, 10, keep_predictions=False)
        assert streamed.probs is None and streamed.member_probs is None
        assert streamed.metrics == kept.metrics
        assert torch.equal(streamed.labels, kept.labels)


def test_batchensemble_members_in_output():
    model = tiny_resnet()
    method = BatchEnsemble(ensemble_size=3)
    method.prepare_model(model)
    batches, _ = make_batches()
    out = predict_dataset(model, method, batches, 10)
    assert out.member_probs.shape == (3, 15, 10)
    torch.testing.assert_close(out.probs, out.member_probs.mean(0))
    for key in ("member/acc", "member/nll", "member/ece", "diversity/disagreement", "diversity/avg_kl"):
        assert key in out.metrics
    assert out.metrics["diversity/avg_kl"] > 0


def test_deep_ensemble_probs_are_mean_of_members():
    members = [tiny_resnet(seed=s) for s in (1, 2)]
    method = DeepEnsemble([m.state_dict() for m in members])
    model = method.prepare_model(tiny_resnet(seed=5))
    batches, data = make_batches()
    for keep in (True, False):
        out = predict_dataset(model, method, batches, 10, keep_predictions=keep)
        assert out.metrics["count"] == 15 and "member/acc" in out.metrics
    out = predict_dataset(model, method, batches, 10)
    expected = []
    for m in members:
        m.eval()
        with torch.no_grad():
            expected.append(torch.cat([m(x).softmax(-1) for x, _ in data]))
    expected = torch.stack(expected)
    torch.testing.assert_close(out.member_probs, expected)
    torch.testing.assert_close(out.probs, expected.mean(0))
    per_member = [predict_dataset(m, Method(), batches, 10).metrics["acc"] for m in members]
    assert out.metrics["member/acc"] == pytest.approx(sum(per_member) / 2)
    streamed = predict_dataset(model, method, batches, 10, keep_predictions=False)
    assert streamed.metrics == pytest.approx(out.metrics)


def test_swag_passes_are_members():
    model = tiny_resnet()
    method = SWAG(start=0.0, collect_every=1, rank=2, samples=3, bn_batches=2)
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        method.after_step(model, step, 3)
    batches, data = make_batches()
    method.finalize(model, data)
    out = predict_dataset(model, method, batches, 10)
    assert out.member_probs.shape == (3, 15, 10)
    again = predict_dataset(model, method, batches, 10)
    assert torch.equal(out.probs, again.probs)  # seeded sampling


def test_bf16_autocast_and_bad_precision():
    model = tiny_resnet()
    batches, _ = make_batches(n_batches=1)
    fp32 = predict_dataset(model, Method(), batches, 10)
    bf16 = predict_dataset(model, Method(), batches, 10, precision="bf16")
    assert bf16.probs.dtype == torch.float32
    torch.testing.assert_close(bf16.probs, fp32.probs, atol=0.05, rtol=0)
    with pytest.raises(UserError, match="--precision"):
        predict_dataset(model, Method(), batches, 10, precision="int8")


def test_empty_data_is_a_user_error():
    with pytest.raises(UserError, match="no batches"):
        predict_dataset(tiny_resnet(), Method(), lambda: iter([]), 10)


def test_save_predictions(tmp_path):
    out = EvalOutput({"acc": 1.0}, torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), torch.rand(2, 4, 3))
    path = tmp_path / "sub" / "preds"
    save_predictions(path, out)
    with np.load(path) as saved:  # no '.npz' appended: the file is exactly where asked
        assert set(saved.files) == {"probs", "labels", "member_probs"}
        np.testing.assert_array_equal(saved["probs"], out.probs.numpy())
        np.testing.assert_array_equal(saved["labels"], out.labels.numpy())
        assert saved["member_probs"].shape == (2, 4, 3)
    single = EvalOutput({}, torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), None)
    save_predictions(tmp_path / "single.npz", single)
    with np.load(tmp_path / "single.npz") as saved:
        assert set(saved.files) == {"probs", "labels"}
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="a_file"):
        save_predictions(blocker / "preds.npz", single)
