"""Other projects' state-dict layouts, renamed to the zoo's keys by rules; and the zoo's to NetsPresso Trainer's.

The zoo's keys are torchvision's and timm's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``,
``fc``). Recognized besides, by their key names, never by the order of the tensors:

- NetsPresso Trainer: its ``TaskModel`` (``backbone.*``; a one-layer ``fc`` or ``fc_conv`` head as ``fc``; necks,
  other heads and MLP heads are left out) or a bare backbone; ``ConvLayer``'s ``X.block.conv``/``X.block.norm``;
  ``stages.i.j``; ``downsample.block.*`` (``downsample.1.block.*`` after the pooling of
  ``replace_stride_with_pooling``); the three-conv stem of ``split_stem_conv`` as ``conv1.k.block.*``.
- The common CIFAR repositories (bareform/resnet, kuangliu's pytorch-cifar, ...): the stem as ``conv``/``bn``,
  projections as ``shortcut.0/1``, the classifier as ``linear``.
- Any of them saved from ``torch.compile`` (``_orig_mod.``) or DataParallel/DDP (``module.``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch

log = logging.getLogger(__name__)

LAYOUTS = ("zoo", "netspresso")  # what tools/convert.py writes (--to)

_WRAPPERS = re.compile(r"^(?:_orig_mod\.|module\.)+")  # torch.compile's and DDP's prefixes, in any order
_NETSPRESSO = re.compile(r"^(?:backbone\.|head\.|neck\.|stages\.\d)|\.block\.(?:conv|norm)\.")
_CIFAR_STEM = {"conv.": "conv1.", "bn.": "bn1."}


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys without ``torch.compile``'s ``_orig_mod.`` and DDP's ``module.`` prefixes."""
    return {_WRAPPERS.sub("", k): v for k, v in state.items()}


def to_zoo(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` in the zoo's keys, and the name of the layout it was in (``"zoo"`` when already the zoo's)."""
    state = strip_wrappers(state)
    if any(_NETSPRESSO.search(k) for k in state):
        return _from_netspresso(state), "NetsPresso Trainer"
    renamed = {_cifar_key(k): v for k, v in state.items()}
    return renamed, ("zoo" if renamed.keys() == state.keys() else "CIFAR repository")


def _cifar_key(key: str) -> str:
    for old, new in _CIFAR_STEM.items():
        if key.startswith(old):
            return new + key[len(old) :]
    key = key.replace(".shortcut.", ".downsample.")
    return "fc." + key[len("linear.") :] if key.startswith("linear.") else key


# --- NetsPresso Trainer ------------------------------------------------------------------------------------
# Its ConvLayer is a Sequential named "block" of conv, norm and act; the zoo's blocks name the pairs conv<n>/bn<n>.


# A classification head's layer: FC's Linear, or FCConv's 1x1 ConvLayer (".block.conv.")
_HEAD_LAYER = re.compile(r"^head\.classifier\.(\d+)\.(?:block\.conv\.)?(weight|bias)$")


def _from_netspresso(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    kept = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith(("neck.", "head."))}
    head, fc = _netspresso_head(state)
    left = sorted({k.split(".")[0] for k in state if k.startswith(("neck.", "head.")) and k not in head})
    if left:  # a detection or segmentation model, or an MLP head: the zoo builds its backbone only
        log.info("NetsPresso checkpoint: left out its %s (the zoo builds the backbone and a one-layer classifier)",
                 " and ".join(left))  # fmt: skip
    pooled = any(".downsample.1.block." in k for k in kept)  # replace_stride_with_pooling: the zoo's "avg" shortcut
    out = {_netspresso_key(k, pooled): v for k, v in kept.items()}
    out.update(fc)
    return out


def _netspresso_head(state: Mapping[str, torch.Tensor]) -> tuple[set[str], dict[str, torch.Tensor]]:
    """A one-layer classification head as the zoo's ``fc`` (and the keys it took): FC's Linear at
    ``head.classifier.1`` after its Dropout (``.0`` in versions without one), or FCConv's 1x1 conv, flattened.
    A head of more layers (an MLP) has no place in the zoo's classifier: nothing is taken."""
    layers: dict[int, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        m = _HEAD_LAYER.match(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = (key, value)
    if len(layers) != 1 or "weight" not in next(iter(layers.values())):
        return set(), {}
    (layer,) = layers.values()
    fc = {f"fc.{name}": value.flatten(1) if value.dim() > 2 else value for name, (_, value) in layer.items()}
    return {key for key, _ in layer.values()}, fc


def _netspresso_key(key: str, pooled: bool) -> str:
    m = re.match(r"conv1\.(?:(\d)\.)?block\.(conv|norm)\.(.+)$", key)
    if m:  # the stem: one 7x7 ConvLayer, or split_stem_conv's three (the zoo's deep stem: conv1.0/.3/.6)
        k, part, rest = m.group(1), m.group(2), m.group(3)
        if k is None:
            return f"{'conv1' if part == 'conv' else 'bn1'}.{rest}"
        i = int(k)
        if part == "conv":
            return f"conv1.{3 * i}.{rest}"
        return f"bn1.{rest}" if i == 2 else f"conv1.{3 * i + 1}.{rest}"
    m = re.match(r"stages\.(\d+)\.(\d+)\.(.+)$", key)
    if not m:
        return key
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    prefix = f"layer{stage + 1}.{block}."
    m = re.match(r"conv(\d)\.block\.(conv|norm)\.(.+)$", rest)
    if m:
        return prefix + f"{'conv' if m.group(2) == 'conv' else 'bn'}{m.group(1)}.{m.group(3)}"
    m = re.match(r"downsample\.(?:1\.)?block\.(conv|norm)\.(.+)$", rest)
    if m:  # conv shortcut: downsample.0/.1; after a pool (the zoo's avg shortcut, every stage): .1/.2
        first = 1 if pooled else 0
        return prefix + f"downsample.{first + (m.group(1) == 'norm')}.{m.group(2)}"
    return prefix + rest


def to_netspresso(state: Mapping[str, torch.Tensor], *, head: bool = True) -> dict[str, torch.Tensor]:
    """The zoo's keys in NetsPresso Trainer's ``TaskModel`` layout: ``backbone.*``, and ``head.classifier.1.*``
    (its fc head: Dropout, then Linear) when ``head`` and the weights have a classifier."""
    pooled = any(re.search(r"\.downsample\.2\.", k) for k in state)  # the avg shortcut: pool, conv, norm
    deep = "conv1.0.weight" in state  # the three-conv stem: NetsPresso's split_stem_conv
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            if head:
                out["head.classifier.1." + key[len("fc.") :]] = value
            continue
        out["backbone." + _zoo_key_to_netspresso(key, pooled, deep)] = value
    return out


def _zoo_key_to_netspresso(key: str, pooled: bool, deep: bool) -> str:
    if key.startswith("bn1."):  # the stem's last norm
        return ("conv1.2.block.norm." if deep else "conv1.block.norm.") + key[len("bn1.") :]
    if key.startswith("conv1.") and not deep:
        return "conv1.block.conv." + key[len("conv1.") :]
    m = re.match(r"conv1\.(\d)\.(.+)$", key)
    if m:  # the deep stem's conv1.0/.1, .3/.4, .6
        i = int(m.group(1))
        return f"conv1.{i // 3}.block.{'conv' if i % 3 == 0 else 'norm'}.{m.group(2)}"
    m = re.match(r"layer(\d+)\.(\d+)\.(.+)$", key)
    if not m:
        raise ValueError(f"{key!r} has no place in NetsPresso Trainer's ResNet")
    stage, block, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
    prefix = f"stages.{stage}.{block}."
    m = re.match(r"(conv|bn)(\d)\.(.+)$", rest)
    if m:
        return prefix + f"conv{m.group(2)}.block.{'conv' if m.group(1) == 'conv' else 'norm'}.{m.group(3)}"
    m = re.match(r"downsample\.(\d)\.(.+)$", rest)
    if m:
        index = int(m.group(1)) - pooled  # the avg shortcut's pool has no weights: conv at .1, norm at .2
        # NetsPresso pools in the strided stages only: its first stage's shortcut is a plain ConvLayer
        where = "downsample.1.block" if pooled and stage > 0 else "downsample.block"
        return prefix + f"{where}.{'conv' if index == 0 else 'norm'}.{m.group(2)}"
    raise ValueError(f"{key!r} has no place in NetsPresso Trainer's ResNet")
