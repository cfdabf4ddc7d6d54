import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets import create_model
from resnets.errors import UserError
from resnets.methods import (
    METHODS, SWA, SWAG, BatchEnsemble, DeepEnsemble, MCDropout, Method, apply_temperature, build_method,
    check_compatible, fit_temperature,
)
from resnets.methods.batchensemble import BatchEnsembleConv2d, BatchEnsembleLinear
from resnets.methods.swag import assign_parameters, flatten_parameters


def tiny_resnet(seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model("resnet20", num_classes=10, image_size=32, **overrides)


def settle_bn(model, steps=3, size=8):
    """Give BN non-trivial running statistics so eval-mode comparisons mean something."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(8, 3, size, size))
    model.eval()


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# -- BatchEnsemble ------------------------------------------------------------------------------


def test_batchensemble_keeps_shared_weights():
    model = tiny_resnet()
    before = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    weights = {n: m.weight for n, m in before.items()}
    values = {n: w.detach().clone() for n, w in weights.items()}
    method = BatchEnsemble(ensemble_size=3)
    assert method.prepare_model(model) is model
    after = dict(model.named_modules())
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    for name, weight in weights.items():
        converted = after[name]
        assert isinstance(converted, BatchEnsembleConv2d if name != "fc" else BatchEnsembleLinear)
        assert converted.weight is weight
        assert torch.equal(converted.weight, values[name])
        assert converted.r.shape[0] == converted.s.shape[0] == 3
    assert model.fc.bias.shape == (3, 10)
    # State-dict names of the shared weights do not change, so deterministic weights load by name.
    assert {n for n in weights} <= {k.removesuffix(".weight") for k in model.state_dict()}


def test_batchensemble_unit_fast_weights_reproduce_original():
    model = tiny_resnet(zero_init_last_bn=False)
    settle_bn(model)
    reference = copy.deepcopy(model).eval()
    method = BatchEnsemble(ensemble_size=3)
    method.prepare_model(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (BatchEnsembleConv2d, BatchEnsembleLinear)):
                m.r.fill_(1.0)
                m.s.fill_(1.0)
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = reference(x)
        logits = model(method.tile(x)).unflatten(0, (3, 4))
    for member in logits:
        torch.testing.assert_close(member, expected, atol=1e-5, rtol=1e-5)
    pred = method.predict(model, x)
    torch.testing.assert_close(pred.probs, F.softmax(expected, -1), atol=1e-5, rtol=1e-5)


def test_batchensemble_member_major_tiling():
    method = BatchEnsemble(ensemble_size=3)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([4, 7])
    xt, yt = method.train_batch(x, y)
    assert xt.shape == (6, 3, 8, 8)
    for i in range(3):
        assert torch.equal(xt[2 * i:2 * i + 2], x)
        assert torch.equal(yt[2 * i:2 * i + 2], y)
    # Rows i·B … (i+1)·B − 1 run through member i: changing member 1 moves only its rows.
    model = tiny_resnet()
    method.prepare_model(model)
    model.eval()
    with torch.no_grad():
        before = model(xt)
        model.fc.s[1].mul_(2.0)
        after = model(xt)
    assert torch.equal(before[:2], after[:2]) and torch.equal(before[4:], after[4:])
    assert not torch.allclose(before[2:4], after[2:4])
    pred = method.predict(model, x)
    assert pred.member_probs.shape == (3, 2, 10)
    torch.testing.assert_close(pred.member_probs, after.softmax(-1).unflatten(0, (3, 2)))
    torch.testing.assert_close(pred.probs, pred.member_probs.mean(0))


def test_batchensemble_resnet50_parameter_count():
    with torch.device("meta"):
        model = create_model("resnet50")
        deterministic = sum(p.numel() for p in model.parameters())
        BatchEnsemble(ensemble_size=4).prepare_model(model)
        converted = sum(p.numel() for p in model.parameters())
    # BatchEnsemble adds r and s to every conv and to the head (M x (in + out) each) and turns the
    # head's bias into M biases. The convs of ResNet-50 from its architecture (GUIDE §1): the 7x7
    # stem 3 -> 64, then per stage of width w (64, 128, 256, 512; 3, 4, 6, 3 bottlenecks) a
    # 1x1 in -> w, a 3x3 w -> w and a 1x1 w -> 4w, plus a 1x1 in -> 4w projection in the first.
    members, classes = 4, 1000
    in_plus_out = 3 + 64
    channels = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(blocks):
            in_plus_out += (channels + width) + (width + width) + (width + 4 * width)
            if block == 0:
                in_plus_out += channels + 4 * width
            channels = 4 * width
    in_plus_out += channels + classes  # the head
    expected = 25_557_032 + members * in_plus_out + (members - 1) * classes
    assert deterministic == 25_557_032  # torchvision's count (GUIDE §1)
    assert converted == expected
    assert round(converted / 1e6, 1) == 25.8  # seed 000: 25.8M against 25.6M


def test_batchensemble_head_without_bias_and_random_sign():
    model = tiny_resnet(head_bias=False)
    BatchEnsemble(ensemble_size=2, init="random_sign").prepare_model(model)
    assert model.fc.bias is None
    signs = torch.cat([m.r.flatten() for m in model.modules() if isinstance(m, BatchEnsembleConv2d)])
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def test_batchensemble_param_groups():
    model = tiny_resnet()
    method = BatchEnsemble(ensemble_size=2, fast_weight_lr_mult=0.5)
    method.prepare_model(model)
    base = [{"params": list(model.parameters()), "weight_decay": 1e-4}]
    groups = method.param_groups(model, base)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        kinds = {names[id(p)].rsplit(".", 1)[-1] for p in group["params"]}
        if kinds <= {"r", "s"}:
            assert group["lr_mult"] == 0.5 and group["weight_decay"] == 0.0
        elif any(names[id(p)] == "fc.bias" for p in group["params"]):
            # The per-member head bias and, as uncertainty-baselines scales every variable whose
            # name lacks 'batch_norm' and 'kernel' (its BN layers are named bn2a_branch2a...),
            # BN's scales and shifts: the fast LR, their group's decay.
            assert group["lr_mult"] == 0.5 and group["weight_decay"] == 1e-4
            bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
            assert {id(p) for p in group["params"]} == bn | {id(model.fc.bias)}
        else:
            assert "lr_mult" not in group and group["weight_decay"] == 1e-4
    torch.optim.SGD([{k: v for k, v in g.items() if k != "lr_mult"} for g in groups], lr=0.1)


def test_batchensemble_training_reduces_loss():
    model = tiny_resnet()
    method = BatchEnsemble(ensemble_size=2)
    method.prepare_model(model)
    groups = method.param_groups(model, [{"params": list(model.parameters())}])
    optimizer = torch.optim.SGD([{k: v for k, v in g.items() if k != "lr_mult"} for g in groups],
                                lr=0.05, momentum=0.9)
    mults = [g.get("lr_mult", 1.0) for g in groups]
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    xt, yt = method.train_batch(x, y)
    model.train()
    losses = []
    for _ in range(12):
        for group, mult in zip(optimizer.param_groups, mults):
            group["lr"] = 0.05 * mult
        loss = F.cross_entropy(model(xt), yt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_batchensemble_rejects_bad_options():
    with pytest.raises(UserError, match="ensemble_size"):
        BatchEnsemble(ensemble_size=0)
    with pytest.raises(UserError, match="init"):
        BatchEnsemble(init="uniform")


# -- MC dropout ---------------------------------------------------------------------------------


def test_mcdropout_samples_differ_and_bn_untouched():
    model = tiny_resnet(dropout=0.5)
    settle_bn(model)
    method = MCDropout(samples=4)
    method.prepare_model(model)
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    x = torch.randn(3, 3, 8, 8)
    pred = method.predict(model, x)
    assert pred.member_probs.shape == (4, 3, 10)
    assert not torch.allclose(pred.member_probs[0], pred.member_probs[1])
    torch.testing.assert_close(pred.probs, pred.member_probs.mean(0))
    for k, v in model.state_dict().items():
        if k in bn_state:
            assert torch.equal(v, bn_state[k]), k
    assert not model.training and not model.dropout.training
    # The deterministic prediction (dropout off) is unchanged by MC prediction.
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_mcdropout_rate_and_missing_dropout():
    with pytest.raises(UserError, match="dropout"):
        MCDropout().prepare_model(tiny_resnet())
    model = MCDropout(rate=0.3).prepare_model(tiny_resnet())
    assert model.dropout.p == 0.3
    with pytest.raises(UserError, match="rate"):
        MCDropout(rate=1.5)


# -- SWA / SWAG ---------------------------------------------------------------------------------


def set_weights(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_swa_mean_of_known_snapshots_is_exact():
    model = nn.Linear(3, 2)
    method = SWA(start=0.0, collect_every=1)
    for step, value in enumerate([1.0, 2.0, 4.0, 9.0], start=1):
        set_weights(model, value)
        method.after_step(model, step, 4)
    assert method.count == 4
    torch.testing.assert_close(method.mean, torch.full((8,), 4.0), rtol=0, atol=1e-6)


def test_swa_collection_schedule_and_lr():
    model = nn.Linear(2, 2)
    method = SWA(start=0.5, collect_every=2, lr=0.01)
    collected = []
    for step in range(1, 11):
        set_weights(model, float(step))
        before = method.count
        method.after_step(model, step, 10)
        if method.count > before:
            collected.append(step)
    assert collected == [7, 9]
    torch.testing.assert_close(method.mean, torch.full((6,), 8.0))
    assert method.adjust_lr(0.1, 4, 10) == 0.1
    assert method.adjust_lr(0.1, 5, 10) == 0.01
    assert SWA(start=0.5).adjust_lr(0.1, 9, 10) == 0.1
    with pytest.raises(UserError, match="--swa-every"):
        SWA(start=0.9, collect_every=100).after_step(model, 1, 100)


def test_swa_finalize_loads_mean_and_recomputes_bn():
    model = tiny_resnet()
    method = SWA(start=0.0, collect_every=1, bn_batches=2)
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        method.after_step(model, step, 3)
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)) for _ in range(5)]
    model.eval()
    method.finalize(model, batches)
    torch.testing.assert_close(flatten_parameters(model), method.mean)
    assert int(model.stem.bn.num_batches_tracked) == 2  # bn_batches limits the BN pass
    assert model.stem.bn.momentum == 0.1 and not model.training
    # A one-shot iterator works too (its first batches are kept).
    method.finalize(model, iter(batches))
    assert int(model.stem.bn.num_batches_tracked) == 2


def swag_run(total, interrupt_at=None):
    """Train resnet20 with SWAG; optionally checkpoint at `interrupt_at` and resume from it."""
    def fresh():
        model = tiny_resnet(seed=3)
        method = SWAG(start=0.25, collect_every=2, rank=3, lr=0.02)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, method, optimizer

    gen = torch.Generator().manual_seed(7)
    data = [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
            for _ in range(total)]
    model, method, optimizer = fresh()
    model.train()
    for i in range(total):
        if i == interrupt_at:
            checkpoint = roundtrip({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "method": method.state_dict()})
            model, method, optimizer = fresh()
            model.train()
            method.prepare_model(model)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            method.load_state_dict(checkpoint["method"])
        x, y = method.train_batch(*data[i])
        for group in optimizer.param_groups:
            group["lr"] = method.adjust_lr(0.05, i, total)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(model, i + 1, total)
    return model, method


def test_swag_resume_is_exact():
    _, straight = swag_run(12)
    _, resumed = swag_run(12, interrupt_at=7)
    assert straight.count == resumed.count == 4
    assert straight.num_deviations == resumed.num_deviations == 4
    for key in ("mean", "sq_mean", "deviations"):
        assert torch.equal(getattr(straight, key), getattr(resumed, key)), key
    state = roundtrip(straight.state_dict())
    assert set(state) == {"count", "mean", "sq_mean", "deviations", "num_deviations"}


def test_swag_sampling():
    model = nn.Linear(2, 2)  # 6 parameters
    method = SWAG(start=0.0, collect_every=1, rank=3)
    snapshots = [torch.randn(6) for _ in range(5)]
    for step, w in enumerate(snapshots, start=1):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w, model.parameters())
        method.after_step(model, step, 5)
    stacked = torch.stack(snapshots)
    torch.testing.assert_close(method.mean, stacked.mean(0))
    torch.testing.assert_close(method.sq_mean, (stacked ** 2).mean(0))
    dev = method.deviation_matrix()
    assert dev.shape == (3, 6)  # only the last `rank` deviations are kept
    # Rows are the last three snapshots minus the running mean at the time each was collected.
    expected = [stacked[i] - stacked[:i + 1].mean(0) for i in (2, 3, 4)]
    assert sorted(r.sum().item() for r in dev) == pytest.approx(sorted(e.sum().item() for e in expected), abs=1e-5)
    assert torch.equal(method.sample(scale=0.0), method.mean)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(method.sample(g1), method.sample(g2))
    # Diagonal only (rank 0): the sample variance is scale · (E[w²] − E[w]²).
    diag = SWAG(start=0.0, collect_every=1, rank=0, scale=0.5)
    for step, w in enumerate(snapshots, start=1):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w, model.parameters())
        diag.after_step(model, step, 5)
    assert diag.deviation_matrix() is None
    gen = torch.Generator().manual_seed(1)
    draws = torch.stack([diag.sample(gen) for _ in range(4000)])
    torch.testing.assert_close(draws.var(0), 0.5 * stacked.var(0, correction=0), rtol=0.1, atol=1e-4)


def swag_with_three_snapshots(model, bn_batches: int) -> SWAG:
    """A SWAG of 3 samples that collected 3 random-walk snapshots of `model`."""
    method = SWAG(start=0.0, collect_every=1, rank=2, samples=3, bn_batches=bn_batches)
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        method.after_step(model, step, 3)
    return method


def test_swag_eval_passes_sample_and_restore():
    model = tiny_resnet()
    method = swag_with_three_snapshots(model, bn_batches=1)
    model.eval()
    assert len(list(method.eval_passes(model))) == 1  # before finalize: the current weights
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    method.finalize(model, batches)
    final = copy.deepcopy(model.state_dict())

    def sampled():
        out = []
        for _ in method.eval_passes(model):
            assert not model.training
            out.append(flatten_parameters(model))
        return out

    first, second = sampled(), sampled()
    assert len(first) == 3
    assert not torch.equal(first[0], first[1])
    for a, b in zip(first, second):  # seeded: evaluation is reproducible
        assert torch.equal(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, final[k]), k


def test_swag_sample_bn_statistics_are_recomputed_once_and_reused(monkeypatch):
    """An evaluation with corruptions goes over the SWAG samples once per corrupted set; the BN
    statistics of each sample are the same every time, so they are recomputed on the first pass
    only, and equal to recomputing them by hand for that sample's weights."""
    import resnets.methods.swag as swag_module

    model = tiny_resnet()
    method = swag_with_three_snapshots(model, bn_batches=2)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=gen), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    method.finalize(model, batches)
    calls = []
    real_update_bn = swag_module.update_bn
    monkeypatch.setattr(swag_module, "update_bn", lambda *a, **k: (calls.append(1), real_update_bn(*a, **k))[1])

    def buffers_per_pass():
        return [{k: v.clone() for k, v in model.named_buffers()} for _ in method.eval_passes(model)]

    first, second = buffers_per_pass(), buffers_per_pass()
    assert len(calls) == 3  # one recomputation per sample, none on the second pass
    reference = copy.deepcopy(model)
    sample_gen = torch.Generator().manual_seed(method.seed)
    for got_first, got_second in zip(first, second):
        assign_parameters(reference, method.sample(sample_gen))
        real_update_bn(batches, reference)  # torch's own BN re-estimation, uncounted
        for name, expected in reference.named_buffers():
            assert torch.equal(got_first[name], expected), name
            assert torch.equal(got_second[name], expected), name
    mean_key = next(k for k in first[0] if k.endswith("running_mean"))
    assert not torch.equal(first[0][mean_key], first[1][mean_key])  # each sample has its own statistics

    # Another snapshot changes the distribution, so the statistics are recomputed.
    calls.clear()
    method.after_step(model, 4, 4)
    buffers_per_pass()
    assert len(calls) == 3


# -- temperature scaling -----------------------------------------------------------------------


def synthetic_logits(n=4000, c=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, c, generator=gen)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    return logits, labels


def test_temperature_fixes_overconfidence():
    logits, labels = synthetic_logits()
    over = 3.0 * logits
    t = fit_temperature(over, labels)
    assert t > 1.0 and t == pytest.approx(3.0, rel=0.15)
    before = F.nll_loss(over.log_softmax(-1), labels)
    after = F.nll_loss(apply_temperature(over.softmax(-1), t).log(), labels)
    assert after < before
    # Log-probabilities (e.g. of an ensemble's mean) give the same temperature as logits.
    assert fit_temperature(over.log_softmax(-1), labels) == pytest.approx(t, rel=1e-4)


def test_temperature_of_calibrated_data_is_one():
    logits, labels = synthetic_logits(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_apply_temperature():
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]])
    torch.testing.assert_close(apply_temperature(probs, 1.0), probs)
    hot = apply_temperature(probs, 2.0)
    torch.testing.assert_close(hot.sum(-1), torch.ones(2))
    assert hot[0, 2] == 0 and hot[0, 0] < 0.7
    with pytest.raises(ValueError):
        apply_temperature(probs, 0.0)


# -- deep ensembles ------------------------------------------------------------------------------


def test_deep_ensemble_passes_load_each_member():
    members = [tiny_resnet(seed=s) for s in (1, 2)]
    for m in members:
        settle_bn(m)
    method = DeepEnsemble([m.state_dict() for m in members], names=["run-a", "run-b"])
    model = method.prepare_model(tiny_resnet(seed=9)).eval()
    x = torch.randn(2, 3, 8, 8)
    outputs = []
    for _ in method.eval_passes(model):
        outputs.append(method.predict(model, x).probs)
    assert len(outputs) == 2
    for out, member in zip(outputs, members):
        with torch.no_grad():
            torch.testing.assert_close(out, member(x).softmax(-1))
    with torch.no_grad():  # the first member is loaded again afterwards
        torch.testing.assert_close(model(x), members[0](x))


def test_deep_ensemble_rejects_mismatched_weights():
    other = create_model("resnet20", num_classes=10, image_size=32, width=2)
    method = DeepEnsemble([tiny_resnet().state_dict(), other.state_dict()], names=["a", "wide"])
    model = method.prepare_model(tiny_resnet())
    with pytest.raises(UserError, match="'wide'"):
        for _ in method.eval_passes(model):
            pass


def test_check_compatible():
    base = dict(model="resnet20", width=1, num_classes=10, image_size=32, method="deterministic")
    check_compatible([base, dict(base, method="swa")], names=["a", "b"])
    with pytest.raises(UserError) as error:
        check_compatible([base, dict(base), dict(base, width=2)], names=["a", "b", "c"])
    assert "'a'" in str(error.value) and "'c'" in str(error.value) and "width" in str(error.value)
    with pytest.raises(UserError, match="image_size"):
        check_compatible([dict(base, name="x"), dict(base, name="y", image_size=64)])
    with pytest.raises(UserError, match="batchensemble"):
        check_compatible([base, dict(base, method="batchensemble", ensemble_size=4)])


# -- registry ------------------------------------------------------------------------------------


def test_build_method():
    assert set(METHODS) == {"deterministic", "batchensemble", "mcdropout", "swa", "swag", "ensemble", "sngp",
                            "heteroscedastic", "rank1", "mimo"}
    assert type(build_method("deterministic")) is Method
    method = build_method("batchensemble", ensemble_size=2, fast_weight_lr_mult=0.5)
    assert isinstance(method, BatchEnsemble) and method.members == 2
    assert isinstance(build_method("swag", rank=5), SWAG)
    with pytest.raises(UserError, match="batchensemble, mcdropout"):
        build_method("dropconnect")
    with pytest.raises(UserError, match="ensemble_size"):
        build_method("mcdropout", ensemble_size=2)
    with pytest.raises(UserError):
        build_method("deterministic", samples=3)


def test_methods_are_built_from_a_config_and_say_what_they_need():
    from resnets.config import TrainConfig
    from resnets.methods import method_from_config

    be = method_from_config(TrainConfig(method="batchensemble", ensemble_size=3, fast_weight_lr_mult=0.5))
    assert isinstance(be, BatchEnsemble) and be.members == 3 and be.fast_weight_lr_mult == 0.5
    swag = method_from_config(TrainConfig(method="swag", swag_rank=5, swag_samples=7, swa_start=0.5))
    assert isinstance(swag, SWAG) and swag.rank == 5 and swag.samples == 7 and swag.start == 0.5
    assert method_from_config(TrainConfig(method="mcdropout", mc_samples=4)).samples == 4
    # What the loop and the evaluator ask instead of testing names: SWA/SWAG finalize and keep
    # state; SWAG and ensembles predict in several passes; only ensembles train separate runs.
    assert [name for name, m in METHODS.items() if m.finalizes] == ["swa", "swag"]
    assert [name for name, m in METHODS.items() if m.stateful] == ["swa", "swag"]
    assert [name for name, m in METHODS.items() if not m.single_pass] == ["swag", "ensemble"]
    assert [name for name, m in METHODS.items() if m.separate_runs] == ["ensemble"]
    with pytest.raises(UserError, match="--method ensemble"):
        method_from_config(TrainConfig(method="ensemble"))
    with pytest.raises(UserError, match="unknown"):
        method_from_config(TrainConfig(method="dropconnect"))


# -- exact resume of methods that draw random numbers at every step --------------------------


@pytest.mark.parametrize("method, options", [("mimo", ["--ensemble-size", "2"]),
                                             ("rank1", ["--ensemble-size", "2", "--kl-annealing-epochs", "1"])])
def test_stop_and_resume_ends_bit_identical_for_methods_that_draw_each_step(tmp_path, monkeypatch, method, options):
    # MIMO's shuffles and rank-1's weight draws come from the checkpointed global generator (and
    # rank-1's KL weight from the step): a run stopped at step 3 of 6 and resumed ends with the
    # uninterrupted run's weights, bit for bit.
    import os
    import signal

    from safetensors.torch import load_file

    from resnets import train as train_module
    from resnets.cli import main

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    recipe = ["--method", method, *options, "--image-size", "16", "--batch-size", "32",
              "--eval-batch-size", "512", "--iters", "6", "--eval-every", "3", "--no-progress"]
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert main(["train", "--out", str(reference), *recipe]) == 0
    step = train_module._Trainer.step

    def stop_at_3(self, x, y, sums):
        step(self, x, y, sums)
        if self.progress.iteration + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module._Trainer, "step", stop_at_3)
    assert main(["train", "--out", str(out), *recipe]) == train_module.STOPPED_EXIT_STATUS
    monkeypatch.setattr(train_module._Trainer, "step", step)
    assert main(["train", "--resume", str(out)]) == 0
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
