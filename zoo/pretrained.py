"""The weight tags: each published set of weights is one line of data.

ImageNet weights are the public timm Hub repos ``timm/<arch>.<tag>`` (safetensors,
torchvision/timm keys). Scores are the published ones: torchvision's
``weights.meta`` for tv/tv2, timm's ``results-imagenet.csv`` for the others, at
the test size. The default tag of an arch is its most accurate one at its own
test size. MACs (G, fvcore total) are at the test size and checked by a test.
"""

from __future__ import annotations

from typing import Any

from . import variants  # noqa: F401  (the architectures must be registered before their weights)
from .data import CIFAR10_MEAN, CIFAR10_STD
from .registry import register_weights
from .weights import Weights

PAPERS = {
    "resnet": "arXiv:1512.03385",
    "resnext": "arXiv:1611.05431",
    "wide": "arXiv:1605.07146",
    "resnet-d": "arXiv:1812.01187",
    "rsb": "arXiv:2110.00476",
}
TV = dict(license="bsd-3-clause", origin_url="https://github.com/pytorch/vision")
TIMM = dict(license="apache-2.0", origin_url="https://github.com/huggingface/pytorch-image-models")
TV_RECIPES = "https://github.com/pytorch/vision/tree/main/references/classification"
# torchvision V2: trained at 176, evaluated by resizing to 232 and cropping 224 (224 / 232 = crop_pct 0.965)
TV2 = dict(**TV, input_size=(3, 176, 176), test_input_size=(3, 224, 224), test_crop_pct=0.965)
# timm's recipes: bicubic, larger test size
RSB_A1 = dict(**TIMM, interpolation="bicubic", crop_pct=0.95, test_input_size=(3, 288, 288), test_crop_pct=1.0)
RA2 = dict(**TIMM, interpolation="bicubic", crop_pct=0.875, test_input_size=(3, 288, 288), test_crop_pct=0.95)
RA2_256 = dict(**TIMM, interpolation="bicubic", input_size=(3, 256, 256), crop_pct=0.95,
               test_input_size=(3, 320, 320), test_crop_pct=1.0)  # fmt: skip
GLUON = dict(license="apache-2.0", origin_url="https://cv.gluon.ai/model_zoo/classification.html",
             interpolation="bicubic")  # fmt: skip


def _tv1(arch: str, paper: str, top1: float, top5: float, params: int, gmacs: float) -> Weights:
    return Weights(f"timm/{arch}.tv_in1k", top1=top1, top5=top5, num_params=params, gmacs=gmacs,
                   source="torchvision IMAGENET1K_V1", paper=PAPERS[paper], **TV)  # fmt: skip


def _tv2(arch: str, paper: str, top1: float, top5: float, params: int, gmacs: float) -> Weights:
    return Weights(f"timm/{arch}.tv2_in1k", top1=top1, top5=top5, num_params=params, gmacs=gmacs,
                   source="torchvision IMAGENET1K_V2 (new recipe)", paper=PAPERS[paper], **TV2)  # fmt: skip


def _timm(arch: str, tag: str, style: dict[str, Any], top1: float, top5: float, params: int, gmacs: float,
          **extra: Any) -> Weights:  # fmt: skip
    paper = PAPERS[
        "rsb" if tag.startswith(("a1", "a2", "a3", "ra4")) else "resnet-d" if arch.endswith("d") else "resnet"
    ]
    return Weights(f"timm/{arch}.{tag}", top1=top1, top5=top5, num_params=params, gmacs=gmacs,
                   source=f"timm {tag}", paper=paper, **{**style, **extra})  # fmt: skip


# (arch, tag) -> weights. top-1/top-5 at the test size; params; G MACs at the test size.
IMAGENET: dict[tuple[str, str], Weights] = {
    ("resnet18", "tv_in1k"): _tv1("resnet18", "resnet", 69.758, 89.078, 11_689_512, 1.819),
    ("resnet34", "tv_in1k"): _tv1("resnet34", "resnet", 73.314, 91.420, 21_797_672, 3.671),
    ("resnet50", "tv_in1k"): _tv1("resnet50", "resnet", 76.130, 92.862, 25_557_032, 4.111),
    ("resnet101", "tv_in1k"): _tv1("resnet101", "resnet", 77.374, 93.546, 44_549_160, 7.834),
    ("resnet152", "tv_in1k"): _tv1("resnet152", "resnet", 78.312, 94.046, 60_192_808, 11.559),
    ("resnet50", "tv2_in1k"): _tv2("resnet50", "resnet", 80.858, 95.434, 25_557_032, 4.111),
    ("resnet101", "tv2_in1k"): _tv2("resnet101", "resnet", 81.886, 95.780, 44_549_160, 7.834),
    ("resnet152", "tv2_in1k"): _tv2("resnet152", "resnet", 82.284, 96.002, 60_192_808, 11.559),
    ("resnet18", "a1_in1k"): _timm("resnet18", "a1_in1k", RSB_A1, 73.158, 91.026, 11_689_512, 3.007, metrics={"top1_224": 71.49, "top5_224": 90.07}),
    ("resnet34", "a1_in1k"): _timm("resnet34", "a1_in1k", RSB_A1, 77.918, 93.766, 21_797_672, 6.068, metrics={"top1_224": 76.42, "top5_224": 92.87}),
    ("resnet50", "a1_in1k"): _timm("resnet50", "a1_in1k", RSB_A1, 81.214, 95.102, 25_557_032, 6.795, metrics={"top1_224": 80.38, "top5_224": 94.60}),
    ("resnet101", "a1_in1k"): _timm("resnet101", "a1_in1k", RSB_A1, 82.322, 95.632, 44_549_160, 12.949, metrics={"top1_224": 81.50, "top5_224": 95.16}),
    ("resnet152", "a1_in1k"): _timm("resnet152", "a1_in1k", RSB_A1, 82.732, 95.720, 60_192_808, 19.106, metrics={"top1_224": 81.97, "top5_224": 95.24}),
    ("resnext50_32x4d", "tv_in1k"): _tv1("resnext50_32x4d", "resnext", 77.618, 93.698, 25_028_904, 4.259),
    ("resnext50_32x4d", "tv2_in1k"): _tv2("resnext50_32x4d", "resnext", 81.198, 95.340, 25_028_904, 4.259),
    ("resnext101_32x8d", "tv_in1k"): _tv1("resnext101_32x8d", "resnext", 79.312, 94.526, 88_791_336, 16.476),
    ("resnext101_32x8d", "tv2_in1k"): _tv2("resnext101_32x8d", "resnext", 82.834, 96.228, 88_791_336, 16.476),
    ("wide_resnet50_2", "tv_in1k"): _tv1("wide_resnet50_2", "wide", 78.468, 94.086, 68_883_240, 11.427),
    ("wide_resnet50_2", "tv2_in1k"): _tv2("wide_resnet50_2", "wide", 81.602, 95.758, 68_883_240, 11.427),
    ("wide_resnet101_2", "tv_in1k"): _tv1("wide_resnet101_2", "wide", 78.848, 94.284, 126_886_696, 22.795),
    ("wide_resnet101_2", "tv2_in1k"): _tv2("wide_resnet101_2", "wide", 82.510, 96.020, 126_886_696, 22.795),
    ("resnet18d", "ra2_in1k"): _timm("resnet18d", "ra2_in1k", RA2, 73.794, 91.838, 11_708_744, 3.405, metrics={"top1_224": 72.26, "top5_224": 90.68}),
    ("resnet34d", "ra2_in1k"): _timm("resnet34d", "ra2_in1k", RA2, 78.436, 94.344, 21_816_904, 6.467, metrics={"top1_224": 77.10, "top5_224": 93.37}),
    ("resnet50d", "ra2_in1k"): _timm("resnet50d", "ra2_in1k", RA2, 81.356, 95.738, 25_576_264, 7.194, metrics={"top1_224": 80.53, "top5_224": 95.16}),
    ("resnet50d", "ra4_e3600_r224_in1k"): _timm("resnet50d", "ra4_e3600_r224_in1k", RSB_A1, 81.838, 95.922, 25_576_264, 7.194, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), metrics={"top1_224": 80.952, "top5_224": 95.384}),
    ("resnet50d", "a1_in1k"): _timm("resnet50d", "a1_in1k", RSB_A1, 81.450, 95.218, 25_576_264, 7.194, metrics={"top1_224": 80.68, "top5_224": 94.71}),
    ("resnet50d", "a2_in1k"): _timm("resnet50d", "a2_in1k", RSB_A1, 81.164, 95.084, 25_576_264, 7.194, metrics={"top1_224": 80.22, "top5_224": 94.63}),
    ("resnet50d", "a3_in1k"): _timm("resnet50d", "a3_in1k", RSB_A1, 78.722, 94.236, 25_576_264, 4.353, input_size=(3, 160, 160), test_input_size=(3, 224, 224), test_crop_pct=0.95, metrics={"top1_160": 77.22, "top5_160": 93.27}),
    ("resnet50d", "gluon_in1k"): _timm("resnet50d", "gluon_in1k", GLUON, 79.078, 94.468, 25_576_264, 4.353),
    ("resnet101d", "ra2_in1k"): _timm("resnet101d", "ra2_in1k", RA2_256, 83.016, 96.452, 44_568_392, 16.478, metrics={"top1_256": 82.26, "top5_256": 96.07}),
    ("resnet101d", "gluon_in1k"): _timm("resnet101d", "gluon_in1k", GLUON, 80.426, 95.024, 44_568_392, 8.075),
    ("resnet152d", "ra2_in1k"): _timm("resnet152d", "ra2_in1k", RA2_256, 83.684, 96.740, 60_212_040, 24.079, metrics={"top1_256": 83.14, "top5_256": 96.38}),
    ("resnet152d", "gluon_in1k"): _timm("resnet152d", "gluon_in1k", GLUON, 80.476, 95.202, 60_212_040, 11.8),
}  # fmt: skip

# The zoo's own CIFAR-10 weights, trained by tools/train.py on this repository's data and
# bundled in weights/<arch>.c10/ (model card there). top-1 is on the seeded 5,000-image
# validation split of the JPEG CIFAR-10 training set.
C10 = dict(num_classes=10, label_names="cifar-10", input_size=(3, 32, 32), crop_pct=1.0, mean=CIFAR10_MEAN,
           std=CIFAR10_STD, license="apache-2.0", origin_url="https://github.com/resnet-zoo/resnet-zoo",
           paper=PAPERS["resnet"], bundled=True)  # fmt: skip


def _c10(arch: str, top1: float, top5: float, params: int, gmacs: float, sha256: str, tag: str = "c10") -> Weights:
    return Weights(f"resnet-zoo/{arch}.{tag}", top1=top1, top5=top5, num_params=params, gmacs=gmacs, sha256=sha256,
                   source="zoo train (see the model card)", **C10)  # fmt: skip


# (arch, tag) -> weights. top-1/top-5 on the validation split; params at 10 classes; G MACs at 32x32; the sha256
# of model.safetensors, checked before it is trusted (hashed once, then remembered while the file's size, times
# and inode stay the same; a re-published file must change its pin here).
# c10: trained from scratch; c10_kd: distilled from the zoo's resnet20 weights (one, or an ensemble) on the same
# split; c10_kd2: a second distillation run. A tag, once published, keeps its weights; the default of each
# architecture is its best top-1.
CIFAR10: dict[tuple[str, str], Weights] = {
    ("resnet20", "c10_kd"): _c10("resnet20", 90.14, 99.42, 269_722, 0.041, "6f1ec6bbd21e6f12fa186443f753227d493e303cc2e6200b7de9b3fec4ddb00b", tag="c10_kd"),
    ("resnet20", "c10"): _c10("resnet20", 89.38, 99.50, 269_722, 0.041, "bdd27392eeec8b3e2f68d1cca592f478c6f79f5e72d2a83b24fce72c983c4e2e"),
    ("resnet32", "c10_kd2"): _c10("resnet32", 90.28, 99.60, 464_154, 0.069, "0e27a8a792175ec10420ff0eec387ec1735b2a74fb7465e7b8df2ea5cdba8b7a", tag="c10_kd2"),
    ("resnet32", "c10_kd"): _c10("resnet32", 89.88, 99.58, 464_154, 0.069, "94deb7c6f528910f943ff6341dc0d2695c953362899123858e41a05f256362a3", tag="c10_kd"),
    ("resnet32", "c10"): _c10("resnet32", 88.36, 99.34, 464_154, 0.069, "e3eaffa71874ee4f693d936035c2136d0752db6178d704eac4454b1931570c7a"),
    ("resnet44", "c10_kd2"): _c10("resnet44", 90.80, 99.48, 658_586, 0.098, "d789b348892d5af7a23dc74256e600bc2edcc41f28f3333e2bf1810a6be77cdb", tag="c10_kd2"),
    ("resnet44", "c10_kd"): _c10("resnet44", 90.18, 99.56, 658_586, 0.098, "b1fb8734ded35d8bd4a5582ecd6a4cdca592f597870c71fa756628c5983c10ae", tag="c10_kd"),
    ("resnet44", "c10"): _c10("resnet44", 88.22, 99.38, 658_586, 0.098, "d72d53416133b6fb932a15bd67003967c0a82a30337ca4a9960c167ba3c8bb9f"),
    ("resnet56", "c10_kd2"): _c10("resnet56", 91.28, 99.60, 853_018, 0.127, "77ef7260bde865df06744335592e83b9a02ee607a54bc13ca827901aa227dbde", tag="c10_kd2"),
    ("resnet56", "c10_kd"): _c10("resnet56", 90.42, 99.62, 853_018, 0.127, "1f9e6f175a2b93850914232cd9ed9e61f8eedd68809710289c8895e55f97c8e6", tag="c10_kd"),
    ("resnet56", "c10"): _c10("resnet56", 89.16, 99.34, 853_018, 0.127, "ecdf222ed919367f0b8c2579bcda521796ea042afbbc535561ea7a1df5e7e2a0"),
}  # fmt: skip


def _register() -> None:
    tables = {**IMAGENET, **CIFAR10}
    best: dict[str, tuple[float, str]] = {}
    for (arch, tag), w in tables.items():
        if w.top1 is not None and w.top1 > best.get(arch, (-1.0, ""))[0]:
            best[arch] = (w.top1, tag)
    for (arch, tag), w in tables.items():
        register_weights(arch, tag, w, default=best.get(arch, (0, ""))[1] == tag)


_register()
