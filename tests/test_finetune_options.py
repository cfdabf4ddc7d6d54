"""--freeze, --head-lr-mult and --optimizer adamw, end to end on digits and against torch.optim.AdamW."""
from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file
from torch import nn

from resnets.cli import main
from resnets.config import TrainConfig
from resnets.recipe import build_optimizer, build_model, parameter_groups
from resnets.runs import FINAL_WEIGHTS

FLAGS = ["--data", "digits", "--model", "resnet20", "--image-size", "16", "--iters", "2", "--warmup", "0",
         "--batch-size", "32", "--eval-every", "2", "--eval-batch-size", "512", "--device", "cpu",
         "--no-progress", "--augment", "none", "--lr", "0.05", "--seed", "3"]


def _weights(tmp_path, name, *flags):
    assert main(["train", "--out", str(tmp_path / name), *FLAGS, *flags]) == 0
    return load_file(tmp_path / name / FINAL_WEIGHTS)


def test_freeze_keeps_the_stem_and_first_stages_and_their_bn_statistics(tmp_path):
    start = _weights(tmp_path, "start")
    source = str(tmp_path / "start" / FINAL_WEIGHTS)
    frozen = _weights(tmp_path, "frozen", "--pretrained", source, "--freeze", "1")
    for key, tensor in start.items():
        if key.startswith(("stem.", "layer1.")):
            assert torch.equal(frozen[key], tensor), key  # weights and running statistics alike
    assert not torch.equal(frozen["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])
    assert not torch.equal(frozen["layer2.0.bn1.running_mean"], start["layer2.0.bn1.running_mean"])


def test_freeze_beyond_the_stages_is_refused(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *FLAGS, "--freeze", "4"]) == 2
    err = capsys.readouterr().err
    assert "--freeze 4" in err and "has 3 stages" in err and "Traceback" not in err


def test_head_lr_mult_zero_leaves_the_head(tmp_path):
    start = _weights(tmp_path, "start")
    source = str(tmp_path / "start" / FINAL_WEIGHTS)
    head_fixed = _weights(tmp_path, "head", "--pretrained", source, "--head-lr-mult", "0")
    assert torch.equal(head_fixed["fc.weight"], start["fc.weight"])  # LR 0: decay does not move it either
    assert not torch.equal(head_fixed["layer3.0.conv1.weight"], start["layer3.0.conv1.weight"])
    moved = _weights(tmp_path, "moved", "--pretrained", source)
    assert not torch.equal(moved["fc.weight"], start["fc.weight"])


def test_adamw_step_equals_torch_adamw_with_no_decay_on_bn_and_biases():
    cfg = TrainConfig(model="resnet20", optimizer="adamw", weight_decay=0.05, head_lr_mult=10.0)
    torch.manual_seed(0)
    model = build_model(cfg, 10, 16)
    peer = copy.deepcopy(model)
    ours = build_optimizer(parameter_groups(model, cfg), cfg, lr=1e-3)
    for group in ours.param_groups:
        group["lr"] = 1e-3 * group["lr_mult"]  # as the training loop sets it
    # The expectation, written out: decay on conv and linear weights, none on 1-d tensors.
    bn_or_bias = [p for n, p in peer.named_parameters() if p.dim() == 1]
    head_weight = [peer.fc.weight]
    decayed = [p for n, p in peer.named_parameters() if p.dim() > 1 and not n.startswith("fc.")]
    head_bias = [peer.fc.bias] if peer.fc.bias is not None else []
    expected = torch.optim.AdamW([
        dict(params=decayed, weight_decay=0.05, lr=1e-3),
        dict(params=head_weight, weight_decay=0.05, lr=1e-2),
        dict(params=[p for p in bn_or_bias if all(p is not b for b in head_bias)], weight_decay=0.0, lr=1e-3),
        dict(params=head_bias, weight_decay=0.0, lr=1e-2)], lr=1e-3)
    assert isinstance(ours, torch.optim.AdamW)
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8)
    for net, optimizer in ((model, ours), (peer, expected)):
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    for (name, a), b in zip(model.named_parameters(), peer.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_adamw_from_the_command_line_and_an_unknown_optimizer(tmp_path, capsys):
    weights = _weights(tmp_path, "adamw", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05")
    assert torch.isfinite(weights["fc.weight"]).all()
    assert main(["train", "--out", str(tmp_path / "bad"), *FLAGS, "--optimizer", "lion"]) == 2
    assert "--optimizer 'lion' is unknown: expected one of sgd, adamw, lamb, lars" in capsys.readouterr().err
