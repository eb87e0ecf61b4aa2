from __future__ import annotations

import os

import pytest
import torch

# Two cores here: one intra-op thread per core.
torch.set_num_threads(min(2, os.cpu_count() or 1))

from zoo.registry import get_entry  # noqa: E402


def small_size(name: str) -> int:
    """Smallest convenient input side: 32 for CIFAR stems, 64 for ImageNet stems (final map 2x2)."""
    return 32 if get_entry(name).config.stem == "cifar" else 64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
