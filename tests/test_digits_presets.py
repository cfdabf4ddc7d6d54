"""The digits presets: the default job and one per uncertainty method, built from it.

Fast checks only: the presets resolve to valid configs, each one trains for 2 iterations at
16 px end to end, and `resnets train --list-presets` lists them. Their accuracy and NLL are
measured by benchmarks/uncertainty_digits.py and benchmarks/digits_default.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnets.cli import main
from resnets.config import TrainConfig
from resnets.presets import DIGITS, PRESETS, get_preset

METHOD_PRESETS = {
    "digits-resnet20-batchensemble": "batchensemble",
    "digits-resnet20-ensemble": "ensemble",
    "digits-resnet20-mcdropout": "mcdropout",
    "digits-resnet20-swag": "swag",
    "digits-resnet20-sngp": "sngp",
    "digits-resnet20-heteroscedastic": "heteroscedastic",
    "digits-resnet20-rank1": "rank1",
    "digits-resnet20-mimo": "mimo",
}
# The CLI's own overrides for a smoke run. SWAG also needs a weight snapshot within those 2
# iterations (its preset collects every 5 steps over the last quarter), and 2 weight samples
# instead of 10: each one re-estimates BatchNorm on 50 training batches, which took 40 s.
SMOKE = ["--iters", "2", "--image-size", "16", "--no-progress"]
EXTRA = {"digits-resnet20-swag": ["--swa-every", "1", "--swag-samples", "2"]}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ["digits-resnet20", *METHOD_PRESETS])
def test_digits_presets_resolve(name):
    cfg = TrainConfig.from_dict(get_preset(name))
    assert cfg.data == "digits" and cfg.model == "resnet20" and cfg.image_size == 32
    assert cfg.method == METHOD_PRESETS.get(name, "deterministic")


@pytest.mark.parametrize("name", METHOD_PRESETS)
def test_method_presets_are_the_default_job_plus_method_options(name):
    preset = get_preset(name)
    # Everything that is not a method option is the default job's, unless the preset says why.
    shared = {k: v for k, v in DIGITS.items() if k in preset and preset[k] == v}
    assert {"data", "model", "width", "image_size", "augment", "head_bias", "head_init"} <= set(shared)
    if METHOD_PRESETS[name] in ("batchensemble", "ensemble", "rank1"):
        assert preset["ensemble_size"] == 4


def test_default_job_is_the_digits_preset(capsys):
    assert main(["train", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "preset: digits-resnet20" in printed


@pytest.mark.parametrize("name", METHOD_PRESETS)
def test_method_preset_trains_two_iterations_at_16px(name, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", name, "--out", str(out), *SMOKE, *EXTRA.get(name, [])]) == 0
    assert "tst/acc" in capsys.readouterr().out
    results = json.loads((Path(out) / "results.json").read_text())
    assert results["method"] == METHOD_PRESETS[name] and results["preset"] == name
    assert results["iters"] == 2 and results["image_size"] == 16
    assert 0.0 <= results["tst/acc"] <= 1.0 and results["tst/nll"] > 0
    if name.endswith(("batchensemble", "ensemble", "rank1")):
        assert results["ensemble_size"] == 4


def test_list_presets_shows_the_digits_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert set(METHOD_PRESETS) | {"digits-resnet20"} <= set(listed)
    assert len(listed) == len(PRESETS)
