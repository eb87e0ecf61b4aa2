"""create_model: the one place that puts registry, config, weights and features together."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import hub, yaml_config
from .config import ResNetConfig
from .data import pool_size
from .errors import ConfigError, StateDictError, UnknownModelError, WeightsNotFoundError
from .features import make_backbone
from .io import load_state_dict, read_json, verify
from .layouts import to_zoo
from .registry import get_entry, get_weights, is_model, list_pretrained, split_name
from .resnet import ResNet
from .weights import DATA_CONFIG_KEYS, Weights, fit_state_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """What a model name resolves to: how to build it and which weights it may load."""

    name: str  # the name as given
    builder: Callable[..., nn.Module]
    weights: Weights | None = None
    weights_name: str | None = None  # what loads the weights: "arch.tag", "hf-hub:org/repo", "local-dir:PATH"
    tag: str | None = None  # timm's pretrained_cfg["tag"]: the part after the dot ("tv2_in1k"), if any
    folder: Path | None = None  # a local Hub-layout folder holding the weights
    out_indices: tuple[int, ...] | None = None  # default feature maps (a YAML config's return_stage_idx)
    document: yaml_config.Document | None = None  # a YAML config: its task, its head, the parts it leaves out
    architecture: str = "resnet"  # what a checkpoint of this model names: registered arch, else "resnet" + zoo_config


def _config_source(name: str, path_or_mapping: str | os.PathLike[str] | Mapping[str, Any]) -> Source:
    document = yaml_config.load(path_or_mapping)
    cfg = document.config
    return Source(name, lambda **options: ResNet(cfg.replace(**options)), out_indices=document.out_indices,
                  document=document)  # fmt: skip


def _from_folder_config(config: dict[str, Any], name: str) -> Callable[..., nn.Module]:
    """A builder for a Hub folder's config.json: the zoo's full config, else a registered architecture."""
    if config.get("zoo_config"):
        base = ResNetConfig.from_dict(config["zoo_config"])
        return lambda **options: ResNet(base.replace(**options))
    arch = config.get("architecture")
    if not arch:
        raise ConfigError(name, "its config.json names no 'architecture' and has no 'zoo_config'")
    entry = get_entry(arch)
    # timm's top-level num_classes is the saved head's (timm builds with it unless told otherwise)
    model_args = {**({"num_classes": config["num_classes"]} if "num_classes" in config else {}),
                  **config.get("model_args", {})}  # fmt: skip
    return lambda **options: entry.builder(**{**model_args, **options})


def _folder_source(name: str, config: dict[str, Any], weights: Weights, folder: Path | None = None) -> Source:
    """A Hub folder's Source: built as its config.json says, named by the architecture it names."""
    architecture = config.get("architecture") or "resnet"  # a zoo_config alone is rebuilt by "resnet"
    tag = (config.get("pretrained_cfg") or {}).get("tag")  # timm writes the part after the dot; older zoo folders
    tag = str(tag).rpartition(".")[2] if tag else None  # wrote the whole name
    return Source(name, _from_folder_config(config, name), weights, name, tag, folder, architecture=architecture)


def _folder_weights(config: dict[str, Any], repo_id: str, revision: str | None = None) -> Weights:
    cfg = config.get("pretrained_cfg", {})
    known = {f for f in Weights.__dataclass_fields__}
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in known}
    for key in ("hf_hub_id", "revision"):  # where this folder's file is: the caller knows, not the config
        fields.pop(key, None)
    num_classes = config.get("num_classes", 1000)
    # timm's save_for_hf writes the labels at the top level; with none, ImageNet's only for a 1000-class head
    labels = config.get("label_names") or fields.get("label_names") or ("imagenet-1k" if num_classes == 1000 else ())
    fields["label_names"] = tuple(labels) if isinstance(labels, list) else labels
    return Weights(hf_hub_id=repo_id, revision=revision, **{**fields, "num_classes": num_classes})


def _folder_config(config: Any, path: Path) -> dict[str, Any]:
    """A Hub folder's config.json as a dict, or a ConfigError naming the file and what is wrong."""
    if not isinstance(config, dict):
        raise ConfigError(str(path), f"expected a JSON object, got a {type(config).__name__}")
    if "pretrained_cfg" not in config and "zoo_config" not in config and "architecture" in config:
        # older timm's save_for_hf: one flat dict, its data config at the top level (split as timm splits it)
        flat = {("label_names" if k == "labels" else k): v for k, v in config.items() if k != "num_features"}
        config = {"architecture": flat.pop("architecture"), "pretrained_cfg": flat,
                  **{k: flat[k] for k in ("num_classes", "label_names") if k in flat}}  # fmt: skip
    for key, kind in (("pretrained_cfg", dict), ("zoo_config", dict), ("architecture", str), ("model_args", dict)):
        if config.get(key) is not None and not isinstance(config[key], kind):
            raise ConfigError(f"{path}: {key}", f"expected a JSON {'object' if kind is dict else 'string'}")
    return config


def resolve(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Source:
    """Turn ``resnet50.tv2_in1k``, ``hf-hub:org/repo[@rev]``, ``local-dir:PATH`` or a YAML path into a Source."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise WeightsNotFoundError(f"{name}: no config.json in {str(folder)!r}")
        config = _folder_config(read_json(config_path, name), config_path)
        return _folder_source(name, config, _folder_weights(config, str(folder)), folder)
    if name.startswith("hf-hub:"):
        repo_id, _, revision = name[len("hf-hub:") :].partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (revision == "" and "@" in name):
            raise UnknownModelError(f"{name!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
        path = hub.hub_file(repo_id, "config.json", revision=revision or None, cache_dir=cache_dir)
        config = _folder_config(read_json(path, name), path)
        # the weights of the commit this config.json came from, even if main has moved on since it was cached
        weights = _folder_weights(config, repo_id, hub.snapshot_commit(path) or revision or None)
        return _folder_source(name, config, weights)
    if name.endswith((".yaml", ".yml")):
        return _config_source(name, name)
    entry = get_entry(name)
    tag = split_name(name)[1]
    try:
        full, weights = get_weights(name)
    except UnknownModelError:
        if tag is not None:  # an explicit tag that does not exist is an error; no tag means no weights
            raise
        return Source(name, entry.builder, architecture=entry.name)
    folder = hub.bundled_dir() / full if weights.bundled else None
    return Source(name, entry.builder, weights, full, split_name(full)[1], folder, architecture=entry.name)


# timm's save_for_hf writes this unless safe_serialization=True, and many older Hub repos hold only it: a folder
# or repo without model.safetensors is read from it (a pickle of tensors only; one that needs code is refused).
PICKLE_WEIGHTS = "pytorch_model.bin"


def _weights_file(
    source: Source,
    *,
    checkpoint_path: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
) -> Path:
    """Find the weights, in order: an explicit file, a local folder (bundled weights), the Hub cache, the Hub.
    A model folder or Hub repo (unpinned) falls back to ``pytorch_model.bin`` when it has no safetensors."""
    tried: list[str] = []
    if checkpoint_path is not None:
        return Path(checkpoint_path)
    weights = source.weights
    if weights is None:
        raise UnknownModelError(
            f"model {source.name!r} has no pretrained weights; pass checkpoint_path= or pretrained=False"
        )
    folder_like = source.name.startswith(("hf-hub:", "local-dir:")) and weights.sha256 is None
    names = [weights.filename] + ([PICKLE_WEIGHTS] if folder_like and weights.filename != PICKLE_WEIGHTS else [])
    if source.folder is not None:
        for name in names if source.name.startswith("local-dir:") else names[:1]:
            local = source.folder / name
            if local.is_file():
                verify(local, weights.sha256, hub.stamp_dir())
                return local
            tried.append(f"local folder {local}: not there")
        if source.name.startswith("local-dir:"):
            raise WeightsNotFoundError(hub._not_found(str(source.folder / names[0]), tried))
    missing: WeightsNotFoundError | None = None
    # The cached names first (in their order), before any request: a repo with only the pickle loads warm with none.
    cached = {n for n in names if hub.cached_file(weights.hf_hub_id, n, revision=weights.revision, cache_dir=cache_dir)}
    for name in sorted(names, key=lambda n: n not in cached):
        try:
            return hub.hub_file(
                weights.hf_hub_id, name, revision=weights.revision, sha256=weights.sha256, cache_dir=cache_dir,
                tried=tried,
            )  # fmt: skip
        except WeightsNotFoundError as e:  # its message lists every place tried so far
            missing = e
            if isinstance(e, hub.HubUnreachable):  # the next name would wait as long for the same silence
                break
    raise WeightsNotFoundError(
        f"{missing}\nOn a machine with network, prefetch them with `zoo download {source.weights_name}` "
        "and copy the Hub cache (HF_HOME) here, or give a weights file: checkpoint_path= (zoo's commands: --checkpoint)"
    ) from missing


def names_weights(name: str) -> bool:
    """Whether ``name`` itself names a set of weights (``arch.tag``, ``hf-hub:``, ``local-dir:``), not just an
    architecture whose random initialization it would build without ``pretrained=True``."""
    return name.startswith(("hf-hub:", "local-dir:")) or (not name.endswith((".yaml", ".yml")) and "." in name)


def weights_file(model_name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The verified local file of the weights ``model_name`` loads with ``pretrained=True``."""
    return _weights_file(resolve(model_name, cache_dir=cache_dir), checkpoint_path=None, cache_dir=cache_dir)


# Entries of a whole pretrained_cfg (timm's ``PretrainedCfg.to_dict()``, or a model's own) that the model derives
# from its architecture, or that say nothing of the weights: given back, they change nothing.
DERIVED_CFG_KEYS = frozenset({"architecture", "classifier", "first_conv", "pool_size", "custom_load",
                              "fixed_input_size", "url", "paper_ids", "paper_name", "notes", "tag"})  # fmt: skip
_CFG_RENAMED = {"hf_hub_filename": "filename"}
WEIGHTS_DEFAULTS = {f.name: f.default for f in fields(Weights) if f.default is not MISSING and f.name != "bundled"}


def create_model(model_name: str, pretrained: bool = False, **options: Any) -> nn.Module:
    """Build a model by name, optionally with pretrained weights.

    Args:
        model_name: ``arch`` or ``arch.tag`` (``"resnet50.tv2_in1k"``), ``"hf-hub:org/repo[@revision]"``,
            ``"local-dir:PATH"`` (a Hub-layout folder), or the path of a YAML backbone config.
        pretrained: load the weights the name points to (``arch`` alone: its most accurate weights).
        **options: see :func:`build`: ``features_only``, ``out_indices``, ``checkpoint_path``, ...,
            and architecture options (``num_classes``, ``in_chans``, ``norm_layer``, ...).
    """
    options = _timm_options(options)
    cfg = options.pop("pretrained_cfg", None)
    if cfg is not None and not isinstance(cfg, str):  # a dict, timm's PretrainedCfg or a model's own
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError("pretrained_cfg", f"expected a tag name or a mapping, got {type(cfg).__name__}")
        record = {_CFG_RENAMED.get(k, k): v for k, v in cfg.items() if k not in DERIVED_CFG_KEYS}
        # by its tag: the zoo's record of that tag (its pin, its name), or when it names no repo of its own
        arch = split_name(model_name)[0] if isinstance(model_name, str) else None
        known = arch is not None and f"{arch}.{cfg.get('tag')}" in list_pretrained(arch)
        if "hf_hub_id" in record and not known:  # weights the zoo has no record of: this one replaces it, as timm's
            record = {**WEIGHTS_DEFAULTS, **record}  # entries left out are the defaults, not another tag's
        options["pretrained_cfg_overlay"] = {**record, **(options.get("pretrained_cfg_overlay") or {})}
        cfg = cfg.get("tag") if known or "hf_hub_id" not in record else None
    if cfg and isinstance(model_name, str):  # timm's pretrained_cfg="tag": the weights of that tag
        model_name = f"{split_name(model_name)[0]}.{cfg}"
    return build(resolve(model_name, cache_dir=options.get("cache_dir")), pretrained, **options)


def _timm_options(options: dict[str, Any]) -> dict[str, Any]:
    """timm.create_model's conventions: an option given as None keeps its default (timm's train.py passes
    ``drop_path_rate=None``...), and ``exportable`` and ``no_jit`` are accepted (the zoo's layers export, with
    no JIT-only parts). ``scriptable=True`` is refused: ``torch.jit.script`` (deprecated) cannot compile them."""
    if options.get("scriptable"):
        raise ConfigError("scriptable", "True: torch.jit.script cannot compile the zoo's models (TorchScript is "
                          "deprecated in this torch); torch.jit.trace, torch.export and zoo.export can")  # fmt: skip
    return {k: v for k, v in options.items() if v is not None and k not in ("scriptable", "exportable", "no_jit")}


def create_model_from_config(
    path_or_mapping: str | os.PathLike[str] | Mapping[str, Any], pretrained: bool = False, **options: Any
) -> nn.Module:
    """Build the ResNet a YAML backbone config (NetsPresso schema) describes; options as for create_model.

    The config's ``return_stage_idx`` is the default ``out_indices`` of ``features_only=True``.
    A config names no weights: ``pretrained=True`` needs ``checkpoint_path=``.
    """
    name = str(path_or_mapping) if not isinstance(path_or_mapping, Mapping) else "<config>"
    return build(_config_source(name, path_or_mapping), pretrained, **_timm_options(options))


def build(
    source: Source,
    pretrained: bool = False,
    *,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    feature_cls: str | None = None,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``source``'s model, load its weights, wrap it as a backbone if asked.

    Args:
        features_only: return a backbone whose forward gives a list of feature maps.
        out_indices: which feature maps (0 = stem, 1.. = stages; an int n: the last n); default all.
        feature_cls: with ``features_only``, timm's form of the backbone: "list" (the default), "dict"
            (``{"1": map, ...}`` by index) or "getter" (the whole model asked through ``forward_intermediates``).
        frozen_stages: with ``features_only``: freeze the stem and the first k stages (-1: none).
        norm_eval: with ``features_only``: keep batch norms in eval mode while training.
        checkpoint_path: load this local file (safetensors, or a tensors-only .pth/.bin) instead. Weights bring
            their own head size and, when not made for RGB, their input channels, unless ``num_classes`` or
            ``in_chans`` is given (then the head is replaced, the first conv adapted).
        pretrained_cfg_overlay: overrides of the weights' record; ``dict(file=PATH)`` loads a local file.
        cache_dir: the Hub cache to use instead of ``HF_HUB_CACHE`` / ``HF_HOME``.
        **kwargs: architecture options (``num_classes``, ``in_chans``, ``norm_layer``, ...).
    """
    if not isinstance(features_only, bool):
        raise ConfigError("features_only", f"expected true or false, got {features_only!r}")
    if not features_only and (out_indices is not None or feature_cls is not None or frozen_stages != -1 or norm_eval):
        raise ConfigError(
            "features_only", "out_indices, feature_cls, frozen_stages and norm_eval only apply with features_only=True"
        )
    overlay = dict(pretrained_cfg_overlay or {})
    allowed = ["file", *Weights.__dataclass_fields__]
    unknown = sorted(set(overlay) - set(allowed))
    if unknown:
        raise ConfigError("pretrained_cfg_overlay", f"unknown keys {unknown}; allowed: {', '.join(allowed)}")
    file = overlay.pop("file", None)
    checkpoint_path = checkpoint_path or (file if pretrained else None)  # as timm: the overlay's file is weights
    if overlay and source.weights is not None:
        source = replace(source, weights=replace(source.weights, **overlay))
        if {"hf_hub_id", "revision", "filename"} & set(overlay):  # weights elsewhere: not the bundled copy, nor its pin
            source = replace(source, folder=None, weights=replace(source.weights, sha256=overlay.get("sha256")))
    elif overlay:  # no weights: the overlay can only restate the data config of the architecture
        restatable = sorted(DATA_CONFIG_KEYS & set(Weights.__dataclass_fields__) - {"num_classes"})
        not_data = sorted(set(overlay) - set(restatable))
        if not_data:
            raise ConfigError("pretrained_cfg_overlay", f"{source.name!r} has no weights for {not_data} to describe; "
                              f"without weights it takes only {', '.join(restatable)}")  # fmt: skip
        Weights(hf_hub_id="", **overlay)  # checked as a weights record's would be
    document = source.document
    if document is not None and document.backbone_only and not features_only:
        features_only = True  # a detection/segmentation/pose file: the backbone NetsPresso Trainer builds for it
    elif document is not None and document.head_problem is not None and not features_only:
        raise document.head_problem
    if features_only and document is not None and document.left:
        log.info("%s: built the %s backbone; left to you: %s", source.name, document.task, ", ".join(document.left))
    if features_only:
        kwargs["num_classes"] = 0  # a backbone has no head

    if not (pretrained or checkpoint_path):
        model = source.builder(**kwargs)
    else:
        path = _weights_file(source, checkpoint_path=checkpoint_path, cache_dir=cache_dir)
        state = load_state_dict(path)
        model = _build_with_weights(source, state, kwargs)
        log.info("loaded %s from %s", source.weights_name or source.name, path)
    if source.weights is not None:  # the weights' data config, as timm's, even when they are not loaded
        loaded = bool(pretrained and not checkpoint_path)
        _describe_weights(model, source, _in_chans(model), loaded)
    data_overlay = overlay if source.weights is None else {}
    model.pretrained_cfg = {**model.pretrained_cfg, **data_overlay, "architecture": source.architecture}
    if features_only:
        out_indices = source.out_indices if out_indices is None else out_indices
        model = make_backbone(model, out_indices, feature_cls=feature_cls or "list", frozen_stages=frozen_stages,
                              norm_eval=norm_eval)  # fmt: skip
    return model


def _build_with_weights(source: Source, state: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> nn.Module:
    """Build on the meta device (no random init: the weights follow), then take the tensors as they are, renamed
    from another project's layout (NetsPresso Trainer, CIFAR repositories, torch.compile) by ``zoo.layouts``."""
    state, layout = to_zoo(state)
    if layout != "zoo":
        log.info("weights in %s's layout: renamed to the zoo's keys", layout)
    with torch.device("meta"):
        probe = source.builder(**kwargs)
    cfg = probe.pretrained_cfg
    classifier, first_conv = cfg.get("classifier", "fc"), cfg.get("first_conv", "conv1")
    head, first = state.get(f"{classifier}.weight"), state.get(f"{first_conv}.weight")
    own = {}  # the weights' own head and, for weights not made for RGB, their input channels, unless told otherwise
    if "num_classes" not in kwargs and head is not None and head.shape[0] != getattr(probe, "num_classes", None):
        own["num_classes"] = head.shape[0]
    if "in_chans" not in kwargs and first is not None and first.ndim == 4 and first.shape[1] != 3 == _in_chans(probe):
        own["in_chans"] = first.shape[1]  # a grayscale checkpoint builds a grayscale model, as timm would
    if own:
        kwargs = {**kwargs, **own}
        with torch.device("meta"):
            probe = source.builder(**kwargs)
    model = probe
    model_keys = {k: v.shape for k, v in model.state_dict().items()}
    # a head of other classes, or none (a backbone's weights) where num_classes= asks for one: a fresh head
    head_replaced = model_keys.get(f"{classifier}.weight") != head.shape if head is not None else (
        "num_classes" in kwargs and f"{classifier}.weight" in model_keys)  # fmt: skip
    # in_chans: the model's own, which a folder's zoo_config sets as well as the in_chans= option
    state = fit_state_dict(
        state, model_keys, first_conv=first_conv, classifier=classifier, in_chans=_in_chans(model),
        head_replaced=head_replaced,
    )  # fmt: skip
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}  # fp16/bf16 weights still build an fp32 model
    state = {k: v.to(dtypes[k]) if v.is_floating_point() and k in dtypes else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if head_replaced and getattr(model, "num_classes", 0):
        had = f"a head of {head.shape[0]} classes" if head is not None else "no head"
        log.info("the weights have %s; initialized a %d-class head", had, model.num_classes)
        model.reset_classifier(model.num_classes)
    left = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:  # fit_state_dict should have named them; this guards builders with unusual modules
        raise StateDictError(f"not loaded from the weights: {', '.join(left[:8])}")
    return model


def check_folder_architecture(model: nn.Module, folder: str | os.PathLike[str], names: Sequence[str]) -> None:
    """Refuse ``--model`` names other than the architecture a model folder names (its model would be run and
    reported under them). A name that is not registered, a YAML path, cannot be compared and passes."""
    architecture = model.pretrained_cfg.get("architecture")
    if names and [split_name(n)[0] if is_model(n) else architecture for n in names] != [architecture]:
        raise ConfigError("--model", f"{' '.join(names)!r} disagrees with the folder {str(folder)!r}, which holds a "
                          f"{architecture}; give --model {architecture}")  # fmt: skip


def _in_chans(model: nn.Module) -> int:
    """The input channels a model was built for: its first conv's (set by in_chans= or by a saved config)."""
    return model.get_submodule(model.pretrained_cfg.get("first_conv", "conv1")).weight.shape[1]


def _describe_weights(model: nn.Module, source: Source, in_chans: int, loaded: bool) -> None:
    """Give the model the ``pretrained_cfg`` of its weights: their data config (input size, interpolation, crop,
    mean/std, the pool size at their input size) and timm's ``tag`` always, as timm does for an architecture built
    without its weights; their provenance, scores and ``weights`` (the name that loads them) only when ``loaded``,
    so a random init never claims them. Label names only when the head is theirs."""
    assert source.weights is not None
    arch_cfg = {**model.pretrained_cfg, "num_classes": getattr(model, "num_classes", None)}
    cfg = source.weights.pretrained_cfg(arch_cfg, tag=source.tag)
    if loaded:
        cfg["weights"] = source.weights_name or source.name
    else:
        cfg = {k: v for k, v in cfg.items() if k in DATA_CONFIG_KEYS or k == "tag"}
    if arch_cfg["num_classes"] != source.weights.num_classes:
        cfg.pop("label_names", None)
    cfg["num_classes"] = arch_cfg["num_classes"]
    cfg["pool_size"] = pool_size(cfg["input_size"], model.feature_info[-1]["reduction"])
    if in_chans != 3:  # the first conv was adapted: one mean/std per input channel
        cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
        if cfg.get("test_input_size"):
            cfg["test_input_size"] = (in_chans, *cfg["test_input_size"][1:])
        cfg["mean"], cfg["std"] = ((sum(cfg[k]) / len(cfg[k]),) * in_chans for k in ("mean", "std"))
    model.pretrained_cfg = cfg
