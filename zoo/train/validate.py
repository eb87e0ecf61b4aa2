"""``zoo validate`` (and ``tools/validate.py``): top-1/top-5 and loss with the model's own eval transform."""

from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import create_model
from ..data import create_transform, resolve_data_config
from ..errors import ConfigError, ZooError
from ..factory import names_weights, weights_file
from ..io import save_json, sha256_of
from ..optimize import DTYPES, _import_pt2e, quantize_int8
from .data import DATASETS, FileBatches, Split, TensorBatches, load_dataset, subset
from .ensemble import Ensemble
from .evaluation import evaluate
from .processes import Processes
from .views import TTA_MODES

SPLITS = ("val", "test", "train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, nargs="+",
        help="registered name (with tag), hf-hub:..., local-dir:... or YAML; several: their ensemble (mean logits)",
    )  # fmt: skip
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pretrained", action="store_true", help="the model's published weights")
    source.add_argument("--checkpoint", default=None, help="a weights file or a training checkpoint folder")
    p.add_argument("--dataset", choices=DATASETS, default="cifar10")
    p.add_argument("--root", default="data", help="dataset folder, or a .tar.gz of an image folder")
    p.add_argument("--split", choices=SPLITS, default="val", help="val: val/ or the seeded split the trainer carves")
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--download", action="store_true")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--precision", choices=tuple(DTYPES), default="fp32")
    p.add_argument(
        "--tta", nargs="?", const="flip", default=None, choices=TTA_MODES,
        help="test-time augmentation, mean logits of: flip (image and mirror, the default), "
        "flip-shift (also both shifted one pixel up-left and down-right)",
    )  # fmt: skip
    p.add_argument("--int8", action="store_true", help="also score the int8 model (x86 CPUs) and the change")
    p.add_argument(
        "--calibration-images", type=int, default=512, help="--int8: a seeded sample of the train split (val if scored)"
    )
    p.add_argument("--output", default=None, help="JSON file for the result (default: runs/validate/<model>.json)")


def validate(args: argparse.Namespace) -> dict[str, Any]:
    if args.int8 and args.calibration_images < 1:  # before any work, not after the float model is scored
        raise ConfigError("--calibration-images", f"expected a positive integer, got {args.calibration_images}")
    if args.int8:
        int8_problem()
    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"expected a positive integer, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError("--workers", f"expected an integer >= 0, got {args.workers}")
    if not 0 <= args.val_split < 1:
        raise ConfigError("--val-split", f"expected a fraction in [0, 1), got {args.val_split}")
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None and len(args.model) > 1:
        raise ConfigError("--checkpoint", f"scores one model; got {len(args.model)} (--model {' '.join(args.model)})")
    # A name that names weights (a tag, hf-hub:, local-dir:) is scored with them, never as a random init.
    pretrained = checkpoint is None and (args.pretrained or all(names_weights(n) for n in args.model))
    if checkpoint is not None and checkpoint.is_dir():  # a training checkpoint folder or a Hub folder
        model = create_model(f"local-dir:{checkpoint}", pretrained=True)
    elif len(args.model) == 1:
        model = create_model(args.model[0], pretrained=pretrained, checkpoint_path=checkpoint)
    else:
        model = _ensemble(args.model, pretrained)
    procs = Processes(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(procs.device)
    data = load_dataset(
        args.dataset, args.root, val_split=args.val_split, split_seed=args.split_seed, download=args.download,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
    )  # fmt: skip
    split = getattr(data, args.split)
    if split is None:
        raise ConfigError("--split", f"{args.dataset} at {args.root!r} has no {args.split} split")
    classes = getattr(model, "num_classes", None)
    if classes is not None and classes != data.num_classes:
        raise ConfigError("--model", f"has {classes} classes, the dataset {data.num_classes}")
    config = resolve_data_config(model, use_test_size=True)
    batches = _eval_batches(split, config, args)
    start = time.perf_counter()
    metrics = evaluate(model, batches, procs, args.precision, tta=args.tta)
    result = {
        "model": " + ".join(args.model),
        **_scored_weights(args.model, model, checkpoint, pretrained),
        "dataset": args.dataset,
        "split": args.split,
        "images": len(split),
        "top1": round(metrics["acc1"], 3),
        "top5": round(metrics["acc5"], 3),
        "loss": round(metrics["loss"], 4),
        "tta": args.tta,
        "precision": args.precision,
        "input_size": list(config["input_size"]),
        "crop_pct": config["crop_pct"],
        "interpolation": config["interpolation"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.int8:
        source = "val" if args.split == "train" else "train"  # never the split being scored
        result["int8"] = _score_int8(model, getattr(data, source), batches, config, args)
        result["int8"]["calibration_split"] = source
    return result


def _ensemble(names: list[str], pretrained: bool) -> Ensemble:
    """The models ``names`` as one whose logits are their mean; they must share the eval transform
    (size, crop, interpolation), while each keeps its own normalization."""
    members = [create_model(name, pretrained=pretrained) for name in names]
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
    tags = " + ".join(m.pretrained_cfg.get("tag", name) for m, name in zip(members, names, strict=True))
    if len(names) > 1:
        return {"weights": tags}
    return {"weights": tags, "weights_sha256": sha256_of(weights_file(names[0]))}


def _eval_batches(split: Split, config: dict[str, Any], args: argparse.Namespace) -> Any:
    side = config["input_size"][-1]
    if split.images is not None and split.images.shape[-1] == side and config["crop_pct"] == 1.0:
        # Images already at the model's size, full crop: the transform is only the normalization.
        return TensorBatches(split, batch_size=args.batch_size, train=False, mean=config["mean"], std=config["std"])
    if split.files:
        return FileBatches(
            split, batch_size=args.batch_size, train=False, transform=create_transform(config), workers=args.workers
        )
    raise ConfigError(
        "--model", f"expects {side}px inputs; this in-memory dataset has {split.images.shape[-1]}px images"
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
    model: torch.nn.Module, source: Split, batches: Any, config: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Quantize with a seeded sample of ``source`` images for calibration and score ``batches`` again."""
    g = torch.Generator().manual_seed(args.split_seed)
    sample = torch.randperm(len(source), generator=g)[: args.calibration_images].sort().values
    calibration = _eval_batches(subset(source, sample), config, args)
    start = time.perf_counter()
    # x86 CPU kernels: a CPU copy is quantized and scored on the CPU, also on a GPU machine
    int8 = quantize_int8(copy.deepcopy(model).cpu(), calibration)
    metrics = evaluate(int8, batches, Processes(), tta=args.tta)
    return {
        "calibration_images": len(sample),
        "top1": round(metrics["acc1"], 3),
        "top5": round(metrics["acc5"], 3),
        "loss": round(metrics["loss"], 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = validate(args)
    except ZooError as e:
        print(f"zoo validate: error: {e}", file=sys.stderr)
        return 2
    r = result
    weights = "" if r["weights"] == r["model"] else f" ({r['weights']})"  # an ensemble of tags names them once
    print(
        f"{r['model']}{weights} on {r['dataset']} {r['split']} ({r['images']} images): "
        f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}"
        + (f"  ({r['tta']} TTA)" if r["tta"] else "")
    )
    if "int8" in r:
        q = r["int8"]
        print(
            f"int8 (calibrated on {q['calibration_images']} {q['calibration_split']} images): top-1 {q['top1']:.2f}% "
            f"({q['top1'] - r['top1']:+.2f})  top-5 {q['top5']:.2f}%  loss {q['loss']:.4f}"
        )
    output = args.output or Path("runs/validate") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', '+'.join(args.model))}.json"
    save_json(output, result)
    return 0


def validate_command(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:  # `zoo validate`
    add_arguments(parser)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="validate.py", description="Top-1/top-5 of a zoo model")
    add_arguments(parser)
    return run(parser.parse_args(argv))
