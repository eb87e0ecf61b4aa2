"""Weight tags (what each set of pretrained weights is) and state-dict adaptation. No network.

A tag ``arch.tag`` names one set of weights: where it is hosted, how its inputs
must be prepared, what it scores and how big the model is.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .data import CROP_MODES, IMAGENET_MEAN, IMAGENET_STD, check_crop_pct, check_input_size
from .errors import ConfigError, StateDictError, not_one_of

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# The keys of a pretrained_cfg that describe a model's inputs and outputs. The rest (tag, scores, file, hash,
# provenance) are facts of one set of weights, which a training run's checkpoints must not inherit.
DATA_CONFIG_KEYS = frozenset({
    "input_size", "test_input_size", "interpolation", "crop_pct", "test_crop_pct", "crop_mode", "mean", "std",
    "num_classes", "label_names", "pool_size", "first_conv", "classifier",
})  # fmt: skip


@dataclass(frozen=True)
class Weights:
    """One set of pretrained weights: its file, its data config, its provenance and its scores."""

    hf_hub_id: str  # "timm/resnet50.tv2_in1k"
    filename: str = "model.safetensors"
    revision: str | None = None  # a commit hash pins the exact file; None follows "main"
    sha256: str | None = None  # checked after download and before a cached file is trusted
    num_classes: int = 1000
    label_names: tuple[str, ...] | str = "imagenet-1k"  # names, or a known label set
    input_size: tuple[int, int, int] = (3, 224, 224)
    test_input_size: tuple[int, int, int] | None = None  # where the published test score was measured
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    test_crop_pct: float | None = None
    crop_mode: str = "center"  # timm's: "center" (short side, then crop) or "squash" (both sides)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    license: str = "unknown"
    source: str = ""  # who trained them, how
    origin_url: str = ""
    paper: str = ""
    top1: float | None = None  # published ImageNet/CIFAR top-1 at test_input_size (else input_size)
    top5: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # more published figures, e.g. top1 at 224
    num_params: int | None = None  # checked by a test against the built model
    gmacs: float | None = None  # conv+linear+norm MACs at test_input_size (else input_size), G (fvcore)
    bundled: bool = False  # the weights sit in the repository's weights/<arch>.<tag>/ folder

    def __post_init__(self) -> None:
        for name in ("input_size", "test_input_size"):
            if getattr(self, name) is not None:
                check_input_size(name, getattr(self, name))
        for name in ("crop_pct", "test_crop_pct"):
            if getattr(self, name) is not None:
                check_crop_pct(name, getattr(self, name))
        if self.crop_mode not in CROP_MODES:
            raise ConfigError("crop_mode", not_one_of(self.crop_mode, CROP_MODES))
        if self.sha256 is not None and not re.fullmatch("[0-9a-f]{64}", str(self.sha256)):
            # a typo'd or upper-case pin would evict a good file at every load
            raise ConfigError("sha256", f"expected 64 lower-case hex digits, got {self.sha256!r}")

    def pretrained_cfg(self, arch_cfg: dict[str, Any], *, tag: str | None) -> dict[str, Any]:
        """The model's ``pretrained_cfg``: the arch's defaults overridden by these weights' facts; ``tag`` is
        timm's (the part of the name after the dot)."""
        own = {k: v for k, v in asdict(self).items() if v is not None}
        return {**arch_cfg, **own, **({"tag": tag} if tag else {}), "label_names": self.labels()}

    def labels(self) -> tuple[str, ...]:
        if self.label_names == "imagenet-1k":
            from torchvision.models._meta import _IMAGENET_CATEGORIES

            return tuple(_IMAGENET_CATEGORIES)
        if self.label_names == "cifar-10":
            return CIFAR10_CLASSES
        return tuple(self.label_names)


# --- state-dict adaptation ------------------------------------------------------------------------


def clean_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap the common checkpoint containers: ``{"state_dict": ...}``, ``{"model": ...}``, ``module.``. The EMA's
    weights first where a checkpoint holds both, as timm's ``load_checkpoint`` (``use_ema=True``) takes them."""
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict"):
        if key in state and isinstance(state[key], dict):
            if key.endswith("_ema"):
                log.info("the checkpoint holds an EMA of its weights: loading %r, as timm does", key)
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from DataParallel/DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB filters for ``in_chans`` inputs: 1 channel = sum over RGB; N = RGB repeated, scaled by 3/N.

    Either way a gray (or repeated) image gives the activations the RGB weights gave.
    """
    rgb = weight.shape[1]
    if in_chans == rgb:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    repeats = math.ceil(in_chans / rgb)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (rgb / in_chans)


def fit_state_dict(
    state: dict[str, torch.Tensor],
    model_keys: dict[str, torch.Size],
    *,
    first_conv: str,
    classifier: str,
    in_chans: int,
    head_replaced: bool,
) -> dict[str, torch.Tensor]:
    """Adapt ``state`` to a model with ``model_keys`` (name -> shape), or raise naming what does not fit.

    The first conv follows ``in_chans``; the head keys are dropped when the head is
    replaced on purpose (another class count, or no head). Anything else missing,
    unexpected or misshapen is an error: weights are loaded strictly.
    """
    # BN's step counter is bookkeeping, not a weight: BN fills it in when absent, others have none.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in model_keys}
    conv_key = f"{first_conv}.weight"
    if conv_key in state and state[conv_key].shape[1] != in_chans:
        log.info("adapting %s from %d to %d input channels", conv_key, state[conv_key].shape[1], in_chans)
        state[conv_key] = adapt_first_conv(state[conv_key], in_chans)
    head = {k for k in state if k.startswith(f"{classifier}.")}
    if head_replaced:
        for k in head:
            del state[k]
    missing = sorted(
        k
        for k in model_keys.keys() - state.keys()
        if not k.endswith("num_batches_tracked") and not (head_replaced and k.startswith(f"{classifier}."))
    )
    unexpected = sorted(set(state) - set(model_keys))
    misshapen = sorted(
        f"{k}: weights {tuple(state[k].shape)}, model {tuple(model_keys[k])}"
        for k in set(state) & set(model_keys)
        if state[k].shape != model_keys[k]
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label} keys: {shown}")
    if problems:
        first = min(missing + unexpected + [m.split(":")[0] for m in misshapen], key=_position)
        raise StateDictError(
            f"weights do not fit the model, first in {_where(first)}; " + "; ".join(problems)
            + ". Is it the same architecture and options?"
        )  # fmt: skip
    return state


def _position(key: str) -> tuple[int, int, str]:
    """Where a key sits in a ResNet's forward order: the stem, then stage by stage and block by block, the head."""
    m = re.match(r"layer(\d+)\.(\d+)\.", key)
    if m:
        return int(m.group(1)), int(m.group(2)), key
    return (10**6, 0, key) if key.startswith("fc.") else (0, 0, key)


def _where(key: str) -> str:
    """``stage 2, block 0 (layer2.0.conv3.weight)``: the part of a ResNet a state-dict key belongs to."""
    m = re.match(r"layer(\d+)\.(\d+)\.", key)
    if m:
        return f"stage {m.group(1)}, block {m.group(2)} ({key})"
    return f"the head ({key})" if key.startswith("fc.") else f"the stem ({key})"
