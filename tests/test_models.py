import pytest
import torch
import torchvision
from torch import nn

from resnets import create_model, import_weights, list_models
from resnets.models.stats import count_flops, count_parameters

timm = pytest.importorskip("timm")


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808),
])
def test_imagenet_counts_equal_torchvision(name, expected):
    assert count_parameters(meta_model(name)) == expected
    assert count_parameters(torchvision.models.get_model(name)) == expected


@pytest.mark.parametrize("name,expected", [
    ("resnetrs50", 35_691_912), ("resnetrs101", 63_618_696), ("resnetrs152", 86_621_576),
    ("resnetrs200", 93_209_992), ("resnetrs270", 129_861_448), ("resnetrs350", 163_956_168),
    ("resnetrs420", 191_891_656),
])
def test_resnetrs_counts_equal_timm(name, expected):
    assert count_parameters(meta_model(name)) == expected
    with torch.device("meta"):
        assert count_parameters(timm.create_model(name)) == expected


@pytest.mark.parametrize("name,width,expected", [
    ("resnet20", 1, 272_464), ("resnet20", 2, 1_080_080), ("resnet20", 4, 4_299_856),
    ("resnet32", 1, 466_896), ("resnet44", 1, 661_328), ("resnet56", 1, 855_760),
])
def test_seed001_cifar_counts(name, width, expected):
    model = meta_model(name, num_classes=10, width=width, head_bias=False)
    assert count_parameters(model) == expected
    # A head with bias adds one parameter per class.
    assert count_parameters(meta_model(name, num_classes=10, width=width)) == expected + 10


def test_seed001_resnet18_small_stem():
    model = meta_model("resnet18", num_classes=10, image_size=32, head_bias=False)
    assert count_parameters(model) == 11_173_952
    assert model.stem.kind == "small"
    assert meta_model("resnet18", image_size=64).stem.kind == "small"
    assert meta_model("resnet18", image_size=224).stem.kind == "imagenet"


def test_small_stem_keeps_resolution_and_every_model_runs():
    x = torch.randn(2, 3, 32, 32)
    for name in ("resnet20", "resnet18", "resnet50"):
        model = create_model(name, num_classes=7, image_size=32).eval()
        assert model(x).shape == (2, 7)
    # 32 px through the 3x3 stem reaches the last stage at 4x4 (strides 1, 2, 2, 2).
    model = create_model("resnet18", num_classes=7, image_size=32)
    feats = model.stem(x)
    for stage in model.stages():
        feats = stage(feats)
    assert feats.shape[-1] == 4


def randomize_batchnorm(model):
    # Fresh BN layers are the identity, which would hide a wrong mapping of BN tensors.
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 0.1 + 1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name,source,size", [
    ("resnet18", "torchvision", 64), ("resnet50", "torchvision", 64), ("resnet152", "torchvision", 64),
    ("resnetrs50", "timm", 64), ("resnetrs101", "timm", 64), ("resnet50", "timm", 64),
])
def test_logit_parity_after_import(name, source, size):
    torch.manual_seed(0)
    peer = torchvision.models.get_model(name) if source == "torchvision" else timm.create_model(name)
    peer = randomize_batchnorm(peer).eval()
    ours = import_weights(create_model(name), peer.state_dict(), source).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max().item() <= 1e-4


def test_import_is_strict():
    peer = torchvision.models.resnet18().state_dict()
    with pytest.raises(ValueError, match="shape"):
        import_weights(create_model("resnet34", num_classes=10), peer, "torchvision")
    with pytest.raises(ValueError, match="lacks"):
        import_weights(create_model("resnet34"), peer, "torchvision")
    with pytest.raises(ValueError, match="no place"):
        import_weights(create_model("resnet18"), torchvision.models.resnet34().state_dict(), "torchvision")
    with pytest.raises(ValueError, match="expected one of torchvision, timm"):
        import_weights(create_model("resnet18"), peer, "caffe")
    with pytest.raises(ValueError, match="source='timm'"):
        import_weights(create_model("resnetrs50"), peer, "torchvision")
    bad = dict(peer)
    bad.pop("fc.bias")
    with pytest.raises(ValueError, match="fc.bias"):
        import_weights(create_model("resnet18"), bad, "torchvision")


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="resnet20"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="dropout"):
        create_model("resnet20", dropuot=0.1)
    with pytest.raises(ValueError, match="width"):
        create_model("resnet20", width=0)
    assert "resnetrs420" in list_models() and "resnet110" in list_models()


def test_resnetrs_structure():
    model = meta_model("resnetrs200")
    rates = [m.drop_path.rate for m in model.modules() if hasattr(m, "drop_path") and m.drop_path is not None]
    assert sorted(set(round(r, 4) for r in rates)) == [0.04, 0.06, 0.08, 0.1]
    assert model.dropout.p == 0.25 and meta_model("resnetrs420").dropout.p == 0.4
    block = model.layer2[0]
    assert block.se.fc1.out_channels == int(0.25 * 512)
    assert isinstance(block.downsample.pool, nn.AvgPool2d)
    assert isinstance(model.layer1[0].downsample.pool, nn.Identity)
    assert meta_model("resnetrs50").layer1[0].drop_path is None


def test_zero_init_last_bn_and_head_options():
    model = create_model("resnet20", num_classes=10, head_bias=False, head_init="zero")
    assert model.fc.bias is None and model.fc.weight.abs().sum() == 0
    assert all(b.bn2.weight.abs().sum() == 0 for b in model.layer1)
    kept = create_model("resnet20", zero_init_last_bn=False)
    assert kept.layer1[0].bn2.weight.abs().sum() > 0


def test_stochastic_depth_only_in_training():
    model = create_model("resnet20", num_classes=10, drop_path_rate=0.5, drop_path_rule="linear").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_flops_counted_by_torch():
    # torchvision documents ResNet-50 as 4.09 GFLOPS, which are multiply-adds.
    assert abs(count_flops(meta_model("resnet50"), 224) / 2e9 - 4.09) < 0.01
