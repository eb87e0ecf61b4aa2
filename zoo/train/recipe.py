"""The parts of a training recipe: optimizer, learning-rate schedule, weight EMA, sync batch norm."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "multistep", "constant")


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
    """Multiplier of the peak learning rate at ``step`` (0-based), with linear warm-up.

    onecycle: linear up over the warm-up, then linear down to ``min_factor`` at the end;
    cosine: warm-up, then half a cosine to ``min_factor`` over ``cosine_steps`` (default: the rest);
    multistep: warm-up, then times ``gamma`` at each milestone step; constant: warm-up only.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - warmup_steps
    if schedule == "onecycle":
        span = max(1, total_steps - warmup_steps)
        return min_factor + (1 - min_factor) * max(0.0, 1 - after / span)
    if schedule == "cosine":
        span = max(1, (cosine_steps or total_steps) - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(after, span) / span))
    if schedule == "multistep":
        return gamma ** sum(step >= m for m in milestones)
    if schedule == "constant":
        return 1.0
    raise ConfigError("--schedule", f"{schedule!r} is not one of {', '.join(SCHEDULES)}")


class ModelEma:
    """Exponential moving average of a model's weights (buffers are copied, not averaged)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
