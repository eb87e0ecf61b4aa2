"""ResNets from YAML: the NetsPresso Trainer backbone schema, read and written.

The schema (``model.architecture.backbone`` with ``params`` and ``stage_params``,
and an ``fc`` head) maps onto :class:`~zoo.config.ResNetConfig`; the zoo's own
options (``stem``, ``in_chans``, ``output_stride``, ...) are extra keys of
``params``. A bad document raises a :class:`~zoo.errors.ConfigError` that names
the YAML path of the field, the bad value and what is allowed.

NetsPresso Trainer's detection, segmentation and pose-estimation model files build as the backbone it
builds for them (``features_only``, the maps of ``return_stage_idx``: null is its last stage); their
neck, head, postprocessor and losses are read and left to the caller (:class:`Document` says which).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .config import ACTS, NORMS, POOLS, SHORTCUTS, ResNetConfig
from .errors import ConfigError, check_bool, check_choice, check_int, check_rate, not_one_of, suggest

BLOCK_TYPES = {"basicblock": "basic", "bottleneck": "bottleneck"}
STEMS = ("imagenet", "cifar")
# Older documents' names -> the current ones (they still build, with a FutureWarning).
RENAMED = {"block": "block_type", "norm_layer": "norm_type", "plane": "channels", "layers": "num_blocks",
           "zero_init_residual": "zero_init_last"}  # fmt: skip

ROOT = "model.architecture.backbone"
PARAMS = {
    "block_type", "norm_type", "return_stage_idx", "split_stem_conv", "first_stage_shortcut_conv",
    # the zoo's extensions
    "stem", "stem_width", "shortcut", "in_chans", "num_classes", "output_stride", "drop_path_rate", "groups",
    "width_per_group", "act_layer", "zero_init_last", "global_pool",
    # older documents' options
    "expansion",
}  # fmt: skip
STAGE = {"channels", "num_blocks", "replace_stride_with_dilation", "replace_stride_with_pooling"}
HEAD_PARAMS = {"num_classes", "num_layers", "intermediate_channels", "act_type", "dropout_prob"}
# Keys of a full NetsPresso model config that describe training, not the network.
MODEL_KEYS = {"task", "name", "checkpoint", "freeze_backbone", "postprocessor", "losses", "architecture"}
TASKS = ("classification", "detection", "segmentation", "pose_estimation")  # NetsPresso Trainer's, for a ResNet
BACKBONE_ONLY = " (build the backbone alone with features_only=True, and yours on it)"


@dataclass(frozen=True)
class Document:
    """What a NetsPresso-schema document builds in the zoo."""

    config: ResNetConfig  # the backbone, with the fc head when the document's head is one the zoo builds
    out_indices: tuple[int, ...] | None  # the maps a backbone returns (return_stage_idx); None: every map
    task: str = "classification"
    head_problem: ConfigError | None = None  # why the whole model cannot be built: raised unless features_only
    left: tuple[str, ...] = ()  # what a backbone leaves out: "neck 'fpn'", "head 'all_mlp_decoder'", "losses"

    @property
    def backbone_only(self) -> bool:
        """NetsPresso Trainer builds these tasks on the backbone's intermediate maps."""
        return self.task != "classification"


# ResNetConfig field -> where it lives in the document, to word cross-field errors in YAML terms.
FIELD_PATHS = {
    "block": "params.block_type", "norm_layer": "params.norm_type", "stem": "params.stem",
    "first_stage_shortcut_conv": "params.first_stage_shortcut_conv", "num_classes": "head.params.num_classes",
    "drop_rate": "head.params.dropout_prob",
}  # fmt: skip


# ResNetConfig's per-stage fields -> their key in each of stage_params' entries
STAGE_FIELDS = {"channels": "channels", "layers": "num_blocks"}


def _document_path(field: str) -> str:
    """A ResNetConfig field as the document spells it: ``channels[1]`` -> ``...backbone.stage_params[1].channels``."""
    name, bracket, index = field.partition("[")
    if name in STAGE_FIELDS and bracket:
        return f"{ROOT}.stage_params[{index}.{STAGE_FIELDS[name]}"
    where = FIELD_PATHS.get(name, f"params.{field}")
    return f"model.architecture.{where}" if where.startswith("head") else f"{ROOT}.{where}"


# --- reading ----------------------------------------------------------------------------------------


def _keys(section: Mapping[str, Any], path: str, allowed: set[str], *, renamed: Mapping[str, str] = {}) -> dict:
    """Check a mapping's keys; rename deprecated ones with a warning; refuse unknown and doubled ones."""
    if not isinstance(section, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(section).__name__} {section!r}")
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = renamed.get(key, key)
        if name != key:
            warnings.warn(f"{path}.{key} is deprecated; write {name}", FutureWarning, stacklevel=4)
            if name in section:
                raise ConfigError(f"{path}.{key}", f"given together with its new name {name}; keep only {name}")
        if name not in allowed:
            raise ConfigError(
                f"{path}.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}{suggest(key, allowed)}"
            )
        out[name] = value
    return out


def _bool(path: str, value: Any) -> bool:
    return False if value is None else check_bool(path, value)  # left out: false


def _choice(path: str, value: Any, allowed: tuple[str, ...] | dict[str, str]) -> Any:
    """``value``, or the zoo's name for it where ``allowed`` maps the schema's names to the zoo's."""
    check_choice(path, value, allowed)
    return allowed[value] if isinstance(allowed, dict) else value


def _backbone(document: Any) -> tuple[dict[str, Any], Any, str, dict[str, Any]]:
    """``(backbone, head, task, the other parts)`` of a full document, or of a bare ``backbone`` mapping."""
    if not isinstance(document, Mapping):
        raise ConfigError("(document)", f"expected a mapping with model.architecture.backbone, got {document!r}")
    if "model" not in document:
        if "params" in document or "stage_params" in document:  # a bare backbone section, maybe beside its head
            return {k: v for k, v in document.items() if k != "head"}, document.get("head"), "classification", {}
        raise ConfigError(
            "model", f"missing; a backbone config starts with model.architecture.backbone{suggest('model', document)}"
        )
    model = document["model"]
    if not isinstance(model, Mapping):
        raise ConfigError("model", f"expected a mapping, got {model!r}")
    unknown = set(model) - MODEL_KEYS
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise ConfigError(
            f"model.{key}", f"unknown key; allowed: {', '.join(sorted(MODEL_KEYS))}{suggest(key, MODEL_KEYS)}"
        )
    task = model.get("task", "classification")
    if task not in TASKS:
        raise ConfigError("model.task", not_one_of(task, TASKS))
    arch = model.get("architecture")
    arch = _keys(arch, "model.architecture", {"backbone", "head", "neck", "full"}) if arch is not None else None
    if arch is None or "backbone" not in arch:
        raise ConfigError("model.architecture.backbone", "missing: the zoo builds a network from its backbone")
    full = arch.get("full")
    if full and (not isinstance(full, Mapping) or full.get("name")):
        raise ConfigError(
            "model.architecture.full", f"a full model ({full!r}) is not a ResNet backbone; leave it empty"
        )
    others = {"neck": arch.get("neck"), "postprocessor": model.get("postprocessor"), "losses": model.get("losses")}
    return arch["backbone"], arch.get("head"), task, {k: v for k, v in others.items() if v}


def parse(document: Any) -> Document:
    """A NetsPresso-schema document -> its :class:`Document` (the ResNetConfig, the maps, what is left out)."""
    raw_backbone, head, task, others = _backbone(document)
    backbone = _keys(raw_backbone, ROOT, {"name", "params", "stage_params"})
    if backbone.get("name", "resnet") != "resnet":
        raise ConfigError(f"{ROOT}.name", not_one_of(backbone.get("name"), ["resnet"]))
    p = _keys(backbone.get("params") or {}, f"{ROOT}.params", PARAMS, renamed=RENAMED)
    at = f"{ROOT}.params".__add__

    if "block_type" not in p:
        raise ConfigError(at(".block_type"), f"missing; one of {', '.join(BLOCK_TYPES)}")
    fields: dict[str, Any] = {"block": _choice(at(".block_type"), p["block_type"], BLOCK_TYPES)}
    if p.get("norm_type") is not None:
        fields["norm_layer"] = _choice(at(".norm_type"), p["norm_type"], NORMS)
    stem = _choice(at(".stem"), p.get("stem", "imagenet"), STEMS)
    if _bool(at(".split_stem_conv"), p.get("split_stem_conv")):
        if stem == "cifar":
            raise ConfigError(
                at(".split_stem_conv"), "the three-conv stem is the ImageNet stem's; stem: cifar has one conv"
            )
        stem = "deep"
    fields["stem"] = stem
    fields["first_stage_shortcut_conv"] = _bool(at(".first_stage_shortcut_conv"), p.get("first_stage_shortcut_conv"))
    for key in ("in_chans", "stem_width", "groups", "width_per_group"):
        if key in p:
            fields[key] = check_int(at(f".{key}"), p[key])
    for key, allowed in (("act_layer", ACTS), ("global_pool", POOLS)):
        if key in p:
            fields[key] = _choice(at(f".{key}"), p[key], allowed)
    if "drop_path_rate" in p:
        fields["drop_path_rate"] = check_rate(at(".drop_path_rate"), p["drop_path_rate"])
    if "zero_init_last" in p:
        fields["zero_init_last"] = _bool(at(".zero_init_last"), p["zero_init_last"])
    if p.get("expansion") is not None:
        want = 4 if fields["block"] == "bottleneck" else 1
        if p["expansion"] != want:
            raise ConfigError(at(".expansion"), f"a {p['block_type']} block expands by {want}, got {p['expansion']!r}")

    layers, channels, dilate, pool = _stages(backbone.get("stage_params"))
    fields.update(layers=tuple(layers), channels=tuple(channels))
    fields["output_stride"] = _output_stride(dilate, stem, p.get("output_stride"))
    fields["shortcut"] = _shortcut(pool, dilate, p.get("shortcut"))

    head_params: dict[str, Any] = {}
    head_problem = None
    if task == "classification":  # an fc head of one layer is the zoo's; another is read, not built
        try:
            head_params = _head(head)
        except ConfigError as e:
            head_problem = ConfigError(e.field, e.problem + BACKBONE_ONLY)
        if others.get("neck"):
            head_problem = ConfigError("model.architecture.neck", f"the zoo builds no neck{BACKBONE_ONLY}")
    parts = {"neck": others.get("neck"), "head": head, "postprocessor": others.get("postprocessor"),
             "losses": others.get("losses")}  # fmt: skip
    left = tuple(_part(name, part) for name, part in parts.items() if part)  # what a backbone leaves to the caller
    for key in ("num_classes",):
        if key in p and key in head_params and p[key] != head_params[key]:
            raise ConfigError(at(f".{key}"), f"{p[key]!r} contradicts head.params.{key}: {head_params[key]!r}")
    if "num_classes" in p:
        fields["num_classes"] = check_int(at(".num_classes"), p["num_classes"], 0)
    fields.update(head_params)

    out_indices = _out_indices(at(".return_stage_idx"), p.get("return_stage_idx"), len(layers))
    if out_indices is None and task != "classification":  # as NetsPresso Trainer: its last stage alone
        out_indices = (len(layers),)
    try:
        config = ResNetConfig(**fields)
    except ConfigError as e:  # a cross-field rule: say it in the document's terms
        raise ConfigError(_document_path(e.field), e.problem) from e
    problem = _not_netspresso(config)
    if problem is not None:
        raise problem
    return Document(config, out_indices, task, head_problem, left)


def _not_netspresso(cfg: ResNetConfig) -> ConfigError | None:
    """Where NetsPresso Trainer would build another network from the same document than the zoo does: such a
    document is refused, both ways, rather than read as the zoo's network under NetsPresso's name."""
    if cfg.norm_layer == "instance_norm":
        return ConfigError(f"{ROOT}.params.norm_type", "instance_norm: NetsPresso Trainer builds a batch-norm stem "
                           "and instance norms without affine weights, the zoo affine instance norms throughout; "
                           "not the same network (its checkpoints would not load)")  # fmt: skip
    for i, plan in enumerate(cfg.stage_plan()):
        if i > 0 and plan.stride == 1 and cfg.shortcut == "avg":  # a dilated stage with a pooling shortcut
            return ConfigError(f"{ROOT}.stage_params[{i}].replace_stride_with_pooling", "in a dilated stage: "
                               "NetsPresso Trainer pools 1x1 there (no pooling), the zoo 2x2 as timm does; not the "
                               "same network")  # fmt: skip
    return None


def _part(name: str, section: Any) -> str:
    """``neck 'fpn'``: a part of the document the zoo leaves to the caller, by its name where it has one."""
    kind = section.get("name") if isinstance(section, Mapping) else None
    return f"{name} {kind!r}" if kind else name


def _stages(stages: Any) -> tuple[list[int], list[int], list[bool], list[bool]]:
    """``stage_params`` as blocks, channels, and whether each stage dilates or pools instead of striding."""
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{ROOT}.stage_params", f"expected a non-empty list of stages, got {stages!r}")
    layers, channels, dilate, pool = [], [], [], []
    for i, raw in enumerate(stages):
        sp = f"{ROOT}.stage_params[{i}]"
        s = _keys(raw, sp, STAGE, renamed=RENAMED)
        for key in ("channels", "num_blocks"):
            if key not in s:
                raise ConfigError(f"{sp}.{key}", "missing")
        channels.append(check_int(f"{sp}.channels", s["channels"]))
        layers.append(check_int(f"{sp}.num_blocks", s["num_blocks"]))
        dilate.append(_bool(f"{sp}.replace_stride_with_dilation", s.get("replace_stride_with_dilation")))
        pool.append(_bool(f"{sp}.replace_stride_with_pooling", s.get("replace_stride_with_pooling")))
    return layers, channels, dilate, pool


def _out_indices(field: str, idx: Any, stages: int) -> tuple[int, ...] | None:
    """``return_stage_idx`` (0-based stages) as feature-map indices (map 0 is the stem)."""
    if idx is None:
        return None
    if (
        not isinstance(idx, list)
        or not idx
        or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < stages for i in idx)
    ):
        raise ConfigError(field, f"expected a list of stage indices in 0..{stages - 1}, got {idx!r}")
    if len(set(idx)) != len(idx):
        raise ConfigError(field, f"{idx!r} names a stage twice")
    return tuple(i + 1 for i in idx)


def _output_stride(dilate: list[bool], stem: str, given: Any) -> int:
    """Per-stage ``replace_stride_with_dilation`` as the output stride it amounts to."""
    strided = [not d for d in dilate[1:]]  # stage 1 never strides
    if any(d for d in dilate[:1]):
        raise ConfigError(
            f"{ROOT}.stage_params[0].replace_stride_with_dilation", "the first stage has no stride to replace"
        )
    first = next((i for i, s in enumerate(strided) if not s), len(strided))
    if any(strided[first:]):
        again = next(i for i in range(first, len(strided)) if strided[i])  # strides after a dilated stage
        raise ConfigError(
            f"{ROOT}.stage_params[{again + 1}].replace_stride_with_dilation",
            f"dilation must run to the last stage once it starts (got {dilate[1:]}); a stage after a dilated one "
            "cannot stride again",
        )
    natural = (1 if stem == "cifar" else 4) * 2**first
    if first == len(strided):  # no dilation: no cap below the net's own stride (deep configs can pass 32)
        natural = max(natural, 32)
    if given is not None:
        if dilate.count(True):
            raise ConfigError(
                f"{ROOT}.params.output_stride", "give output_stride or replace_stride_with_dilation, not both"
            )
        return given
    return natural


def _shortcut(pool: list[bool], dilate: list[bool], given: Any) -> str:
    """Per-stage ``replace_stride_with_pooling`` as the shortcut kind it amounts to."""
    flags = pool[1:]
    if pool[:1] == [True]:
        raise ConfigError(
            f"{ROOT}.stage_params[0].replace_stride_with_pooling", "the first stage has no stride to replace"
        )
    if any(flags) and not all(flags) and any(dilate):  # pooling where it strides, none where it dilates
        raise ConfigError(
            f"{ROOT}.stage_params[{dilate.index(True)}].replace_stride_with_pooling",
            "false in a dilated stage, true in strided ones: the zoo's pooling shortcut is one kind for every "
            "stage and pools 2x2 in a dilated one (as timm), NetsPresso Trainer not at all there; neither way "
            "is the same network",
        )
    if any(flags) and not all(flags):
        first = flags.index(not flags[0]) + 1
        raise ConfigError(
            f"{ROOT}.stage_params[{first}].replace_stride_with_pooling",
            f"set it on every strided stage or on none (got {flags})",
        )
    kind = "avg" if flags and all(flags) else "conv"
    if given is not None:
        given = _choice(f"{ROOT}.params.shortcut", given, SHORTCUTS)
        if kind == "avg" and given != "avg":
            raise ConfigError(f"{ROOT}.params.shortcut", f"{given!r} contradicts replace_stride_with_pooling: true")
        return given
    return kind


def _head(head: Any) -> dict[str, Any]:
    if head is None:
        return {}
    h = _keys(head, "model.architecture.head", {"name", "params"})
    if h.get("name", "fc") != "fc":
        raise ConfigError("model.architecture.head.name", not_one_of(h.get("name"), ["fc"]))
    p = _keys(h.get("params") or {}, "model.architecture.head.params", HEAD_PARAMS)
    at = "model.architecture.head.params".__add__
    if p.get("num_layers", 1) != 1:
        raise ConfigError(at(".num_layers"), f"the zoo's head is one linear layer; got {p['num_layers']!r}")
    for key in ("intermediate_channels", "act_type"):
        if p.get(key) is not None:
            raise ConfigError(at(f".{key}"), f"only applies to a multi-layer head; got {p[key]!r}")
    out: dict[str, Any] = {}
    if "num_classes" in p:
        out["num_classes"] = check_int(at(".num_classes"), p["num_classes"], 0)
    if p.get("dropout_prob"):
        out["drop_rate"] = check_rate(at(".dropout_prob"), p["dropout_prob"])
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of a key given twice in one mapping, silently; NetsPresso (OmegaConf) refuses it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load(path_or_mapping: str | os.PathLike[str] | Mapping[str, Any]) -> Document:
    """Parse a YAML file (or an already-loaded mapping) into its :class:`Document`."""
    if isinstance(path_or_mapping, Mapping):
        return parse(path_or_mapping)
    path = Path(path_or_mapping)
    if not path.is_file():
        raise ConfigError(str(path), "no such config file")
    try:
        document = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML: {e}") from e
    return parse(document)


# --- writing ----------------------------------------------------------------------------------------


def to_document(cfg: ResNetConfig) -> dict[str, Any]:
    """The NetsPresso-schema document of ``cfg``; the zoo's extensions only where they differ from defaults.
    A config NetsPresso Trainer would build otherwise from it has no document (a ConfigError says why)."""
    problem = _not_netspresso(cfg)
    if problem is not None:
        raise ConfigError("model", f"has no NetsPresso-schema form: {problem}")
    default = ResNetConfig()
    plan = cfg.stage_plan()
    params: dict[str, Any] = {
        "block_type": "basicblock" if cfg.block == "basic" else "bottleneck",
        "norm_type": cfg.norm_layer,
        "return_stage_idx": list(range(len(cfg.layers))),
        "split_stem_conv": cfg.stem == "deep",
        "first_stage_shortcut_conv": cfg.first_stage_shortcut_conv,
    }
    if cfg.stem == "cifar":
        params["stem"] = "cifar"
    for key in ("stem_width", "in_chans", "groups", "width_per_group", "act_layer", "global_pool",
                "drop_path_rate", "zero_init_last"):  # fmt: skip
        if getattr(cfg, key) != getattr(default, key):
            params[key] = getattr(cfg, key)
    if cfg.shortcut == "pad" or (cfg.shortcut == "avg" and len(cfg.layers) == 1):  # one stage: no flag to say it
        params["shortcut"] = cfg.shortcut
    dilated = [i > 0 and p.stride == 1 for i, p in enumerate(plan)]
    if not any(dilated) and cfg.output_stride != max(32, plan[-1].reduction):
        params["output_stride"] = cfg.output_stride  # a cap the stages do not reach: keep it as given
    stages = []
    for i, (n, c) in enumerate(zip(cfg.layers, cfg.channels, strict=True)):
        stage: dict[str, Any] = {"channels": c, "num_blocks": n}
        if i > 0:
            stage["replace_stride_with_dilation"] = dilated[i]
            stage["replace_stride_with_pooling"] = cfg.shortcut == "avg"
        stages.append(stage)
    head_params: dict[str, Any] = {"num_classes": cfg.num_classes}
    if cfg.drop_rate:
        head_params["dropout_prob"] = cfg.drop_rate
    return {
        "model": {
            "architecture": {
                "backbone": {"name": "resnet", "params": params, "stage_params": stages},
                "head": {"name": "fc", "params": head_params},
            }
        }
    }


def model_config(model_or_name: str | nn.Module) -> dict[str, Any]:
    """The YAML document (as a dict) of a registered model or a built zoo ResNet."""
    if isinstance(model_or_name, str):
        from .registry import get_entry

        cfg = get_entry(model_or_name).config
        if cfg is None:
            raise ConfigError("model", f"{model_or_name!r} is not registered as a config; it has no YAML form")
    else:
        cfg = getattr(model_or_name, "cfg", None)
        if not isinstance(cfg, ResNetConfig):
            raise ConfigError("model", f"a {type(model_or_name).__name__} has no ResNetConfig to write")
    return to_document(cfg)


class _Dumper(yaml.SafeDumper):
    pass


def _flow_stage(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    # stages as one line each, as the NetsPresso examples write them
    flow = set(data) <= STAGE
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow or None)


def _flow_scalars(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow or None)


_Dumper.add_representer(dict, _flow_stage)
_Dumper.add_representer(list, _flow_scalars)


def dump(document: Mapping[str, Any]) -> str:
    return yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def save_config(model_or_name: str | nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the YAML config of a model; building from it gives the same architecture."""
    from .io import atomic_write

    text = dump(model_config(model_or_name))
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
