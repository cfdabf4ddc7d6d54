"""Metrics against independent oracles: torchmetrics, scikit-learn and direct NumPy formulas."""
from __future__ import annotations

import math
import os
import socket
import struct

import numpy as np
import pytest
import torch

from resnets.errors import UserError
from resnets.metrics import (
    LOG_EPS,
    ClassificationMetrics,
    calibration_bins,
    conformal_class_scores,
    conformal_metrics,
    conformal_quantile,
    ood_metrics,
    ood_scores,
    risk_coverage,
    selective_metrics,
)

torchmetrics = pytest.importorskip("torchmetrics")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def random_predictions(seed: int, n: int, c: int, members: int | None = None):
    """Softmax probabilities that are right more often than chance, float32 like a model's."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    shape = (members, n, c) if members else (n, c)
    logits = torch.randn(shape, generator=g) * 2.0
    logits[..., torch.arange(n), labels] += 2.5 * torch.rand(n, generator=g)
    probs = logits.softmax(-1)
    return probs, labels


def split_uneven(n: int) -> list[slice]:
    cuts = sorted({0, 1, 8, 9, 100, n // 2 + 3, n})
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if a < b]


# --- NumPy oracles ---------------------------------------------------------------------------


def np_nll(p, y):
    return float(np.mean(-np.log(np.maximum(p[np.arange(len(y)), y], LOG_EPS))))


def np_brier(p, y):
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def np_ece(p, y, bins=15):
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        mask = (conf > lo) & (conf <= hi) if b > 0 else (conf >= lo) & (conf <= hi)
        if mask.any():
            total += abs(correct[mask].mean() - conf[mask].mean()) * mask.sum() / len(y)
    return total


# --- streaming = one shot = torchmetrics ------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_streaming_matches_one_shot_and_torchmetrics(seed, num_classes):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

    n = 1000
    probs, labels = random_predictions(seed, n, num_classes)
    metrics = ClassificationMetrics(num_classes)
    for part in split_uneven(n):
        metrics.update(probs[part], labels[part])
    got = metrics.compute()

    assert got["count"] == n
    oracle_acc1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")(probs, labels).item()
    oracle_acc5 = MulticlassAccuracy(num_classes=num_classes, top_k=5, average="micro")(probs, labels).item()
    oracle_ece = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")(probs, labels).item()
    assert got["acc"] == pytest.approx(oracle_acc1, abs=1e-6)
    assert got["top5"] == pytest.approx(oracle_acc5, abs=1e-6)
    assert got["ece"] == pytest.approx(oracle_ece, abs=1e-6)

    p, y = probs.double().numpy(), labels.numpy()
    assert got["nll"] == pytest.approx(np_nll(p, y), abs=1e-6)
    assert got["brier"] == pytest.approx(np_brier(p, y), abs=1e-6)
    assert got["ece"] == pytest.approx(np_ece(p, y), abs=1e-6)



def test_topk_is_capped_at_the_number_of_classes():
    probs, labels = random_predictions(0, 50, 3)
    metrics = ClassificationMetrics(3)
    metrics.update(probs, labels)
    assert metrics.compute()["top5"] == 1.0


def test_nll_is_finite_when_the_true_class_has_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    expected = (-math.log(LOG_EPS) + math.log(2)) / 2
    metrics = ClassificationMetrics(2)
    metrics.update(probs, labels)
    assert metrics.compute()["nll"] == pytest.approx(expected)


def test_ece_bins_are_open_below_closed_above():
    # Confidences exactly on edges of 4 bins (0, .25, .5, .75, 1): 0.5 belongs to (0.25, 0.5],
    # 0.75 to (0.5, 0.75], 1.0 to (0.75, 1].
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.75, 0.25, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    conf, acc, count = calibration_bins(probs, labels, num_bins=4)
    assert count.tolist() == [0, 1, 1, 2]
    assert conf.tolist() == [0.0, 0.5, 0.75, 1.0]
    assert acc.tolist() == [0.0, 1.0, 0.0, 1.0]
    expected = (abs(1 - 0.5) * 1 + abs(0 - 0.75) * 1 + 0) / 4
    metrics = ClassificationMetrics(3, num_bins=4)
    metrics.update(probs, labels)
    assert metrics.compute()["ece"] == pytest.approx(expected)
    assert np_ece(probs.numpy(), labels.numpy(), bins=4) == pytest.approx(expected)


def test_calibration_bins_give_the_ece():
    probs, labels = random_predictions(3, 500, 10)
    conf, acc, count = calibration_bins(probs, labels)
    assert count.sum() == 500
    assert float(((acc - conf).abs() * count).sum() / 500) == pytest.approx(np_ece(probs.double().numpy(), labels.numpy()), abs=1e-9)
    metrics = ClassificationMetrics(10)
    metrics.update(probs[:123], labels[:123])
    metrics.update(probs[123:], labels[123:])
    for a, b in zip(metrics.calibration_bins(), (conf, acc, count)):
        assert torch.allclose(a, b, atol=1e-12)


# --- ensembles ----------------------------------------------------------------------------------


def np_member_metrics(member_probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    m = member_probs.shape[0]
    accs = [float(np.mean(p.argmax(1) == y)) for p in member_probs]
    pairs = [(i, j) for i in range(m) for j in range(m) if i < j]
    disagreement = np.mean([np.mean(member_probs[i].argmax(1) != member_probs[j].argmax(1)) for i, j in pairs])
    logs = np.log(np.maximum(member_probs, LOG_EPS))
    kls = [np.mean(np.sum(member_probs[i] * (logs[i] - logs[j]), axis=1))
           for i in range(m) for j in range(m) if i != j]
    return {
        "member/nll": np.mean([np_nll(p, y) for p in member_probs]),
        "member/acc": np.mean(accs),
        "member/acc_std": np.std(accs),
        "member/ece": np.mean([np_ece(p, y) for p in member_probs]),
        "member/brier": np.mean([np_brier(p, y) for p in member_probs]),
        "diversity/disagreement": disagreement,
        "diversity/avg_kl": np.mean(kls),
    }


@pytest.mark.parametrize("seed,num_classes,members", [(0, 10, 4), (1, 100, 3), (2, 10, 2)])
def test_member_metrics_match_numpy(seed, num_classes, members):
    n = 400
    member_probs, labels = random_predictions(seed, n, num_classes, members=members)
    # exact zeros exercise the clamped logs in NLL and KL
    member_probs[0, :5] = 0.0
    member_probs[0, torch.arange(5), (labels[:5] + 1) % num_classes] = 1.0
    probs = member_probs.mean(0)

    metrics = ClassificationMetrics(num_classes)
    for part in split_uneven(n):
        metrics.update(probs[part], labels[part], member_probs=member_probs[:, part])
    got = metrics.compute()
    expected = np_member_metrics(member_probs.double().numpy(), labels.numpy())
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    # the ensemble's own metrics are still those of the mean distribution
    assert got["nll"] == pytest.approx(np_nll(probs.double().numpy(), labels.numpy()), abs=1e-6)


def test_identical_members_have_no_diversity():
    probs, labels = random_predictions(5, 64, 10)
    metrics = ClassificationMetrics(10)
    metrics.update(probs, labels, member_probs=probs.expand(3, -1, -1))
    got = metrics.compute()
    assert got["diversity/disagreement"] == 0.0
    assert got["diversity/avg_kl"] == pytest.approx(0.0, abs=1e-12)
    assert got["member/acc"] == pytest.approx(got["acc"])
    assert got["member/acc_std"] == pytest.approx(0.0, abs=1e-12)


def test_update_checks_shapes_and_member_count():
    probs, labels = random_predictions(0, 8, 10, members=2)
    metrics = ClassificationMetrics(10)
    metrics.update(probs.mean(0), labels, member_probs=probs)
    with pytest.raises(ValueError, match="same number of ensemble members"):
        metrics.update(probs.mean(0), labels)
    with pytest.raises(ValueError, match="classes"):
        ClassificationMetrics(5).update(probs.mean(0), labels)
    with pytest.raises(ValueError, match="member_probs"):
        ClassificationMetrics(10).update(probs.mean(0), labels, member_probs=probs[:, :4])


def test_reset_and_empty_compute():
    metrics = ClassificationMetrics(10)
    empty = metrics.compute()
    assert empty["count"] == 0 and math.isnan(empty["acc"])
    probs, labels = random_predictions(0, 20, 10)
    metrics.update(probs, labels)
    metrics.reset()
    metrics.update(probs[:5], labels[:5])
    assert metrics.compute()["count"] == 5


def test_accumulators_stay_on_the_requested_device():
    metrics = ClassificationMetrics(10, device="cpu")
    probs, labels = random_predictions(0, 20, 10)
    metrics.update(probs, labels)
    assert all(t.device.type == "cpu" for t in metrics._state.values())


# --- distributed ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        member_probs, labels = random_predictions(11, 301, 10, members=3)
        probs = member_probs.mean(0)
        shard = slice(rank, None, world)
        metrics = ClassificationMetrics(10)
        metrics.update(probs[shard], labels[shard], member_probs=member_probs[:, shard])
        local = metrics.compute()
        reduced_copy = metrics.compute(distributed=True)
        assert metrics.compute() == local  # compute(distributed=True) left the state alone
        metrics.all_reduce()
        reduced = metrics.compute()
        torch.save({"local": local, "copy": reduced_copy, "reduced": reduced}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _single_process_reference():
    member_probs, labels = random_predictions(11, 301, 10, members=3)
    single = ClassificationMetrics(10)
    single.update(member_probs.mean(0), labels, member_probs=member_probs)
    return single.compute()


def _assert_same_metrics(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_distributed_sum_with_a_simulated_second_rank(monkeypatch):
    """Rank 0's view, with all_reduce adding rank 1's packed sums: packing and unpacking are exact."""
    import torch.distributed as dist

    member_probs, labels = random_predictions(11, 301, 10, members=3)
    probs = member_probs.mean(0)
    ranks = [ClassificationMetrics(10) for _ in range(2)]
    for rank, metrics in enumerate(ranks):
        shard = slice(rank, None, 2)
        metrics.update(probs[shard], labels[shard], member_probs=member_probs[:, shard])
    other = ranks[1]._packed()

    def all_reduce(tensor, op=None, group=None, async_op=False):
        tensor += other

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    local = ranks[0].compute()
    _assert_same_metrics(ranks[0].compute(distributed=True), _single_process_reference())
    assert ranks[0].compute() == local  # compute(distributed=True) reduced a copy
    ranks[0].all_reduce()
    _assert_same_metrics(ranks[0].compute(), _single_process_reference())


def test_all_reduce_in_a_real_single_process_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        probs, labels = random_predictions(0, 30, 10)
        metrics = ClassificationMetrics(10)
        metrics.update(probs, labels)
        before = metrics.compute()
        assert metrics.compute(distributed=True) == before
        metrics.all_reduce()
        assert metrics.compute() == before
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_reduction_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    expected = _single_process_reference()
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["local"]["count"] < 301
        _assert_same_metrics(result["copy"], expected)
        _assert_same_metrics(result["reduced"], expected)


def test_all_reduce_without_process_group_is_a_no_op():
    probs, labels = random_predictions(0, 30, 10)
    metrics = ClassificationMetrics(10)
    metrics.update(probs, labels)
    before = metrics.compute()
    metrics.all_reduce()
    assert metrics.compute(distributed=True) == before


# --- OOD detection ----------------------------------------------------------------------------


def np_fpr95(in_scores, out_scores):
    k = math.ceil(0.95 * len(in_scores) - 1e-9)  # at least 95% of ID samples accepted
    t = np.sort(in_scores)[::-1][k - 1]
    return float(np.mean(out_scores >= t))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_ood_metrics_match_sklearn(seed, ties):
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    in_scores = rng.normal(1.0, 1.0, 700)
    out_scores = rng.normal(0.0, 1.0, 433)
    if ties:  # coarse scores: many ties within and across the two sets
        in_scores, out_scores = np.round(in_scores, 1), np.round(out_scores, 1)
    got = ood_metrics(torch.from_numpy(in_scores), out_scores)

    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    s = np.r_[in_scores, out_scores]
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert got["fpr95"] == pytest.approx(np_fpr95(in_scores, out_scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert got["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)


def test_ood_metrics_extremes_and_all_ties():
    perfect = ood_metrics([2.0, 3.0, 4.0], [0.0, 1.0])
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    tied = ood_metrics([1.0] * 20, [1.0] * 10)
    assert tied["auroc"] == 0.5
    assert tied["fpr95"] == 1.0
    assert tied["aupr_in"] == pytest.approx(20 / 30)
    with pytest.raises(ValueError, match="empty"):
        ood_metrics([], [1.0])


def test_ood_scores_are_higher_in_distribution():
    confident = torch.tensor([[0.97, 0.01, 0.01, 0.01]])
    uniform = torch.full((1, 4), 0.25)
    for kind in ("max_prob", "entropy"):
        assert ood_scores(confident, kind) > ood_scores(uniform, kind)
    assert ood_scores(uniform, "entropy").item() == pytest.approx(-math.log(4))
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    assert ood_scores(one_hot, "entropy").item() == 0.0  # 0 log 0 = 0, not NaN
    with pytest.raises(ValueError, match="max_prob"):
        ood_scores(uniform, "fog")
    with pytest.raises(ValueError, match="energy score needs N x C logits"):
        ood_scores(uniform, "energy")


def test_logit_and_member_ood_scores_follow_their_definitions():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    np.testing.assert_allclose(ood_scores(None, "max_logit", logits=logits), [2.0, 0.5])
    np.testing.assert_allclose(ood_scores(None, "energy", logits=logits),
                               np.log(np.exp(logits.numpy()).sum(1)), rtol=1e-12)
    # Two members that agree have no mutual information; two confident, opposite ones have log 2.
    agree = torch.tensor([[[0.9, 0.1]], [[0.9, 0.1]]], dtype=torch.float64)
    opposite = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    assert ood_scores(None, "mutual_information", member_probs=agree).item() == pytest.approx(0, abs=1e-12)
    assert ood_scores(None, "mutual_information", member_probs=opposite).item() == pytest.approx(-math.log(2))


# --- plots ------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    with Image.open(path) as image:
        image.verify()


def test_reliability_diagram_writes_a_png(tmp_path):
    from resnets.plots import reliability_diagram, reliability_diagram_from_bins

    probs, labels = random_predictions(0, 500, 10)
    fig = reliability_diagram(probs, labels, tmp_path / "reliability.png", title="test run")
    assert_png(tmp_path / "reliability.png")
    top, counts = fig.axes
    conf, acc, count = calibration_bins(probs, labels)
    ece_value = float(((acc - conf).abs() * count).sum() / count.sum())
    assert top.get_title().startswith("test run\n") and f"ECE = {100 * ece_value:.2f}%" in top.get_title()

    # Accuracy bars and gap bars are separate containers; the gap is narrower and drawn above
    # the bar, translucent and unhatched, so the bar's top edge shows on both sides of it.
    bars, gaps = top.containers
    filled = count > 0
    assert [round(p.get_height(), 9) for p in bars] == [round(a, 9) for a in acc[filled].tolist()]
    for bar, gap, c, a in zip(bars, gaps, conf[filled].tolist(), acc[filled].tolist()):
        assert gap.get_y() == pytest.approx(min(a, c)) and gap.get_height() == pytest.approx(abs(c - a))
        assert gap.get_x() > bar.get_x() and gap.get_x() + gap.get_width() < bar.get_x() + bar.get_width()
        assert gap.zorder > bar.zorder and gap.get_alpha() < 1 and not gap.get_hatch()
    # Counts per bin below, each written over its bar.
    assert [p.get_height() for p in counts.containers[0]] == count.tolist()
    assert sorted(t.get_text() for t in counts.texts) == sorted(str(int(n)) for n in count[filled].tolist())

    metrics = ClassificationMetrics(10)
    metrics.update(probs, labels)
    reliability_diagram_from_bins(*metrics.calibration_bins(), tmp_path / "from_bins.png")
    assert_png(tmp_path / "from_bins.png")
    assert reliability_diagram(probs, labels).axes  # no path: only the figure


def test_training_curves_write_a_png(tmp_path):
    from resnets.plots import training_curves

    series = {
        "resnet20": [(i * 100, 0.1 + 0.8 * (1 - math.exp(-i / 10))) for i in range(40)],
        "resnet56": [(i * 100, 0.1 + 0.85 * (1 - math.exp(-i / 12))) for i in range(40)][::-1],
        "empty": [],
    }
    fig = training_curves(series, tmp_path / "curves.png", ylabel="test accuracy")
    assert_png(tmp_path / "curves.png")
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["resnet20", "resnet56"]
    assert list(lines[1].get_xdata()) == sorted(lines[1].get_xdata())  # points sorted by step


def test_aggregate_seeds_mean_and_bands():
    from resnets.plots import aggregate_seeds

    a = [(10, 1.0), (20, 0.5), (30, 0.25)]
    b = [(10, 3.0), (20, 1.5)]
    steps, mean, low, high, seeds = aggregate_seeds([a, b])
    assert (steps, mean, low, high, seeds) == ([10, 20, 30], [2.0, 1.0, 0.25], [1.0, 0.5, 0.25], [3.0, 1.5, 0.25], 2)
    _, mean, low, high, _ = aggregate_seeds([a, b], band="std")
    assert mean[0] == 2.0 and low[0] == pytest.approx(2.0 - math.sqrt(2)) and high[0] == pytest.approx(2.0 + math.sqrt(2))
    assert aggregate_seeds([a]) == ([10, 20, 30], [1.0, 0.5, 0.25], None, None, 1)
    # A step logged twice (a resumed run) keeps its last value; NaN points are left out.
    assert aggregate_seeds([[(10, 1.0), (10, 2.0), (20, float("nan"))]])[:2] == ([10], [2.0])
    with pytest.raises(UserError, match="band"):
        aggregate_seeds([a], band="iqr")


def test_training_figure_draws_dense_lines_eval_markers_and_bands(tmp_path):
    from resnets.plots import Series, training_figure

    dense = Series("trn/loss", [1, 2, 3, 4], [2.3, 1.0, 0.5, 0.1], [2.2, 0.9, 0.4, 0.05], [2.4, 1.1, 0.6, 0.2], seeds=2)
    once = Series("val/nll", [4], [0.3], dense=False)
    lr = Series("lr", [1, 2, 3, 4], [0.1, 0.08, 0.04, 0.01])
    fig = training_figure({"loss / NLL": [dense, once], "accuracy": [], "learning rate": [lr]},
                          tmp_path / "run.png", title="a run", log_panels=("loss / NLL",))
    assert_png(tmp_path / "run.png")
    loss, rate = fig.axes  # the empty accuracy panel is left out
    assert loss.get_yscale() == "log" and rate.get_yscale() == "linear"
    train_line, eval_line = loss.get_lines()
    assert list(train_line.get_xdata()) == [1, 2, 3, 4] and train_line.get_marker() in ("None", None, "")
    assert list(eval_line.get_xdata()) == [4] and eval_line.get_marker() == "o"
    assert len(loss.collections) == 1  # the min-max band of the two seeds
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["trn/loss", "val/nll"]


def test_plots_name_a_path_they_cannot_write(tmp_path):
    from resnets.plots import reliability_diagram, training_curves

    probs, labels = random_predictions(0, 50, 10)
    missing = tmp_path / "no_such_folder" / "plot.png"
    with pytest.raises(UserError, match="no_such_folder"):
        reliability_diagram(probs, labels, missing)
    with pytest.raises(UserError, match="no_such_folder"):
        training_curves({"a": [(0, 1.0)]}, missing, ylabel="loss")
    with pytest.raises(UserError, match="folder"):
        training_curves({"a": [(0, 1.0)]}, tmp_path, ylabel="loss")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="locked"):
            reliability_diagram(probs, labels, locked / "plot.png")


# --- selective prediction and conformal sets ----------------------------------------------------


def np_selective(conf, wrong):
    """AURC and AUGRC from their definitions, sample by sample (no ties in the inputs used):
    accept the k most confident, k = 1..N; selective risk = errors/k (Geifman & El-Yaniv 2017),
    generalized risk = errors/N (Traub et al. 2024); the areas are the means over k."""
    order = np.argsort(-np.asarray(conf))
    wrong = np.asarray(wrong, dtype=float)[order]
    n = wrong.size
    errors = np.array([wrong[:k].sum() for k in range(1, n + 1)])
    k = np.arange(1, n + 1)
    return (errors / k).mean(), (errors / n).mean(), errors / k, k / n


def probs_with(conf, pred, num_classes=3):
    """Rows whose top class is `pred` with probability `conf`, the rest spread evenly."""
    conf = torch.as_tensor(conf, dtype=torch.float64)
    p = ((1 - conf) / (num_classes - 1)).unsqueeze(-1).repeat(1, num_classes)
    p[torch.arange(len(conf)), torch.as_tensor(pred)] = conf
    return p


def test_selective_metrics_equal_the_definitions_on_a_hand_made_case():
    # Five samples, the 2nd and 5th most confident wrong: risks 0, 1/2, 1/3, 1/4, 2/5.
    conf = [0.9, 0.8, 0.7, 0.6, 0.5]
    labels = torch.tensor([0, 1, 2, 0, 1])
    pred = [0, 2, 2, 0, 0]
    got = selective_metrics(probs_with(conf, pred), labels)
    aurc, augrc, risk, coverage = np_selective(conf, [0, 1, 0, 0, 1])
    assert got["aurc"] == pytest.approx(aurc, abs=1e-12)
    assert got["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5, abs=1e-12)
    assert got["augrc"] == pytest.approx(augrc, abs=1e-12)
    assert got["augrc"] == pytest.approx((0 + 1 + 1 + 1 + 2) / 25, abs=1e-12)
    assert got["risk_at_80_coverage"] == pytest.approx(1 / 4)  # the 4 most confident
    assert got["coverage_at_5_risk"] == pytest.approx(1 / 5)  # only the first is error-free


@pytest.mark.parametrize("seed", [0, 1])
def test_selective_metrics_equal_numpy_on_random_predictions(seed):
    probs, labels = random_predictions(seed, 500, 7)
    got = selective_metrics(probs, labels)
    conf, pred = probs.max(-1)
    aurc, augrc, risk, coverage = np_selective(conf.numpy(), (pred != labels).numpy())
    assert got["aurc"] == pytest.approx(aurc, abs=1e-12)
    assert got["augrc"] == pytest.approx(augrc, abs=1e-12)
    assert got["risk_at_80_coverage"] == pytest.approx(risk[np.argmax(coverage >= 0.8 - 1e-12)])
    assert got["coverage_at_5_risk"] == pytest.approx(coverage[risk <= 0.05].max() if (risk <= 0.05).any() else 0)


def test_tied_confidences_are_accepted_together():
    # Two tied samples, one wrong: the curve must not depend on which of them comes first.
    probs = probs_with([0.9, 0.6, 0.6], [0, 0, 0])
    for labels in (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])):
        coverage, risk, generalized = risk_coverage(probs, labels)
        np.testing.assert_allclose(coverage, [1 / 3, 1])
        np.testing.assert_allclose(risk, [0, 1 / 3])
        # k = 1: risk 0; k = 2 and 3: the tied group's risk 1/3.
        assert selective_metrics(probs, labels)["aurc"] == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)


def test_selective_metrics_against_torch_uncertainty_when_installed():
    tu = pytest.importorskip("torch_uncertainty.metrics")
    probs, labels = random_predictions(3, 2000, 10)
    got = selective_metrics(probs, labels)
    # TorchUncertainty integrates the curve with the trapezoid rule: the two estimators of the
    # same area differ by O(1/N).
    for name, key in (("AURC", "aurc"), ("AUGRC", "augrc")):
        metric = getattr(tu, name)()
        metric.update(probs.float(), labels)
        assert float(metric.compute()) == pytest.approx(got[key], abs=5 / len(labels))


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = torch.arange(1, 20, dtype=torch.float64)  # 1..19, n = 19
    # ceil((19 + 1) * 0.9) = 18: the 18th smallest score.
    assert conformal_quantile(scores, 0.1) == 18
    assert conformal_quantile(scores[:5], 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5


def test_conformal_scores_follow_their_definitions():
    p = torch.tensor([[0.5, 0.2, 0.3]], dtype=torch.float64)
    np.testing.assert_allclose(conformal_class_scores(p, "thr"), [[0.5, 0.8, 0.7]])
    # APS without noise: mass at or above each class's rank (0.5 | 0.5+0.3 | 1.0).
    np.testing.assert_allclose(conformal_class_scores(p, "aps", torch.zeros(1)), [[0.5, 1.0, 0.8]])
    u = torch.tensor([0.5])
    np.testing.assert_allclose(conformal_class_scores(p, "aps", u), [[0.25, 0.9, 0.65]])
    wide = torch.full((1, 8), 1 / 8, dtype=torch.float64)
    raps = conformal_class_scores(wide, "raps", torch.zeros(1))
    ranks = np.arange(1, 9)
    np.testing.assert_allclose(raps[0], ranks / 8 + 0.01 * np.clip(ranks - 5, 0, None))


def test_conformal_sets_cover_exchangeable_data():
    # Calibration and test from one distribution: coverage >= 1 - alpha up to sampling noise
    # (n = 4000: a standard error of about 0.005).
    probs, labels = random_predictions(5, 8000, 10)
    # Labels drawn from the predicted distributions: the model is calibrated by construction.
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0)).squeeze(-1)
    results = conformal_metrics(probs[:4000], labels[:4000], probs[4000:], labels[4000:], alpha=0.1)
    for method, values in results.items():
        assert values["coverage"] >= 0.9 - 0.02, method
        assert values["coverage"] <= 0.9 + 0.03, method  # exact, not all classes
        assert 0 < values["set_size"] < 10, method
