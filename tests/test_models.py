"""Every registered model: exact sizes, shapes, gradients, features, parity with torchvision and timm."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from conftest import small_size

import zoo
from zoo.registry import get_entry

ALL = zoo.list_models()
# A few very large or very deep nets are covered by the parameter-count test and a forward pass
# in test_big_models; the per-model gradient tests skip them to keep the suite fast.
BIG = {"resnet1202", "wide_resnet101_2", "resnext101_32x8d", "resnet152", "resnet152d", "resnet152_cifar"}
SMALL = [n for n in ALL if n not in BIG]

PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet18d": 11_708_744,
    "resnet34d": 21_816_904,
    "resnet50d": 25_576_264,
    "resnet101d": 44_568_392,
    "resnet152d": 60_212_040,
    "resnet18_cifar": 11_173_962,
    "resnet34_cifar": 21_282_122,
    "resnet50_cifar": 23_520_842,
    "resnet101_cifar": 42_512_970,
    "resnet152_cifar": 58_156_618,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}
CIFAR100_PARAMS = {
    "resnet18_cifar": 11_220_132,
    "resnet34_cifar": 21_328_292,
    "resnet50_cifar": 23_705_252,
    "resnet101_cifar": 42_697_380,
    "resnet152_cifar": 58_341_028,
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return zoo.create_model(name, **kwargs)


def test_every_model_has_a_published_count() -> None:
    assert set(PARAMS) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_parameter_count(name: str) -> None:
    assert count(meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(CIFAR100_PARAMS))
def test_parameter_count_cifar100(name: str) -> None:
    assert count(meta_model(name, num_classes=100)) == CIFAR100_PARAMS[name]


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    model = zoo.create_model(name, num_classes=7, zero_init_last=False)  # zero init would zero some grads
    size = small_size(name)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


@pytest.mark.parametrize("name", SMALL)
def test_headless_returns_pooled_features(name: str) -> None:
    model = zoo.create_model(name, num_classes=0).eval()
    size = small_size(name)
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, model.num_features)
    assert isinstance(model.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize("name", SMALL)
def test_features_only_matches_feature_info(name: str) -> None:
    model = zoo.create_model(name, features_only=True).eval()
    size = small_size(name)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, size, size))
    info = model.feature_info
    assert len(feats) == len(info) == len(get_entry(name).config.layers) + 1
    assert [f.shape[1] for f in feats] == info.channels()
    assert [size // f.shape[-1] for f in feats] == info.reduction()


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_models_forward(name: str) -> None:
    model = zoo.create_model(name).eval()
    size = small_size(name)
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


def test_paper_cifar_nets_have_three_stages_and_cifar_stem_four() -> None:
    assert zoo.create_model("resnet20", features_only=True).feature_info.reduction() == [1, 1, 2, 4]
    assert zoo.create_model("resnet18_cifar", features_only=True).feature_info.reduction() == [1, 1, 2, 4, 8]
    backbone = zoo.create_model("resnet50", features_only=True)
    assert backbone.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert backbone.feature_info.reduction() == [2, 4, 8, 16, 32]
    # resnet18_cifar on 32x32: the last map is 4x4
    with torch.no_grad():
        assert zoo.create_model("resnet18_cifar").eval().forward_features(torch.randn(1, 3, 32, 32)).shape == (
            1, 512, 4, 4,
        )  # fmt: skip


# --- checkpoints of torchvision and timm load without renaming, and compute the same function ---

TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"]  # fmt: skip
TIMM = ["resnet18d", "resnet34d", "resnet50d", "resnet101d", "resnet152d", *TORCHVISION[:5]]


@pytest.mark.parametrize("name", TORCHVISION)
def test_state_dict_keys_are_torchvisions(name: str) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)()
    ours = meta_model(name)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("name", TIMM)
def test_state_dict_keys_are_timms(name: str) -> None:
    with torch.device("meta"):
        reference = timm.create_model(name)
    assert {k: v.shape for k, v in meta_model(name).state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_outputs_match_torchvision(name: str) -> None:
    reference = getattr(torchvision.models, name)().eval()
    ours = zoo.create_model(name).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilation_matches_torchvision(output_stride: int) -> None:
    dilate = [False, True, True] if output_stride == 8 else [False, False, True]
    reference = torchvision.models.resnet50(replace_stride_with_dilation=dilate).eval()
    ours = zoo.create_model("resnet50", output_stride=output_stride).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_outputs_match_timm_resnet_d(output_stride: int) -> None:
    # every residual branch computes (zero_init_last off); at 8/16 the dilated stages' shortcuts pool as timm's
    reference = timm.create_model("resnet50d", zero_init_last=False, output_stride=output_stride).eval()
    ours = zoo.create_model("resnet50d", output_stride=output_stride).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


def test_paper_net_option_a_shortcut_pads_half_before_half_after() -> None:
    model = zoo.create_model("resnet20").eval()
    shortcut = model.layer2[0].downsample
    x = torch.arange(16.0).view(1, 16, 1, 1).expand(1, 16, 4, 4).contiguous()
    y = shortcut(x)
    assert y.shape == (1, 32, 2, 2)
    assert (y[0, :8] == 0).all() and (y[0, 24:] == 0).all()
    assert torch.equal(y[0, 8:24, 0, 0], torch.arange(16.0))
    assert sum(p.numel() for p in shortcut.parameters()) == 0
