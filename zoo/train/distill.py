"""Knowledge distillation: the student also learns the softened predictions of fixed teachers
(Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

The teachers see the very batch the student sees, augmentation included (a "consistent" teacher:
Beyer et al. 2022), so their targets follow each crop, flip and erasure, which fixed labels cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import create_model
from ..data import check_class_order
from ..errors import ConfigError
from .ensemble import Ensemble
from .views import tta_views


def load_teacher(spec: str, classes: Sequence[str]) -> nn.Module:
    """A teacher from a registered name with pretrained weights (``resnet56.c10``) or a model folder
    (a training checkpoint such as ``runs/x/best``, or a Hub-layout folder), for data of these ``classes``."""
    path = Path(spec)
    model = create_model(f"local-dir:{path}" if path.is_dir() else spec, pretrained=True)
    predicts = getattr(model, "num_classes", None)
    if predicts != len(classes):
        raise ConfigError("--teacher", f"{spec!r} predicts {predicts} classes, the dataset has {len(classes)}")
    check_class_order(model, classes, "--teacher")
    return model


class Distillation(nn.Module):
    """``(1 - weight) * hard + weight * T^2 * KL(teacher || student)`` at temperature ``T``, the teachers'
    logits averaged (over models and, with ``tta``, over the views of ``views.tta_views``).

    ``mean``/``std`` are the normalization of the student's input; each teacher's input is re-normalized
    to its own pretrained config (see ``Ensemble``), so a teacher trained with other statistics still sees
    what it expects.
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        *,
        weight: float,
        temperature: float,
        mean: Sequence[float],
        std: Sequence[float],
        tta: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ConfigError("--distill-weight", f"expected a number in [0, 1], got {weight}")
        if not temperature > 0:
            raise ConfigError("--distill-temperature", f"expected a positive number, got {temperature}")
        self.teachers = Ensemble([t.eval().requires_grad_(False) for t in teachers], mean=mean, std=std)
        self.weight, self.temperature, self.tta = weight, temperature, tta

    @torch.no_grad()  # not inference_mode: the targets enter the student's autograd graph
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' mean logits for the batch ``x`` (float32)."""
        return torch.stack([self.teachers(v) for v in tta_views(x, self.tta)]).mean(0)

    def forward(self, hard: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Blend the hard-label loss ``hard`` of the student's float ``logits`` with the distillation term."""
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits / t, dim=1), F.log_softmax(self.targets(x) / t, dim=1),
            reduction="batchmean", log_target=True,
        )  # fmt: skip
        return (1.0 - self.weight) * hard + self.weight * t * t * soft
