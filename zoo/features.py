"""Feature maps for detection and segmentation necks (``features_only=True``).

The wrapper is generic over any model that has ``feature_info`` and whose
``forward_features`` is its children run in order (the zoo's ResNet is). It
keeps the model's own children under their own names, so the backbone's
state-dict keys are the classifier's keys minus the head and pretrained weights
load unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .layers import BATCH_NORMS, checkpointed


class FeatureInfo(Sequence[dict[str, Any]]):
    """One dict per feature map: ``num_chs``, ``reduction`` (stride) and ``module`` name."""

    def __init__(self, entries: Sequence[dict[str, Any]]) -> None:
        self._entries = tuple(dict(e) for e in entries)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"FeatureInfo({list(self._entries)})"

    def channels(self) -> list[int]:
        return [e["num_chs"] for e in self._entries]

    def reduction(self) -> list[int]:
        return [e["reduction"] for e in self._entries]

    def module_name(self) -> list[str]:
        return [e["module"] for e in self._entries]

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self._entries]

    def resolve(self, out_indices: Sequence[int] | None) -> tuple[int, ...]:
        """Validate ``out_indices`` (negative counts from the end); None means all maps."""
        n = len(self)
        if out_indices is None:
            return tuple(range(n))
        if isinstance(out_indices, int) or not isinstance(out_indices, Sequence) or not out_indices:
            raise ConfigError("out_indices", f"expected a non-empty list of ints, got {out_indices!r}")
        resolved = []
        for i in out_indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -n <= i < n:
                raise ConfigError(
                    "out_indices",
                    f"{i!r} in {tuple(out_indices)!r} is out of range; this model has {n} feature maps, "
                    f"0..{n - 1} (0 is the stem, reductions {self.reduction()})",
                )
            resolved.append(i % n)
        if len(set(resolved)) != len(resolved):
            raise ConfigError("out_indices", f"{tuple(out_indices)!r} names a feature map twice")
        return tuple(resolved)

    def take_indices(self, indices: int | Sequence[int] | None) -> tuple[tuple[int, ...], int]:
        """timm's ``feature_take_indices``: None -> every map, an int n -> the last n, a list -> those
        (negative from the end). Returns the indices and the largest of them."""
        n = len(self)
        if isinstance(indices, int) and not isinstance(indices, bool):
            if not 0 < indices <= n:
                raise ConfigError("indices", f"last-n {indices} is out of range; this model has 1..{n} feature maps")
            taken = tuple(range(n - indices, n))
        else:
            taken = self.resolve(indices)
        return taken, max(taken)

    def select(self, indices: Sequence[int]) -> FeatureInfo:
        return FeatureInfo([self._entries[i] for i in indices])


def stem_and_stages(model: nn.Module, k: int) -> list[str]:
    """Names of the model's children that make up its stem and first ``k`` stages (k=-1: none)."""
    if k < 0:
        return []
    stages = len(model.feature_info) - 1  # entry 0 is the stem
    if k > stages:
        raise ConfigError("--freeze-stages", f"expected -1 (none) to {stages}, the model's stages; got {k}")
    last = model.feature_info.module_name()[k]
    names = []
    for name, _ in model.named_children():
        names.append(name)
        if name == last:
            return names
    raise ValueError(f"feature module {last!r} is not a child of {type(model).__name__}")


class FeatureExtractor(nn.Module):
    """Runs a backbone's children in order and returns the requested feature maps as a list.

    Args:
        model: a model with ``feature_info``; its children up to the deepest requested map are kept.
        out_indices: which maps to return (0 = stem output, 1.. = stages); None = all.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem and the first k stages
            (no gradients, norms in eval mode), as detection recipes do.
        norm_eval: keep every batch norm in eval mode while the rest trains (small detection batches).
    """

    def __init__(
        self,
        model: nn.Module,
        out_indices: Sequence[int] | None = None,
        *,
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        all_info: FeatureInfo = model.feature_info
        self.out_indices = all_info.resolve(out_indices)
        num_maps = len(all_info)
        if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not -1 <= frozen_stages < num_maps:
            raise ConfigError(
                "frozen_stages",
                f"expected an integer in -1..{num_maps - 1} (-1: none, 0: the stem, k: stem and "
                f"first k stages), got {frozen_stages!r}",
            )
        if not isinstance(norm_eval, bool):
            raise ConfigError("norm_eval", f"expected true or false, got {norm_eval!r}")
        self.feature_info = all_info.select(self.out_indices)
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.grad_checkpointing = False

        names = all_info.module_name()
        last = names[max(self.out_indices)]
        self._returns = {names[i]: pos for pos, i in enumerate(self.out_indices)}
        self._stages = set(names[1:])
        self._frozen = stem_and_stages(model, frozen_stages)
        for name, child in model.named_children():
            self.add_module(name, child)
            if name in self._frozen:
                child.requires_grad_(False)
            if name == last:
                break
        self._frozen = [name for name in self._frozen if hasattr(self, name)]  # frozen beyond the last map: gone
        self.train(model.training)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def train(self, mode: bool = True) -> FeatureExtractor:
        super().train(mode)
        if mode:
            for name in self._frozen:
                getattr(self, name).eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, BATCH_NORMS):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs: list[torch.Tensor | None] = [None] * len(self._returns)
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for name, module in self.named_children():
            x = checkpointed(module, x) if checkpointing and name in self._stages else module(x)
            if name in self._returns:
                outs[self._returns[name]] = x
        return outs  # type: ignore[return-value]
