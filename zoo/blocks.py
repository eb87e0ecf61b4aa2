"""Residual blocks and the shortcuts that match their shapes.

Each block takes explicit arguments (not the whole config), so it can be built
and tested alone. Module names follow torchvision (``conv1``, ``bn1``, ...,
``downsample``) so torchvision and timm checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Shortcut
from .layers import ActFactory, NormFactory


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


def _drop_path(p: float) -> nn.Module:
    """Stochastic depth (Huang et al. 2016) on the residual branch: whole samples dropped, the kept rescaled."""
    if p == 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth  # here: importing torchvision doubles the time of `import zoo`

    return StochasticDepth(p, "row")


class PadShortcut(nn.Module):
    """He et al. 2016 option A: keep every ``stride``-th pixel, zero-pad the new channels.

    Half of the new channels go before the existing ones and half after, the
    layout of the widely used public CIFAR ResNet-20..110 checkpoints.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (out_chs - in_chs) // 2
        self.pad_after = out_chs - in_chs - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class AvgPool2x2Same(nn.Module):
    """timm's ``AvgPool2dSame(2, stride=1)``: a 2x2 mean at stride 1 over the map padded with zeros right and below
    (the zeros count). The pool of a ResNet-D shortcut whose stride a dilation replaced (output_stride 8/16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1)


def make_shortcut(
    kind: Shortcut, in_chs: int, out_chs: int, stride: int, norm: NormFactory, dilation: int = 1
) -> nn.Module:
    """The projection for a block whose output shape differs from its input's."""
    if kind == "pad":
        return PadShortcut(in_chs, out_chs, stride)
    if kind == "avg":  # ResNet-D (He et al. 2019, "Bag of Tricks"): pool, then a stride-1 1x1 conv
        if stride > 1:
            pool: nn.Module = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        else:  # in a dilated stage, as timm does, so its weights give the same outputs at output_stride 8/16
            pool = AvgPool2x2Same() if dilation > 1 else nn.Identity()
        return nn.Sequential(pool, conv1x1(in_chs, out_chs), norm(out_chs))
    return nn.Sequential(conv1x1(in_chs, out_chs, stride), norm(out_chs))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
        norm: NormFactory = nn.BatchNorm2d,
        act: ActFactory = nn.ReLU,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = conv3x3(in_chs, planes, stride, first_dilation)
        self.bn1 = norm(planes)
        self.act1 = act()
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path)
        self.act2 = act()

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(self.drop_path(x) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand; stride on the 3x3 ("v1.5")."""

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        norm: NormFactory = nn.BatchNorm2d,
        act: ActFactory = nn.ReLU,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out_chs = planes * self.expansion
        self.conv1 = conv1x1(in_chs, width)
        self.bn1 = norm(width)
        self.act1 = act()
        self.conv2 = conv3x3(width, width, stride, first_dilation or dilation, groups)
        self.bn2 = norm(width)
        self.act2 = act()
        self.conv3 = conv1x1(width, out_chs)
        self.bn3 = norm(out_chs)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path)
        self.act3 = act()

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(self.drop_path(x) + shortcut)


BLOCK_TYPES: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}
