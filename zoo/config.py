"""ResNetConfig: the single description of a ResNet architecture.

Every registered variant is one ``ResNetConfig``; user options reach the model
through ``config.replace(**overrides)``, which validates every field once, here.
Options are strings from closed sets so a config round-trips through YAML/JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from .errors import ConfigError, check_bool, check_choice, check_int, check_rate, suggest

Block = Literal["basic", "bottleneck"]
Stem = Literal["imagenet", "deep", "cifar"]
Shortcut = Literal["conv", "avg", "pad"]
Norm = Literal["batch_norm", "frozen_batch_norm", "sync_batch_norm", "group_norm", "instance_norm", "layer_norm"]
Act = Literal["relu", "relu6", "leaky_relu", "elu", "gelu", "silu", "mish", "hardswish"]
Pool = Literal["avg", "max", "avgmax", ""]

BLOCKS: tuple[str, ...] = get_args(Block)
STEMS: tuple[str, ...] = get_args(Stem)
SHORTCUTS: tuple[str, ...] = get_args(Shortcut)
NORMS: tuple[str, ...] = get_args(Norm)
ACTS: tuple[str, ...] = get_args(Act)
POOLS: tuple[str, ...] = get_args(Pool)


class StagePlan(NamedTuple):
    stride: int  # of the stage's first block
    first_dilation: int  # of the first block's 3x3 conv
    dilation: int  # of every other 3x3 conv in the stage
    reduction: int  # input pixels per output pixel, after this stage


@dataclass(frozen=True)
class ResNetConfig:
    """A ResNet: stem, stages of residual blocks, pooled linear head.

    The defaults are torchvision's ResNet ("v1.5": stride on the 3x3 conv of the
    bottleneck), so ``ResNetConfig(layers=(3, 4, 6, 3), block="bottleneck")`` is
    torchvision's resnet50, key for key.
    """

    layers: tuple[int, ...] = (2, 2, 2, 2)  # residual blocks per stage; any number of stages
    block: Block = "basic"  # basic: two 3x3 convs; bottleneck: 1x1-3x3-1x1, 4x wider output
    channels: tuple[int, ...] = (64, 128, 256, 512)  # "planes" per stage; bottleneck outputs 4x this
    stem: Stem = "imagenet"  # imagenet: 7x7/2 + max-pool; deep: three 3x3 (ResNet-D); cifar: one 3x3/1
    stem_width: int = 64  # channels out of the stem (deep stem: inner convs use half of it)
    shortcut: Shortcut = "conv"  # when shapes change: conv: 1x1/s; avg: avg-pool + 1x1 (ResNet-D);
    #                              pad: subsample + zero channels, parameter-free (He et al. option A)
    groups: int = 1  # grouped 3x3 conv in the bottleneck (ResNeXt cardinality)
    width_per_group: int = 64  # bottleneck inner width = planes * width_per_group / 64 * groups
    num_classes: int = 1000  # 0: no head, forward returns pooled features
    in_chans: int = 3
    norm_layer: Norm = "batch_norm"
    act_layer: Act = "relu"
    output_stride: int = 32  # 8 or 16: later stages dilate instead of striding (segmentation); a power
    #                          of two >= the stem's stride; above the net's own stride it changes nothing
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this over the blocks
    first_stage_shortcut_conv: bool = False  # project stage 1's shortcut even when shapes match
    zero_init_last: bool = True  # last norm of each block starts at 0 (Goyal et al. 2017, sec. 5.1)
    global_pool: Pool = "avg"  # "": no pooling (only with num_classes=0); forward returns the map

    def __post_init__(self) -> None:
        # YAML and JSON give lists; the config is hashable and immutable with tuples.
        for name in ("layers", "channels"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _validate(self)

    # --- derived facts, so no caller recomputes them -------------------------------
    @property
    def expansion(self) -> int:
        """Output channels of a block per unit of ``planes``."""
        return 4 if self.block == "bottleneck" else 1

    @property
    def num_features(self) -> int:
        """Channels of the last feature map (the classifier's input)."""
        return self.channels[-1] * self.expansion

    @property
    def stem_stride(self) -> int:
        """Total stride of the stem (conv and max-pool)."""
        return 1 if self.stem == "cifar" else 4

    def stage_plan(self) -> list[StagePlan]:
        """Stride, dilation and output reduction of each stage.

        Stage 1 keeps the stem's resolution, every later stage halves it, until the
        reduction reaches ``output_stride``; from there a stage dilates its convs
        instead of striding (its first block still uses the previous dilation).
        """
        plan = []
        reduction, dilation = self.stem_stride, 1
        for i in range(len(self.layers)):
            stride, first_dilation = (1 if i == 0 else 2), dilation
            if stride > 1 and reduction >= self.output_stride:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            plan.append(StagePlan(stride, first_dilation, dilation, reduction))
        return plan

    # --- conversions --------------------------------------------------------------
    def replace(self, **overrides: Any) -> ResNetConfig:
        """A copy with ``overrides`` applied and validated; unknown names are an error."""
        known = field_names()
        for name in overrides:
            if name not in known:
                raise ConfigError(
                    name,
                    f"unknown option {name!r} for a ResNet; options are {', '.join(known)}{suggest(name, known)}",
                )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, strings, numbers), for YAML/JSON."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name in field_names()
            for value in [getattr(self, name)]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls().replace(**data)


def field_names() -> tuple[str, ...]:
    """The public fields of ResNetConfig, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(ResNetConfig))


def _validate(cfg: ResNetConfig) -> None:
    """Check every field once; the message names the field, the value and what is allowed."""
    for name in ("layers", "channels"):
        value = getattr(cfg, name)
        if not isinstance(value, tuple) or not value:
            raise ConfigError(name, f"expected a non-empty list of positive integers, got {value!r}")
        for i, item in enumerate(value):
            check_int(f"{name}[{i}]", item, 1)
    if len(cfg.channels) != len(cfg.layers):
        raise ConfigError(
            "channels",
            f"has {len(cfg.channels)} entries but layers has {len(cfg.layers)}; give one width per stage",
        )
    check_choice("block", cfg.block, BLOCKS)
    check_choice("stem", cfg.stem, STEMS)
    check_int("stem_width", cfg.stem_width, 2 if cfg.stem == "deep" else 1)
    check_choice("shortcut", cfg.shortcut, SHORTCUTS)
    check_int("groups", cfg.groups, 1)
    check_int("width_per_group", cfg.width_per_group, 1)
    if cfg.block == "bottleneck":
        for i, planes in enumerate(cfg.channels):
            if int(planes * cfg.width_per_group / 64) < 1:
                raise ConfigError(
                    "width_per_group",
                    f"{cfg.width_per_group} gives stage {i} ({planes} planes) a bottleneck width of 0; "
                    f"width = planes * width_per_group / 64 * groups must be at least 1",
                )
    if cfg.block == "basic" and (cfg.groups, cfg.width_per_group) != (1, 64):
        raise ConfigError(
            "groups" if cfg.groups != 1 else "width_per_group",  # the one given
            f"groups={cfg.groups}, width_per_group={cfg.width_per_group} need block='bottleneck'; "
            "a basic block has no inner width (widen it through channels)",
        )
    check_int("num_classes", cfg.num_classes, 0)
    check_int("in_chans", cfg.in_chans, 1)
    check_choice("norm_layer", cfg.norm_layer, NORMS)
    check_choice("act_layer", cfg.act_layer, ACTS)
    stride, least = cfg.output_stride, cfg.stem_stride
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < least or stride & (stride - 1):
        allowed = ", ".join(str(least * 2**i) for i in range(4 if least == 4 else 5))
        raise ConfigError(
            "output_stride", f"expected a power of two >= {least}, the stem's stride ({allowed}, ...), got {stride!r}"
        )
    check_rate("drop_rate", cfg.drop_rate)
    check_rate("drop_path_rate", cfg.drop_path_rate)
    for name in ("first_stage_shortcut_conv", "zero_init_last"):
        check_bool(name, getattr(cfg, name))
    if cfg.first_stage_shortcut_conv and cfg.shortcut == "pad":
        raise ConfigError(
            "first_stage_shortcut_conv", "needs a projection shortcut, shortcut='conv' or 'avg', not 'pad'"
        )
    check_choice("global_pool", cfg.global_pool, POOLS)
    if cfg.global_pool == "" and cfg.num_classes:
        raise ConfigError(
            "global_pool",
            f"'' (no pooling) needs num_classes=0, got num_classes={cfg.num_classes}; "
            "a linear classifier needs pooled features",
        )
    if cfg.shortcut == "pad":
        in_chs = cfg.stem_width
        for i, planes in enumerate(cfg.channels):
            out_chs = planes * cfg.expansion
            if out_chs < in_chs:
                raise ConfigError(
                    f"channels[{i}]",
                    f"shortcut='pad' only adds channels, but stage {i} goes from {in_chs} to "
                    f"{out_chs}; use shortcut='conv' or 'avg'",
                )
            in_chs = out_chs
