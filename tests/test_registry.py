"""Registry and factory: names, patterns, tags, suggestions, double registration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zoo
from zoo.registry import _models, get_entry

ROOT = Path(__file__).resolve().parent.parent


def test_list_models_patterns_and_natural_order() -> None:
    assert zoo.list_models("resnet[0-9]*", exclude_filters=["*d", "*_cifar"]) == [
        "resnet18", "resnet20", "resnet32", "resnet34", "resnet44", "resnet50", "resnet56",
        "resnet101", "resnet110", "resnet152", "resnet1202",
    ]  # fmt: skip
    assert zoo.list_models(["resnext*", "wide_*"]) == [
        "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"
    ]  # fmt: skip
    assert zoo.list_models("nothing*") == []


def test_is_model() -> None:
    assert zoo.is_model("resnet50") and zoo.is_model("resnet50.any_tag")
    assert not zoo.is_model("resnet5O") and not zoo.is_model("")


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(zoo.UnknownModelError, match=r"unknown model 'resnet5O'; did you mean 'resnet50'") as info:
        zoo.create_model("resnet5O")
    assert isinstance(info.value, LookupError)
    with pytest.raises(zoo.UnknownModelError, match=r"unknown model 'vgg16'; see zoo.list_models\(\)"):
        zoo.create_model("vgg16")


def test_register_model_decorator_and_double_registration() -> None:
    @zoo.register_model
    def tiny_test_net(**kwargs: object) -> torch.nn.Module:
        return zoo.ResNet(zoo.ResNetConfig(layers=(1,), channels=(8,), stem="cifar", stem_width=8, **kwargs))

    try:
        model = zoo.create_model("tiny_test_net", num_classes=3)
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3)
        assert "tiny_test_net" in zoo.list_models("tiny*")
        with pytest.raises(zoo.RegistryError, match="model 'tiny_test_net' is already registered"):
            zoo.register_model(name="tiny_test_net")(lambda: None)
        with pytest.raises(zoo.RegistryError, match="is already registered"):
            zoo.register_resnet("resnet50", zoo.ResNetConfig())
        with pytest.raises(zoo.RegistryError, match=r"model name 'a\.b' must be letters"):
            zoo.register_model(name="a.b")(lambda: None)
    finally:
        _models.pop("tiny_test_net", None)


def test_registered_configs_are_the_built_architecture() -> None:
    model = zoo.create_model("resnet50d", num_classes=10)
    assert model.cfg == get_entry("resnet50d").config.replace(num_classes=10)


def test_feature_options_need_features_only() -> None:
    with pytest.raises(zoo.ConfigError, match="only apply with features_only=True"):
        zoo.create_model("resnet18", out_indices=(1, 2))


def test_pretrained_cfg() -> None:
    cfg = zoo.create_model("resnet50").pretrained_cfg  # no weights loaded: their data config all the same, as timm
    assert cfg["input_size"] == (3, 224, 224) and cfg["mean"] == (0.485, 0.456, 0.406)
    assert cfg["pool_size"] == (7, 7) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.95
    assert cfg["test_input_size"] == (3, 288, 288) and cfg["tag"] == "a1_in1k"  # resnet50's default weights'
    assert not {"weights", "top1", "sha256", "hf_hub_id"} & set(cfg)  # a random init never claims the weights
    plain = zoo.create_model("resnet34_cifar").pretrained_cfg  # no weights at all: the family's conventions
    assert plain["interpolation"] == "bilinear" and plain["crop_pct"] == 1.0 and "tag" not in plain
    cifar = zoo.create_model("resnet20")
    assert cifar.pretrained_cfg["input_size"] == (3, 32, 32) and cifar.default_cfg is cifar.pretrained_cfg
    # as in timm's records: the architecture, whatever name built it (a tag, a backbone, a YAML config)
    assert cfg["architecture"] == "resnet50" and cifar.pretrained_cfg["architecture"] == "resnet20"
    assert zoo.create_model("resnet20.c10_kd", pretrained=True).pretrained_cfg["architecture"] == "resnet20"
    assert zoo.create_model("resnet18", features_only=True).pretrained_cfg["architecture"] == "resnet18"
    assert zoo.create_model(str(ROOT / "configs" / "resnet18.yaml")).pretrained_cfg["architecture"] == "resnet"
