"""Several models as one: the mean of their logits. Distillation's teachers, and ``zoo validate --model A B``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """The members' mean float32 logits for an input normalized with ``mean``/``std``.

    Each member whose pretrained config has other statistics gets the input re-normalized to its own
    (``x * scale + shift``), so members trained with different normalizations still see what they expect.
    ``pretrained_cfg`` is the first member's, the preprocessing the ensemble's input follows.
    """

    def __init__(self, members: Sequence[nn.Module], *, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.pretrained_cfg = getattr(members[0], "pretrained_cfg", None)
        self.num_classes = getattr(members[0], "num_classes", None)
        given = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.affine: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for m in self.members:
            cfg = getattr(m, "pretrained_cfg", None) or {"mean": mean, "std": std}  # none: as the input's
            m_mean, m_std = torch.tensor(cfg["mean"]).view(1, -1, 1, 1), torch.tensor(cfg["std"]).view(1, -1, 1, 1)
            same = torch.equal(m_mean, given[0]) and torch.equal(m_std, given[1])
            self.affine.append(None if same else (given[1] / m_std, (given[0] - m_mean) / m_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = []
        for member, affine in zip(self.members, self.affine, strict=True):
            logits.append(member(x if affine is None else x * affine[0].to(x) + affine[1].to(x)).float())
        return torch.stack(logits).mean(0)
