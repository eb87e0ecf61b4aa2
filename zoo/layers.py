"""Building bricks: norms, activations, pooling.

Names from the config's closed sets map to constructors here, in one table each.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import Act, Norm, Pool

NormFactory = Callable[[int], nn.Module]  # channels -> norm layer
ActFactory = Callable[[], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers.

    The usual choice for detection backbones fine-tuned at small batch sizes.
    Its state-dict keys are BatchNorm2d's, so BN checkpoints load into it.
    Ours, not torchvision.ops.FrozenBatchNorm2d: that one computes the same in fp32 (a test
    checks) but turns a bf16 activation into fp32 under autocast (its buffers promote it), and
    importing torchvision here would double the time of ``import zoo``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # BN has it, a frozen BN needs none
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an (N, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics come from the whole global batch, on any device.

    torch's SyncBatchNorm only runs on GPUs; this one all-reduces per-channel sums
    with an autograd-aware collective, so it also works with gloo on CPUs.
    Outside distributed training it is a plain BatchNorm2d (same state-dict keys).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_tensor([x.numel() / c])])
        total = all_reduce(local)
        count = total[-1]
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * count / max(float(count) - 1, 1.0), momentum)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        return (y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)).to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d in ``module`` with a SyncBatchNorm2d holding the same state."""
        for name, child in module.named_children():
            if type(child) is nn.BatchNorm2d:
                sync = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                sync.load_state_dict(child.state_dict())
                sync.to(child.weight.device)
                if child.affine:  # a frozen stage stays frozen (torch's converter keeps the Parameters themselves)
                    sync.requires_grad_(child.weight.requires_grad)
                setattr(module, name, sync)
            else:
                cls.convert(child)
        return module


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups (Wu & He 2018) where the width allows it, fewer for narrow nets (16 channels).
    return nn.GroupNorm(math.gcd(32, channels), channels)


NORM_LAYERS: dict[Norm, NormFactory] = {
    "batch_norm": nn.BatchNorm2d,
    "frozen_batch_norm": FrozenBatchNorm2d,
    "sync_batch_norm": SyncBatchNorm2d,
    "group_norm": _group_norm,
    "instance_norm": lambda c: nn.InstanceNorm2d(c, affine=True),
    "layer_norm": LayerNorm2d,
}

ACT_LAYERS: dict[Act, ActFactory] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
}

# The norms whose statistics come from the batch in training mode.
BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


class GlobalPool(nn.Module):
    """Pool (N, C, H, W) to (N, C): average, max, or the mean of both."""

    def __init__(self, pool_type: Pool) -> None:
        super().__init__()
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            return x.mean((2, 3))
        if self.pool_type == "max":
            return x.amax((2, 3))
        return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


@contextlib.contextmanager
def _running_stats_restored(module: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the batch-norm running statistics as they were."""
    buffers = [
        b
        for m in module.modules()
        if isinstance(m, BATCH_NORMS) and m.track_running_stats
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved, strict=True):
                b.copy_(s)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` under activation checkpointing, recomputing it in the backward pass.

    The recomputation would update batch-norm running statistics a second time
    (a known wart of checkpointing BN networks); here it does not, so a
    checkpointed training step matches a plain one in loss, gradients and buffers.
    """
    calls = 0

    def run(inp: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return module(inp)
        with _running_stats_restored(module):
            return module(inp)

    return checkpoint(run, x, use_reentrant=False)
