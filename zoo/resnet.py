"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition").

``ResNet(cfg)`` builds the stem, the stages and the head from one
:class:`~zoo.config.ResNetConfig`. Parameter names are torchvision's and timm's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BLOCK_TYPES, conv3x3, make_shortcut
from .config import Pool, ResNetConfig
from .data import default_pretrained_cfg
from .errors import ConfigError, not_one_of
from .features import FeatureInfo
from .layers import ACT_LAYERS, NORM_LAYERS, GlobalPool, checkpointed


class ResNet(nn.Module):
    """A ResNet classifier; ``forward_features`` gives the last feature map.

    Uniform model API (as timm's): ``forward_features``, ``forward_head``,
    ``reset_classifier``, ``get_classifier``, ``num_features``, ``head_hidden_size``,
    ``feature_info``, ``set_grad_checkpointing``, ``group_matcher``, ``pretrained_cfg``.
    """

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        norm, act = NORM_LAYERS[cfg.norm_layer], ACT_LAYERS[cfg.act_layer]
        width = cfg.stem_width

        # Stem. The children below run in declaration order; FeatureExtractor relies on it.
        if cfg.stem == "deep":  # ResNet-C/D (He et al. 2019): three 3x3 convs replace the 7x7
            mid = width // 2
            self.conv1: nn.Module = nn.Sequential(
                conv3x3(cfg.in_chans, mid, stride=2), norm(mid), act(),
                conv3x3(mid, mid), norm(mid), act(),
                conv3x3(mid, width),
            )  # fmt: skip
        elif cfg.stem == "imagenet":
            self.conv1 = nn.Conv2d(cfg.in_chans, width, 7, stride=2, padding=3, bias=False)
        else:  # cifar: 32x32 inputs keep their resolution into the first stage
            self.conv1 = conv3x3(cfg.in_chans, width)
        self.bn1 = norm(width)
        self.act1 = act()
        self.maxpool = nn.Identity() if cfg.stem == "cifar" else nn.MaxPool2d(3, stride=2, padding=1)
        feature_info = [dict(num_chs=width, reduction=1 if cfg.stem == "cifar" else 2, module="act1")]

        # Stages: layer1..layerN (the names torchvision checkpoints use).
        block_cls = BLOCK_TYPES[cfg.block]
        block_kwargs: dict[str, Any] = {"norm": norm, "act": act}
        if cfg.block == "bottleneck":
            block_kwargs.update(groups=cfg.groups, width_per_group=cfg.width_per_group)
        total_blocks, block_idx = sum(cfg.layers), 0
        in_chs = width
        self.stage_names: list[str] = []
        for i, (depth, planes, plan) in enumerate(zip(cfg.layers, cfg.channels, cfg.stage_plan(), strict=True)):
            out_chs = planes * cfg.expansion
            blocks = []
            for j in range(depth):
                stride = plan.stride if j == 0 else 1
                downsample = None
                if stride != 1 or in_chs != out_chs or (i == 0 and j == 0 and cfg.first_stage_shortcut_conv):
                    downsample = make_shortcut(cfg.shortcut, in_chs, out_chs, stride, norm, plan.dilation)
                blocks.append(
                    block_cls(
                        in_chs,
                        planes,
                        stride=stride,
                        dilation=plan.dilation,
                        first_dilation=plan.first_dilation if j == 0 else plan.dilation,
                        downsample=downsample,
                        # stochastic depth rises linearly with depth (Huang et al. 2016)
                        drop_path=cfg.drop_path_rate * block_idx / max(total_blocks - 1, 1),
                        **block_kwargs,
                    )
                )
                in_chs = out_chs
                block_idx += 1
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            feature_info.append(dict(num_chs=out_chs, reduction=plan.reduction, module=name))
        self.feature_info = FeatureInfo(feature_info)

        # Head. head_hidden_size: the width the head's input has (timm's; a ResNet's pooling keeps the channels)
        self.num_features = self.head_hidden_size = cfg.num_features
        self.drop_rate = cfg.drop_rate
        self.global_pool = GlobalPool(cfg.global_pool)
        self.fc: nn.Module = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
        self.pretrained_cfg = default_pretrained_cfg(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if self.cfg.zero_init_last:
            # Each block starts as the identity, which speeds up early training (Goyal et al. 2017).
            for stage in self.stages():
                for block in stage:
                    weight = getattr(block.last_norm(), "weight", None)
                    if isinstance(weight, nn.Parameter):  # a frozen norm must keep its scale
                        nn.init.zeros_(weight)

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of ``pretrained_cfg`` (timm's older name)."""
        return self.pretrained_cfg

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's parameter groups (for layer-wise lr decay): the stem, then each stage (``coarse``) or block."""
        return {"stem": r"^conv1|bn1|maxpool", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The head's module, or its name (``"fc"``) with ``name_only``."""
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Pool | None = None) -> None:
        """Replace the head with a freshly initialized one for ``num_classes`` (0: no head)."""
        pool = self.cfg.global_pool if global_pool is None else global_pool
        self.cfg = self.cfg.replace(num_classes=num_classes, global_pool=pool)  # validates
        self.global_pool = GlobalPool(pool)
        if num_classes:
            weight = next(self.parameters())  # the new head on the model's device and in its dtype
            self.fc = nn.Linear(self.num_features, num_classes, device=weight.device, dtype=weight.dtype)
        else:  # no Linear(n, 0) made and thrown away: torch warns when it initializes an empty one
            self.fc = nn.Identity()
        self.head_hidden_size = self.num_features
        # a fresh head: the weights' class names no longer name its outputs
        cfg = {k: v for k, v in self.pretrained_cfg.items() if k != "label_names"}
        self.pretrained_cfg = {**cfg, "num_classes": num_classes}

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))  # before the max-pool: feature map 0

    def _stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for block in stage:
            x = checkpointed(block, x) if checkpointing else block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self._stem(x))  # (B, stem_width, H/4, W/4); cifar: H, W
        for stage in self.stages():
            x = self._stage(stage, x)
        return x  # (B, num_features, H/32, W/32) for the ImageNet stem at output_stride 32

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediates API: the feature maps ``indices`` picks (None: all; an int n: the last n;
        a list: those; 0 is the stem) and the final map, ``(final, intermediates)``, or the maps alone with
        ``intermediates_only``. ``stop_early`` skips the stages after the last map taken. ``norm`` is
        accepted for timm's signature: a ResNet has no final norm."""
        if output_fmt != "NCHW":
            raise ConfigError("output_fmt", not_one_of(output_fmt, ("NCHW",)))
        taken, last = self.feature_info.take_indices(indices)
        intermediates = []
        x = self._stem(x)
        if 0 in taken:
            intermediates.append(x)
        x = self.maxpool(x)
        for i, stage in enumerate(self.stages()[:last] if stop_early else self.stages(), start=1):
            x = self._stage(stage, x)
            if i in taken:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> tuple[int, ...]:
        """timm's pruning: drop the stages after the last map ``indices`` takes (the max-pool too when that is
        the stem's), and the head unless ``prune_head=False`` and every stage stays (a head sized for the
        last stage cannot read an earlier one's map); ``num_features`` becomes the last kept map's channels.
        Returns the indices taken. ``prune_norm`` is for timm's signature."""
        taken, last = self.feature_info.take_indices(indices)
        for name in self.stage_names[last:]:
            setattr(self, name, nn.Sequential())  # empty: passes its input through, and iterates as a stage
        if last == 0:
            self.maxpool = nn.Identity()  # it follows the stem's map
        pruned_end = last < len(self.stage_names)
        if pruned_end:
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or pruned_end:
            self.reset_classifier(0, "")
        return taken

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)  # (B, num_features)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
