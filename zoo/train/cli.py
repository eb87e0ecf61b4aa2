"""``zoo train`` and ``zoo validate`` (and ``tools/train.py``, ``tools/validate.py``): the trainer's command lines.

The flags of the common minimal CIFAR trainer (``--batch_size``, ``--num_epochs``,
``--lr_scheduler CosineAnnealingLR``, ``--model_name ResNet18``, ...) are accepted
as aliases, so its documented command runs unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from ..cli import add_preprocessing_arguments, add_tta_argument, assumed_preprocessing
from ..errors import ConfigError, ZooError
from ..hardware import PRECISIONS
from ..io import save_json
from .config import DEVICES, NORMS, TrainConfig, flag
from .data import DATASETS
from .recipe import OPTIMIZERS, RECIPES, SCHEDULES
from .validate import SPLITS
from .views import TTA_MODES

log = logging.getLogger("zoo.train")

# The minimal trainer's names for our choices.
SCHEDULE_ALIASES = {"cosineannealinglr": "cosine", "onecyclelr": "onecycle", "multisteplr": "multistep"}


def _lower_choice(choices: tuple[str, ...], aliases: dict[str, str] | None = None):
    def parse(value: str) -> str:
        key = value.lower()
        key = (aliases or {}).get(key, key)
        if key not in choices:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(choices)}")
        return key

    return parse


class Default:
    """A flag's default, wrapped so that after parsing a value the user gave can be told from one they did
    not, even when equal: a ``--recipe`` fills in only the flags not given."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of `zoo train` (and tools/train.py), in the groups --help shows."""
    _data_and_model_arguments(p)
    _recipe_arguments(p)
    _speed_and_run_arguments(p)
    for action in p._actions:  # argparse's list of them: the one place every flag's default is found
        if action.default not in (None, argparse.SUPPRESS) and not isinstance(action, argparse._AppendAction):
            action.default = Default(action.default)


def _data_and_model_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset", type=_lower_choice(DATASETS), default="cifar10", help=" | ".join(DATASETS))
    data.add_argument("--root", default="data", help="dataset folder, or a .tar.gz of an image folder")
    data.add_argument("--download", action="store_true", help="fetch CIFAR where the network allows")
    data.add_argument("--val-split", type=float, default=0.1, help="validation fraction carved from train/")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    data.add_argument("--cache-dir", default=None, help="unpacked archives and decoded images ($ZOO_CACHE)")
    data.add_argument(
        "--in-memory", action=argparse.BooleanOptionalAction, default=None,
        help="decode all images once into memory (default: when images are at most 64 px)",
    )  # fmt: skip
    data.add_argument("--workers", "--num_workers", type=int, default=2, help="DataLoader workers (streamed data)")
    data.add_argument("--pin-memory", "--pin_memory", action=argparse.BooleanOptionalAction, default=False)

    model = p.add_argument_group("model")
    model.add_argument("--model", "--model_name", default="resnet20", help="registered name or YAML config")
    model.add_argument("--pretrained", action="store_true", help="fine-tune from the model's weights")
    model.add_argument("--freeze-stages", type=int, default=-1, help="freeze the stem and first K stages")
    model.add_argument("--in-chans", type=int, default=None)
    model.add_argument("--drop-rate", type=float, default=None)
    model.add_argument("--drop-path-rate", type=float, default=None)
    model.add_argument(
        "--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
        help="more architecture options, values in YAML: zero_init_last=false norm_layer=group_norm",
    )  # fmt: skip


def _recipe_arguments(p: argparse.ArgumentParser) -> None:
    recipe = p.add_argument_group("recipe")
    recipe.add_argument(
        "--recipe", type=_lower_choice(tuple(RECIPES)), default=None,
        help=f"a preset of the flags below ({' | '.join(RECIPES)}); a flag given as well overrides its value",
    )  # fmt: skip
    recipe.add_argument("--epochs", "--num_epochs", type=int, default=30, help="with --time-budget: at most")
    recipe.add_argument(
        "--time-budget", type=float, default=None, metavar="MINUTES",
        help="train for this much wall time, validations included: the schedule (laid out over --epochs) "
        "advances by the clock when that is ahead of the steps, and the run stops when it ends",
    )  # fmt: skip
    recipe.add_argument("--batch-size", "--batch_size", type=int, default=256, help="per process")
    recipe.add_argument("--lr", type=float, default=0.2, help="peak learning rate")
    recipe.add_argument("--optimizer", type=_lower_choice(OPTIMIZERS), default="sgd", help=" | ".join(OPTIMIZERS))
    recipe.add_argument("--momentum", type=float, default=0.9)
    recipe.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
    recipe.add_argument("--weight-decay", type=float, default=5e-4)
    recipe.add_argument(
        "--decay-norm-and-bias", action=argparse.BooleanOptionalAction, default=False,
        help="also decay norm weights and biases",
    )  # fmt: skip
    recipe.add_argument(
        "--schedule", "--lr_scheduler", type=_lower_choice(SCHEDULES, SCHEDULE_ALIASES), default="onecycle",
        help=" | ".join(SCHEDULES),
    )  # fmt: skip
    recipe.add_argument(
        "--warmup-epochs", type=float, default=None,
        help="warm-up epochs (default: 25%% for onecycle, linear; 20%% for triangular; else 0)",
    )  # fmt: skip
    recipe.add_argument(
        "--milestones", type=float, nargs="*", default=None, help="multistep: epochs (default 50%%, 75%%)"
    )
    recipe.add_argument("--gamma", type=float, default=0.1, help="multistep decay factor")
    recipe.add_argument(
        "--min-lr-factor", type=float, default=None, help="cosine, linear: final lr as a fraction of the peak (0)"
    )
    recipe.add_argument("--t-max", "--t_max", type=int, default=None,
                        help="cosine: epochs from the start (warm-up included) to the minimum, held after")  # fmt: skip
    recipe.add_argument("--label-smoothing", type=float, default=0.0)
    recipe.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0: off)")
    recipe.add_argument("--ema-decay", type=float, default=0.0, help="EMA of weights per step (0: off)")
    recipe.add_argument(
        "--teacher", action="append", default=[], metavar="MODEL",
        help="distill from this model (NAME.TAG with published weights, or a model/checkpoint folder); "
        "repeat for an ensemble, whose logits are averaged",
    )  # fmt: skip
    recipe.add_argument("--distill-weight", type=float, default=0.9, help="share of the distillation term in the loss")
    recipe.add_argument("--distill-temperature", type=float, default=4.0, help="softmax temperature of the targets")
    recipe.add_argument(
        "--teacher-tta", type=_lower_choice(TTA_MODES), default=None,
        help=f"{' | '.join(TTA_MODES)}: average the teachers' logits over these views (as validate --tta)",
    )  # fmt: skip
    recipe.add_argument("--crop-pad", type=int, default=4, help="small images: random crop after reflect padding")
    recipe.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    recipe.add_argument("--cutout", type=int, default=0, help="side of a square set to the mean colour per image")
    recipe.add_argument("--trivial-augment", action=argparse.BooleanOptionalAction, default=False)
    recipe.add_argument("--random-erasing", type=float, default=0.0, help="probability per image")
    recipe.add_argument("--image-size", type=int, default=None, help="streamed images: training crop size")
    recipe.add_argument("--norm", type=_lower_choice(NORMS), default="model", help=" | ".join(NORMS))
    recipe.add_argument(
        "--transform", dest="norm", action="store_const", const="half", help="alias: --norm half (mean=std=0.5)"
    )


def _speed_and_run_arguments(p: argparse.ArgumentParser) -> None:
    speed = p.add_argument_group("speed")
    speed.add_argument(
        "--precision", type=_lower_choice(PRECISIONS), default="auto",
        help=f"{' | '.join(PRECISIONS)}; auto: bf16 on CPUs with bf16 hardware (AVX-512 BF16, AMX) and Ampere+ GPUs, "
        "fp16 on Volta and Turing GPUs, else fp32",
    )  # fmt: skip
    speed.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True,
        help="NHWC activations and weights: the fast layout of oneDNN and cuDNN (the default)",
    )  # fmt: skip
    speed.add_argument("--compile", action="store_true", help="torch.compile the training model (inductor)")
    speed.add_argument("--compile-mode", default="default")
    speed.add_argument("--sync-bn", action="store_true", help="batch statistics over all processes")
    speed.add_argument("--device", choices=DEVICES, default="auto")

    run = p.add_argument_group("run")
    run.add_argument("--output", "--ckpt_dir", default="runs/train", help="checkpoints, metrics, curves")
    run.add_argument("--resume", nargs="?", const=True, default=None, help="continue from output/last (or PATH)")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    run.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and after the last)")
    run.add_argument(
        "--keep-checkpoints",
        type=int,
        default=1,
        help="the run's latest epochs kept besides the best (after --resume: its own, not later ones it left)",
    )
    run.add_argument("--seed", "--random_seed", type=int, default=0)


def finish_arguments(args: argparse.Namespace) -> TrainConfig:
    """The checked TrainConfig of parsed arguments: a ``--recipe``'s values where no flag was given, the minimal
    trainer's model names translated."""
    given = {k for k, v in vars(args).items() if not isinstance(v, Default) and v not in (None, [])}
    values = {k: v.value if isinstance(v, Default) else v for k, v in vars(args).items()}
    if values.get("recipe"):
        preset = RECIPES[values["recipe"]]
        overrides = [f"{flag(k)} {values[k]!r} (the recipe's {v!r})" for k, v in preset.items()
                     if k in given and values[k] != v]  # fmt: skip
        values.update({k: v for k, v in preset.items() if k not in given})
        if overrides:
            log.warning("--recipe %s, overridden: %s", values["recipe"], "; ".join(overrides))
    if isinstance(values["model_kwargs"], list):
        pairs = {}
        for item in values["model_kwargs"]:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError("--model-kwargs", f"expected KEY=VALUE, got {item!r}")
            try:
                pairs[key] = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise ConfigError("--model-kwargs", f"{item!r}: the value is not YAML ({e})") from e
        values["model_kwargs"] = pairs
    match = re.fullmatch(r"ResNet(\d+)", values["model"])
    if match:  # its ResNet18..152 are the CIFAR-stem nets on CIFAR, the ImageNet ones elsewhere
        values["model"] = f"resnet{match[1]}" + ("_cifar" if values["dataset"].startswith("cifar") else "")
    config = TrainConfig.from_mapping(values)  # its values checked first
    for name, (reads, needs) in IGNORED_UNLESS.items():
        if name in given and not reads(config):
            raise ConfigError(flag(name), f"has no effect without {needs}")
    return config


# Flags read only in some configurations: one given where it is not read is an error, not a silent no-op.
_ADAMW_MOMENTUM = "--optimizer sgd (AdamW reads it only under --schedule onecycle, as the beta1 it cycles)"
IGNORED_UNLESS: dict[str, tuple[Callable[[TrainConfig], bool], str]] = {
    "gamma": (lambda c: c.schedule == "multistep", "--schedule multistep"),
    "momentum": (lambda c: c.optimizer == "sgd" or c.schedule == "onecycle", _ADAMW_MOMENTUM),
    "nesterov": (lambda c: c.optimizer == "sgd", "--optimizer sgd"),
    "compile_mode": (lambda c: c.compile, "--compile"),
    "teacher_tta": (lambda c: bool(c.teacher), "--teacher"),
    "distill_weight": (lambda c: bool(c.teacher), "--teacher"),
    "distill_temperature": (lambda c: bool(c.teacher), "--teacher"),
}


def parse(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="zoo train", description="Train a zoo model (torchrun for many processes)")
    add_arguments(parser)
    return finish_arguments(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from .engine import train
    from .step import TrainingDiverged

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    try:
        summary = train(finish_arguments(args))
    except TrainingDiverged as e:
        print(f"zoo train: stopped: {e}", file=sys.stderr)
        return 3
    except ZooError as e:
        print(f"zoo train: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps(summary.get("best"), indent=None))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description="Train a zoo model (torchrun for many processes)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def train_command(parser: argparse.ArgumentParser):  # `zoo train`
    add_arguments(parser)
    return run


# --- zoo validate ------------------------------------------------------------------------------------


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="auto: bf16 where the CPU or GPU has it, else fp32"
    )
    add_tta_argument(p)
    p.add_argument("--int8", action="store_true", help="also score the int8 model (x86 CPUs) and the change")
    p.add_argument(
        "--calibration-images", type=int, default=512, help="--int8: a seeded sample of the train split (val if scored)"
    )
    p.add_argument("--output", default=None, help="JSON file for the result (default: runs/validate/<model>.json)")
    add_preprocessing_arguments(p)


def run_validate(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from .validate import ValidateConfig, validate

    default = Path("runs/validate") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', '+'.join(args.model))}.json"
    output = Path(args.output or default)
    try:
        if output.is_dir():  # found now, not after the scoring
            raise ConfigError("--output", f"{str(output)!r} is a folder; give the JSON file to write")
        names = {f.name for f in dataclasses.fields(ValidateConfig)}
        config = ValidateConfig(**{k: v for k, v in vars(args).items() if k in names})
        r = validate(config)
    except ZooError as e:
        print(f"zoo validate: error: {e}", file=sys.stderr)
        return 2
    weights = "" if r["weights"] == r["model"] else f" ({r['weights']})"  # an ensemble of tags names them once
    if r["preprocessing"] == "assumed":
        config = {"input_size": r["input_size"], "interpolation": r["interpolation"], "crop_pct": r["crop_pct"],
                  "mean": r["mean"], "std": r["std"]}  # fmt: skip
        print(f"zoo validate: {assumed_preprocessing(r['weights'], config, r['preprocessing_flags'])}", file=sys.stderr)
    print(
        f"{r['model']}{weights} on {r['dataset']} {r['split']} ({r['images']} images): "
        f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}"
        + (f"  ({r['tta']} TTA)" if r["tta"] else "")
        + f"  [{r['precision']}{' (auto)' if r['precision_requested'] == 'auto' else ''} on {r['device']}]"
    )
    if "int8" in r:
        q = r["int8"]
        print(
            f"int8 (calibrated on {q['calibration_images']} {q['calibration_split']} images, "
            f"{q['activation_bits']}-bit activations): top-1 {q['top1']:.2f}% ({q['top1'] - r['top1']:+.2f})  "
            f"top-5 {q['top5']:.2f}%  loss {q['loss']:.4f}"
        )
    try:
        save_json(output, r)
    except OSError as e:  # a full disk, a folder it may not write: the scores above stay on the screen
        print(f"zoo validate: error: could not write {str(output)!r}: {e}", file=sys.stderr)
        return 1
    return 0


def validate_command(parser: argparse.ArgumentParser):  # `zoo validate`
    add_validate_arguments(parser)
    return run_validate


def validate_main(argv: list[str] | None = None) -> int:  # tools/validate.py
    parser = argparse.ArgumentParser(prog="validate.py", description="Top-1/top-5 of a zoo model")
    add_validate_arguments(parser)
    return run_validate(parser.parse_args(argv))
