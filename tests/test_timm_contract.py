"""timm's model contract, in our words, for every family; then the same calls made in timm and in the zoo.

The contract (what code written against ``timm.create_model`` relies on):

- a model builds, runs forward and backward; ``num_classes`` logits come out;
- ``pretrained_cfg`` (alias ``default_cfg``) describes the model truly: ``input_size`` is a size it takes,
  ``pool_size`` is the side of its last feature map at that size, ``first_conv`` and ``classifier`` name
  real modules (the classifier's as ``get_classifier(name_only=True)`` does), mean/std have one value per
  input channel;
- ``num_features`` is the width of ``forward_features``' map; ``head_hidden_size`` the width the head
  sees (``forward_head(pre_logits=True)``), kept true by ``reset_classifier`` and pruning;
- ``reset_classifier(0)`` leaves pooled features and no head, silently; ``reset_classifier(0, "")`` and
  ``num_classes=0, global_pool=""`` leave the unpooled map;
- ``features_only`` takes ``out_indices`` as a tuple, with negative indices, or an int (the last n maps),
  and each ``feature_cls`` ("list", "dict", "getter") gives the same maps, which ``feature_info``
  describes and ``forward_intermediates`` also gives; a backbone has ``default_cfg`` too;
- ``group_matcher`` puts every parameter in a group; ``torch.jit.trace`` traces classifier and backbone.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import timm
import timm.data
import torch
from conftest import small_size
from hubservers import FakeHub

import zoo
from zoo.registry import get_weights, list_pretrained

# One architecture per family (the zoo's own families included); small inputs keep this quick.
FAMILIES = ["resnet18", "resnet18d", "resnext50_32x4d", "wide_resnet50_2", "resnet18_cifar", "resnet20"]
TIMM_FAMILIES = ["resnet18", "resnet50", "resnet50d", "resnext50_32x4d", "wide_resnet50_2"]  # timm has these too
DATA_KEYS = ("input_size", "test_input_size", "interpolation", "crop_pct", "test_crop_pct", "crop_mode", "mean", "std",
             "pool_size", "first_conv", "classifier")  # fmt: skip


def x_for(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, small_size(name), small_size(name))


def live(model: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm scales, so every residual branch computes (zero_init_last zeroes them)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    return model


# --- the contract, every family --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_a_model_runs_and_its_pretrained_cfg_is_true(name: str) -> None:
    model = zoo.create_model(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["num_classes"] == model.num_classes
    side = cfg["input_size"][-1]
    with torch.no_grad():
        final = model.eval().forward_features(torch.randn(1, *cfg["input_size"]))
    assert final.shape[1] == model.num_features and tuple(final.shape[-2:]) == tuple(cfg["pool_size"])
    assert side == cfg["input_size"][-2] and len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, torch.nn.Conv2d) and first.in_channels == cfg["input_size"][0]
    head = model.get_submodule(cfg["classifier"])
    assert cfg["classifier"] == model.get_classifier(name_only=True) and head is model.get_classifier()
    assert head.in_features == model.head_hidden_size and head.out_features == model.num_classes
    x = x_for(name)
    out = model.train()(x)
    out.sum().backward()
    assert out.shape == (2, model.num_classes)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_head_can_go_and_come_back_silently(name: str) -> None:
    model = zoo.create_model(name).eval()
    x = x_for(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it initializes a Linear(n, 0)
        model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity) and model.head_hidden_size == model.num_features
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(0, "")
    assert model(x).dim() == 4 and model(x).shape[1] == model.num_features  # the unpooled map
    model.reset_classifier(7, "avg")
    assert model(x).shape == (2, 7) and model.pretrained_cfg["num_classes"] == 7
    unpooled = zoo.create_model(name, num_classes=0, global_pool="").eval()
    assert unpooled(x).dim() == 4 and unpooled.num_classes == 0
    pruned = zoo.create_model(name)
    taken = pruned.prune_intermediate_layers([-2])
    assert pruned.head_hidden_size == pruned.num_features == pruned.feature_info[taken[0]]["num_chs"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_feature_cls_gives_the_same_maps(name: str) -> None:
    model = live(zoo.create_model(name)).eval()
    x = x_for(name)
    n = len(model.feature_info)
    with torch.no_grad():
        everything = model.forward_intermediates(x, intermediates_only=True)
    for out_indices, taken in (((1, -1), [1, n - 1]), (2, [n - 2, n - 1]), ((0,), [0])):
        for feature_cls in ("list", "dict", "getter"):
            backbone = zoo.create_model(name, features_only=True, out_indices=out_indices, feature_cls=feature_cls)
            prefix = "model." if feature_cls == "getter" else ""  # timm's FeatureGetterNet keeps it as .model
            wanted = backbone.state_dict()
            backbone.load_state_dict({prefix + k: v for k, v in model.state_dict().items() if prefix + k in wanted})
            with torch.no_grad():
                maps = backbone.eval()(x)
            if feature_cls == "dict":
                assert list(maps) == [str(i) for i in taken]
                maps = list(maps.values())
            assert len(maps) == len(taken), (feature_cls, out_indices)
            for got, i in zip(maps, taken, strict=True):
                torch.testing.assert_close(got, everything[i])
            assert backbone.feature_info.channels() == [m.shape[1] for m in maps]
            assert backbone.feature_info.reduction() == [x.shape[-1] // m.shape[-1] for m in maps]
            assert list(backbone.feature_info.out_indices) == taken
            assert backbone.default_cfg is backbone.pretrained_cfg and "classifier" not in backbone.pretrained_cfg
    with pytest.raises(zoo.ConfigError, match=r"feature_cls: 'hook' is not one of 'list', 'dict', 'getter'"):
        zoo.create_model(name, features_only=True, feature_cls="hook")


@pytest.mark.parametrize("name", ["resnet18", "resnet20"])
def test_group_matcher_groups_every_parameter_and_jit_trace_works(name: str) -> None:
    import re

    model = zoo.create_model(name).eval()
    for coarse in (False, True):
        patterns = [re.compile(p) for p in model.group_matcher(coarse).values()]
        heads = ("fc.",)  # timm's optimizer puts what no pattern matches (the head) in a last group
        assert all(any(p.match(n) for p in patterns) or n.startswith(heads) for n, _ in model.named_parameters())
    x = x_for(name)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)  # the deprecated TorchScript still traces; zoo.export is the way out
        torch.testing.assert_close(traced(x), model(x))
        backbone = zoo.create_model(name, features_only=True).eval()
        traced = torch.jit.trace(backbone, x, strict=False)
        for got, want in zip(traced(x), backbone(x), strict=True):
            torch.testing.assert_close(got, want)


# --- the same calls in timm and in the zoo ------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_the_model_api_answers_as_timms(name: str) -> None:
    tag = get_weights(name)[0]  # the zoo's default weights (its most accurate; timm's default may be another)
    ours, theirs = zoo.create_model(name), timm.create_model(tag)
    assert ours.head_hidden_size == theirs.head_hidden_size and ours.num_features == theirs.num_features
    assert ours.get_classifier(name_only=True) == theirs.get_classifier(name_only=True)
    assert ours.group_matcher() == theirs.group_matcher() and ours.group_matcher(True) == theirs.group_matcher(True)
    for model in (ours, theirs):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.reset_classifier(0)
    assert ours.head_hidden_size == theirs.head_hidden_size
    ours, theirs = zoo.create_model(name), timm.create_model(tag)
    assert ours.prune_intermediate_layers(2) == tuple(theirs.prune_intermediate_layers(2))
    assert ours.head_hidden_size == theirs.head_hidden_size
    ours_f = zoo.create_model(name, features_only=True, out_indices=2)
    theirs_f = timm.create_model(tag, features_only=True, out_indices=2)
    assert ours_f.feature_info.channels() == theirs_f.feature_info.channels()
    assert ours_f.default_cfg["input_size"] == theirs_f.default_cfg["input_size"]
    assert not {"num_classes", "classifier", "global_pool"} & (
        set(ours_f.pretrained_cfg) | set(theirs_f.pretrained_cfg)
    )


def test_a_getter_backbone_takes_timms_weights_and_gives_its_maps() -> None:
    theirs = live(timm.create_model("resnet18", features_only=True, feature_cls="getter", out_indices=(1, 3))).eval()
    ours = zoo.create_model("resnet18", features_only=True, feature_cls="getter", out_indices=(1, 3)).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())  # model.conv1.weight, ...
    ours.load_state_dict(theirs.state_dict())
    x = x_for("resnet18")
    with torch.no_grad():
        for got, want in zip(ours(x), theirs(x), strict=True):
            torch.testing.assert_close(got, want)
    dict_theirs = timm.create_model("resnet18", features_only=True, feature_cls="dict", out_indices=(1, 2))
    dict_ours = zoo.create_model("resnet18", features_only=True, feature_cls="dict", out_indices=(1, 2))
    assert list(dict_ours(x)) == list(dict_theirs(x))  # the same keys


@pytest.mark.parametrize("tag", [t for t in list_pretrained() if not get_weights(t)[1].bundled])
def test_each_tag_s_data_config_is_timms(tag: str) -> None:
    """Built without weights, as timm builds them: the tag's preprocessing and its pool size at its input size."""
    ours = zoo.create_model(tag).pretrained_cfg
    theirs = timm.models.get_pretrained_cfg(tag).to_dict()
    assert {k: ours.get(k) for k in DATA_KEYS} == {k: theirs.get(k) for k in DATA_KEYS}
    assert ours["tag"] == theirs["tag"] == tag.split(".")[1]


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_an_architecture_carries_its_default_weights_data_config(name: str) -> None:
    """timm's ``resolve_data_config`` reads a zoo model as a timm one; where the two libraries' default weights
    differ (the zoo's is its most accurate tag), the zoo's default tag is compared."""
    ours = zoo.create_model(name)
    theirs = timm.create_model(get_weights(name)[0])
    assert timm.data.resolve_data_config(model=ours) == timm.data.resolve_data_config(model=theirs)
    assert zoo.resolve_data_config(ours) == zoo.resolve_data_config(pretrained_cfg=theirs.pretrained_cfg)


def test_the_registry_answers_timms_calls() -> None:
    ours = set(zoo.list_models())
    for kwargs in (
        {"filter": "resnet*", "exclude_filters": ["*d", "*_cifar"]},
        {"filter": "resnet5*", "pretrained": True},
        {"filter": "resnet50*", "pretrained": True, "include_tags": True},
        {"filter": ["resnext*", "wide_*"], "include_tags": False},
    ):
        got = zoo.list_models(**kwargs)
        assert {n.split(".")[0] for n in got} <= ours, kwargs
        common = [n for n in got if timm.is_model(n)]  # the zoo has the paper's CIFAR nets, which timm has not
        expected = [n for n in timm.list_models(**kwargs) if n.split(".")[0] in ours]  # timm has more models
        expected = [n for n in expected if "." not in n or n in set(list_pretrained())]  # and more tags
        assert common == expected, kwargs
    assert zoo.list_models(module="resnet") == zoo.list_models() and zoo.list_models(module="vit") == []
    for name, key in (("resnet50", "input_size"), ("resnet50.tv2_in1k", "test_input_size"), ("resnet18", "nothing"),
                      ("resnet50d", "first_conv"), ("resnet50", "classifier"), ("resnet50.tv_in1k", "tag")):  # fmt: skip
        assert zoo.get_pretrained_cfg_value(name, key) == timm.models.get_pretrained_cfg_value(name, key), (name, key)
    # as the model built with those weights carries them: the label names themselves, not the label set's name
    assert (
        zoo.get_pretrained_cfg_value("resnet50", "label_names")
        == zoo.create_model("resnet50").pretrained_cfg["label_names"]
    )
    for name in ("resnet50", "resnet50.tv_in1k", "resnet5O", "resnet20"):
        assert zoo.is_model(name) == (timm.is_model(name) or name == "resnet20")


# --- model folders, both ways --------------------------------------------------------------------------------


def test_a_folder_saved_by_timm_loads_in_the_zoo_with_its_outputs(tmp_path: Path) -> None:
    reference = live(timm.create_model("resnet18", num_classes=5)).eval()
    timm.models.save_for_hf(reference, str(tmp_path / "folder"))  # its defaults: pytorch_model.bin, no safetensors
    assert (tmp_path / "folder" / "pytorch_model.bin").is_file()
    assert not (tmp_path / "folder" / "model.safetensors").exists()
    model = zoo.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).eval()
    x = x_for("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert model.pretrained_cfg["weights"] == f"local-dir:{tmp_path / 'folder'}" and model.num_classes == 5


def test_a_folder_in_older_timms_single_dict_layout_keeps_its_preprocessing_and_labels(tmp_path: Path) -> None:
    """Older save_for_hf wrote one flat config.json (no pretrained_cfg); timm still splits it when it loads one."""
    reference = live(timm.create_model("resnet18", num_classes=3)).eval()
    timm.models.save_for_hf(reference, str(tmp_path / "folder"), safe_serialization=True)
    flat = {"architecture": "resnet18", "num_classes": 3, "num_features": 512, "input_size": [3, 160, 160],
            "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
            "labels": ["ant", "bee", "cat"]}  # fmt: skip
    (tmp_path / "folder" / "config.json").write_text(json.dumps(flat))
    model = zoo.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True)
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["mean"], cfg["crop_pct"], cfg["interpolation"]) == (
        (3, 160, 160),
        (0.5,) * 3,
        1.0,
        "bicubic",
    )
    assert cfg["label_names"] == ("ant", "bee", "cat") and model.num_classes == 3


def test_a_hub_repo_with_only_a_pickle_loads_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = live(timm.create_model("resnet18", num_classes=5)).eval()
    timm.models.save_for_hf(reference, str(tmp_path / "folder"))
    files = {n: (tmp_path / "folder" / n).read_bytes() for n in ("pytorch_model.bin", "config.json")}
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub({"olduser/resnet18-pickle": files}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        model = zoo.create_model("hf-hub:olduser/resnet18-pickle", pretrained=True).eval()
        asked = [path.rsplit("/", 1)[-1] for _, path in server.requests]
        zoo.create_model("hf-hub:olduser/resnet18-pickle", pretrained=True)
        assert len(server.requests) == len(asked)  # warm: the cached pickle, no request for the missing safetensors
    assert "model.safetensors" in asked and "pytorch_model.bin" in asked  # safetensors first, then the pickle
    x = x_for("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cached, and checked against the sha256 the cache names it by
    again = zoo.create_model("hf-hub:olduser/resnet18-pickle", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), reference(x))


def test_a_folder_with_a_pickle_that_needs_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet20", "num_classes": 10}))
    torch.save({"model": zoo.create_model("resnet20")}, folder / "pytorch_model.bin")  # a module: needs its class
    with pytest.raises(zoo.UnsafeCheckpointError, match=r"pytorch_model.bin is a pickle that needs code execution"):
        zoo.create_model(f"local-dir:{folder}", pretrained=True)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(zoo.WeightsNotFoundError, match=r"model.safetensors: not there(.|\n)*pytorch_model.bin: not"):
        zoo.create_model(f"local-dir:{folder}", pretrained=True)


def test_a_folder_the_zoo_writes_loads_in_timm_with_its_outputs(tmp_path: Path) -> None:
    from zoo.io import folder_config, save_model_folder

    model = live(zoo.create_model("resnet18", num_classes=5)).eval()
    config = folder_config("resnet18", model.cfg.to_dict(), {**model.pretrained_cfg, "tag": "mine"},
                           num_features=model.num_features)  # fmt: skip
    save_model_folder(tmp_path / "folder", model.state_dict(), config)
    theirs = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).eval()
    x = x_for("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x))
    assert (
        theirs.pretrained_cfg["tag"] == "mine"
        and json.loads((tmp_path / "folder" / "config.json").read_text())["pretrained_cfg"]["tag"] == "mine"
    )


def test_create_model_takes_timms_own_keyword_conventions() -> None:
    """What timm's train.py passes: options left as None keep their defaults, the layer-config switches, and
    pretrained_cfg as a tag or a record."""
    common = dict(drop_path_rate=None, drop_rate=None, global_pool=None, num_classes=None, in_chans=None,
                  scriptable=False, exportable=False, no_jit=False, pretrained_cfg=None)  # fmt: skip
    ours, theirs = zoo.create_model("resnet18", **common), timm.create_model("resnet18", **common)
    assert ours.num_classes == theirs.num_classes == 1000
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert zoo.create_model("resnet50", pretrained_cfg="tv_in1k").pretrained_cfg["tag"] == "tv_in1k"
    assert zoo.create_model("resnet50", pretrained_cfg={"crop_pct": 1.0}).pretrained_cfg["crop_pct"] == 1.0
    with pytest.raises(zoo.ConfigError, match=r"pretrained_cfg: expected a tag name or a mapping, got int"):
        zoo.create_model("resnet50", pretrained_cfg=3)
    # a whole record, as timm hands it out or as a model carries it: its derived entries change nothing
    tv = zoo.create_model("resnet50", pretrained_cfg=timm.models.get_pretrained_cfg("resnet50.tv_in1k"))
    assert tv.pretrained_cfg == zoo.create_model("resnet50.tv_in1k").pretrained_cfg
    again = zoo.create_model("resnet50", pretrained_cfg=zoo.create_model("resnet50.tv2_in1k").pretrained_cfg)
    assert again.pretrained_cfg == zoo.create_model("resnet50.tv2_in1k").pretrained_cfg
    theirs_only = timm.models.get_pretrained_cfg("resnet50.fb_ssl_yfcc100m_ft_in1k")  # a tag the zoo lacks: its repo
    record = zoo.create_model("resnet50", pretrained_cfg=theirs_only).pretrained_cfg
    assert "test_input_size" not in record and record["crop_pct"] == theirs_only.crop_pct  # not resnet50.a1_in1k's
    with pytest.raises(zoo.ConfigError, match=r"scriptable: True: torch\.jit\.script cannot compile the zoo's models"):
        zoo.create_model("resnet18", scriptable=True, exportable=True, no_jit=True)


def test_an_architecture_filter_excludes_its_tags_as_timms_does() -> None:
    kwargs = {"filter": "resnet50*", "pretrained": True, "exclude_filters": "resnet50"}
    ours = zoo.list_models(**kwargs)
    assert ours and not [n for n in ours if n.split(".")[0] == "resnet50"]
    assert not [n for n in timm.list_models(**kwargs) if n.split(".")[0] == "resnet50"]


def test_an_overlay_restates_the_data_config_of_a_model_without_weights() -> None:
    model = zoo.create_model("resnet34_cifar", pretrained_cfg_overlay={"mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert zoo.resolve_data_config(model)["mean"] == (0.5, 0.5, 0.5)
    assert timm.data.resolve_data_config(model=model)["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(zoo.ConfigError, match=r"'resnet34_cifar' has no weights for \['hf_hub_id'\] to describe"):
        zoo.create_model("resnet34_cifar", pretrained_cfg_overlay={"hf_hub_id": "someone/r18"})


def test_a_backbones_feature_info_answers_timms_accessors() -> None:
    """effdet and other necks ask feature_info by index and by key, as timm's FeatureInfo answers."""
    ours = zoo.create_model("resnet18", features_only=True, out_indices=(2, 3, 4)).feature_info
    theirs = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4)).feature_info
    for call in (lambda f: f.channels(), lambda f: f.reduction(), lambda f: f.module_name(), lambda f: f.channels(1),
                 lambda f: f.reduction([0, 2]), lambda f: f.get("num_chs"), lambda f: f.get("module", 0),
                 lambda f: f.get_dicts(keys=["num_chs", "reduction"]), lambda f: f.get_dicts(keys=["module"], idx=2),
                 lambda f: f.get_dicts(idx=[0, 1])):  # fmt: skip
        assert call(ours) == call(theirs)
    # as Hugging Face transformers' TimmBackbone reads them: each map's index, and every map of the model
    assert [d["index"] for d in ours.get_dicts()] == [d["index"] for d in theirs.get_dicts()] == [2, 3, 4]
    assert ours.info == theirs.info and ours.out_indices == tuple(theirs.out_indices)
    # indexed, counted and iterated over the whole model's maps, as timm's: its pattern for the maps returned
    assert len(ours) == len(theirs) == 5 and list(ours) == list(theirs) and ours[4] == theirs[4]
    assert [ours[i] for i in ours.out_indices] == [theirs[i] for i in theirs.out_indices]
    other = ours.from_other((1, 4))
    assert other.channels() == theirs.from_other((1, 4)).channels() == [64, 512] and other.info == ours.info
