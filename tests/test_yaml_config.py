"""ResNets from YAML (the NetsPresso backbone schema): round trips, old keys, errors, fuzzing."""

from __future__ import annotations

import copy
import re
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from zoo.registry import get_entry
from zoo.yaml_config import dump, load, model_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

RESNET18 = textwrap.dedent("""\
    model:
      architecture:
        backbone:
          name: resnet
          params:
            block_type: basicblock
            norm_type: batch_norm
            return_stage_idx: [0, 1, 2, 3]
            split_stem_conv: false
            first_stage_shortcut_conv: false
          stage_params:
            - {channels: 64, num_blocks: 2}
            - {channels: 128, num_blocks: 2, replace_stride_with_dilation: false, replace_stride_with_pooling: false}
            - {channels: 256, num_blocks: 2, replace_stride_with_dilation: false, replace_stride_with_pooling: false}
            - {channels: 512, num_blocks: 2, replace_stride_with_dilation: false, replace_stride_with_pooling: false}
        head: {name: fc, params: {num_classes: 1000}}
    """)

# The older documentation's ResNet18 example, exactly as published (it mixes plane and channels).
OLD_RESNET18 = textwrap.dedent("""\
    model:
      architecture:
        backbone:
          name: resnet
          params:
            block: basicblock
            norm_layer: batch_norm
          stage_params:
            -
              channels: 64
              layers: 2
            -
              channels: 128
              layers: 2
              replace_stride_with_dilation: False
            -
              channels: 256
              layers: 2
              replace_stride_with_dilation: False
            -
              plane: 512
              layers: 2
              replace_stride_with_dilation: False
    """)


def test_schema_example_is_resnet18(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.yaml"
    path.write_text(RESNET18)
    document = load(path)
    cfg, out_indices = document.config, document.out_indices
    assert cfg == get_entry("resnet18").config and out_indices == (1, 2, 3, 4)
    model = zoo.create_model(str(path))
    reference = zoo.create_model("resnet18")
    assert list(model.state_dict()) == list(reference.state_dict())
    backbone = zoo.create_model_from_config(path, features_only=True)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]  # return_stage_idx: stages 0..3


@pytest.mark.parametrize(
    ("block", "layers", "name"),
    [("basicblock", (2, 2, 2, 2), "resnet18"), ("basicblock", (3, 4, 6, 3), "resnet34"),
     ("bottleneck", (3, 4, 6, 3), "resnet50"), ("bottleneck", (3, 4, 23, 3), "resnet101"),
     ("bottleneck", (3, 8, 36, 3), "resnet152")],
)  # fmt: skip
def test_old_documented_examples_build_with_a_deprecation_warning(block: str, layers: tuple, name: str) -> None:
    doc = yaml.safe_load(OLD_RESNET18)
    doc["model"]["architecture"]["backbone"]["params"]["block"] = block
    for stage, n in zip(doc["model"]["architecture"]["backbone"]["stage_params"], layers, strict=True):
        stage["layers"] = n
    with pytest.warns(FutureWarning, match=r"params\.block is deprecated; write block_type"):
        cfg = load(doc).config
    assert cfg == get_entry(name).config


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_model_round_trips(name: str, tmp_path: Path) -> None:
    path = zoo.save_config(name, tmp_path / f"{name}.yaml")
    cfg = load(path).config
    assert cfg == get_entry(name).config


@pytest.mark.parametrize("shortcut", ["avg", "pad", "conv"])
def test_a_one_stage_network_keeps_its_shortcut_through_yaml(shortcut: str, tmp_path: Path) -> None:
    """One stage has no later stage to carry replace_stride_with_pooling: the shortcut is written as itself."""
    model = zoo.create_model("resnet50d", layers=(2,), channels=(64,), shortcut=shortcut)
    path = zoo.save_config(model, tmp_path / "one.yaml")
    assert load(path).config == model.cfg
    zoo.create_model_from_config(path).load_state_dict(model.state_dict())  # the same keys


@pytest.mark.parametrize("name", ["resnet50d", "resnet20", "resnext50_32x4d"])
def test_same_outputs_from_the_written_config(name: str, tmp_path: Path) -> None:
    # dilated (output_stride 16) where NetsPresso builds the same network: not resnet50d's pooling shortcut
    reference = zoo.create_model(name, output_stride=16 if name == "resnext50_32x4d" else 32, drop_rate=0.1).eval()
    path = zoo.save_config(reference, tmp_path / "net.yaml")
    model = zoo.create_model_from_config(path).eval()
    model.load_state_dict(reference.state_dict())  # same keys, same shapes
    x = torch.randn(1, 3, 32, 32) if name == "resnet20" else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_repository_configs_equal_the_registry() -> None:
    files = sorted(CONFIGS.glob("*.yaml"))
    expected = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50d"}
    expected |= {f"resnet{d}_cifar" for d in (18, 34, 50, 101, 152)}
    assert {p.stem for p in files} >= expected
    for path in files:
        assert load(path).config == get_entry(path.stem).config, path.name
        assert path.read_text() == dump(model_config(path.stem)), f"{path.name} is stale: run tools/make_configs.py"


def test_any_number_of_stages_and_dilated_basic_blocks() -> None:
    doc = yaml.safe_load(RESNET18)
    backbone = doc["model"]["architecture"]["backbone"]
    backbone["stage_params"] = [{"channels": 8 * 2**i, "num_blocks": 1} for i in range(6)]
    for stage in backbone["stage_params"][4:]:
        stage["replace_stride_with_dilation"] = True
    backbone["params"].update(stem="cifar", in_chans=1)
    backbone["params"]["return_stage_idx"] = [5]
    doc["model"]["architecture"]["head"]["params"]["num_classes"] = 3
    model = zoo.create_model_from_config(doc).eval()
    assert model.cfg.output_stride == 8 and len(model.stage_names) == 6
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
        assert model.forward_features(torch.randn(1, 1, 32, 32)).shape[-1] == 4  # 32 / 8
    one = copy.deepcopy(doc)
    one["model"]["architecture"]["backbone"]["stage_params"] = [{"channels": 8, "num_blocks": 1}]
    one["model"]["architecture"]["backbone"]["params"]["return_stage_idx"] = None
    assert zoo.create_model_from_config(one)(torch.randn(1, 1, 8, 8)).shape == (1, 3)


def _mutated(path: str, value: object) -> dict:
    doc = yaml.safe_load(RESNET18)
    *parents, last = path.split("/")
    node: dict | list = doc["model"]["architecture"]
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value  # type: ignore[index]
    return doc


BAD = [
    ("backbone/stage_params/2/num_blocks", -1, r"backbone\.stage_params\[2\]\.num_blocks: expected a positive integer, got -1"),
    ("backbone/params/block_type", "botleneck", r"params\.block_type: 'botleneck' is not one of 'basicblock', 'bottleneck'; did you mean 'bottleneck'"),
    ("backbone/params/norm_typ", "batch_norm", r"params\.norm_typ: unknown key; allowed: .*did you mean 'norm_type'"),
    ("backbone/params/split_stem_conv", "yes", r"params\.split_stem_conv: expected true or false, got 'yes'"),
    ("backbone/stage_params/1/channels", "128", r"stage_params\[1\]\.channels: expected a positive integer, got '128'"),
    ("backbone/stage_params/2/replace_stride_with_dilation", True, r"stage_params\[3\]\.replace_stride_with_dilation: dilation must run to the last stage"),
    ("backbone/stage_params/1/replace_stride_with_pooling", True, r"stage_params\[2\]\.replace_stride_with_pooling: set it on every strided stage or on none"),
    ("backbone/stage_params", [], r"backbone\.stage_params: expected a non-empty list of stages, got \[\]"),
    ("backbone/name", "vgg", r"backbone\.name: 'vgg' is not one of 'resnet'"),
    ("head/params/num_layers", 2, r"head\.params\.num_layers: the zoo's head is one linear layer; got 2"),
    ("backbone/params/groups", 32, r"backbone\.params\.groups: groups=32, width_per_group=64 need block='bottleneck'"),
    ("backbone/params/return_stage_idx", [4], r"params\.return_stage_idx: expected a list of stage indices in 0..3, got \[4\]"),
    ("backbone/params/return_stage_idx", [1, 1], r"params\.return_stage_idx: \[1, 1\] names a stage twice"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[b[0].split("/")[-1] for b in BAD])
def test_bad_fields_are_named_by_their_yaml_path(path: str, value: object, message: str) -> None:
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create_model_from_config(_mutated(path, value))


def test_a_rule_across_stages_names_the_stage_and_a_bare_backbone_takes_its_head() -> None:
    doc = _mutated("backbone/params/shortcut", "pad")
    doc["model"]["architecture"]["backbone"]["stage_params"][1]["channels"] = 32
    with pytest.raises(zoo.ConfigError, match=r"^model\.architecture\.backbone\.stage_params\[1\]\.channels: "
                       r"shortcut='pad' only adds channels, but stage 1 goes from 64 to 32"):  # fmt: skip
        zoo.create_model_from_config(doc)
    bare = {**yaml.safe_load(RESNET18)["model"]["architecture"]["backbone"], "head": {"name": "fc",
            "params": {"num_classes": 7}}}  # fmt: skip
    assert zoo.create_model_from_config(bare).num_classes == 7


def test_missing_key_and_bad_yaml(tmp_path: Path) -> None:
    doc = yaml.safe_load(RESNET18)
    del doc["model"]["architecture"]["backbone"]["stage_params"][0]["num_blocks"]
    with pytest.raises(zoo.ConfigError, match=r"stage_params\[0\]\.num_blocks: missing"):
        zoo.create_model_from_config(doc)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {architecture: [")
    with pytest.raises(zoo.ConfigError, match="not valid YAML"):
        zoo.create_model(str(broken))
    doubled = tmp_path / "doubled.yaml"  # PyYAML would keep the last silently; NetsPresso (OmegaConf) refuses it
    doubled.write_text(
        RESNET18.replace("      params:\n", "      params: {block_type: basicblock}\n      params:\n", 1)
    )
    with pytest.raises(zoo.ConfigError, match=r"doubled\.yaml: not valid YAML: found duplicate key 'params'"):
        zoo.create_model(str(doubled))
    both = _mutated("backbone/params/zero_init_residual", False)  # torchvision's name beside the zoo's
    both["model"]["architecture"]["backbone"]["params"]["zero_init_last"] = True
    with pytest.warns(FutureWarning), pytest.raises(zoo.ConfigError, match=r"zero_init_residual: given together with"):
        zoo.create_model_from_config(both)
    stages = _mutated("backbone/stage_params/3/replace_stride_with_dilation", True)["model"]["architecture"]
    for stage in stages["backbone"]["stage_params"][1:3]:  # pooling where it strides, dilation after: not buildable
        stage["replace_stride_with_pooling"] = True
    with pytest.raises(
        zoo.ConfigError, match=r"stage_params\[3\]\.replace_stride_with_pooling: false in a dilated stage"
    ):
        zoo.create_model_from_config({"model": {"architecture": stages}})
    for doc, message in (({1: 2}, r"^model: missing"), ({"model": {1: "x", "foo": "y"}}, r"^model\.1: unknown key")):
        with pytest.raises(zoo.ConfigError, match=message):  # YAML keys that are numbers: named, no TypeError
            zoo.create_model_from_config(doc)


# --- fuzzing: a mutated config builds a working model or raises ConfigError, nothing else ---------

SMALL = yaml.safe_load(RESNET18)
SMALL["model"]["architecture"]["backbone"]["params"]["stem"] = "cifar"
for _stage, _width in zip(SMALL["model"]["architecture"]["backbone"]["stage_params"], (4, 8, 8, 16), strict=True):
    _stage.update(channels=_width, num_blocks=1)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [prefix] + [p for k, v in node.items() for p in _paths(v, (*prefix, k))]
    if isinstance(node, list):
        return [prefix] + [p for i, v in enumerate(node) for p in _paths(v, (*prefix, i))]
    return [prefix]


PATHS = [p for p in _paths(SMALL) if p]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(-1, 2, allow_nan=True),
    st.sampled_from(["basicblock", "bottleneck", "batch_norm", "group_norm", "instance_norm", "cifar", "imagenet",
                     "avg", "pad", "fc", "resnet", "", "relu", "gelu"]),
    st.lists(st.integers(-1, 5), max_size=4), st.just({}), st.just([]),
)  # fmt: skip
KEYS = st.sampled_from(["block", "plane", "layers", "norm_layer", "stem", "in_chans", "output_stride", "groups",
                        "width_per_group", "drop_path_rate", "shortcut", "bogus", "num_classes", "dropout_prob"])  # fmt: skip


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict:
    doc = copy.deepcopy(SMALL)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node: object = doc
        try:
            for key in path[:-1]:
                node = node[key]  # type: ignore[index]
            action = draw(st.sampled_from(["set", "delete", "add"]))
            if action == "set":
                node[path[-1]] = draw(VALUES)  # type: ignore[index]
            elif action == "delete":
                del node[path[-1]]  # type: ignore[arg-type]
            elif isinstance(node[path[-1]], dict):  # type: ignore[index]
                node[path[-1]][draw(KEYS)] = draw(VALUES)  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_configs_build_and_run_or_raise_config_errors(doc: dict) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # old key names are allowed
        try:
            model = zoo.create_model_from_config(doc)
        except zoo.ConfigError:
            return
    model.eval()
    in_chans = model.cfg.in_chans
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 64, 64))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_what_netspresso_would_build_otherwise_is_refused_both_ways(tmp_path: Path) -> None:
    """A pooling shortcut in a dilated stage (NetsPresso pools 1x1 there, the zoo 2x2 as timm) and instance norm
    (NetsPresso: a batch-norm stem, no affine weights) would be other networks under the same document."""
    with pytest.raises(zoo.ConfigError, match=r"stage_params\[3\].replace_stride_with_pooling: in a dilated stage"):
        zoo.save_config(zoo.create_model("resnet50d", output_stride=16), tmp_path / "x.yaml")
    document = zoo.model_config("resnet50d")
    document["model"]["architecture"]["backbone"]["stage_params"][3]["replace_stride_with_dilation"] = True
    with pytest.raises(zoo.ConfigError, match=r"stage_params\[3\].replace_stride_with_pooling: in a dilated stage"):
        zoo.create_model_from_config(document)
    document = zoo.model_config("resnet18")
    document["model"]["architecture"]["backbone"]["params"]["norm_type"] = "instance_norm"
    with pytest.raises(zoo.ConfigError, match=r"params.norm_type: instance_norm: NetsPresso Trainer builds"):
        zoo.create_model_from_config(document)


def test_the_readme_example_builds(tmp_path: Path) -> None:
    """The README's YAML block, saved as a file as a reader would: two stages, the maps of both."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(model:.*?)```", readme, flags=re.S)
    (tmp_path / "example.yaml").write_text(block)
    assert zoo.create_model(str(tmp_path / "example.yaml"))(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    backbone = zoo.create_model(str(tmp_path / "example.yaml"), features_only=True)
    assert [tuple(f.shape[1:]) for f in backbone(torch.randn(1, 3, 64, 64))] == [(64, 16, 16), (128, 8, 8)]
