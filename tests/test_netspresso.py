"""NetsPresso Trainer's model files and checkpoints in the zoo, and the zoo's weights back in NetsPresso Trainer.

Checked against NetsPresso Trainer's own modules (netspresso-trainer 1.4.1: its ResNet backbone, fc head and
TaskModel), imported without the package's __init__, which pulls in gradio, datasets and opencv; `make venv`
installs the wheel without those. The rename rules are also checked on key names alone, with or without it.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import save_file

import zoo
from zoo.layouts import to_netspresso, to_zoo

ROOT = Path(__file__).resolve().parent.parent

_STAGES = """
      stage_params:
        - {{channels: 64, num_blocks: {0}}}
        - {{channels: 128, num_blocks: {1}, replace_stride_with_dilation: False, replace_stride_with_pooling: False}}
        - {{channels: 256, num_blocks: {2}, replace_stride_with_dilation: False, replace_stride_with_pooling: False}}
        - {{channels: 512, num_blocks: {3}, replace_stride_with_dilation: False, replace_stride_with_pooling: False}}"""


def _file(task: str, name: str, block: str, blocks: tuple[int, ...], return_stage_idx: str, tail: str) -> str:
    return f"""model:
  task: {task}
  name: {name}
  checkpoint: {{use_pretrained: True, load_head: False, path: ~, optimizer_path: ~}}
  freeze_backbone: False
  architecture:
    full: ~
    backbone:
      name: resnet
      params:
        block_type: {block}
        norm_type: batch_norm
        return_stage_idx: {return_stage_idx}
        split_stem_conv: False
        first_stage_shortcut_conv: False{_STAGES.format(*blocks)}
{tail}"""


FC_HEAD = """    head:
      name: fc
      params: {num_layers: 1, intermediate_channels: ~, act_type: ~, dropout_prob: 0.}
  postprocessor: ~
  losses:
    - {criterion: cross_entropy, label_smoothing: 0.1, weight: ~}"""
# The model files NetsPresso Trainer 1.4.1 ships in config/model/resnet/, field for field (resnet50-classification
# is resnet18's with bottlenecks of 3-4-6-3 blocks).
FILES = {
    "resnet18-classification.yaml": _file("classification", "resnet18", "basicblock", (2, 2, 2, 2), "~", FC_HEAD),
    "resnet34-classification.yaml": _file("classification", "resnet34", "basicblock", (3, 4, 6, 3), "~", FC_HEAD),
    "resnet50-classification.yaml": _file("classification", "resnet50", "bottleneck", (3, 4, 6, 3), "~", FC_HEAD),
    "resnet50-detection.yaml": _file(
        "detection",
        "resnet50",
        "bottleneck",
        (3, 4, 6, 3),
        "[0, 1, 2, 3]",
        """\
    neck:
      name: fpn
      params: {num_outs: 4, start_level: 0, end_level: -1, add_extra_convs: False, relu_before_extra_convs: False}
    head:
      name: anchor_decoupled_head
      params: {anchor_sizes: [[32,], [64,], [128,], [256,]], aspect_ratios: [0.5, 1.0, 2.0], num_layers: 1,
               norm_type: batch_norm}
  postprocessor:
    params: {topk_candidates: 1000, score_thresh: 0.05, nms_thresh: 0.45, class_agnostic: False}
  losses:
    - {criterion: retinanet_loss, weight: ~}""",
    ),
    "resnet50-segmentation.yaml": _file(
        "segmentation",
        "resnet50",
        "bottleneck",
        (3, 4, 6, 3),
        "~",
        """\
    head:
      name: all_mlp_decoder
      params: {intermediate_channels: 256, classifier_dropout_prob: 0.}
  postprocessor: ~
  losses:
    - {criterion: seg_cross_entropy, weight: ~, ignore_index: 255}""",
    ),
}
# Options switched on one at a time (on resnet50-classification), each with NetsPresso's own module names.
VARIANTS = {
    "split_stem_conv": lambda p, s: p.update(split_stem_conv=True),
    "first_stage_shortcut_conv": lambda p, s: p.update(first_stage_shortcut_conv=True),
    "replace_stride_with_pooling": lambda p, s: [st.update(replace_stride_with_pooling=True) for st in s[1:]],
    "replace_stride_with_dilation": lambda p, s: [st.update(replace_stride_with_dilation=True) for st in s[2:]],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("netspresso-configs")
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return {name: folder / name for name in FILES}


@pytest.fixture(scope="module")
def netspresso():
    """NetsPresso Trainer's own modules: its ResNet, fc head, TaskModel and checkpoint reader."""
    spec = importlib.util.find_spec("netspresso_trainer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("netspresso-trainer is not installed (make venv installs it without its dependencies)")
    root = Path(spec.submodule_search_locations[0])
    heavy = ("netspresso_trainer", "netspresso_trainer.models", "netspresso_trainer.models.backbones",
             "netspresso_trainer.models.heads")  # fmt: skip
    saved = {name: mod for name, mod in sys.modules.items() if name.startswith("netspresso_trainer")}
    for name in heavy:  # empty packages in their place: their __init__ files import the whole trainer
        package = types.ModuleType(name)
        package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = package
    try:
        yield SimpleNamespace(
            resnet=importlib.import_module("netspresso_trainer.models.backbones.core.resnet"),
            fc=importlib.import_module("netspresso_trainer.models.heads.classification.core.fc"),
            base=importlib.import_module("netspresso_trainer.models.base"),
            checkpoint=importlib.import_module("netspresso_trainer.utils.checkpoint"),
        )
    finally:
        for name in [n for n in sys.modules if n.startswith("netspresso_trainer")]:
            del sys.modules[name]
        sys.modules.update(saved)


def their_model(ns: SimpleNamespace, document: dict, num_classes: int = 10) -> torch.nn.Module:
    """NetsPresso Trainer's model of a document: a ClassificationModel (backbone + fc head), else the backbone it
    builds for the task; batch norms given random statistics so that every layer shows in the outputs."""
    from omegaconf import OmegaConf

    conf = OmegaConf.create(document).model
    torch.manual_seed(0)
    backbone = ns.resnet.resnet(conf.task, conf.architecture.backbone)
    model = backbone
    if conf.task == "classification":
        head = ns.fc.fc(backbone.feature_dim, num_classes, conf.architecture.head)
        model = ns.base.ClassificationModel(conf, backbone, None, head)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def their_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    if "pred" in out:
        return [out["pred"]]
    return list(out["intermediate_features"])


def our_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.eval()(x)
    return out if isinstance(out, list) else [out]


def variant(option: str, tmp_path: Path) -> tuple[dict, Path]:
    document = yaml.safe_load(FILES["resnet50-classification.yaml"])
    backbone = document["model"]["architecture"]["backbone"]
    VARIANTS[option](backbone["params"], backbone["stage_params"])
    path = tmp_path / f"resnet50-{option}.yaml"
    path.write_text(yaml.safe_dump(document))
    return document, path


# --- model files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FILES))
def test_each_model_file_builds_as_netspresso_builds_it(
    name: str, files: dict[str, Path], netspresso: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    document = yaml.safe_load(FILES[name])
    theirs = their_model(netspresso, document, num_classes=1000)
    with caplog.at_level(logging.INFO, logger="zoo"):
        ours = zoo.create_model(str(files[name]))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(ours) == count(theirs)  # the classifiers with their 1000-class heads; the backbones alone
    if document["model"]["task"] == "classification":
        assert ours.num_classes == 1000 and "left to you" not in caplog.text
        backbone = zoo.create_model(str(files[name]), features_only=True)  # its head skipped
        assert count(backbone) == count(theirs.backbone)
        return
    # detection, segmentation: the backbone NetsPresso builds, with the maps it returns, asked for or not
    assert ours.feature_info.channels() == theirs.intermediate_features_dim
    assert (
        zoo.create_model(str(files[name]), features_only=True).feature_info.channels() == ours.feature_info.channels()
    )
    left = {"resnet50-detection.yaml": "neck 'fpn', head 'anchor_decoupled_head', postprocessor, losses",
            "resnet50-segmentation.yaml": "head 'all_mlp_decoder', losses"}[name]  # fmt: skip
    assert f"built the {document['model']['task']} backbone; left to you: {left}" in caplog.text


def test_a_head_the_zoo_does_not_build_is_named_and_features_only_builds_the_backbone(files, tmp_path) -> None:
    document = yaml.safe_load(FILES["resnet18-classification.yaml"])
    document["model"]["architecture"]["head"]["params"].update(num_layers=2, intermediate_channels=256, act_type="relu")
    path = tmp_path / "mlp-head.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(zoo.ConfigError, match=r"model\.architecture\.head\.params\.num_layers: the zoo's head is one "
                       r"linear layer; got 2 \(build the backbone alone with features_only=True"):  # fmt: skip
        zoo.create_model(str(path))
    backbone = zoo.create_model(str(path), features_only=True)  # what the message advises works
    assert backbone.feature_info.channels() == [64, 64, 128, 256, 512]


# --- checkpoints in --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FILES))
def test_a_netspresso_checkpoint_loads_with_its_outputs(name: str, files, netspresso, tmp_path: Path) -> None:
    document = yaml.safe_load(FILES[name])
    theirs = their_model(netspresso, document)
    checkpoint = tmp_path / "netspresso.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, checkpoint)
    ours = zoo.create_model(str(files[name]), checkpoint_path=checkpoint)
    x = torch.randn(2, 3, 64, 64)
    for got, want in zip(our_outputs(ours, x), their_outputs(theirs, x), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", list(VARIANTS))
def test_each_option_loads_both_ways_with_netspresso_s_outputs(option: str, netspresso, tmp_path: Path) -> None:
    document, path = variant(option, tmp_path)
    theirs = their_model(netspresso, document)
    x = torch.randn(2, 3, 64, 64)
    state = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    for form, save in (
        ("in.safetensors", lambda f: save_file(state, f)),
        ("in.pth", lambda f: torch.save({"state_dict": state, "epoch": 3}, f)),
    ):  # a wrapper too
        checkpoint = tmp_path / form
        save(checkpoint)
        ours = zoo.create_model(str(path), checkpoint_path=checkpoint)
        for got, want in zip(our_outputs(ours, x), their_outputs(theirs, x), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=lambda m, form=form: f"{form}: {m}")
    torch.save({"model": theirs.backbone.state_dict()}, tmp_path / "backbone.pth")  # a backbone, in a model wrapper
    backbone = zoo.create_model(str(path), checkpoint_path=tmp_path / "backbone.pth", features_only=True)
    with torch.no_grad():
        torch.testing.assert_close(our_outputs(backbone, x)[-1], ours.forward_features(x))
    # and back: the zoo's weights in NetsPresso Trainer's TaskModel layout, read by its own checkpoint loader
    zoo_file = tmp_path / "zoo.safetensors"
    ours = zoo.create_model(str(path), checkpoint_path=tmp_path / "in.safetensors")
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, zoo_file)
    out = tmp_path / "back.safetensors"
    done = subprocess.run(
        [
            sys.executable,
            "tools/convert.py",
            str(zoo_file),
            "--arch",
            str(path),
            "--to",
            "netspresso",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr  # fmt: skip
    fresh = their_model(netspresso, copy.deepcopy(document))
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(netspresso.checkpoint.load_checkpoint(out), strict=True)  # no missing or unexpected key
    for got, want in zip(their_outputs(fresh, x), our_outputs(ours, x), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_weights_of_another_architecture_are_refused_naming_the_block(netspresso, files, tmp_path: Path) -> None:
    theirs = their_model(netspresso, yaml.safe_load(FILES["resnet50-classification.yaml"]))
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "r50.safetensors")
    with pytest.raises(zoo.StateDictError, match=r"first in stage 1, block 0 \(layer1\.0\.\w+"):
        zoo.create_model(str(files["resnet18-classification.yaml"]), checkpoint_path=tmp_path / "r50.safetensors")


# --- the rename rules, on NetsPresso's published key names (no NetsPresso needed) ---------------------------


RULES = {  # NetsPresso Trainer's key -> the zoo's
    "backbone.conv1.block.conv.weight": "conv1.weight",
    "backbone.conv1.block.norm.running_var": "bn1.running_var",
    "backbone.stages.0.0.conv1.block.conv.weight": "layer1.0.conv1.weight",
    "backbone.stages.0.0.conv3.block.norm.bias": "layer1.0.bn3.bias",
    "backbone.stages.1.0.downsample.block.conv.weight": "layer2.0.downsample.0.weight",
    "backbone.stages.1.0.downsample.block.norm.weight": "layer2.0.downsample.1.weight",
    "head.classifier.1.weight": "fc.weight",
}
SPLIT_STEM = {"conv1.0.block.conv.weight": "conv1.0.weight", "conv1.0.block.norm.weight": "conv1.1.weight",
              "conv1.1.block.conv.weight": "conv1.3.weight", "conv1.1.block.norm.weight": "conv1.4.weight",
              "conv1.2.block.conv.weight": "conv1.6.weight", "conv1.2.block.norm.weight": "bn1.weight"}  # fmt: skip
POOLED = {  # replace_stride_with_pooling: a pool at downsample.0 there and in the zoo's avg shortcut
    "stages.0.0.downsample.block.conv.weight": "layer1.0.downsample.1.weight",  # its first stage never pools
    "stages.1.0.downsample.1.block.conv.weight": "layer2.0.downsample.1.weight",
    "stages.1.0.downsample.1.block.norm.bias": "layer2.0.downsample.2.bias",
}


@pytest.mark.parametrize("table", [RULES, SPLIT_STEM, POOLED], ids=["task-model", "split-stem", "pooling"])
def test_the_rename_rules_both_ways(table: dict[str, str]) -> None:
    state = {k: torch.zeros(1) for k in table}
    renamed, layout = to_zoo(state)
    assert layout == "NetsPresso Trainer" and renamed.keys() == set(table.values())
    back = to_netspresso(renamed)
    prefixed = {k if k.startswith(("backbone.", "head.")) else f"backbone.{k}" for k in table}
    assert set(back) == prefixed
    compiled = {f"_orig_mod.{k}": v for k, v in state.items()}  # from a torch.compile'd model
    assert to_zoo(compiled)[0].keys() == renamed.keys()


def test_a_detection_checkpoint_s_neck_and_head_are_left_out() -> None:
    state = {"backbone.conv1.block.conv.weight": torch.zeros(1), "neck.fpn.0.weight": torch.zeros(1),
             "head.cls_score.weight": torch.zeros(1)}  # fmt: skip
    assert set(to_zoo(state)[0]) == {"conv1.weight"}


def test_each_one_layer_classification_head_becomes_the_fc_and_an_mlp_head_is_left_out(netspresso, caplog) -> None:
    from omegaconf import OmegaConf

    x = torch.randn(2, 64)
    for name, layers in (("FC", 1), ("FCConv", 1), ("FC", 2)):
        params = OmegaConf.create({"num_layers": layers, "intermediate_channels": 32, "act_type": "relu",
                                   "norm_type": "batch_norm", "dropout_prob": 0.0})  # fmt: skip
        head = getattr(netspresso.fc, name)(64, 10, params).eval()
        state = {"backbone.conv1.block.conv.weight": torch.zeros(1),
                 **{f"head.{k}": v for k, v in head.state_dict().items()}}  # fmt: skip
        with caplog.at_level(logging.INFO, logger="zoo.layouts"):
            renamed = to_zoo(state)[0]
        if layers > 1:  # Linear, act, Dropout, Linear: not the zoo's one Linear
            assert set(renamed) == {"conv1.weight"} and "left out its head" in caplog.text
            continue
        fc = torch.nn.Linear(64, 10)
        fc.load_state_dict({k.removeprefix("fc."): v for k, v in renamed.items() if k.startswith("fc.")})
        with torch.no_grad():
            torch.testing.assert_close(fc(x), head(x)["pred"])
    old = {"head.classifier.0.weight": torch.ones(10, 64), "head.classifier.0.bias": torch.zeros(10)}  # no Dropout
    assert set(to_zoo(old)[0]) == {"fc.weight", "fc.bias"}


def test_a_registered_model_s_weights_go_to_netspresso_by_name(netspresso, tmp_path: Path) -> None:
    source = zoo.create_model("resnet18").eval()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "r18.safetensors")
    done = subprocess.run([sys.executable, "tools/convert.py", str(tmp_path / "r18.safetensors"), "--arch", "resnet18",
                           "--to", "netspresso", "--out", str(tmp_path / "np.safetensors")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    theirs = their_model(netspresso, yaml.safe_load(FILES["resnet18-classification.yaml"]), num_classes=1000)
    theirs.load_state_dict(netspresso.checkpoint.load_checkpoint(tmp_path / "np.safetensors"), strict=True)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(their_outputs(theirs, x)[0], our_outputs(source, x)[0], atol=1e-5, rtol=0)


def test_a_netspresso_checkpoint_converts_and_loads_from_a_model_folder(netspresso, files, tmp_path: Path) -> None:
    import json

    document = yaml.safe_load(FILES["resnet18-classification.yaml"])
    theirs = their_model(netspresso, document)
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "np.safetensors")
    done = subprocess.run([sys.executable, "tools/convert.py", str(tmp_path / "np.safetensors"), "--arch",
                           str(files["resnet18-classification.yaml"]), "--out", str(tmp_path / "zoo.safetensors")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "renamed from NetsPresso Trainer's layout" in done.stdout, done.stderr
    x = torch.randn(2, 3, 64, 64)
    converted = zoo.create_model(
        str(files["resnet18-classification.yaml"]), checkpoint_path=tmp_path / "zoo.safetensors"
    )
    torch.testing.assert_close(our_outputs(converted, x)[0], their_outputs(theirs, x)[0], atol=1e-5, rtol=0)
    folder = tmp_path / "folder"  # a model folder holding NetsPresso's file as it is
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10}))
    (folder / "model.safetensors").write_bytes((tmp_path / "np.safetensors").read_bytes())
    loaded = zoo.create_model(f"local-dir:{folder}", pretrained=True)
    torch.testing.assert_close(our_outputs(loaded, x)[0], their_outputs(theirs, x)[0], atol=1e-5, rtol=0)


def test_a_pose_estimation_file_builds_its_backbone_too() -> None:
    document = yaml.safe_load(FILES["resnet50-segmentation.yaml"])
    document["model"]["task"] = "pose_estimation"
    document["model"]["architecture"]["backbone"]["params"]["return_stage_idx"] = [1, 3]
    backbone = zoo.create_model_from_config(document)
    assert backbone.feature_info.channels() == [512, 2048] and backbone.feature_info.out_indices == (2, 4)
    document["model"]["task"] = "captioning"
    with pytest.raises(zoo.ConfigError, match=r"model\.task: 'captioning' is not one of 'classification', 'detection'"):
        zoo.create_model_from_config(document)
