"""--optimizer lamb and lars: our Lamb/Lars against timm.optim.Lamb/Lars (the oracle) on ResNet-20
with the same parameter groups, and a run from the command line."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from resnets import create_model
from resnets.cli import main
from resnets.config import TrainConfig
from resnets.optimizers import Lamb, Lars
from resnets.recipe import build_optimizer, parameter_groups
from resnets.runs import CONFIG_FILE, FINAL_WEIGHTS

timm_optim = pytest.importorskip("timm.optim")

LR = 0.02


def _model():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, image_size=16)
    with torch.no_grad():  # non-trivial BN parameters, so their groups are exercised too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


def _peer_groups(peer: nn.Module, ours: torch.optim.Optimizer, model: nn.Module) -> list[dict]:
    """The same groups (weight decay, LR) as ours, built on the peer's parameters."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    peer_params = list(peer.parameters())
    return [dict(params=[peer_params[index[id(p)]] for p in group["params"]], weight_decay=group["weight_decay"],
                 lr=group["lr"]) for group in ours.param_groups]


def _train(net, optimizer, steps):
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["lamb", "lars"])
@pytest.mark.parametrize("steps", [1, 3])
def test_steps_equal_timm_with_the_same_groups(name, steps):
    cfg = TrainConfig(model="resnet20", optimizer=name, weight_decay=0.05, head_lr_mult=10.0, momentum=0.9)
    model = _model()
    peer = copy.deepcopy(model)
    ours = build_optimizer(parameter_groups(model, cfg), cfg, lr=LR)
    for group in ours.param_groups:
        group["lr"] = LR * group["lr_mult"]  # as the training loop sets it
    groups = _peer_groups(peer, ours, model)
    # BN and biases sit in groups with no decay (timm's param_groups_weight_decay rule), the head apart.
    no_decay = [g for g in ours.param_groups if g["weight_decay"] == 0.0]
    assert no_decay and all(p.dim() == 1 for g in no_decay for p in g["params"])
    assert sum(len(g["params"]) for g in no_decay) == sum(p.dim() == 1 for p in model.parameters())
    if name == "lamb":
        assert isinstance(ours, Lamb)
        expected = timm_optim.Lamb(groups, lr=LR)  # timm's defaults: max_grad_norm 1.0, betas, eps 1e-6
    else:
        assert isinstance(ours, Lars)
        expected = timm_optim.Lars(groups, lr=LR, momentum=0.9)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, ours, steps)
    _train(peer, expected, steps)
    moved = 0
    for (n, a), b in zip(model.named_parameters(), peer.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)
        moved += not torch.equal(a, start[n])
    assert moved == len(start)  # every tensor took a step, decayed or not


def test_lamb_clips_by_the_global_norm_and_leaves_grad_alone():
    """timm's max_grad_norm=1.0: with a huge gradient the first step matches timm and p.grad is untouched."""
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    peer = nn.Parameter(w.detach().clone())
    ours, expected = Lamb([w], lr=0.1, weight_decay=0.0), timm_optim.Lamb([peer], lr=0.1, weight_decay=0.0)
    for p, opt in ((w, ours), (peer, expected)):
        p.grad = torch.tensor([300.0, -400.0])
        opt.step()
    assert torch.equal(w.grad, torch.tensor([300.0, -400.0]))
    torch.testing.assert_close(w, peer, rtol=0, atol=1e-6)


@pytest.mark.parametrize("options", [dict(trust_clip=True), dict(always_adapt=True),
                                     dict(trust_clip=True, always_adapt=True)])
@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_trust_clip_and_always_adapt_equal_timm(name, options):
    cfg = TrainConfig(model="resnet20", optimizer=name, weight_decay=0.01)
    model = _model()
    peer = copy.deepcopy(model)
    cls, peer_cls = (Lamb, timm_optim.Lamb) if name == "lamb" else (Lars, timm_optim.Lars)
    extra = dict(momentum=0.9) if name == "lars" else {}
    ours = cls(parameter_groups(model, cfg), lr=LR, **extra, **options)
    expected = peer_cls(_peer_groups(peer, ours, model), lr=LR, **extra, **options)
    _train(model, ours, 2)
    _train(peer, expected, 2)
    for (n, a), b in zip(model.named_parameters(), peer.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)


FLAGS = ["--data", "digits", "--model", "resnet20", "--image-size", "16", "--iters", "2", "--warmup", "0",
         "--batch-size", "32", "--eval-every", "2", "--eval-batch-size", "512", "--device", "cpu",
         "--no-progress", "--augment", "none", "--lr", "1e-3", "--seed", "3"]


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_train_from_the_command_line_records_the_optimizer(tmp_path, name):
    out = tmp_path / name
    assert main(["train", "--out", str(out), *FLAGS, "--optimizer", name]) == 0
    saved = yaml.safe_load((out / CONFIG_FILE).read_text())
    assert saved["config"]["optimizer"] == name
    weights = load_file(out / FINAL_WEIGHTS)
    assert all(torch.isfinite(t).all() for t in weights.values())
