"""The parts of a training recipe: optimizer, learning-rate schedule, weight EMA."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "linear", "triangular", "multistep", "constant")
TRIANGULAR_START = 0.2  # the triangular schedule starts at 0.2x the peak (airbench's ResNet-18 baseline)

# Presets of `zoo train --recipe NAME`: TrainConfig fields; any flag given on the command line overrides its own.
RECIPES: dict[str, dict[str, object]] = {
    # KellerJordan/cifar10-zoo, airbench/baselines/train_resnet18_94.py: 93.4% plain, 93.85% flip TTA, 94.05% flip
    # + 1-pixel translate TTA on the CIFAR-10 test set after 50,000 training images (26 epochs, about 1.3 M images).
    # It runs fp16 weights with fp32 norms on a GPU; here autocast in the machine's precision does that job.
    "resnet18-fast": {
        "model": "resnet18_cifar", "epochs": 26, "batch_size": 500, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9,
        "nesterov": True, "weight_decay": 5e-4, "decay_norm_and_bias": True, "schedule": "triangular",
        "label_smoothing": 0.0, "crop_pad": 4, "flip": True, "cutout": 12, "trivial_augment": False,
        "random_erasing": 0.0, "channels_last": True,
    },
}  # fmt: skip


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Two groups: weights of convs and linears decay; norms and biases (1-d tensors) do not by default."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 or decay_norm_and_bias else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError("--optimizer", f"{name!r} is not one of {', '.join(OPTIMIZERS)}")


def lr_factor(
    step: int,
    total_steps: int,
    *,
    schedule: str,
    warmup_steps: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_factor: float = 0.0,
    cosine_steps: int | None = None,
) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) for cosine, linear, triangular, multistep and
    constant.

    Each starts with a linear warm-up; cosine then follows half a cosine to ``min_factor`` over
    ``cosine_steps`` (default: the rest); linear falls in a straight line to ``min_factor`` just after the
    last step (the best-known schedule for a fixed budget: Li et al. 2020, "Budgeted Training");
    triangular is airbench's: from 0.2 at the first step up to 1 at the end of the warm-up, down to 0 at
    the last; multistep multiplies by ``gamma`` at each milestone step.
    """
    if schedule == "triangular":
        points = [(0, TRIANGULAR_START), (warmup_steps, 1.0), (total_steps, 0.0)]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if step <= x1 and x1 > x0:
                return y0 + (y1 - y0) * (step - x0) / (x1 - x0)
        return 0.0 if step >= total_steps else 1.0
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - warmup_steps
    if schedule == "cosine":
        span = max(1, (cosine_steps or total_steps) - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(after, span) / span))
    if schedule == "linear":
        span = max(1, total_steps - warmup_steps)  # reaches min_factor just after the last step
        return 1 - (1 - min_factor) * min(after, span) / span
    if schedule == "multistep":
        return gamma ** sum(step >= m for m in milestones)
    if schedule == "constant":
        return 1.0
    raise ConfigError("--schedule", f"{schedule!r} is not one of {', '.join(SCHEDULES)}")


def make_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    momentum: float = 0.9,
    **factor_options: Any,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule. onecycle is Smith's 1cycle as torch implements it (Smith & Topin 2018):
    the learning rate rises from peak/25 over the warm-up and anneals (cosine) to peak/25e4, while
    the momentum (Adam's beta1) cycles the other way between ``momentum`` -/+ 0.05, kept in [0, 0.99]."""
    if name == "onecycle" and total_steps < 3:  # torch's two phases need a step each after the first
        name, warmup_steps = "constant", 0
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            # each phase at least one step long, or OneCycleLR divides by zero
            pct_start=min(max(warmup_steps, 2) / total_steps, (total_steps - 1) / total_steps),
            anneal_strategy="cos",
            cycle_momentum=momentum > 0,  # --momentum 0 is plain SGD: nothing to cycle
            base_momentum=max(0.0, momentum - 0.05),
            max_momentum=min(0.99, momentum + 0.05),  # 1 or more: the steps would grow without end
        )
    factor = partial(lr_factor, total_steps=total_steps, schedule=name, warmup_steps=warmup_steps, **factor_options)
    factor(0)  # an unknown name fails here, with its message
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEma:
    """Exponential moving average of a model's weights and of its float buffers (the norms' running
    statistics, so they match the averaged weights, as timm's ModelEmaV3); integer buffers (batch counts)
    are copied. Ours, not torch's AveragedModel(use_buffers=True): that one averages the integer counts
    too, so they drift from the model's (a test shows both)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged, source = [], []
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_v.is_floating_point():
                averaged.append(ema_v)
                source.append(v.detach())
            else:
                ema_v.copy_(v)
        torch._foreach_lerp_(averaged, source, 1.0 - self.decay)
