"""The views of an image whose logits are averaged: test-time augmentation, and teachers' targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError

TTA_MODES = ("flip", "flip-shift")


def tta_views(x: torch.Tensor, tta: str | None) -> list[torch.Tensor]:
    """The views whose logits a test-time augmentation averages: the image alone (``None``); with its
    mirror image (``flip``); and, for ``flip-shift``, also both shifted by one pixel up-left and down-right
    (reflect-padded), six views in all."""
    if tta is None:
        return [x]
    if tta not in TTA_MODES:
        raise ConfigError("--tta", f"{tta!r} is not one of {', '.join(TTA_MODES)}")
    views = [x]
    if tta == "flip-shift":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        views += [padded[..., d : d + h, d : d + w].contiguous(memory_format=fmt) for d in (0, 2)]
    return views + [v.flip(3) for v in views]
