"""The architecture knobs every family accepts, and the errors for bad values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.config import ACTS, NORMS, POOLS
from zoo.layers import ACT_LAYERS, NORM_LAYERS, FrozenBatchNorm2d

FAMILIES = ["resnet18", "resnet50", "resnext50_32x4d", "resnet18d", "resnet18_cifar", "resnet20"]


def test_layer_tables_cover_the_config_names() -> None:
    assert tuple(NORM_LAYERS) == NORMS and tuple(ACT_LAYERS) == ACTS


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["resnet18", "resnet20"])
def test_every_norm_trains(name: str, norm: str) -> None:
    model = zoo.create_model(name, norm_layer=norm, num_classes=3)
    size = 32 if name == "resnet20" else 64
    out = model(torch.randn(2, 3, size, size))
    out.sum().backward()
    assert torch.isfinite(out).all()
    if norm == "frozen_batch_norm":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert all(p.grad is not None for p in model.parameters())


def test_frozen_batch_norm_loads_batch_norm_weights_and_matches_eval() -> None:
    bn_model = zoo.create_model("resnet18").eval()
    for m in bn_model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    frozen = zoo.create_model("resnet18", norm_layer="frozen_batch_norm")
    frozen.load_state_dict(bn_model.state_dict())  # num_batches_tracked is dropped, not an error
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen.train()(x), bn_model(x), atol=1e-5, rtol=0)
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)


def test_frozen_batch_norm_equals_torchvisions_and_keeps_the_input_dtype() -> None:
    from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozen

    ours, theirs = FrozenBatchNorm2d(8), TorchvisionFrozen(8)
    torch.manual_seed(0)
    stats = {"weight": torch.rand(8) + 0.5, "bias": torch.randn(8), "running_mean": torch.randn(8),
             "running_var": torch.rand(8) + 0.5, "num_batches_tracked": torch.tensor(7)}  # fmt: skip
    ours.load_state_dict(stats)
    theirs.load_state_dict(stats)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(ours(x), theirs(x))  # the same arithmetic in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # why ours stays: theirs promotes bf16 to fp32
        assert ours(x.bfloat16()).dtype == torch.bfloat16 and theirs(x.bfloat16()).dtype == torch.float32


def test_stochastic_depth_drops_whole_samples_and_rescales_the_kept() -> None:
    from torchvision.ops import StochasticDepth

    drop = zoo.create_model("resnet20", drop_path_rate=0.5).stages()[-1][-1].drop_path
    assert isinstance(drop, StochasticDepth) and (drop.p, drop.mode) == (0.5, "row")
    x = torch.randn(64, 4, 3, 3)
    out = drop.train()(x)
    kept = (out != 0).flatten(1).all(1)
    assert torch.equal(out[kept], x[kept] / 0.5) and not out[~kept].any() and 16 < kept.sum() < 48
    assert torch.equal(drop.eval()(x), x)
    assert isinstance(zoo.create_model("resnet20").stages()[0][0].drop_path, nn.Identity)


@pytest.mark.parametrize("act", ACTS)
def test_every_activation(act: str) -> None:
    model = zoo.create_model("resnet20", act_layer=act)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_dilates_instead_of_striding(name: str, output_stride: int) -> None:
    model = zoo.create_model(name, output_stride=output_stride, features_only=True).eval()
    size = 32 if "cifar" in name or name == "resnet20" else 64
    with torch.no_grad():
        feats = model(torch.randn(1, 3, size, size))
    reductions = model.feature_info.reduction()
    assert max(reductions) <= output_stride
    assert [size // f.shape[-1] for f in feats] == reductions


def test_basic_block_dilates_too() -> None:
    # torchvision raises "Dilation > 1 not supported in BasicBlock"
    model = zoo.create_model("resnet18", output_stride=8).eval()
    assert model.layer4[1].conv1.dilation == (4, 4)
    assert model.layer4[0].conv1.dilation == (2, 2)  # first block keeps the previous dilation
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 8, 8)


@pytest.mark.parametrize("pool", POOLS[:-1])
def test_global_pools(pool: str) -> None:
    model = zoo.create_model("resnet18", global_pool=pool, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
    expected = {"avg": feats.mean((2, 3)), "max": feats.amax((2, 3))}
    expected["avgmax"] = (expected["avg"] + expected["max"]) / 2
    torch.testing.assert_close(pooled, expected[pool])


def test_no_pooling_returns_the_feature_map() -> None:
    model = zoo.create_model("resnet18", global_pool="", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_in_chans() -> None:
    model = zoo.create_model("resnet50d", in_chans=1)
    assert model.conv1[0].in_channels == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1000)
    assert model.pretrained_cfg["input_size"] == (1, 224, 224)


def test_drop_rates_act_in_training_only() -> None:
    model = zoo.create_model("resnet20", drop_rate=0.5, drop_path_rate=0.2)
    rates = [b.drop_path.p for s in model.stages() for b in s if hasattr(b.drop_path, "p")]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.2)  # linear rule, last block = rate
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_zero_init_last() -> None:
    assert (zoo.create_model("resnet50").layer1[0].bn3.weight == 0).all()
    assert (zoo.create_model("resnet50", zero_init_last=False).layer1[0].bn3.weight == 1).all()
    frozen = zoo.create_model("resnet18", norm_layer="frozen_batch_norm")
    assert (frozen.layer1[0].bn2.weight == 1).all()  # a frozen scale of 0 would kill the block forever
    assert (zoo.create_model("resnet20").layer1[0].bn2.weight == 1).all()  # the paper nets start plainly
    assert (zoo.create_model("resnet20", zero_init_last=True).layer1[0].bn2.weight == 0).all()


def test_reset_classifier() -> None:
    model = zoo.create_model("resnet18")
    model.reset_classifier(10)
    assert model.fc.out_features == 10 and model.num_classes == 10
    model.reset_classifier(0, global_pool="max")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(zoo.ConfigError, match="num_classes: expected an integer >= 0, got -3"):
        model.reset_classifier(-3)


def test_a_new_head_takes_the_models_dtype_and_gray_weights_their_test_size() -> None:
    model = zoo.create_model("resnet20").to(torch.bfloat16)
    model.reset_classifier(5)
    assert model.fc.weight.dtype == torch.bfloat16 and model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (
        2,
        5,
    )
    gray = zoo.create_model("resnet18.a1_in1k", in_chans=1)  # the tag's record, no download
    config = zoo.resolve_data_config(gray, use_test_size=True)
    assert config["input_size"] == (1, 288, 288) and len(config["mean"]) == 1


def test_data_configs_are_checked_and_squash_resizes_both_sides() -> None:
    model = zoo.create_model("resnet18")
    for override, message in (
        ({"crop_pct": 0}, r"crop_pct: expected a fraction in \(0, 1\], got 0"),
        ({"input_size": 224}, r"input_size: expected \(channels, height, width\) of positive ints, got 224"),
        ({"crop_mode": "border"}, r"crop_mode: 'border' is not one of 'center', 'squash'"),
        ({"interpolation": "lanczos"}, r"interpolation: 'lanczos' is not one of"),
        ({"size": 3}, r"size: unknown data config keys \['size'\]; the keys are crop_mode"),
    ):
        with pytest.raises(zoo.ConfigError, match=message):
            zoo.resolve_data_config(model, **override)
    from PIL import Image

    wide = Image.new("RGB", (400, 200))
    center = zoo.create_transform(zoo.resolve_data_config(model, crop_pct=1.0, input_size=(3, 100, 100)))
    squash = zoo.create_transform(zoo.resolve_data_config(model, crop_pct=0.5, input_size=(3, 100, 100),
                                                          crop_mode="squash"))  # fmt: skip
    assert center.transforms[0](wide).size == (200, 100)  # the short side to 100, the aspect kept
    assert squash.transforms[0](wide).size == (200, 200)  # both sides to 100 / 0.5
    assert squash(wide).shape == (3, 100, 100)


def test_grad_checkpointing_same_loss_grads_and_statistics() -> None:
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    # zero_init_last would zero every residual branch: their gradients and drop-path would then be 0 == 0
    plain = zoo.create_model("resnet18", num_classes=4, drop_path_rate=0.1, zero_init_last=False)
    ckpt = zoo.create_model("resnet18", num_classes=4, drop_path_rate=0.1, zero_init_last=False)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True)
    losses = []
    for model in (plain, ckpt):
        torch.manual_seed(1)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)  # BN statistics updated once


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "resnet50d", "resnet18_cifar", "resnet20"])
def test_torch_export_matches_eager(name: str) -> None:  # one model of each family
    model = zoo.create_model(name).eval()
    size = 32 if name in ("resnet20", "resnet18_cifar") else 64
    x = torch.randn(2, 3, size, size)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=1e-5)


# --- bad input: a zoo error that names the argument, the value and what is allowed ---

BAD = [
    (dict(norm_layer="batchnorm"), r"norm_layer: 'batchnorm' is not one of .*'batch_norm'.*did you mean 'batch_norm'"),
    (dict(act_layer="swish"), r"act_layer: 'swish' is not one of 'relu'"),
    (
        dict(output_stride=12),
        r"output_stride: expected a power of two >= 4, the stem's stride \(4, 8, 16, 32, ...\), got 12",
    ),
    (dict(output_stride=2), r"output_stride: expected a power of two >= 4.* got 2"),
    (dict(in_chans=0), r"in_chans: expected a positive integer, got 0"),
    (dict(num_classes=-1), r"num_classes: expected an integer >= 0, got -1"),
    (dict(num_classes=2.5), r"num_classes: expected an integer >= 0, got 2.5"),
    (dict(drop_rate=1.5), r"drop_rate: expected a probability in \[0, 1\), got 1.5"),
    (dict(drop_path_rate=-0.1), r"drop_path_rate: expected a probability in \[0, 1\), got -0.1"),
    (dict(global_pool="mean"), r"global_pool: 'mean' is not one of 'avg', 'max', 'avgmax', ''"),
    (dict(global_pool=""), r"global_pool: '' \(no pooling\) needs num_classes=0, got num_classes=1000"),
    (dict(zero_init_last="yes"), r"zero_init_last: expected true or false, got 'yes'"),
    (dict(num_clases=10), r"unknown option 'num_clases' for a ResNet; options are .*did you mean 'num_classes'"),
    (dict(layers=(2, 0, 2, 2)), r"layers\[1\]: expected a positive integer, got 0"),
    (dict(channels=(64, 128)), r"channels: has 2 entries but layers has 4"),
    (dict(groups=32), r"groups: groups=32, width_per_group=64 need block='bottleneck'"),
    (dict(width_per_group=128), r"^width_per_group: groups=1, width_per_group=128 need block='bottleneck'"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD, ids=[next(iter(k)) + "=" + repr(next(iter(k.values()))) for k, _ in BAD]
)
def test_bad_options_raise_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(zoo.ConfigError, match=message) as info:
        zoo.create_model("resnet18", **kwargs)
    assert isinstance(info.value, ValueError)


def test_pad_shortcut_cannot_shrink() -> None:
    with pytest.raises(zoo.ConfigError, match=r"channels\[1\]: shortcut='pad' only adds channels"):
        zoo.ResNetConfig(channels=(64, 32, 256, 512), shortcut="pad")


def test_every_error_in_the_readme_table_is_a_top_level_zoo_error_and_its_builtin() -> None:
    import builtins
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", readme, flags=re.M)
    assert len(rows) >= 10
    for name, builtin in rows:
        error = getattr(zoo, name)  # importable as the README names it: zoo.<name>
        assert issubclass(error, zoo.ZooError) and issubclass(error, getattr(builtins, builtin)), name
        assert name in zoo.__all__, name
