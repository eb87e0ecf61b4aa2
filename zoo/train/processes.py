"""Where a training process sits: rank, world size, device, the process group and its collectives."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..hardware import keep_freed_memory


def launch_command() -> str:
    """The command line that reproduces this run, with the launcher and process layout it ran under."""
    script, *rest = sys.argv
    program = ["python", script] if script.endswith(".py") else [Path(script).name]  # tools/train.py or `zoo`
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return shlex.join([*program, *rest])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = [f"--nnodes={world // per_node}"] if world > per_node else []
    no_python = [] if script.endswith(".py") else ["--no-python"]
    return shlex.join(["torchrun", *nodes, f"--nproc_per_node={per_node}", *no_python, program[-1], *rest])


def backend(cuda: bool) -> str:
    """The process group's backend: on GPUs nccl for CUDA tensors and gloo for the CPU ones (the time
    budget's tick, a checkpoint's small sums), since nccl alone cannot reduce a CPU tensor."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


@dataclass
class Processes:
    """Where this process sits: rank, world size and device (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str) -> Processes:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device", "'cuda' was asked for but no CUDA device is available")
        dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(dev)
            # Training batches keep one shape (drop_last): cuDNN may time its algorithms once and keep the fastest,
            # as timm's train.py and the benchmark's train row let it. (A GPU run is not bit-exact anyway.)
            torch.backends.cudnn.benchmark = True
        else:
            keep_freed_memory()  # each step's activations reused, not page-faulted in again (6-9% of a step)
        # Under torchrun (which sets RANK) the group exists even for one process: --sync-bn and the
        # collectives then run exactly as they would on many.
        if world > 1 or "RANK" in os.environ:
            dist.init_process_group(backend(cuda))
        return cls(dist.get_rank() if dist.is_initialized() else 0, world, dev)

    @property
    def grouped(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.grouped:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.grouped:
            dist.all_reduce(t)
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as rank 0 has it, on every rank."""
        if self.grouped:
            dist.broadcast(t, src=0)
        return t

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Make ``module``'s float buffers (batch norms' running statistics) their mean over the ranks, as timm's
        ``distribute_bn``: without SyncBatchNorm each rank's hold its own batches' statistics, so the ranks would
        score different models and rank 0 save yet another."""
        if self.grouped:
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer)
                    buffer.div_(self.world)

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's weights and buffers (rank 0 read them from a file the others may not see)."""
        if self.grouped:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def stop(self) -> None:
        if self.grouped:
            dist.destroy_process_group()
