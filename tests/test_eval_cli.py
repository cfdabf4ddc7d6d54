"""`resnets eval` on tiny real runs: single runs, deep ensembles, BatchEnsemble, temperature
scaling, corruptions, OOD detection, and the mistakes a user can make."""
import argparse
import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from resnets import evaluate
from resnets.errors import UserError
from resnets.prediction import predict_dataset
from resnets.runs import load_run
from tiny_runs import IMAGE_SIZE, make_runs, tiny_run



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"))


def copy_run(run, dest):
    shutil.copytree(run, dest)
    return dest


def evaluate_runs(*argv):
    """Run `resnets eval` with these arguments and return eval.json's content."""
    parser = argparse.ArgumentParser(prog="resnets eval")
    evaluate.add_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    assert evaluate.run(args) == 0
    out = args.out or f"{args.runs[0]}/eval.json"
    with open(out) as handle:
        return json.load(handle)


def test_single_run_metrics_equal_predict_dataset(runs, tmp_path):
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json")

    from resnets.data import load_dataset

    loaded = load_run(runs["det"], "cpu", "best")
    data = load_dataset("digits", image_size=IMAGE_SIZE)
    direct = predict_direct(loaded, data.test, data)
    assert report["runs"] == [str(runs["det"])] and report["split"] == "test" and report["data"] == "digits"
    assert report["count"] == len(data.test)
    for key in ("nll", "acc", "top5", "ece", "brier"):
        assert report["metrics"][key] == pytest.approx(direct.metrics[key], rel=1e-6, abs=1e-9)
    assert not any(k.startswith("member/") for k in report["metrics"])
    # The best weights are the ones training scored at its best validation accuracy.
    results = json.loads((runs["det"] / "results.json").read_text())
    assert report["metrics"]["nll"] == pytest.approx(results["tst/nll"], rel=1e-5)
    assert report["weight_files"][0].endswith("best.safetensors")


def predict_direct(loaded, split, data):
    from resnets.data import eval_batches

    batches = lambda: eval_batches(split, batch_size=512, device="cpu", mean=data.mean, std=data.std,
                                   image_size=IMAGE_SIZE, num_workers=0)
    return predict_dataset(loaded.model, loaded.method, batches, data.num_classes)


def test_default_output_is_eval_json_in_the_run(runs, tmp_path):
    run = copy_run(runs["det"], tmp_path / "run")
    report = evaluate_runs(run, "--weights", "final", "--split", "val")
    assert (run / "eval.json").is_file()
    assert report["split"] == "val" and report["weights"] == "final"
    assert report["weight_files"][0].endswith("model.safetensors")


def test_deep_ensemble_of_two_runs(runs, tmp_path):
    npz = tmp_path / "ensemble.npz"
    report = evaluate_runs(runs["det"], runs["det2"], "--out", tmp_path / "eval.json", "--save-predictions", npz)
    metrics = report["metrics"]
    assert report["method"] == "ensemble" and report["ensemble_size"] == 2
    assert {"member/nll", "member/acc", "diversity/disagreement", "diversity/avg_kl"} <= set(metrics)
    # -log is convex: the NLL of the mean prediction never exceeds the members' mean NLL.
    assert metrics["nll"] <= metrics["member/nll"] + 1e-9
    saved = np.load(npz)
    assert saved["member_probs"].shape == (2, report["count"], 10)
    np.testing.assert_allclose(saved["probs"], saved["member_probs"].mean(0), rtol=1e-5, atol=1e-7)
    # Each member's probabilities are its own run's predictions.
    from resnets.data import load_dataset

    data = load_dataset("digits", image_size=IMAGE_SIZE)
    for index, run in enumerate((runs["det"], runs["det2"])):
        own = predict_direct(load_run(run, "cpu"), data.test, data)
        np.testing.assert_allclose(saved["member_probs"][index], own.probs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(saved["labels"], data.test.labels.numpy())


def test_batchensemble_saves_member_probs(runs, tmp_path):
    npz = tmp_path / "be.npz"
    report = evaluate_runs(runs["be"], "--out", tmp_path / "eval.json", "--save-predictions", npz)
    saved = np.load(npz)
    n = report["count"]
    assert saved["probs"].shape == (n, 10) and saved["labels"].shape == (n,)
    assert saved["member_probs"].shape == (2, n, 10)
    np.testing.assert_allclose(saved["probs"], saved["member_probs"].mean(0), rtol=1e-5, atol=1e-7)
    assert report["method"] == "batchensemble" and report["ensemble_size"] == 2
    assert "member/nll" in report["metrics"]


def test_swag_run_is_refinalized_as_training_did(tmp_path):
    # SWAG needs its collected moments (last.pt) and BN batches to sample: the evaluation must
    # reproduce training's own final test metrics.
    run = tiny_run(tmp_path / "swag", iters="4", eval_every="4", batch_size=8, image_size=8, method="swag", swa_start=0.5,
                   swa_every=1, swag_samples=2, swag_rank=2)
    report = evaluate_runs(run)
    results = json.loads((run / "results.json").read_text())
    assert report["method"] == "swag"
    assert report["metrics"]["nll"] == pytest.approx(results["tst/nll"], rel=1e-5)
    assert report["metrics"]["acc"] == pytest.approx(results["tst/acc"])
    assert "member/nll" in report["metrics"]  # the two weight samples are the members


def test_mc_dropout_is_seeded(tmp_path):
    run = tiny_run(tmp_path / "mcd", method="mcdropout", dropout=0.3, mc_samples=3)
    first = evaluate_runs(run, "--out", tmp_path / "a.json", "--save-predictions", tmp_path / "a.npz")
    second = evaluate_runs(run, "--out", tmp_path / "b.json")
    assert first["metrics"] == second["metrics"]
    assert np.load(tmp_path / "a.npz")["member_probs"].shape == (3, first["count"], 10)
    other_seed = evaluate_runs(run, "--out", tmp_path / "c.json", "--seed", "1")
    assert other_seed["metrics"]["nll"] != first["metrics"]["nll"]


def test_other_dataset_with_the_same_classes(runs, tmp_path):
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--data", "synthetic")
    assert report["data"] == "synthetic" and report["count"] == 1000
    assert report["metrics"]["acc"] == pytest.approx(report["metrics"]["acc"])  # finite, not NaN


def test_temperature_scaling_fits_on_val_and_writes(runs, tmp_path):
    npz = tmp_path / "ts.npz"
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--temperature-scale",
                           "--save-predictions", npz)
    t = report["temperature"]
    assert t > 0 and math.isfinite(t) and report["metrics"]["temperature"] == t
    for key in ("nll", "acc", "ece", "brier"):
        assert f"ts/{key}" in report["metrics"]
    # T minimises the validation NLL, so the fitted NLL cannot be worse than T = 1's.
    assert report["temperature_fit"]["ts_nll"] <= report["temperature_fit"]["nll"] + 1e-9

    from resnets.data import load_dataset
    from resnets.methods import apply_temperature, fit_temperature

    data = load_dataset("digits", image_size=IMAGE_SIZE)
    val = predict_direct(load_run(runs["det"], "cpu"), data.val, data)
    assert t == pytest.approx(fit_temperature(val.probs.log(), val.labels), rel=1e-4)
    saved = np.load(npz)
    assert float(saved["temperature"]) == pytest.approx(t)
    scaled = apply_temperature(torch.from_numpy(saved["uncalibrated_probs"]), t).numpy()
    np.testing.assert_allclose(saved["probs"], scaled, rtol=1e-5, atol=1e-7)


def test_corruptions(runs, tmp_path):
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--corruptions", "gaussian_noise,contrast",
                           "--severities", "3")
    corrupted = report["corruptions"]
    assert corrupted["names"] == ["gaussian_noise", "contrast"] and corrupted["severities"] == [3]
    results = corrupted["results"]
    assert set(results) == {"gaussian_noise", "contrast"}
    for name in results:
        assert set(results[name]) == {"3"}
        assert 0 <= results[name]["3"]["acc"] <= 1
    for key in ("nll", "acc", "ece"):
        expected = np.mean([results[name]["3"][key] for name in results])
        assert report["metrics"][f"corrupted/mean_{key}"] == pytest.approx(expected)
    # Same seed, same corrupted images, same numbers.
    again = evaluate_runs(runs["det"], "--out", tmp_path / "again.json", "--corruptions", "contrast",
                          "--severities", "3")
    assert again["corruptions"]["results"]["contrast"] == results["contrast"]


def test_ood_against_synthetic_noise(runs, tmp_path):
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--ood-data", "synthetic")
    ood = report["ood"]
    assert ood["data"] == "synthetic" and ood["split"] == "test" and ood["count"] > 0
    for kind in ("max_prob", "entropy"):
        for key in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            value = report["metrics"][f"ood/{kind}/{key}"]
            assert 0 <= value <= 1 and value == ood["scores"][kind][key]


def test_shift_data(runs, tmp_path):
    # The run's own test set as a "shifted" one: shift/* must equal the plain metrics.
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--shift-data", "digits")
    for key in ("nll", "acc", "ece"):
        assert report["metrics"][f"shift/{key}"] == pytest.approx(report["metrics"][key])


def test_image_folder_data_with_corruptions_shift_and_temperature(runs, tmp_path):
    # A test-only image-folder dataset with the run's 10 classes, in ImageNet-V2's layout.
    from PIL import Image

    root = tmp_path / "v2" / "imagenetv2-tiny"
    rng = np.random.default_rng(0)
    for label in range(10):
        (root / str(label)).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 24, 3), dtype=np.uint8)).save(root / str(label) / f"{i}.png")
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--data", "imagenet-v2", "--data-dir",
                           tmp_path / "v2", "--num-workers", "0", "--corruptions", "contrast", "--severities", "2",
                           "--shift-data", "imagenet-v2", "--shift-data-dir", tmp_path / "v2", "--temperature-scale")
    assert report["data"] == "imagenet-v2" and report["count"] == 20
    assert 0 <= report["corruptions"]["results"]["contrast"]["2"]["acc"] <= 1
    assert report["metrics"]["shift/nll"] == pytest.approx(report["metrics"]["nll"])
    # The temperature is the model's: fit on the run's own validation split, whatever is evaluated.
    assert report["temperature_fit"]["data"] == "digits"
    own = evaluate_runs(runs["det"], "--out", tmp_path / "own.json", "--temperature-scale")
    assert report["temperature"] == pytest.approx(own["temperature"])
    assert "ts/corrupted/mean_nll" in report["metrics"] and "ts/shift/nll" in report["metrics"]


def test_reliability_diagram_png(runs, tmp_path):
    png = tmp_path / "reliability.png"
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--reliability-diagram", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["reliability_diagram"] == str(png)


# --- mistakes ----------------------------------------------------------------------------------


def test_runs_of_different_architectures(runs, tmp_path):
    other = copy_run(runs["det2"], tmp_path / "resnet32")
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["config"]["model"] = "resnet32"
    (other / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(UserError, match="incompatible") as error:
        evaluate_runs(runs["det"], other, "--out", tmp_path / "eval.json")
    assert str(runs["det"]) in str(error.value) and str(other) in str(error.value)
    with pytest.raises(UserError, match="incompatible"):
        evaluate_runs(runs["det"], runs["be"], "--out", tmp_path / "eval.json")


def test_unwritable_predictions_path_fails_before_evaluating(runs, tmp_path, monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated although the predictions path cannot be written")

    monkeypatch.setattr(evaluate, "evaluate_runs", no_evaluation)
    with pytest.raises(UserError, match="--save-predictions.*does not exist"):
        evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--save-predictions",
                      tmp_path / "missing" / "preds.npz")
    with pytest.raises(UserError, match="--save-predictions.*folder"):
        evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--save-predictions", tmp_path)
    with pytest.raises(UserError, match="--reliability-diagram"):
        evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--reliability-diagram",
                      tmp_path / "missing" / "r.png")
    assert not (tmp_path / "eval.json").exists()


def test_unknown_corruption_lists_the_known_ones(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "evaluate_runs", None)  # must fail before any evaluation
    with pytest.raises(UserError, match="'fog_of_war'.*gaussian_noise"):
        evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--corruptions", "contrast,fog_of_war")
    # A corruption whose optional package is missing says why (frost without imagecorruptions).
    monkeypatch.setattr(evaluate, "CORRUPTIONS", tuple(k for k in evaluate.CORRUPTIONS if k != "frost"))
    monkeypatch.setattr(evaluate, "LEFT_OUT", {"frost": "it needs the frost photographs of imagecorruptions"})
    with pytest.raises(UserError, match="frost.*left out"):
        evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--corruptions", "frost")
    with pytest.raises(UserError, match="--severities"):
        evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--corruptions", "contrast", "--severities", "6")


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a resnets run directory"):
        evaluate_runs(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        evaluate_runs(tmp_path / "nowhere")


def test_corrupt_best_weights(runs, tmp_path):
    run = copy_run(runs["det"], tmp_path / "run")
    (run / "checkpoints" / "best.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="best.safetensors"):
        evaluate_runs(run)
    # A valid file of another architecture: a foreign checkpoint, named.
    shutil.copy(runs["be"] / "checkpoints" / "best.safetensors", run / "checkpoints" / "best.safetensors")
    with pytest.raises(UserError, match="foreign checkpoint .*best.safetensors"):
        evaluate_runs(run)
    # Missing best weights fall back to the final ones; missing both is named.
    (run / "checkpoints" / "best.safetensors").unlink()
    assert evaluate_runs(run)["weight_files"][0].endswith("model.safetensors")
    (run / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no best weights"):
        evaluate_runs(run)


def test_temperature_scaling_needs_a_val_split(runs, tmp_path):
    run = tiny_run(tmp_path / "noval", val_size=0)
    with pytest.raises(UserError, match="--temperature-scale"):
        evaluate_runs(run, "--temperature-scale")
    with pytest.raises(UserError, match="no val split.*test, train"):
        evaluate_runs(run, "--split", "val")


def test_cli_exit_status(tmp_path, capsys):
    from resnets import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "eval" not in commands:
        pytest.skip("`resnets eval` is not wired into the CLI yet")
    assert cli.main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "Traceback" not in capsys.readouterr().err


# --- selective prediction and conformal sets -----------------------------------------------------


def test_selective_metrics_and_thr_sets_on_digits(runs, tmp_path):
    npz = tmp_path / "preds.npz"
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--save-predictions", npz)
    metrics, saved = report["metrics"], np.load(npz)
    # AURC from its definition on the saved predictions: accept the k most confident, k = 1..N.
    conf, wrong = saved["probs"].max(1), saved["probs"].argmax(1) != saved["labels"]
    errors = np.cumsum(wrong[np.argsort(-conf, kind="stable")])
    k = np.arange(1, len(errors) + 1)
    assert metrics["selective/aurc"] == pytest.approx((errors / k).mean(), abs=1e-3)  # float32 ties aside
    assert report["risk_coverage"]["coverage"][-1] == 1
    png = tmp_path / "risk.png"
    assert evaluate_runs(runs["det"], "--out", tmp_path / "e2.json", "--risk-coverage", png)["risk_coverage_plot"] \
        == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="--risk-coverage"):
        evaluate_runs(runs["det"], "--out", tmp_path / "e3.json", "--risk-coverage", tmp_path / "no" / "r.png")
    assert report["risk_coverage"]["risk"][-1] == pytest.approx(1 - metrics["acc"])

    # THR (Sadinle et al.) by hand: calibrated on the run's val split at alpha = 0.1.
    from resnets.data import load_dataset

    data = load_dataset("digits", image_size=IMAGE_SIZE)
    val = predict_direct(load_run(runs["det"], "cpu"), data.val, data)
    cal = np.sort(1 - val.probs.numpy()[np.arange(len(val.labels)), val.labels.numpy()])
    q = cal[math.ceil((len(cal) + 1) * 0.9) - 1]
    sets = 1 - saved["probs"] <= q
    assert report["conformal"]["alpha"] == 0.1 and report["conformal"]["calibration"]["count"] == len(cal)
    assert metrics["conformal/thr/set_size"] == pytest.approx(sets.sum(1).mean(), abs=0.01)
    assert metrics["conformal/thr/coverage"] == pytest.approx(sets[np.arange(len(sets)), saved["labels"]].mean(),
                                                               abs=0.01)
    assert metrics["conformal/thr/coverage"] >= 0.88
    for method in ("aps", "raps"):
        assert 0 <= metrics[f"conformal/{method}/coverage"] <= 1 and metrics[f"conformal/{method}/set_size"] > 0
    # A smaller alpha gives larger sets.
    strict = evaluate_runs(runs["det"], "--out", tmp_path / "strict.json", "--alpha", "0.02")
    assert strict["metrics"]["conformal/thr/set_size"] >= metrics["conformal/thr/set_size"]


def test_conformal_sets_need_a_val_split(runs, tmp_path):
    run = tiny_run(tmp_path / "noval", val_size=0)
    report = evaluate_runs(run)
    assert "no val split" in report["conformal"]["skipped"]
    assert not any(k.startswith("conformal/") for k in report["metrics"])
    assert "selective/aurc" in report["metrics"]
    with pytest.raises(UserError, match="--alpha .*val split"):
        evaluate_runs(run, "--alpha", "0.1")
    with pytest.raises(UserError, match="--alpha must be .*between 0 and 1"):
        evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--alpha", "1")


def test_energy_and_max_logit_auroc_equal_sklearn_on_the_saved_logits(runs, tmp_path):
    from scipy.special import logsumexp
    from sklearn.metrics import roc_auc_score

    npz = tmp_path / "preds.npz"
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--ood-data", "synthetic",
                           "--save-predictions", npz)
    saved = np.load(npz)
    # The saved logits are the model's: their softmax is the saved probabilities.
    np.testing.assert_allclose(torch.from_numpy(saved["logits"]).softmax(-1).numpy(), saved["probs"], atol=1e-6)
    is_in = np.r_[np.ones(len(saved["logits"])), np.zeros(len(saved["ood_logits"]))]
    scores = report["ood"]["scores"]
    energy = np.r_[logsumexp(saved["logits"].astype(np.float64), axis=1),
                   logsumexp(saved["ood_logits"].astype(np.float64), axis=1)]
    assert scores["energy"]["auroc"] == pytest.approx(roc_auc_score(is_in, energy), abs=1e-9)
    max_logit = np.r_[saved["logits"].max(1), saved["ood_logits"].max(1)]
    assert scores["max_logit"]["auroc"] == pytest.approx(roc_auc_score(is_in, max_logit), abs=1e-9)
    assert report["metrics"]["ood/energy/auroc"] == scores["energy"]["auroc"]
    assert "mutual_information" not in scores  # one model: no members


def test_deep_ensemble_ood_has_mutual_information(runs, tmp_path):
    from sklearn.metrics import roc_auc_score

    npz = tmp_path / "ens.npz"
    report = evaluate_runs(runs["det"], runs["det2"], "--out", tmp_path / "eval.json", "--ood-data", "synthetic",
                           "--save-predictions", npz)
    scores = report["ood"]["scores"]
    assert {"max_prob", "entropy", "max_logit", "energy", "mutual_information"} <= set(scores)
    saved = np.load(npz)
    # Mutual information of the members, from its definition (as an in-distribution score: negated).
    entropy = lambda p: -(p * np.log(np.where(p > 0, p, 1))).sum(-1)  # noqa: E731

    def mutual_information(members):
        members = members.astype(np.float64)
        return entropy(members.mean(0)) - entropy(members).mean(0)

    mi = np.r_[mutual_information(saved["member_probs"]), mutual_information(saved["ood_member_probs"])]
    is_in = np.r_[np.ones(saved["member_probs"].shape[1]), np.zeros(saved["ood_member_probs"].shape[1])]
    assert (mi >= -1e-6).all()
    assert scores["mutual_information"]["auroc"] == pytest.approx(roc_auc_score(is_in, -mi), abs=1e-4)
    # An ensemble's logits are its members' mean.
    assert saved["logits"].shape == saved["probs"].shape


# --- test-time augmentation ----------------------------------------------------------------------


def test_tta_flip_is_the_mean_of_the_softmaxes_of_x_and_its_mirror(runs, tmp_path):
    from resnets.data import eval_batches, load_dataset

    npz = tmp_path / "tta.npz"
    report = evaluate_runs(runs["det"], "--out", tmp_path / "eval.json", "--tta", "flip", "--save-predictions", npz)
    assert report["tta"] == "flip"
    loaded = load_run(runs["det"], "cpu", "best")
    data = load_dataset("digits", image_size=IMAGE_SIZE)
    expected = []
    with torch.no_grad():
        for x, _ in eval_batches(data.test, batch_size=100, device="cpu", mean=data.mean, std=data.std,
                                 image_size=IMAGE_SIZE, num_workers=0):
            model = loaded.model.eval()
            expected.append((model(x).softmax(-1) + model(torch.flip(x, dims=[3])).softmax(-1)) / 2)
    np.testing.assert_allclose(np.load(npz)["probs"], torch.cat(expected).numpy(), rtol=0, atol=1e-6)
    plain = evaluate_runs(runs["det"], "--out", tmp_path / "plain.json")
    assert report["metrics"]["nll"] != plain["metrics"]["nll"]


def test_tta_flip_and_crops_keep_batchensemble_members(runs, tmp_path):
    npz = tmp_path / "be.npz"
    report = evaluate_runs(runs["be"], "--out", tmp_path / "eval.json", "--tta", "flip+crops", "--save-predictions", npz)
    saved = np.load(npz)
    assert report["tta"] == "flip+crops" and saved["member_probs"].shape == (2, report["count"], 10)
    np.testing.assert_allclose(saved["probs"], saved["member_probs"].mean(0), rtol=1e-5, atol=1e-7)


def test_tta_views():
    from resnets.tta import tta_views

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    flip = tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[1][..., 0], x[..., 7])
    views = tta_views(x, "flip+crops")
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    # A crop resized back keeps its corner's content: the top-left corner pixel is the image's.
    assert torch.allclose(views[1][..., 0, 0], x[..., 0, 0], atol=0.6)
    with pytest.raises(UserError, match="--tta 'mirror'.*flip"):
        tta_views(x, "mirror")
