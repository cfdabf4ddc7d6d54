"""`resnets train --pretrained`: torchvision and timm weights from their caches (written here, in
the libraries' real layouts), a run's model.safetensors, and the inputs that must be refused."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

from resnets.cli import main
from resnets.runs import FINAL_WEIGHTS, LOG_FILE, load_run

# 1 step at LR 0 with BN momentum 0: training changes no parameter and no running statistic, only
# the counters num_batches_tracked (which the libraries' files hold as 0 or not at all).
TINY = ["--data", "digits", "--image-size", "16", "--iters", "1", "--lr", "0", "--warmup", "0",
        "--bn-momentum", "0", "--batch-size", "16", "--eval-every", "1", "--eval-batch-size", "512",
        "--device", "cpu", "--no-progress", "--augment", "none"]


def _train(out: Path, *flags: str) -> int:
    return main(["train", "--out", str(out), *TINY, *flags])


def _torchvision_home(tmp_path: Path, monkeypatch, model_name: str = "resnet50") -> tuple[torch.nn.Module, Path]:
    """A torchvision model whose state dict lies in TORCH_HOME under its published file name."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    torch.manual_seed(1)
    peer = torchvision.models.get_model(model_name)
    # The published name comes from torchvision's own enum (IMAGENET1K_V2 for resnet50).
    name = torchvision.models.get_model_weights(model_name).DEFAULT.url.rsplit("/", 1)[-1]
    path = home / "hub" / "checkpoints" / name
    path.parent.mkdir(parents=True)
    torch.save(peer.state_dict(), path)
    return peer.eval(), path


def _timm_cache(tmp_path: Path, monkeypatch, model_name: str = "resnetrs50") -> tuple[torch.nn.Module, Path]:
    """A timm model in a Hugging Face cache of huggingface_hub's layout under HF_HOME."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    torch.manual_seed(2)
    peer = timm.create_model(model_name)
    repo = home / "hub" / f"models--{peer.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    save_file({k: v.contiguous() for k, v in peer.state_dict().items()}, snapshot / "model.safetensors")
    return peer.eval(), snapshot / "model.safetensors"


def _ours(run_dir: Path) -> torch.nn.Module:
    return load_run(run_dir, weights="final").model


def _assert_backbone_equal(trained: dict, source: dict, rename) -> None:
    checked = set()
    for key, tensor in source.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(trained[rename(key)], tensor), key
        checked.add(rename(key))
    # Every tensor of ours but the head and the step counters came from the file.
    assert checked == {k for k in trained if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _features_close(ours: torch.nn.Module, peer_features, size: int = 16) -> None:
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = peer_features(x)
        got = ours.forward_features(x)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-5 * max(scale, 1.0)


def test_torchvision_resnet50_parity(tmp_path, monkeypatch, capsys):
    peer, path = _torchvision_home(tmp_path, monkeypatch)
    out = tmp_path / "run"
    assert _train(out, "--model", "resnet50", "--pretrained", "torchvision") == 0
    err = capsys.readouterr().err
    assert f"initialized from {path}" in err and "replaced by a freshly initialized head" in err
    assert "replaced by a freshly initialized head" in (out / LOG_FILE).read_text()
    from resnets.models.weights import _TORCHVISION_RULES, _rename
    trained = load_file(out / FINAL_WEIGHTS)
    _assert_backbone_equal(trained, peer.state_dict(), lambda k: _rename(k, _TORCHVISION_RULES))
    assert trained["fc.weight"].shape == (10, 2048)
    ours = _ours(out)
    assert ours.stem.kind == "imagenet"  # the 7x7 stem of the weights, though the images are 16 px
    peer.fc = torch.nn.Identity()
    _features_close(ours, peer)

    # The same through the run's model.safetensors as SOURCE: now the head fits and loads too.
    again = tmp_path / "again"
    assert _train(again, "--model", "resnet50", "--pretrained", str(out / FINAL_WEIGHTS)) == 0
    second = load_file(again / FINAL_WEIGHTS)
    for key, tensor in trained.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(second[key], tensor), key
    _features_close(_ours(again), peer)


def test_timm_resnetrs50_parity(tmp_path, monkeypatch, capsys):
    peer, path = _timm_cache(tmp_path, monkeypatch)
    out = tmp_path / "run"
    assert _train(out, "--model", "resnetrs50", "--pretrained", "timm") == 0
    assert f"initialized from {path}" in capsys.readouterr().err
    from resnets.models.weights import _TIMM_DEEP_STEM_RULES, _rename
    trained = load_file(out / FINAL_WEIGHTS)
    _assert_backbone_equal(trained, peer.state_dict(), lambda k: _rename(k, _TIMM_DEEP_STEM_RULES))
    _features_close(_ours(out), lambda x: peer.forward_head(peer.forward_features(x), pre_logits=True))


def test_batchensemble_members_start_from_the_shared_weights(tmp_path, monkeypatch):
    peer, _ = _torchvision_home(tmp_path, monkeypatch, "resnet18")
    out = tmp_path / "run"
    assert _train(out, "--model", "resnet18", "--pretrained", "torchvision", "--method", "batchensemble",
                  "--ensemble-size", "2", "--batch-size", "16") == 0
    trained = load_file(out / FINAL_WEIGHTS)
    assert torch.equal(trained["stem.conv.weight"], peer.state_dict()["conv1.weight"])
    assert torch.equal(trained["layer3.1.conv2.weight"], peer.state_dict()["layer3.1.conv2.weight"])


def test_deep_ensemble_members_start_from_the_weights_with_their_own_heads(tmp_path, monkeypatch):
    peer, _ = _torchvision_home(tmp_path, monkeypatch, "resnet18")
    out = tmp_path / "run"
    # --head-init default: PyTorch's random head (the default recipe's is all zeros, the same for any seed).
    assert _train(out, "--model", "resnet18", "--pretrained", "torchvision", "--method", "ensemble",
                  "--ensemble-size", "2", "--head-init", "default") == 0
    from resnets.models.weights import _TORCHVISION_RULES, _rename
    members = [load_file(out / f"member_{k}" / FINAL_WEIGHTS) for k in range(2)]
    for trained in members:  # every member: all but the head is the file's
        _assert_backbone_equal(trained, peer.state_dict(), lambda k: _rename(k, _TORCHVISION_RULES))
        assert trained["fc.weight"].shape == (10, 512)
    # The heads (10 classes, the file's has 1000) are initialized from each member's own seed.
    assert not torch.equal(members[0]["fc.weight"], members[1]["fc.weight"])
    assert all(m["fc.weight"].abs().sum() > 0 for m in members)


def _refused(tmp_path: Path, capsys, *flags: str) -> str:
    assert _train(tmp_path / "refused", *flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only=False" not in err
    return err


def test_missing_cache_names_the_expected_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    err = _refused(tmp_path, capsys, "--model", "resnet50", "--pretrained", "torchvision")
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in err
    err = _refused(tmp_path, capsys, "--model", "resnetrs50", "--pretrained", "timm")
    assert str(tmp_path / "empty_hf" / "hub" / "models--timm--resnetrs50.tf_in1k") in err
    assert "model.safetensors" in err



def test_missing_torchvision_file_is_downloaded_by_torch_hub(tmp_path, monkeypatch, capsys):
    # Online: torch hub's load_state_dict_from_url (torchvision's WeightsEnum.get_state_dict) fetches
    # the published URL into $TORCH_HOME/hub/checkpoints; here a stand-in writes the file there.
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    torch.manual_seed(3)
    peer = torchvision.models.resnet18()
    calls = []

    def download(given_url, model_dir=None, file_name=None, check_hash=False, weights_only=False, **kwargs):
        calls.append((given_url, Path(model_dir) / file_name, check_hash, weights_only))
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        torch.save(peer.state_dict(), Path(model_dir) / file_name)
        return peer.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    out = tmp_path / "run"
    assert _train(out, "--model", "resnet18", "--pretrained", "torchvision") == 0
    expected = home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    assert calls == [(url, expected, True, True)]
    assert f"initialized from {expected}" in capsys.readouterr().err
    trained = load_file(out / FINAL_WEIGHTS)
    assert torch.equal(trained["layer2.0.conv1.weight"], peer.state_dict()["layer2.0.conv1.weight"])
    # Now in the cache: a second run reads the file and downloads nothing.
    assert _train(tmp_path / "again", "--model", "resnet18", "--pretrained", "torchvision") == 0
    assert len(calls) == 1


def test_missing_timm_file_is_downloaded_by_the_hub_into_the_hf_cache(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError  # the base of the hub's RemoteEntryNotFoundError
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    torch.manual_seed(4)
    peer = timm.create_model("resnet18")
    repo_id = peer.pretrained_cfg["hf_hub_id"]
    calls = []

    def download(repo, filename, cache_dir=None, **kwargs):
        calls.append((repo, filename, Path(cache_dir)))
        if filename == "model.safetensors":  # as a repository that only has the .bin: timm tries it next
            raise EntryNotFoundError(f"{filename} is not in {repo}")
        path = Path(cache_dir) / "downloaded" / filename
        path.parent.mkdir(parents=True)
        torch.save(peer.state_dict(), path)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    out = tmp_path / "run"
    assert _train(out, "--model", "resnet18", "--pretrained", "timm") == 0
    assert calls == [(repo_id, "model.safetensors", home / "hub"), (repo_id, "pytorch_model.bin", home / "hub")]
    assert "initialized from" in capsys.readouterr().err
    trained = load_file(out / FINAL_WEIGHTS)
    assert torch.equal(trained["layer3.1.conv2.weight"], peer.state_dict()["layer3.1.conv2.weight"])


def test_offline_download_failure_names_the_expected_file(tmp_path, monkeypatch, capsys):
    # conftest's stand-ins fail as an offline machine does; huggingface_hub's own offline error too.
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    tried = []

    def offline(repo, filename, **kwargs):
        tried.append(filename)
        raise LocalEntryNotFoundError("cannot reach the Hub and the file is not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    err = _refused(tmp_path, capsys, "--model", "resnet18", "--pretrained", "torchvision")
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err
    assert "downloading it from https://download.pytorch.org/models/resnet18-f37072fd.pth failed" in err
    err = _refused(tmp_path, capsys, "--model", "resnet18", "--pretrained", "timm")
    assert str(tmp_path / "empty_hf" / "hub" / "models--timm--resnet18.a1_in1k") in err
    assert "LocalEntryNotFoundError" in err and tried == ["model.safetensors"]

def test_unpublished_model_is_refused(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "--model", "resnet20", "--pretrained", "torchvision")
    assert "neither library publishes weights for resnet20" in err
    err = _refused(tmp_path, capsys, "--model", "resnetrs50", "--pretrained", "torchvision")
    assert "timm publishes them" in err


def test_state_dict_of_another_architecture_is_refused(tmp_path, capsys):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    err = _refused(tmp_path, capsys, "--model", "resnet50", "--pretrained", str(path))
    assert str(path) in err and "does not fit --model resnet50" in err and "layer1.0" in err


def test_file_that_is_not_weights_is_refused(tmp_path, capsys):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    err = _refused(tmp_path, capsys, "--model", "resnet18", "--pretrained", str(path))
    assert str(path) in err and "cannot be read safely" in err
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00" * 64)
    assert str(fake) in _refused(tmp_path, capsys, "--model", "resnet18", "--pretrained", str(fake))
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    assert "not a state dict" in _refused(tmp_path, capsys, "--model", "resnet18", "--pretrained", str(listing))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_pickle_that_runs_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    assert not marker.exists()
    err = _refused(tmp_path, capsys, "--model", "resnet18", "--pretrained", str(path))
    assert not marker.exists()
    assert str(path) in err and "never unpickled" in err


def test_finetune_preset_follows_the_torchvision_tutorial():
    # pytorch/tutorials beginner_source/transfer_learning_tutorial.py: SGD lr 0.001 momentum 0.9,
    # StepLR(step_size=7, gamma=0.1), 25 epochs, every layer trained from ImageNet weights.
    from resnets.config import TrainConfig
    from resnets.presets import get_preset
    cfg = TrainConfig.from_dict(get_preset("finetune-resnet50"))
    assert (cfg.model, cfg.pretrained, cfg.optimizer, cfg.lr, cfg.momentum) == ("resnet50", "torchvision", "sgd",
                                                                                0.001, 0.9)
    assert (cfg.schedule, cfg.milestones, cfg.lr_decay, cfg.iters, cfg.freeze) == ("step", "7ep,14ep,21ep", 0.1,
                                                                                  "25ep", 0)
