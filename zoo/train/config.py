"""TrainConfig: everything a training run is told, in one frozen dataclass, checked once before any work.

The command line parses into it (``zoo train``, ``tools/train.py``) and the engine takes
only it. Each field is named after its flag (``batch_size`` is ``--batch-size``), so every
error names the flag, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_choice, check_int
from ..hardware import PRECISIONS
from ..optimize import COMPILE_MODES
from .data import DATASETS
from .recipe import OPTIMIZERS, SCHEDULES
from .views import TTA_MODES

NORMS = ("model", "dataset", "half")
DEVICES = ("auto", "cpu", "cuda")
# Which schedules read which schedule flags: a flag the chosen schedule ignores is an error, not a no-op.
SCHEDULE_FLAGS = {"milestones": ("multistep",), "t_max": ("cosine",), "min_lr_factor": ("cosine", "linear")}
# What a resumed run must keep: the schedule, the model and the optimizer's saved state are laid out from these.
RESUME_KEYS = ("model", "dataset", "epochs", "batch_size", "lr", "schedule", "warmup_epochs", "milestones", "t_max",
               "min_lr_factor", "gamma", "optimizer", "momentum", "nesterov", "weight_decay", "decay_norm_and_bias",
               "time_budget", "val_split", "split_seed", "seed", "ema_decay", "freeze_stages", "in_chans",
               "drop_rate", "drop_path_rate", "model_kwargs", "norm")  # fmt: skip


# What changes how the resumed epochs train without changing the schedule's layout: allowed, but named.
# A moved --root among them: what it holds is checked by the layout and the classes when resuming.
TRAINING_KEYS = ("crop_pad", "flip", "cutout", "trivial_augment", "random_erasing", "label_smoothing", "clip_grad",
                 "teacher", "distill_weight", "distill_temperature", "teacher_tta", "precision", "image_size",
                 "sync_bn", "in_memory", "root")  # fmt: skip


# Fields whose None means "not given" (off, or a default that depends on other fields).
OPTIONAL = frozenset({"in_chans", "image_size", "t_max", "time_budget", "drop_rate", "drop_path_rate", "min_lr_factor",
                      "warmup_epochs"})  # fmt: skip


def _check_teacher(spec: str) -> None:
    """A teacher must name weights: a registered tag or architecture with weights, or a model folder (as
    ``local-dir:PATH`` or a plain path, as ``load_teacher`` takes them)."""
    from ..errors import ZooError
    from ..registry import get_weights

    if spec.startswith("hf-hub:"):
        return  # its config.json is on the Hub: looked at when the teachers load
    folder = Path(spec.removeprefix("local-dir:")).expanduser()
    if spec.startswith("local-dir:") or folder.is_dir():  # a model folder, such as a run's best checkpoint
        if not (folder / "config.json").is_file():
            raise ConfigError("--teacher", f"{spec!r}: no config.json in that folder")
        return
    try:
        get_weights(spec)
    except ZooError as e:
        raise ConfigError("--teacher", f"{spec!r} names no weights: {e}") from e


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "cifar10"
    root: str = "data"
    download: bool = False
    val_split: float = 0.1
    split_seed: int = 0
    cache_dir: str | None = None
    in_memory: bool | None = None  # None: decide from a sample of the images
    workers: int = 2
    pin_memory: bool = False
    # model
    model: str = "resnet20"
    pretrained: bool = False
    freeze_stages: int = -1  # -1: none; k: the stem and the first k stages (checked against the model)
    in_chans: int | None = None
    drop_rate: float | None = None
    drop_path_rate: float | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # recipe
    epochs: int = 30
    time_budget: float | None = None  # minutes
    batch_size: int = 256
    lr: float = 0.2
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    schedule: str = "onecycle"
    warmup_epochs: float | None = None  # None: 25% for onecycle and linear, 20% for triangular, else 0
    milestones: tuple[float, ...] | None = None  # None: 50% and 75% for multistep
    gamma: float = 0.1
    min_lr_factor: float | None = None  # None: 0
    t_max: int | None = None
    label_smoothing: float = 0.0
    clip_grad: float = 0.0
    ema_decay: float = 0.0
    teacher: tuple[str, ...] = ()
    distill_weight: float = 0.9
    distill_temperature: float = 4.0
    teacher_tta: str | None = None
    crop_pad: int = 4
    flip: bool = True
    cutout: int = 0  # side of a square set to the mean colour per image (DeVries & Taylor 2017); 0: off
    trivial_augment: bool = False
    random_erasing: float = 0.0
    image_size: int | None = None
    norm: str = "model"
    # speed
    precision: str = "auto"  # resolved by the device when the run starts (zoo.hardware.resolve_precision)
    channels_last: bool = True  # NHWC: the fast layout (fp32 on AVX2: 76% of the conv ceiling, NCHW 61%)
    compile: bool = False
    compile_mode: str = "default"
    sync_bn: bool = False
    device: str = "auto"
    # run
    output: str = "runs/train"
    resume: bool | str | None = None  # True: output/last; a path: that checkpoint
    overwrite: bool = False
    eval_every: int = 1
    keep_checkpoints: int = 1
    seed: int = 0
    recipe: str | None = None  # the preset the run started from (zoo train --recipe); its flags are the fields

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # frozen: normalized and defaults only
        set_("teacher", tuple(self.teacher))
        set_("model_kwargs", dict(self.model_kwargs))
        if self.milestones is not None:
            set_("milestones", tuple(float(m) for m in self.milestones))
        self._check()
        if self.warmup_epochs is None:
            share = {"onecycle": 0.25, "linear": 0.25, "triangular": 0.2}.get(self.schedule, 0.0)
            set_("warmup_epochs", share * self.epochs)
        if self.milestones is None:
            set_("milestones", (0.5 * self.epochs, 0.75 * self.epochs) if self.schedule == "multistep" else ())

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """From parsed arguments (``vars(namespace)``) or a run's ``args.json``; other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def resume_differences(self, saved: Mapping[str, Any], keys: tuple[str, ...] = RESUME_KEYS) -> list[str]:
        """What this config changes against a run's saved arguments, in ``keys`` (by default what its schedule and
        model depend on)."""
        ours = self.to_dict()
        return [f"{flag(k)} {saved[k]!r} -> {ours[k]!r}" for k in keys if k in saved and saved[k] != ours[k]]

    def _check(self) -> None:
        choices = {"dataset": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS,
                   "norm": NORMS, "device": DEVICES}  # fmt: skip
        for name, allowed in choices.items():
            check_choice(flag(name), getattr(self, name), allowed)
        if self.teacher_tta is not None:
            check_choice("--teacher-tta", self.teacher_tta, TTA_MODES)
        for spec in self.teacher:  # a typo is named now, not after the data has loaded
            _check_teacher(spec)
        check_choice("--compile-mode", self.compile_mode, COMPILE_MODES)
        for name in ("epochs", "batch_size", "eval_every", "keep_checkpoints", "in_chans", "image_size", "t_max"):
            if getattr(self, name) is not None or name not in OPTIONAL:
                check_int(flag(name), getattr(self, name))
        for name in ("workers", "crop_pad", "cutout"):
            check_int(flag(name), getattr(self, name), 0)
        if self.in_chans not in (None, 3):  # every dataset the trainer reads decodes to RGB
            raise ConfigError("--in-chans", f"the trainer's images are RGB: expected 3 (or leave it out), got "
                              f"{self.in_chans!r}")  # fmt: skip
        if self.freeze_stages < -1:
            raise ConfigError("--freeze-stages", f"expected -1 (none) or a stage count >= 0, got {self.freeze_stages}")
        ranges = {  # name: (low, high, low included, high included, what is allowed)
            "lr": (0, math.inf, False, False, "a learning rate > 0"),
            "weight_decay": (0, math.inf, True, False, "a number >= 0"),
            "momentum": (0, 1, True, False, "a number in [0, 1)"),
            "gamma": (0, 1, False, True, "a factor in (0, 1]"),
            "clip_grad": (0, math.inf, True, False, "a gradient norm >= 0 (0: off)"),
            "ema_decay": (0, 1, True, False, "a decay in [0, 1) (0: off)"),
            "label_smoothing": (0, 1, True, False, "a fraction in [0, 1)"),
            "random_erasing": (0, 1, True, False, "a probability in [0, 1)"),
            "val_split": (0, 1, False, False, "a fraction in (0, 1)"),
            "distill_weight": (0, 1, True, True, "a weight in [0, 1]"),
            "distill_temperature": (0, math.inf, False, False, "a temperature > 0"),
            "time_budget": (0, math.inf, False, False, "a positive number of minutes"),
            "drop_rate": (0, 1, True, False, "a probability in [0, 1)"),
            "drop_path_rate": (0, 1, True, False, "a probability in [0, 1)"),
            "min_lr_factor": (0, 1, True, True, "a fraction of the peak lr in [0, 1]"),
            "warmup_epochs": (0, self.epochs, True, False, f"epochs in [0, {self.epochs}) (shorter than the run)"),
        }
        for name, (low, high, low_ok, high_ok, allowed) in ranges.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            inside = (low <= value if low_ok else low < value) and (value <= high if high_ok else value < high)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not inside:
                raise ConfigError(flag(name), f"expected {allowed}, got {value!r}")
        for name, schedules in SCHEDULE_FLAGS.items():
            value = getattr(self, name)
            if value not in (None, ()) and self.schedule not in schedules:  # (): no milestones, as normalized
                raise ConfigError(
                    flag(name), f"the {self.schedule} schedule ignores it (it is for {' and '.join(schedules)})"
                )
        for m in self.milestones or ():
            if not 0 < m < self.epochs:
                raise ConfigError("--milestones", f"expected epochs inside the run (0, {self.epochs}), got {m!r}")
        if self.resume and self.overwrite:
            raise ConfigError("--overwrite", "replaces the run that --resume would continue; give one of them")
