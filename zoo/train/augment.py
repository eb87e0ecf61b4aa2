"""Augmentation of whole batches of uint8 images, as tensor ops: flip, translate and cutout with no per-image
Python (the fast recipes' augmentations); TrivialAugment and random erasing go image by image.

Every draw comes from the generator given, seeded by (seed, epoch, rank), so an epoch is the same whether
the run was resumed before it or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    crop_pad: int = 4  # random crop after reflect-padding (32x32 data); 0 disables
    flip: bool = True
    cutout: int = 0  # side of a square set to the mean colour, per image (DeVries & Taylor 2017); 0 disables
    trivial_augment: bool = False  # TrivialAugmentWide (Muller & Hutter 2021)
    random_erasing: float = 0.0  # probability per image (Zhong et al. 2017)


def augment_batch(x: torch.Tensor, augment: Augment, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``x`` (N, C, H, W) uint8, augmented as ``augment`` says; cutout squares take the colour ``fill`` (C,)."""
    a, (n, _, h, w) = augment, x.shape
    if a.cutout:  # before the translation, as airbench: a square may be shifted partly out of the crop
        x = _cutout(x, a.cutout, fill, g)
    if a.trivial_augment:
        from torchvision.transforms import v2

        policy = v2.TrivialAugmentWide()
        with torch.random.fork_rng():  # torchvision draws from the global RNG
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
            x = torch.stack([policy(img) for img in x])
    if a.crop_pad:
        p = a.crop_pad
        padded = F.pad(x.float(), (p, p, p, p), mode="reflect").to(torch.uint8)
        dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1), generator=g)
        rows = (dy + torch.arange(h)).view(n, 1, h, 1)
        cols = (dx + torch.arange(w)).view(n, 1, 1, w)
        x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols]
    if a.flip:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if a.random_erasing:
        x = _random_erasing(x, a.random_erasing, g)
    return x


def _cutout(x: torch.Tensor, side: int, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One ``side`` x ``side`` square per image at its own random place, wholly inside it, set to ``fill`` (the
    mean colour: 0 once normalized); the squares of the whole batch drawn as one mask tensor, no loop."""
    n, _, h, w = x.shape
    top, left = (torch.randint(0, size - side + 1, (n, 1, 1, 1), generator=g) for size in (h, w))
    rows, cols = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)  # (n, 1, h, w)
    return torch.where(inside, fill.view(1, -1, 1, 1), x)


def _random_erasing(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Erase one random rectangle (2%-33% of the area, aspect 0.3-3.3) with noise, per image with prob ``p``."""
    x = x.clone()
    n, c, h, w = x.shape
    for i in torch.nonzero(torch.rand(n, generator=g) < p).flatten().tolist():
        area = h * w * (0.02 + 0.31 * torch.rand(1, generator=g).item())
        aspect = torch.exp(torch.empty(1).uniform_(-1.2, 1.2, generator=g)).item()
        eh, ew = min(h, round((area * aspect) ** 0.5)), min(w, round((area / aspect) ** 0.5))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=g))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=g))
        x[i, :, top : top + eh, left : left + ew] = torch.randint(0, 256, (c, eh, ew), generator=g, dtype=torch.uint8)
    return x
