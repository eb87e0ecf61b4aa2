"""Feature maps for detection and segmentation necks (``features_only=True``).

The wrapper is generic over any model that has ``feature_info`` and whose
``forward_features`` is its children run in order (the zoo's ResNet is). It
keeps the model's own children under their own names, so the backbone's
state-dict keys are the classifier's keys minus the head and pretrained weights
load unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, not_one_of
from .layers import BATCH_NORMS, checkpointed


def _as_index(value: Any) -> int | None:
    """``value`` as an int when it is one (numpy's integers too, as timm takes them), else None; a bool is not."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


class FeatureInfo(Sequence[dict[str, Any]]):
    """One dict per feature map of the whole model: ``num_chs``, ``reduction`` (stride), ``module`` name and
    ``index``, indexed, counted and iterated as timm's ``FeatureInfo`` is. ``out_indices``: the maps a backbone
    returns, which the accessors (``channels()``, ``reduction()``, ``module_name()``, ``get``, ``get_dicts``) give
    when called without ``idx``; with ``idx``, maps of the whole model."""

    def __init__(self, entries: Sequence[dict[str, Any]], out_indices: Sequence[int] | None = None) -> None:
        self._entries = tuple({**e, "index": i} for i, e in enumerate(entries))
        self.out_indices = tuple(range(len(entries)) if out_indices is None else out_indices)

    def from_other(self, out_indices: int | Sequence[int] | None) -> FeatureInfo:
        """The same maps, another backbone's choice of them (timm's ``from_other``; checked as ``resolve``)."""
        return FeatureInfo(self._entries, self.resolve(out_indices))

    @property
    def info(self) -> list[dict[str, Any]]:
        """Every map of the model (timm's ``feature_info.info``)."""
        return [dict(e) for e in self._entries]

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"FeatureInfo({list(self._entries)}, out_indices={self.out_indices})"

    # timm's accessors: None, the maps a backbone returns; ``idx`` (an int or a list of them), maps by index
    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        return self.get_dicts([key], idx)[key] if isinstance(idx, int) else [e[key] for e in self.get_dicts(idx=idx)]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        def pick(entry: dict[str, Any]) -> dict[str, Any]:
            return dict(entry) if keys is None else {k: entry[k] for k in keys}

        if isinstance(idx, int):
            return pick(self._entries[idx])
        return [pick(self._entries[i]) for i in (self.out_indices if idx is None else idx)]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def resolve(self, out_indices: Any) -> tuple[int, ...]:
        """Validate ``out_indices``: a list of the model's maps (negative counts from the end; numpy's integers
        too), an int n (the last n maps, as timm's), or None (all maps). Returned in network order, the order the
        maps are computed and returned in by every form of backbone (and by NetsPresso's), whatever order they
        were given in."""
        n = len(self)
        if out_indices is None:
            return tuple(range(n))
        last_n = _as_index(out_indices)
        if last_n is not None:
            if not 0 < last_n <= n:
                raise ConfigError("out_indices", f"{last_n} (the last n maps) is out of range; this model has "
                                  f"{n} feature maps, give 1..{n}")  # fmt: skip
            return tuple(range(n - last_n, n))
        given = (
            tuple(out_indices)
            if hasattr(out_indices, "__iter__") and not isinstance(out_indices, str | bytes | dict)
            else ()
        )
        if not given:
            raise ConfigError("out_indices", f"expected an int (the last n maps) or a non-empty list of ints, "
                              f"got {out_indices!r}")  # fmt: skip
        resolved = []
        for value in given:
            i = _as_index(value)
            if i is None:
                raise ConfigError("out_indices", f"{value!r} in {given!r} is not an integer")
            if not -n <= i < n:
                raise ConfigError(
                    "out_indices",
                    f"{i} in {given!r} is out of range; this model has {n} feature maps, 0..{n - 1} (0 is the "
                    f"stem, reductions {self.reduction(list(range(n)))}) or -{n}..-1 from the end",
                )
            resolved.append(i % n)
        if len(set(resolved)) != len(resolved):
            raise ConfigError("out_indices", f"{given!r} names a feature map twice")
        return tuple(sorted(resolved))

    def take_indices(self, indices: Any) -> tuple[tuple[int, ...], int]:
        """timm's ``feature_take_indices``: None -> every map, an int n -> the last n, a list -> those
        (negative from the end). Returns the indices and the largest of them."""
        try:
            taken = self.resolve(indices)
        except ConfigError as e:
            raise ConfigError("indices", e.problem) from None
        return taken, max(taken)


def stem_and_stages(model: nn.Module, k: int) -> list[str]:
    """Names of the model's children that make up its stem and first ``k`` stages (k=-1: none)."""
    if k < 0:
        return []
    stages = len(model.feature_info) - 1  # entry 0 is the stem
    if k > stages:
        raise ConfigError("--freeze-stages", f"expected -1 (none) to {stages}, the model's stages; got {k}")
    last = model.feature_info[k]["module"]
    names = []
    for name, _ in model.named_children():
        names.append(name)
        if name == last:
            return names
    raise ValueError(f"feature module {last!r} is not a child of {type(model).__name__}")


FEATURE_CLASSES = ("list", "dict", "getter")  # timm's feature_cls values the zoo builds
_HEAD_KEYS = ("num_classes", "classifier", "global_pool")  # a backbone's pretrained_cfg leaves them out, as timm's


class Backbone(nn.Module):
    """What every ``features_only`` model shares: ``feature_info`` of the maps it returns, the weights'
    ``pretrained_cfg`` (and timm's alias ``default_cfg``) without the head's keys, frozen stages and
    ``norm_eval``. Subclasses hold the layers and say how the maps are computed."""

    def __init__(self, model: nn.Module, frozen_stages: int, norm_eval: bool) -> None:
        super().__init__()
        num_maps = len(model.feature_info)
        if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not -1 <= frozen_stages < num_maps:
            raise ConfigError(
                "frozen_stages",
                f"expected an integer in -1..{num_maps - 1} (-1: none, 0: the stem, k: stem and "
                f"first k stages), got {frozen_stages!r}",
            )
        if not isinstance(norm_eval, bool):
            raise ConfigError("norm_eval", f"expected true or false, got {norm_eval!r}")
        cfg = dict(getattr(model, "pretrained_cfg", {}))
        self.pretrained_cfg = {k: v for k, v in cfg.items() if k not in _HEAD_KEYS}
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        # The stem and stages kept frozen, by name: a module swapped in since (sync BN) is kept frozen too.
        self._frozen: list[str] = []  # set by the subclass

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of ``pretrained_cfg`` (timm's older name)."""
        return self.pretrained_cfg

    def _freeze(self, model: nn.Module, kept: set[str], prefix: str = "") -> None:
        """Freeze the stem and the first ``frozen_stages`` stages of ``model`` that ``kept`` still holds
        (``prefix``: where ``model`` sits in this backbone)."""
        for name in stem_and_stages(model, self.frozen_stages):
            if name in kept:
                getattr(model, name).requires_grad_(False)
                self._frozen.append(prefix + name)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            for name in self._frozen:
                self.get_submodule(name).eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, BATCH_NORMS):
                        m.eval()
        return self


class FeatureExtractor(Backbone):
    """Runs a backbone's children in order and returns the requested feature maps, as a list (timm's
    ``feature_cls="list"``) or a dict keyed by each map's index (``"dict"``, as timm's ``FeatureDictNet``).

    Args:
        model: a model with ``feature_info``; its children up to the deepest requested map are kept, under
            their own names, so the state-dict keys are the classifier's without the head.
        out_indices: which maps to return (0 = stem output, 1.. = stages); an int n: the last n; None = all.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem and the first k stages
            (no gradients, norms in eval mode), as detection recipes do.
        norm_eval: keep every batch norm in eval mode while the rest trains (small detection batches).
        as_dict: return ``{"1": map, ...}`` (timm's ``FeatureDictNet``: keys are the maps' indices) instead of a
            list.
    """

    def __init__(
        self,
        model: nn.Module,
        out_indices: int | Sequence[int] | None = None,
        *,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        as_dict: bool = False,
    ) -> None:
        super().__init__(model, frozen_stages, norm_eval)
        all_info: FeatureInfo = model.feature_info
        self.feature_info = all_info.from_other(out_indices)
        self.out_indices = self.feature_info.out_indices
        self.as_dict = as_dict
        self.grad_checkpointing = False

        names = [entry["module"] for entry in all_info]
        last = names[max(self.out_indices)]
        self._returns = {names[i]: pos for pos, i in enumerate(self.out_indices)}
        self._stages = set(names[1:])
        for name, child in model.named_children():
            self.add_module(name, child)
            if name == last:
                break
        self._freeze(model, set(dict(self.named_children())))  # frozen beyond the last map: gone already
        self.train(model.training)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | dict[str, torch.Tensor]:
        outs: list[torch.Tensor | None] = [None] * len(self._returns)
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for name, module in self.named_children():
            x = checkpointed(module, x) if checkpointing and name in self._stages else module(x)
            if name in self._returns:
                outs[self._returns[name]] = x
        if self.as_dict:  # keyed as timm's FeatureDictNet: each map's index, as a string
            return {str(i): o for i, o in zip(self.out_indices, outs, strict=True)}  # type: ignore[misc]
        return outs  # type: ignore[return-value]


class FeatureGetter(Backbone):
    """timm's ``feature_cls="getter"``: the whole model (as ``self.model``, so its keys are ``model.*`` as in
    timm's ``FeatureGetterNet``), pruned after the deepest map, asked for its maps through
    ``forward_intermediates``."""

    def __init__(
        self, model: nn.Module, out_indices: int | Sequence[int] | None = None, *, frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(model, frozen_stages, norm_eval)
        self.out_indices = model.prune_intermediate_layers(model.feature_info.resolve(out_indices))
        self.feature_info = model.feature_info.from_other(self.out_indices)
        self.model = model
        self._freeze(model, set(dict(model.named_children())), prefix="model.")
        self.train(model.training)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)


def make_backbone(
    model: nn.Module,
    out_indices: int | Sequence[int] | None = None,
    *,
    feature_cls: str = "list",
    frozen_stages: int = -1,
    norm_eval: bool = False,
) -> Backbone:
    """The ``features_only`` model of ``model`` in timm's ``feature_cls`` form: "list" (the default), "dict" or
    "getter"."""
    if feature_cls not in FEATURE_CLASSES:
        raise ConfigError("feature_cls", not_one_of(feature_cls, FEATURE_CLASSES))
    if feature_cls == "getter":
        return FeatureGetter(model, out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval)
    return FeatureExtractor(
        model, out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval, as_dict=feature_cls == "dict"
    )
