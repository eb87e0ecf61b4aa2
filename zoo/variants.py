"""The model table: each registered ResNet is one line of data."""

from __future__ import annotations

from torch import nn

from .config import ResNetConfig as R
from .registry import register_model
from .resnet import ResNet


def register_resnet(name: str, cfg: R) -> None:
    """Register ``cfg`` under ``name``; ``create_model(name, **options)`` builds ``cfg.replace(**options)``."""

    def build(**options: object) -> nn.Module:
        return ResNet(cfg.replace(**options))

    build.__module__ = __name__
    build.__doc__ = f"{name}: {cfg}"
    register_model(name=name, config=cfg)(build)


B = "bottleneck"
IN_TO_CIFAR = {"stem": "cifar", "num_classes": 10}
# The paper's CIFAR nets (He et al. 2016, sec. 4.2): 6n+2 layers, 16/32/64 channels, option A shortcuts.
# zero_init_last off: with option A (zero-padded) shortcuts it cost 3.9 points of CIFAR-10 accuracy
# in 10 epochs (resnet20: 80.4% with it, 84.2% without), and the paper initializes plainly.
PAPER_CIFAR = {
    "channels": (16, 32, 64), "stem": "cifar", "stem_width": 16, "shortcut": "pad", "num_classes": 10,
    "zero_init_last": False,
}  # fmt: skip
RESNET_D = {"stem": "deep", "shortcut": "avg"}  # He et al. 2019 ("Bag of Tricks"), timm's stem width 32

VARIANTS: dict[str, R] = {
    # ImageNet: 7x7/2 stem + max-pool; stride on the bottleneck's 3x3 (torchvision "v1.5")
    "resnet18": R(layers=(2, 2, 2, 2)),
    "resnet34": R(layers=(3, 4, 6, 3)),
    "resnet50": R(layers=(3, 4, 6, 3), block=B),
    "resnet101": R(layers=(3, 4, 23, 3), block=B),
    "resnet152": R(layers=(3, 8, 36, 3), block=B),
    # ResNeXt (Xie et al. 2017) and wide ResNets (Zagoruyko & Komodakis 2016, torchvision's form)
    "resnext50_32x4d": R(layers=(3, 4, 6, 3), block=B, groups=32, width_per_group=4),
    "resnext101_32x8d": R(layers=(3, 4, 23, 3), block=B, groups=32, width_per_group=8),
    "wide_resnet50_2": R(layers=(3, 4, 6, 3), block=B, width_per_group=128),
    "wide_resnet101_2": R(layers=(3, 4, 23, 3), block=B, width_per_group=128),
    # ResNet-D: deep 3x3 stem (32-32-64), average-pool downsampling shortcut
    "resnet18d": R(layers=(2, 2, 2, 2), **RESNET_D),
    "resnet34d": R(layers=(3, 4, 6, 3), **RESNET_D),
    "resnet50d": R(layers=(3, 4, 6, 3), block=B, **RESNET_D),
    "resnet101d": R(layers=(3, 4, 23, 3), block=B, **RESNET_D),
    "resnet152d": R(layers=(3, 8, 36, 3), block=B, **RESNET_D),
    # The ImageNet stages behind a 3x3 stride-1 stem without max-pool, for 32x32 inputs
    "resnet18_cifar": R(layers=(2, 2, 2, 2), **IN_TO_CIFAR),
    "resnet34_cifar": R(layers=(3, 4, 6, 3), **IN_TO_CIFAR),
    "resnet50_cifar": R(layers=(3, 4, 6, 3), block=B, **IN_TO_CIFAR),
    "resnet101_cifar": R(layers=(3, 4, 23, 3), block=B, **IN_TO_CIFAR),
    "resnet152_cifar": R(layers=(3, 8, 36, 3), block=B, **IN_TO_CIFAR),
    "resnet20": R(layers=(3, 3, 3), **PAPER_CIFAR),
    "resnet32": R(layers=(5, 5, 5), **PAPER_CIFAR),
    "resnet44": R(layers=(7, 7, 7), **PAPER_CIFAR),
    "resnet56": R(layers=(9, 9, 9), **PAPER_CIFAR),
    "resnet110": R(layers=(18, 18, 18), **PAPER_CIFAR),
    # 600 blocks: plain init overflows an untrained eval forward, so the last norms start at 0
    "resnet1202": R(layers=(200, 200, 200), **{**PAPER_CIFAR, "zero_init_last": True}),
}

for _name, _cfg in VARIANTS.items():
    register_resnet(_name, _cfg)
