"""Input conventions: normalization constants and the data config of a model.

A data config says how images must be prepared for a model: input size,
interpolation, crop fraction and mean/std. The defaults here describe an
architecture without weights; a weight tag overrides them with its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import ResNetConfig
from .errors import ConfigError, not_one_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10 training-set per-channel statistics. The often-copied std (0.2023, 0.1994, 0.2010)
# is the mean of per-image stds, not the dataset's std.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def pool_side(input_side: int, reduction: int) -> int:
    """The side of the last feature map, which the head pools (timm's ``pool_size``): every stride-2 layer of a
    ResNet (convs padded to keep "same", max-pool, ceil-mode average pools) rounds up."""
    return -(-input_side // reduction)


def pool_size(input_size: tuple[int, ...], reduction: int) -> tuple[int, int]:
    """The (h, w) of the last feature map for an input size ``(c, h, w)`` or ``(h, w)``."""
    height, width = (pool_side(side, reduction) for side in input_size[-2:])
    return height, width


def label_names(model: Any) -> tuple[str, ...]:
    """The weights' class names when they name this model's outputs, else none (a head replaced since)."""
    names = tuple((getattr(model, "pretrained_cfg", None) or {}).get("label_names") or ())
    return names if len(names) == getattr(model, "num_classes", None) else ()


def check_class_order(model: Any, classes: Sequence[str], field: str) -> None:
    """Refuse data whose classes are the model's named classes in another order: each would be taken for another."""
    names = label_names(model)
    if names and sorted(names) == sorted(classes) and list(names) != list(classes):
        raise ConfigError(field, f"the data has the model's classes in another order ({', '.join(classes[:4])}, ... "
                          f"against {', '.join(names[:4])}, ...): each would be taken for another")  # fmt: skip


def default_pretrained_cfg(cfg: ResNetConfig) -> dict[str, Any]:
    """The data config of an architecture with no weights: ImageNet or CIFAR conventions."""
    if cfg.stem == "cifar":
        size, mean, std, crop_pct = 32, CIFAR10_MEAN, CIFAR10_STD, 1.0
    else:
        size, mean, std, crop_pct = 224, IMAGENET_MEAN, IMAGENET_STD, 0.875
    return {
        "input_size": (cfg.in_chans, size, size),
        "interpolation": "bilinear",
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "mean": mean if cfg.in_chans == 3 else (sum(mean) / 3,) * cfg.in_chans,
        "std": std if cfg.in_chans == 3 else (sum(std) / 3,) * cfg.in_chans,
        "num_classes": cfg.num_classes,
        "pool_size": pool_size((size, size), cfg.stage_plan()[-1].reduction),
        "first_conv": "conv1.0" if cfg.stem == "deep" else "conv1",
        "classifier": "fc",
    }


def resolve_data_config(
    model: Any = None, *, pretrained_cfg: dict[str, Any] | None = None, use_test_size: bool = False, **overrides: Any
) -> dict[str, Any]:
    """The preprocessing a model (or a pretrained cfg) expects.

    Returns ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct`` and
    ``crop_mode``; ``use_test_size`` takes the weights' test-time resolution
    (timm's A1 weights are trained at 224 and tested at 288). ``overrides``
    replace single entries (``crop_pct=1.0``).
    """
    cfg = dict(pretrained_cfg if pretrained_cfg is not None else getattr(model, "pretrained_cfg", {}) or {})
    if not cfg:  # a model from elsewhere (torchvision's): the caller says what it takes; the rest as timm defaults
        missing = [k for k in ("input_size", "mean", "std") if k not in overrides]
        if missing:
            raise ConfigError("model", f"has no pretrained_cfg to read its data config from: give pretrained_cfg=, "
                              f"or {', '.join(missing)} (zoo.export and predict: in data_config=)")  # fmt: skip
        cfg = {"interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center", **overrides}
    size = cfg.get("test_input_size") if use_test_size and cfg.get("test_input_size") else cfg["input_size"]
    crop_pct = cfg.get("test_crop_pct") if use_test_size and cfg.get("test_crop_pct") else cfg["crop_pct"]
    config = {
        "input_size": tuple(size),
        "interpolation": cfg.get("interpolation", "bilinear"),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "crop_pct": crop_pct,
        "crop_mode": cfg.get("crop_mode", "center"),
    }
    check_data_config_keys(overrides)
    config = {**config, **overrides}
    _check(config)
    return config


DATA_CONFIG = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")  # what resolve_data_config gives


def check_data_config_keys(config: dict[str, Any], field: str | None = None) -> None:
    """Refuse keys a data config does not have, naming ``field`` (the argument they came in; else the keys)."""
    unknown = sorted(set(config) - set(DATA_CONFIG))
    if unknown:
        keys = ", ".join(sorted(DATA_CONFIG))
        raise ConfigError(field or ", ".join(unknown), f"unknown data config keys {unknown}; the keys are {keys}")


def preprocessing_overrides(
    channels: int,
    *,
    mean: Any = None,
    std: Any = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """The entries of a data config a user set (``--mean``, ``--std``, ``--interpolation``, ``--crop-pct``,
    ``--image-size``), for :func:`resolve_data_config`; those left as None keep the weights' own."""
    overrides: dict[str, Any] = {}
    for name, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = tuple(float(v) for v in values)
        if len(values) != channels:
            raise ConfigError(f"--{name}", f"expected {channels} values, one per input channel, got {len(values)}")
        if name == "std" and min(values) <= 0:
            raise ConfigError("--std", f"expected positive values, got {values}")
        overrides[name] = values
    if interpolation is not None:
        overrides["interpolation"] = interpolation
    if crop_pct is not None:
        check_crop_pct("--crop-pct", crop_pct)
        overrides["crop_pct"] = crop_pct
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError("--image-size", f"expected a positive side in pixels, got {image_size!r}")
        overrides["input_size"] = (channels, image_size, image_size)
    return overrides


def describe_preprocessing(config: dict[str, Any]) -> str:
    """``32 px, bilinear, crop 1.0, mean (0.4914, 0.4822, 0.4465), std (0.247, 0.2435, 0.2616)``."""
    numbers = lambda values: "(" + ", ".join(f"{v:g}" for v in values) + ")"
    return (f"{config['input_size'][-1]} px, {config['interpolation']}, crop {config['crop_pct']:g}, "
            f"mean {numbers(config['mean'])}, std {numbers(config['std'])}")  # fmt: skip


INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CROP_MODES = ("center", "squash")  # timm's: resize the short side then crop; or resize both sides then crop


def check_input_size(name: str, size: Any) -> None:
    if not (isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ConfigError(name, f"expected (channels, height, width) of positive ints, got {size!r}")


def check_crop_pct(name: str, pct: Any) -> None:
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 1:
        raise ConfigError(name, f"expected a fraction in (0, 1], got {pct!r}")


def _check(config: dict[str, Any]) -> None:
    check_input_size("input_size", config["input_size"])
    check_crop_pct("crop_pct", config["crop_pct"])
    if config["interpolation"] not in INTERPOLATIONS:
        raise ConfigError("interpolation", not_one_of(config["interpolation"], INTERPOLATIONS))
    if config["crop_mode"] not in CROP_MODES:
        raise ConfigError("crop_mode", not_one_of(config["crop_mode"], CROP_MODES))


def create_transform(config: dict[str, Any], *, training: bool = False) -> Any:
    """torchvision transforms for a data config: the exact eval transform of the weights.

    Eval: resize the short side to ``size / crop_pct`` (rounded down, as timm and
    torchvision do; ``crop_mode="squash"``: both sides, ignoring the aspect ratio, as timm does),
    center-crop ``size``, to tensor, normalize. Training: random-resized-crop and horizontal
    flip, then the same normalization.
    """
    from torchvision import transforms as T

    _check(config)
    interpolation = T.InterpolationMode(config["interpolation"])
    size = tuple(config["input_size"][-2:])
    normalize = [T.ToTensor(), T.Normalize(config["mean"], config["std"])]
    if training:
        return T.Compose([T.RandomResizedCrop(size, interpolation=interpolation), T.RandomHorizontalFlip(), *normalize])
    scaled = tuple(int(s / config["crop_pct"]) for s in size)
    if config["crop_mode"] == "squash":
        scale: int | tuple[int, ...] = scaled
    else:  # torchvision's Resize(int) resizes the short side, keeping the aspect ratio
        scale = scaled[0] if size[0] == size[1] else scaled
    return T.Compose([T.Resize(scale, interpolation=interpolation), T.CenterCrop(size), *normalize])


def open_image(path: Any, mode: str = "RGB") -> Any:
    """The image file at ``path`` as a Pillow image in ``mode`` ("RGB" or "L"), decoded whole.

    Pillow's ``convert`` clips rather than scales: a 16-bit grayscale file (PNG, TIFF, PGM: modes ``I;16``
    and ``I``) would come out nearly white and a float one (mode ``F``, values 0-1) black. Those are
    scaled to 8 bits first: 16-bit by 255/65535; float by 255 when no value exceeds 1, else taken as 0-255.
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        if image.mode.startswith("I") or image.mode == "F":
            values = np.asarray(image, dtype=np.float64)
            scale = 255 / 65535 if image.mode != "F" else 255.0 if values.max(initial=0) <= 1 else 1.0
            return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)).convert(mode)
        return image.convert(mode)
