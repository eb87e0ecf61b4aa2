"""Top-1/top-5 and loss of a model, checkpoint or ensemble with the model's own eval transform (``zoo validate``,
whose command line is in ``zoo/train/cli.py``)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .. import create_model
from ..data import check_class_order, create_transform, preprocessing_overrides, resolve_data_config
from ..errors import ConfigError, not_one_of
from ..factory import check_folder_architecture, names_weights, weights_file
from ..hardware import PRECISIONS, cpu_info, device_label, resolve_precision
from ..io import read_json, sha256_of
from ..optimize import _import_pt2e, quantize_int8
from .config import flag
from .data import DATASETS, FileBatches, Split, TensorBatches, load_dataset, subset
from .ensemble import Ensemble
from .evaluation import evaluate
from .processes import Processes
from .views import TTA_MODES

SPLITS = ("val", "test", "train")


@dataclass(frozen=True)
class ValidateConfig:
    """What ``zoo validate`` is told, checked once before any work (each field is named after its flag)."""

    model: tuple[str, ...]  # one name, or several: their ensemble
    pretrained: bool = False
    checkpoint: str | None = None  # a weights file or a model folder
    dataset: str = "cifar10"
    root: str = "data"
    split: str = "val"
    val_split: float = 0.1
    split_seed: int = 0
    download: bool = False
    cache_dir: str | None = None
    batch_size: int = 256
    workers: int = 2
    precision: str = "auto"
    tta: str | None = None
    int8: bool = False
    calibration_images: int = 512
    int8_reduce_range: bool | None = None  # None: by the CPU (quantize_int8); a benchmark compares both
    # preprocessing overrides of the weights' data config (--mean ...; None: the weights' own)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    image_size: int | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", tuple(self.model))
        for name, allowed in (("dataset", DATASETS), ("split", SPLITS), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(flag(name), not_one_of(getattr(self, name), allowed))
        if self.tta is not None and self.tta not in TTA_MODES:
            raise ConfigError("--tta", not_one_of(self.tta, TTA_MODES))
        if not self.model:
            raise ConfigError("--model", "name at least one model")
        if self.int8 and self.calibration_images < 1:  # before any work, not after the float model is scored
            raise ConfigError("--calibration-images", f"expected a positive integer, got {self.calibration_images}")
        if self.batch_size < 1:
            raise ConfigError("--batch-size", f"expected a positive integer, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError("--workers", f"expected an integer >= 0, got {self.workers}")
        if not 0 < self.val_split < 1:
            raise ConfigError("--val-split", f"expected a fraction in (0, 1), got {self.val_split}")
        if self.checkpoint is not None and len(self.model) > 1:
            raise ConfigError(
                "--checkpoint", f"scores one model; got {len(self.model)} (--model {' '.join(self.model)})"
            )


def validate(args: ValidateConfig) -> dict[str, Any]:
    """Score ``args.model`` on ``args.split``; returns the result ``zoo validate`` prints and saves."""
    if args.int8:
        int8_problem()
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    # A name that names weights (a tag, hf-hub:, local-dir:) is scored with them, never as a random init:
    # in an ensemble too, member by member.
    pretrained = checkpoint is None and (args.pretrained or any(names_weights(n) for n in args.model))
    if checkpoint is not None and checkpoint.is_dir():  # a training checkpoint folder or a Hub folder
        model = create_model(f"local-dir:{checkpoint}", pretrained=True)
        check_folder_architecture(model, checkpoint, args.model)
    elif len(args.model) == 1:
        model = create_model(args.model[0], pretrained=pretrained, checkpoint_path=checkpoint)
    else:
        model = _ensemble(args.model, args.pretrained)
    procs = Processes(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(args.precision, procs.device, flag="--precision")
    model.to(procs.device)
    load = partial(
        load_dataset, args.dataset, args.root, val_split=args.val_split, split_seed=args.split_seed,
        download=args.download, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
    )  # fmt: skip
    data = load()
    if checkpoint is not None and data.val_carved:
        _check_run_split(checkpoint, args)
    split = getattr(data, args.split)
    if split is None:
        raise ConfigError("--split", f"{args.dataset} at {args.root!r} has no {args.split} split")
    classes = getattr(model, "num_classes", None)
    if classes is not None and classes != data.num_classes:
        raise ConfigError("--model", f"has {classes} classes, the dataset {data.num_classes}")
    check_class_order(model, data.classes, "--root")
    overrides = preprocessing_overrides(
        model.pretrained_cfg["input_size"][0], mean=args.mean, std=args.std, interpolation=args.interpolation,
        crop_pct=args.crop_pct, image_size=args.image_size,
    )  # fmt: skip
    config = resolve_data_config(model, use_test_size=True, **overrides)
    if split.images is not None and not _as_decoded(split, config) and args.dataset == "imagefolder":
        data = load(in_memory=False)  # another size or crop: from the files, transformed (int8's calibration too)
        split = getattr(data, args.split)
    batches = _eval_batches(split, config, args)
    start = time.perf_counter()
    metrics = evaluate(model, batches, procs, precision, tta=args.tta)
    result = {
        "model": " + ".join(args.model),
        **_scored_weights(args.model, model, checkpoint, pretrained),
        "dataset": args.dataset,
        "split": args.split,
        **({"val_split": args.val_split, "split_seed": args.split_seed} if args.split != "test" else {}),
        "images": metrics["images"],  # the scored ones: unreadable files are left out and counted
        "skipped_images": split.skipped + getattr(batches, "skipped", 0),
        "top1": round(metrics["acc1"], 3),
        "top5": round(metrics["acc5"], 3),
        "loss": round(metrics["loss"], 4),
        "tta": args.tta,
        "precision": precision,
        "precision_requested": args.precision,
        "device": device_label(procs.device),
        **cpu_info().to_dict(),
        "input_size": list(config["input_size"]),
        "crop_pct": config["crop_pct"],
        "interpolation": config["interpolation"],
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        # where the preprocessing came from: a weights file carries none, so the architecture's was assumed
        "preprocessing": "assumed" if checkpoint is not None and checkpoint.is_file() else "weights",
        "preprocessing_flags": sorted(overrides),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.int8:
        source = "val" if args.split == "train" else "train"  # never the split being scored
        result["int8"] = _score_int8(model, getattr(data, source), batches, config, args)
        result["int8"]["calibration_split"] = source
    return result


def _check_run_split(checkpoint: Path, args: ValidateConfig) -> None:
    """A training run's checkpoint scored on its own data's val split must be split as the run split it: with
    another --val-split or --split-seed, that val split holds images the run trained on."""
    found = [p / "args.json" for p in (checkpoint.parent, checkpoint.parent.parent) if (p / "args.json").is_file()]
    if args.split != "val" or not found:
        return
    run = read_json(found[0], "--checkpoint")
    same_data = run.get("dataset") == args.dataset and Path(str(run.get("root"))).resolve() == Path(args.root).resolve()
    theirs = (run.get("val_split"), run.get("split_seed"))
    if same_data and theirs != (args.val_split, args.split_seed):
        raise ConfigError(
            "--split-seed" if theirs[0] == args.val_split else "--val-split",
            f"{str(checkpoint)!r} was trained on the rest of --val-split {theirs[0]} --split-seed {theirs[1]}; "
            f"the val split of --val-split {args.val_split} --split-seed {args.split_seed} holds images it trained "
            f"on. Give the run's: --val-split {theirs[0]} --split-seed {theirs[1]}",
        )


def _ensemble(names: list[str], pretrained: bool) -> Ensemble:
    """The models ``names`` as one whose logits are their mean; they must share the eval transform
    (size, crop, interpolation), while each keeps its own normalization."""
    members = [create_model(name, pretrained=pretrained or names_weights(name)) for name in names]
    shared = ("input_size", "crop_pct", "crop_mode", "interpolation")
    transforms = [{k: v for k, v in resolve_data_config(m, use_test_size=True).items() if k in shared} for m in members]
    first = transforms[0]
    for name, member, config in zip(names[1:], members[1:], transforms[1:], strict=True):
        if config != first:
            raise ConfigError(
                "--model",
                f"an ensemble's members share one eval transform: {name} expects {config}, {names[0]} {first}",
            )
        if getattr(member, "num_classes", None) != getattr(members[0], "num_classes", None):
            raise ConfigError(
                "--model", f"{name} predicts {member.num_classes} classes, {names[0]} {members[0].num_classes}"
            )
    bare = [name for name in names if not (pretrained or names_weights(name))]
    if bare:  # a random member drags the mean towards chance, and the score would be credited to the others' weights
        raise ConfigError("--model", f"an ensemble averages trained models: {', '.join(bare)} would be a random "
                          "initialization; name its weights (ARCH.TAG, a folder) or give --pretrained")  # fmt: skip
    config = resolve_data_config(members[0])
    return Ensemble(members, mean=config["mean"], std=config["std"])


def _scored_weights(
    names: list[str], model: torch.nn.Module, checkpoint: Path | None, pretrained: bool
) -> dict[str, Any]:
    """Which weights a result scored: their name and, for one model, the sha256 of their file, so a result is
    never credited to other weights (push_to_hub checks it against a folder's file)."""
    if checkpoint is not None:
        file = checkpoint / "model.safetensors" if checkpoint.is_dir() else checkpoint
        return {"weights": str(checkpoint), "weights_sha256": sha256_of(file)}
    if not pretrained:
        return {"weights": "random init"}
    members = model.members if isinstance(model, Ensemble) else [model]
    tags = " + ".join(m.pretrained_cfg.get("weights", name) for m, name in zip(members, names, strict=True))
    if len(names) > 1:
        return {"weights": tags}
    return {"weights": tags, "weights_sha256": sha256_of(weights_file(names[0]))}


def _as_decoded(split: Split, config: dict[str, Any]) -> bool:
    """Whether decoded images are what the model takes: its size, the full image (the transform: normalizing)."""
    return split.images is not None and split.images.shape[-1] == config["input_size"][-1] and config["crop_pct"] == 1


def _eval_batches(split: Split, config: dict[str, Any], args: ValidateConfig) -> Any:
    if _as_decoded(split, config):
        return TensorBatches(split, batch_size=args.batch_size, train=False, mean=config["mean"], std=config["std"])
    if split.files:
        return FileBatches(
            split, batch_size=args.batch_size, train=False, transform=create_transform(config), workers=args.workers
        )
    side, crop = config["input_size"][-1], config["crop_pct"]  # CIFAR's arrays: no files to transform
    raise ConfigError(
        "--checkpoint" if args.checkpoint else "--model",
        f"takes {side}px inputs at crop {crop}; {args.dataset}'s {split.images.shape[-1]}px images are scored "
        "as they are (full crop, their size)",
    )  # type: ignore[union-attr]


def int8_problem() -> None:
    """Refuse --int8 up front where it cannot run: the int8 path is x86 CPU code from torchao."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        raise ConfigError("--int8", f"quantized inference runs on x86 CPUs; this machine is {platform.machine()}")
    try:
        _import_pt2e()
    except ImportError as e:
        raise ConfigError("--int8", f"{e}") from e


def _score_int8(
    model: torch.nn.Module, source: Split, batches: Any, config: dict[str, Any], args: ValidateConfig
) -> dict[str, Any]:
    """Quantize with a seeded sample of ``source`` images for calibration and score ``batches`` again."""
    g = torch.Generator().manual_seed(args.split_seed)
    sample = torch.randperm(len(source), generator=g)[: args.calibration_images].sort().values
    calibration = _eval_batches(subset(source, sample), config, args)
    start = time.perf_counter()
    # x86 CPU kernels: a CPU copy is quantized and scored on the CPU, also on a GPU machine
    int8 = quantize_int8(copy.deepcopy(model).cpu(), calibration, reduce_range=args.int8_reduce_range)
    metrics = evaluate(int8, batches, Processes(), tta=args.tta)
    return {
        **int8.quantization,
        "calibration_images": len(sample),
        "top1": round(metrics["acc1"], 3),
        "top5": round(metrics["acc5"], 3),
        "loss": round(metrics["loss"], 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
