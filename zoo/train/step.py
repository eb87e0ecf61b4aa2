"""One training step and one epoch: the loop's state (:class:`Step`), the clock (:class:`Budget`), divergence.

``engine.py`` sets a run up from its TrainConfig and calls :func:`train_one_epoch` epoch by epoch;
``checkpoints.py`` saves and restores a :class:`Step`'s state.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TrainingDiverged
from ..optimize import autocast
from .distill import Distillation
from .processes import Processes
from .recipe import ModelEma

log = logging.getLogger("zoo.train")


# --- one epoch ------------------------------------------------------------------------------------


@dataclass
class Budget:
    """How far the run has come, by steps and, with ``--time-budget``, by the clock.

    The schedule is laid out over ``total_steps``; each step advances it by one step, or further when
    the wall time spent (plus ``reserve``: what the last validation and checkpoint took, kept for the
    final ones) is a larger fraction of ``seconds``. A run on a slow machine thus compresses its
    schedule to fit the budget and still anneals; it is done when the schedule reaches its end."""

    total_steps: int
    seconds: float = math.inf
    start: float = field(default_factory=time.perf_counter)  # perf_counter() at elapsed time 0
    reserve: float = 0.0

    def advance(self, schedule: torch.optim.lr_scheduler.LRScheduler, procs: Processes) -> bool:
        """Step ``schedule`` to the run's progress; True when it has reached the end."""
        tick = schedule.last_epoch + 1
        if math.isfinite(self.seconds):
            spent = time.perf_counter() - self.start + self.reserve
            tick = max(tick, math.ceil(self.total_steps * spent / self.seconds))
            tick = int(procs.broadcast(torch.tensor([tick])).item())  # all ranks follow rank 0's clock
        schedule.last_epoch = min(tick, self.total_steps) - 1
        schedule.step()  # the schedules are closed-form in last_epoch
        return self.done(schedule)

    def done(self, schedule: torch.optim.lr_scheduler.LRScheduler) -> bool:
        return schedule.last_epoch >= self.total_steps


@dataclass
class Step:
    """What a training step needs besides the batch."""

    model: nn.Module  # what is called: maybe compiled, maybe DDP-wrapped
    raw: nn.Module  # the bare model, for EMA and clipping
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    budget: Budget
    criterion: nn.Module
    distill: Distillation | None  # blends the teachers' soft targets into the loss
    ema: ModelEma | None
    scaler: torch.amp.GradScaler | None
    clip_grad: float
    precision: str
    frozen: list[str]


NAN_CHECK_EVERY = 16  # steps between looks at the loss; a diverged run still stops within its epoch


def train_one_epoch(step: Step, batches: Any, procs: Processes, epoch: int, epochs: int) -> dict[str, float]:
    """One pass over ``batches``, or less when the budget runs out during it (``done`` in the result)."""
    from tqdm import tqdm

    step.model.train()
    for name in step.frozen:  # frozen stem/stages keep their norms in eval mode
        getattr(step.raw, name).eval()
    sums = torch.zeros(3, dtype=torch.float64, device=procs.device)  # loss, hits, count
    nonfinite = torch.zeros(1, device=procs.device)  # steps whose loss was NaN or infinite
    start, done = time.perf_counter(), False
    bar = tqdm(
        total=len(batches), desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not procs.main, leave=False,
        mininterval=0.5 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s, not every step
    )  # fmt: skip
    for i, (x, y) in enumerate(batches):
        x, y = x.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
        with autocast(procs.device, step.precision):
            logits = step.model(x)
            loss = step.criterion(logits.float(), y)
            if step.distill is not None:
                loss = step.distill(loss, logits.float(), x)
        nonfinite += (~torch.isfinite(loss.detach())).float()
        # Looked at every NAN_CHECK_EVERY steps and after the loop, not every step: each look is a host sync.
        if (i + 1) % NAN_CHECK_EVERY == 0 and procs.sum(nonfinite).item():
            bar.close()
            raise _diverged(epoch, i + 1)
        step.optimizer.zero_grad(set_to_none=True)
        if step.scaler is not None:
            step.scaler.scale(loss).backward()
            step.scaler.unscale_(step.optimizer)
        else:
            loss.backward()
        if step.clip_grad:
            nn.utils.clip_grad_norm_(step.raw.parameters(), step.clip_grad)
        if step.scaler is not None:
            step.scaler.step(step.optimizer)
            step.scaler.update()
        else:
            step.optimizer.step()
        done = step.budget.advance(step.schedule, procs)
        if step.ema is not None:
            step.ema.update(step.raw)
        n = len(y)
        sums[:2] += torch.stack([loss.detach() * n, (logits.argmax(1) == y).sum()])
        sums[2] += n  # a Python number: torch.tensor(n, device=cuda) would copy from the host and wait for the GPU
        if procs.main and (i % 10 == 0 or i + 1 == len(batches)):
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{sums[0] / sums[2]:.3f}",
                acc=f"{100 * sums[1] / sums[2]:.1f}",
                img_s=f"{sums[2] * procs.world / elapsed:.0f}",
                lr=f"{step.optimizer.param_groups[0]['lr']:.3g}",
                refresh=False,
            )
        bar.update()
        if done:
            break
    bar.close()
    # the steps since the last look, however the loop ended (its last batch, the budget, a loader that yielded
    # fewer batches than it has): nothing non-finite reaches a checkpoint
    if procs.sum(nonfinite).item():
        raise _diverged(epoch, i + 1)
    elapsed = time.perf_counter() - start
    loss_sum, hits, n = procs.sum(sums).tolist()
    return {"loss": loss_sum / n, "acc": 100 * hits / n, "img_per_s": n / elapsed, "seconds": elapsed, "done": done}


def _diverged(epoch: int, steps: int) -> TrainingDiverged:
    return TrainingDiverged(
        f"the loss became NaN or infinite at epoch {epoch} (within its first {steps} steps); stopped without "
        "saving. The last good checkpoint is kept: start again with a lower --lr, --clip-grad or --precision "
        "fp32 (from it: --model local-dir:OUTPUT/last --pretrained); --resume would repeat the same run"
    )
