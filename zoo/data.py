"""Input conventions: normalization constants and the data config of a model.

A data config says how images must be prepared for a model: input size,
interpolation, crop fraction and mean/std. The defaults here describe an
architecture without weights; a weight tag overrides them with its own.
"""

from __future__ import annotations

from typing import Any

from .config import ResNetConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10 training-set per-channel statistics. The often-copied std (0.2023, 0.1994, 0.2010)
# is the mean of per-image stds, not the dataset's std.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def default_pretrained_cfg(cfg: ResNetConfig) -> dict[str, Any]:
    """The data config of an architecture with no weights: ImageNet or CIFAR conventions."""
    if cfg.stem == "cifar":
        size, mean, std, crop_pct = 32, CIFAR10_MEAN, CIFAR10_STD, 1.0
    else:
        size, mean, std, crop_pct = 224, IMAGENET_MEAN, IMAGENET_STD, 0.875
    pool = max(1, size // cfg.stage_plan()[-1].reduction)
    return {
        "input_size": (cfg.in_chans, size, size),
        "interpolation": "bilinear",
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "mean": mean if cfg.in_chans == 3 else (sum(mean) / 3,) * cfg.in_chans,
        "std": std if cfg.in_chans == 3 else (sum(std) / 3,) * cfg.in_chans,
        "num_classes": cfg.num_classes,
        "pool_size": (pool, pool),
        "first_conv": "conv1.0" if cfg.stem == "deep" else "conv1",
        "classifier": "fc",
    }
