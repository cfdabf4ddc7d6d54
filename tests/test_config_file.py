"""`resnets train --print-config` writes a recipe as YAML and `--config` trains it back."""
from __future__ import annotations

import pytest
import yaml
from safetensors.torch import load_file

from resnets.cli import main

TINY = ["--image-size", "16", "--iters", "3", "--eval-every", "3", "--batch-size", "16", "--no-progress"]


def test_print_config_then_config_trains_the_same_run_bit_identical(tmp_path, capsys):
    assert main(["train", "--preset", "digits-resnet20", *TINY, "--lr", "0.05", "--print-config"]) == 0
    printed = capsys.readouterr().out
    recipe = yaml.safe_load(printed)
    assert recipe["preset"] == "digits-resnet20" and recipe["lr"] == 0.05 and recipe["iters"] == "3"
    assert not list(tmp_path.iterdir())  # printing trains nothing
    (tmp_path / "recipe.yaml").write_text(printed)

    assert main(["train", "--config", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "from_file")]) == 0
    assert main(["train", "--preset", "digits-resnet20", *TINY, "--lr", "0.05", "--out", str(tmp_path / "direct")]) == 0
    ours, theirs = (load_file(tmp_path / d / "model.safetensors") for d in ("from_file", "direct"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].equal(theirs[key]), key


def test_flags_override_the_file_and_a_run_config_is_a_recipe(tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"lr": 0.3, "iters": 7, "model": "resnet32"}))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml"), "--lr", "0.2", "--print-config"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert (recipe["lr"], recipe["iters"], recipe["model"]) == (0.2, "7", "resnet32")

    assert main(["train", "--preset", "digits-resnet20", *TINY, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "run" / "config.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["iters"] == "3"


@pytest.mark.parametrize("text, message", [
    ("lr: abc\n", "lr is 'abc', but --lr takes a number"),
    ("progress: maybe\n", "--progress takes true or false"),
    ("batch_size: 2.5\n", "--batch-size takes an integer"),
    ("lrr: 0.1\n", "unknown field(s) ['lrr']"),
    ("- lr\n- 0.1\n", "not a mapping"),
    ("lr: [0.1\n", "cannot be read as YAML"),
])
def test_bad_config_files_are_one_clear_error(tmp_path, capsys, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
