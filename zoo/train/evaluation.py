"""Loss, top-1 and top-5 of a model over batches, summed over all processes, with optional test-time views."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..optimize import autocast
from .processes import Processes
from .views import tta_views


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Any, procs: Processes, precision: str = "fp32", tta: str | None = None
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) and the images scored, over ``batches`` (already in the model's memory
    format), summed over all ranks. ``tta`` (see ``tta_views``) scores the mean logits of several views of
    each image."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=procs.device)  # loss, top-1 hits, top-5 hits, count
    for x, y in batches:
        x, y = x.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
        with autocast(procs.device, precision):
            views = tta_views(x, tta)
            logits = sum(model(v).float() for v in views) / len(views)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == y[:, None]
        # summed where they are: no host sync per batch
        sums[:3] += torch.stack([F.cross_entropy(logits, y, reduction="sum"), hits[:, 0].sum(), hits.any(1).sum()])
        sums[3] += len(y)  # not torch.tensor(n, device=cuda): a copy from the host that waits for the GPU
    loss, top1, top5_hits, n = procs.sum(sums).tolist()
    scored, n = int(n), max(n, 1)
    return {"loss": loss / n, "acc1": 100 * top1 / n, "acc5": 100 * top5_hits / n, "images": scored}
