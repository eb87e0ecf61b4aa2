"""features_only backbones, checked with real consumers: torchvision's FPN and Faster R-CNN."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import zoo


def test_out_indices_select_maps() -> None:
    model = zoo.create_model("resnet50", features_only=True, out_indices=(2, -1)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape for f in feats] == [(1, 512, 8, 8), (1, 2048, 2, 2)]
    assert model.feature_info.channels() == [512, 2048] and model.feature_info.reduction() == [8, 32]
    assert not hasattr(model, "fc") and not hasattr(model, "global_pool")
    shallow = zoo.create_model("resnet50", features_only=True, out_indices=(1, 2))
    assert hasattr(shallow, "layer2") and not hasattr(shallow, "layer3")  # nothing computed in vain


@pytest.mark.parametrize("feature_cls", ["list", "dict", "getter"])
def test_maps_given_out_of_order_come_in_network_order_as_feature_info_says(feature_cls: str) -> None:
    model = zoo.create_model("resnet18", features_only=True, out_indices=(3, 1), feature_cls=feature_cls).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    feats = list(feats.values()) if isinstance(feats, dict) else feats
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [64, 256]


def test_backbone_keys_are_the_classifiers() -> None:
    full = zoo.create_model("resnet50").state_dict()
    backbone = zoo.create_model("resnet50", features_only=True).state_dict()
    assert list(backbone) == [k for k in full if not k.startswith("fc.")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(out_indices=(5,)),
            r"out_indices: 5 in \(5,\) is out of range; this model has 5 feature maps, 0..4",
        ),
        (
            dict(out_indices=(-6,)),
            r"out_indices: -6 in \(-6,\) is out of range; this model has 5 feature maps, 0..4 .* or -5..-1 from the end",
        ),
        (dict(out_indices=(1, 1)), r"out_indices: \(1, 1\) names a feature map twice"),
        (dict(out_indices=(1.0, 2)), r"out_indices: 1.0 in \(1.0, 2\) is not an integer"),
        (dict(out_indices=(True,)), r"out_indices: True in \(True,\) is not an integer"),
        (
            dict(out_indices="3"),
            r"out_indices: expected an int \(the last n maps\) or a non-empty list of ints, got '3'",
        ),
        (
            dict(out_indices=6),
            r"out_indices: 6 \(the last n maps\) is out of range; this model has 5 feature maps, give 1..5",
        ),
        (dict(frozen_stages=5), r"frozen_stages: expected an integer in -1..4 .* got 5"),
        (dict(norm_eval="no"), r"norm_eval: expected true or false, got 'no'"),
    ],
)
def test_bad_feature_options(kwargs: dict, message: str) -> None:
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create_model("resnet18", features_only=True, **kwargs)


def test_out_indices_take_numpy_integers_as_timm_does() -> None:
    import numpy as np

    for given, expected in (
        (np.arange(1, 5), (1, 2, 3, 4)),
        ([np.int64(1), np.int32(4)], (1, 4)),
        (np.int64(2), (3, 4)),
    ):
        backbone = zoo.create_model("resnet18", features_only=True, out_indices=given)
        assert backbone.out_indices == expected and all(type(i) is int for i in backbone.out_indices)


def test_frozen_stages_get_no_gradient_and_stay_in_eval() -> None:
    model = zoo.create_model("resnet18", features_only=True, frozen_stages=2).train()
    feats = model(torch.randn(2, 3, 64, 64))
    sum(f.sum() for f in feats).backward()
    for name, p in model.named_parameters():
        frozen = name.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"}
        assert p.requires_grad is not frozen, name
        assert (p.grad is None) is frozen, name
    assert not model.bn1.training and not model.layer2[0].bn1.training and model.layer3[0].bn1.training


@pytest.mark.parametrize("feature_cls", ["list", "getter"])
def test_frozen_stages_stay_frozen_after_a_sync_batch_norm_conversion(feature_cls: str) -> None:
    """Detection code converts a backbone's norms to SyncBatchNorm after building it; the stem's norm is swapped
    for a new module, which must stay in eval mode with its statistics as loaded."""
    model = zoo.create_model("resnet18", features_only=True, frozen_stages=1, feature_cls=feature_cls)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).train()
    root = model.model if feature_cls == "getter" else model
    assert isinstance(root.bn1, torch.nn.SyncBatchNorm) and not root.bn1.training and not root.layer1[0].bn1.training
    assert root.layer2[0].bn1.training  # not frozen: trains


def test_frozen_stages_past_the_last_map_freeze_what_is_there() -> None:
    backbone = zoo.create_model("resnet18", features_only=True, out_indices=(1,), frozen_stages=3)
    backbone.train()  # layer2..4 are not in this backbone: nothing to put in eval mode there
    assert not backbone.layer1.training and not any(p.requires_grad for p in backbone.parameters())


def test_norm_eval_keeps_statistics_fixed_while_training() -> None:
    model = zoo.create_model("resnet18", features_only=True, norm_eval=True).train()
    before = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.layer1[0].bn1.running_mean, before)
    assert model.training and model.layer1[0].conv1.weight.requires_grad


def test_features_with_output_stride_and_grad_checkpointing() -> None:
    model = zoo.create_model("resnet50", features_only=True, out_indices=(1, 4), output_stride=16)
    x = torch.randn(2, 3, 64, 64)
    plain = model(x)
    model.set_grad_checkpointing(True)
    ckpt = model(x)
    assert [f.shape[-1] for f in plain] == [16, 4] and model.feature_info.reduction() == [4, 16]
    for a, b in zip(plain, ckpt, strict=True):
        torch.testing.assert_close(a, b)


def test_feature_pyramid_network_consumes_the_maps() -> None:
    backbone = zoo.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    fpn = FeaturePyramidNetwork(backbone.feature_info.channels(), out_channels=64).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 128, 128))
        pyramid = fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
    assert [p.shape for p in pyramid.values()] == [(1, 64, s, s) for s in (32, 16, 8, 4)]


class _Backbone(nn.Module):
    """The few lines a torchvision detector needs around a zoo backbone: a dict and ``out_channels``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = zoo.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4), frozen_stages=1)
        self.fpn = FeaturePyramidNetwork(
            self.body.feature_info.channels(), out_channels=64, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = 64

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def test_faster_rcnn_trains_and_infers_on_a_zoo_backbone() -> None:
    model = FasterRCNN(_Backbone(), num_classes=3, min_size=128, max_size=128)
    images = [torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])}]
    model.train()
    losses = model(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.body.layer4[0].conv1.weight.grad is not None
    assert model.backbone.body.layer1[0].conv1.weight.grad is None  # frozen
    assert model.backbone.body.layer2[0].conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        (detections,) = model(images)
    assert set(detections) == {"boxes", "labels", "scores"}


# --- timm's intermediates API --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"indices": 2},
        {"indices": [0, 2, -1]},
        {"indices": 3, "stop_early": True},
        {"indices": [1, 3], "norm": True},
    ],
)
def test_forward_intermediates_matches_timm(kwargs: dict) -> None:
    import timm

    reference = timm.create_model("resnet50", pretrained=False, zero_init_last=False).eval()  # live branches
    model = zoo.create_model("resnet50").eval()
    model.load_state_dict(reference.state_dict())  # timm's keys are the zoo's
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, **kwargs)
        want_final, want_maps = reference.forward_intermediates(x, **kwargs)
        only = model.forward_intermediates(x, intermediates_only=True, **kwargs)
    assert len(maps) == len(want_maps) == len(only)
    for got, want, alone in zip(maps, want_maps, only, strict=True):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(alone, want)
    torch.testing.assert_close(final, want_final)


def test_prune_intermediate_layers_matches_timm() -> None:
    import timm

    reference = timm.create_model("resnet50", pretrained=False, zero_init_last=False).eval()
    model = zoo.create_model("resnet50").eval()
    model.load_state_dict(reference.state_dict())
    assert tuple(model.prune_intermediate_layers(indices=[1, 2])) == tuple(reference.prune_intermediate_layers([1, 2]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = model.forward_intermediates(x, indices=[1, 2]), reference.forward_intermediates(x, indices=[1, 2])
        torch.testing.assert_close(got[0], want[0])  # the stages after layer2 are gone
        torch.testing.assert_close(model(x), reference(x))  # no head: pooled features
    assert model.num_classes == 0 and not any(n.startswith(("layer3.", "layer4.")) for n, _ in model.named_parameters())
    assert model.num_features == reference.num_features == 512  # the last kept map's channels

    for indices, prune_head in (([0], True), ([1, 2], False)):  # the stem alone; a head kept by request
        reference = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
        model = zoo.create_model("resnet18").eval()
        model.load_state_dict(reference.state_dict())
        model.prune_intermediate_layers(indices, prune_head=prune_head)
        reference.prune_intermediate_layers(indices, prune_head=prune_head)
        with torch.no_grad():
            torch.testing.assert_close(model.forward_features(x), reference.forward_features(x))
            torch.testing.assert_close(model(x), reference(x))
        assert model.num_features == reference.num_features
        model.reset_classifier(10, "avg")  # a new head reads the kept map
        assert model(x).shape == (2, 10)


def test_forward_intermediates_on_a_three_stage_net_and_bad_input() -> None:
    model = zoo.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        features = zoo.create_model("resnet20", features_only=True)
        features.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
        for got, want in zip(maps, features.eval()(x), strict=True):  # the same maps as features_only
            torch.testing.assert_close(got, want)
    assert [m.shape[1] for m in maps] == [16, 16, 32, 64]
    with pytest.raises(zoo.ConfigError, match=r"indices: 5 \(the last n maps\) is out of range; this model has 4 "):
        model.forward_intermediates(x, indices=5)
    with pytest.raises(zoo.ConfigError, match=r"output_fmt: 'NHWC' is not one of 'NCHW'"):
        model.forward_intermediates(x, output_fmt="NHWC")
