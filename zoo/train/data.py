"""Training data: CIFAR and image folders, in memory for small images, streamed for large ones.

Small images (CIFAR-sized) are decoded once into a uint8 tensor, cached on disk,
and augmented a whole batch at a time with tensor ops: on a 2-core CPU this
keeps the cores on the model instead of on JPEG decoding and per-image PIL
transforms. Large images stream through a DataLoader with workers.

Every source of randomness is seeded by (seed, epoch[, rank]), so an epoch is
the same whether the run was resumed before it or not.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..data import open_image
from ..errors import ConfigError
from ..hub import zoo_cache_dir
from ..io import save_torch
from .archive import unpack_once
from .augment import Augment, augment_batch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
DATASETS = ("cifar10", "cifar100", "imagefolder")
IN_MEMORY_MAX_SIDE = 64  # images up to this side are decoded once and augmented as tensors


@dataclass
class Split:
    """One split of a dataset: in-memory uint8 images, or image files decoded per item."""

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, H, W) uint8 when in memory
    files: list[str] = field(default_factory=list)  # when streamed
    skipped: int = 0  # unreadable images left out

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split | None  # a held-out test split, reported at the end, never used to choose
    classes: list[str]
    in_memory: bool
    val_carved: bool = True  # val is a seeded share of the training images (--val-split, --split-seed), not its own

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images (in memory only)."""
        if self.train.images is None:
            raise ConfigError("--norm", "'dataset' statistics need in-memory (small) images; use --norm model")
        x = self.train.images.float().div_(255)
        return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


# --- sources -------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    val_split: float = 0.1,
    split_seed: int = 0,
    download: bool = False,
    cache_dir: Path | None = None,
    in_memory: bool | None = None,
) -> Dataset:
    """Load ``name`` from ``root``; carve a stratified, seeded validation split when there is none."""
    if name not in DATASETS:
        raise ConfigError("--dataset", f"{name!r} is not one of {', '.join(DATASETS)}")
    if not 0.0 < val_split < 1.0:
        raise ConfigError("--val-split", f"expected a fraction in (0, 1), got {val_split!r}")
    cache_dir = cache_dir or zoo_cache_dir()
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, Path(root), val_split, split_seed, download)
    return _load_image_folder(Path(root), val_split, split_seed, cache_dir, in_memory)


def _load_cifar(name: str, root: Path, val_split: float, split_seed: int, download: bool) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train, test = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise ConfigError("--root", f"{name} not found under {str(root)!r}; pass --download to fetch it") from e

    def split(ds: Any) -> Split:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        return Split(torch.tensor(ds.targets, dtype=torch.int64), images)

    full = split(train)
    tr, va = _stratified_split(full.labels, val_split, split_seed)
    return Dataset(subset(full, tr), subset(full, va), split(test), list(train.classes), in_memory=True)


def _find_root(path: Path) -> Path:
    """The folder holding ``train/`` (an archive may wrap it in one more folder)."""
    if (path / "train").is_dir():
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    raise ConfigError("--root", f"{str(path)!r} has no train/<class>/ folders (expected root/train/<class>/*.jpg)")


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = classes or found
    if not classes:
        raise ConfigError("--root", f"{str(folder)!r} has no class folders")
    unknown = set(found) - set(classes)
    if unknown:
        raise ConfigError("--root", f"{str(folder)!r} has classes {sorted(unknown)} that train/ does not have")
    files, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((folder / name).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(str(p))
                labels.append(label)
    if not files:  # e.g. ImageNet's raw val/ layout, all files in one folder: nothing to score, said now
        raise ConfigError("--root", f"{str(folder)!r} has no images in class folders ({folder.name}/<class>/*; "
                          f"suffixes {' '.join(sorted(IMAGE_EXTENSIONS))})")  # fmt: skip
    return classes, files, labels


def _load_image_folder(
    root: Path, val_split: float, split_seed: int, cache_dir: Path, in_memory: bool | None
) -> Dataset:
    if not root.exists():
        raise ConfigError("--root", f"{str(root)!r} does not exist")
    if root.is_file():
        if not root.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise ConfigError("--root", f"{str(root)!r} is a file; expected a folder or a .tar.gz of one")
        root = unpack_once(root, cache_dir)
    root = _find_root(root)
    classes, files, labels = _scan(root / "train")
    train = Split(torch.tensor(labels, dtype=torch.int64), files=files)
    if (root / "val").is_dir():
        _, vfiles, vlabels = _scan(root / "val", classes)
        val = Split(torch.tensor(vlabels, dtype=torch.int64), files=vfiles)
    else:
        tr, va = _stratified_split(train.labels, val_split, split_seed)
        train, val = subset(train, tr), subset(train, va)
    if in_memory is None:  # judged on a sample across all classes (the files are in class order)
        in_memory = _small_images(files[:: max(1, len(files) // 32)])
    if in_memory:
        train = _decode_cached(train, cache_dir)
        val = _decode_cached(val, cache_dir, size=(train.images.shape[3], train.images.shape[2]))  # training's size
    return Dataset(train, val, None, classes, in_memory, val_carved=not (root / "val").is_dir())


def _small_images(sample: Sequence[str]) -> bool:
    """Whether every readable image of ``sample`` is small enough to decode into memory."""
    sides = []
    for path in sample:
        try:
            with Image.open(path) as im:
                sides.append(max(im.size))
        except (OSError, UnidentifiedImageError):
            continue
    return bool(sides) and max(sides) <= IN_MEMORY_MAX_SIDE


def read_image(path: str) -> Image.Image | None:
    """An RGB image, or None when the file cannot be decoded (counted by the caller, not fatal)."""
    try:
        return open_image(path)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        log.debug("unreadable image %s: %s", path, e)
        return None


def _decode_cached(split: Split, cache_dir: Path, size: tuple[int, int] | None = None) -> Split:
    """Decode every image of ``split`` once into a uint8 tensor, cached on disk by content. ``size`` (width,
    height): what every image is resized to if it differs; None: the first readable image's size."""
    digest = hashlib.sha256(repr(size).encode())
    for f, label in zip(split.files, split.labels.tolist(), strict=True):  # labels too: a class added moves them
        st = os.stat(f)
        digest.update(f"{f}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    cache = cache_dir / "decoded" / f"{digest.hexdigest()[:24]}.pt"
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        return Split(data["labels"], data["images"], skipped=int(data["skipped"]))
    from tqdm import tqdm

    images, labels, resized = [], [], 0
    for path, label in tqdm(zip(split.files, split.labels.tolist(), strict=True), total=len(split), desc="decode"):
        im = read_image(path)
        if im is None:
            continue
        size = size or im.size
        if im.size != size:  # the policy for mixed sizes: resized to the first image's (train's), counted, logged
            im = im.resize(size, Image.BILINEAR)
            resized += 1
        images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size[1], size[0], 3))
        labels.append(label)
    skipped = len(split) - len(images)
    if resized:
        log.warning("resized %d image(s) of another size to %dx%d (the training images') to decode them into memory; "
                    "--no-in-memory streams each image at its own size instead", resized, *size)  # fmt: skip
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", skipped, len(split))
    if not images:
        raise ConfigError("--root", "no readable images found")
    out = Split(torch.tensor(labels), torch.stack(images).permute(0, 3, 1, 2).contiguous(), skipped=skipped)
    save_torch(cache, {"images": out.images, "labels": out.labels, "skipped": skipped})
    return out


def _stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): ``fraction`` of every class goes to val, chosen with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(len(idx) * fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def subset(split: Split, idx: torch.Tensor) -> Split:
    return Split(
        split.labels[idx],
        None if split.images is None else split.images[idx],
        [split.files[i] for i in idx.tolist()] if split.files else [],
        split.skipped,
    )


# --- batches ------------------------------------------------------------------------------------


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


class TensorBatches:
    """Batches of in-memory uint8 images, augmented per batch with tensor ops.

    Sharded across ``world`` ranks: each takes every ``world``-th index of the
    epoch's permutation, which all ranks compute from the same seed.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
        pin_memory: bool = False,
    ) -> None:
        assert split.images is not None
        side = min(split.images.shape[-2:])
        augment = augment or Augment()
        if train and augment.cutout > side:
            raise ConfigError("--cutout", f"a {augment.cutout}-pixel square does not fit {side}-pixel images")
        if train and augment.crop_pad >= side:  # reflect padding mirrors at most side - 1 pixels
            raise ConfigError("--crop-pad", f"expected less than the {side}-pixel side, got {augment.crop_pad}")
        self.split, self.batch_size, self.train, self.augment = split, batch_size, train, augment
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255
        self.seed, self.rank, self.world, self.channels_last = seed, rank, world, channels_last
        self.pin_memory = pin_memory  # CUDA: page-locked batches, so the copy to the device is asynchronous
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.split)
        if not self.train:
            return torch.arange(n)[self.rank :: self.world]  # fewer images than ranks: none on the last ones
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, self.epoch)))
        per_rank = (n // self.world // self.batch_size) * self.batch_size  # full batches, equal on all ranks
        return order[self.rank :: self.world][:per_rank]

    def __len__(self) -> int:  # arithmetic: the trainer asks every step, and a permutation costs milliseconds
        n = len(self.split)
        if self.train:
            return n // self.world // self.batch_size
        mine = len(range(self.rank, n, self.world))
        return -(-mine // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, self.rank, 1))
        for idx in self._indices().split(self.batch_size):
            x, y = self.split.images[idx], self.split.labels[idx]  # type: ignore[index]
            if self.train:
                x = augment_batch(x, self.augment, self.mean.flatten().round().to(torch.uint8), g)
            x = (x.float() - self.mean) / self.std
            x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            yield (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)


class _FileDataset(torch.utils.data.Dataset):
    """Samples ``(image, label, unreadable)``. In training an unreadable file is replaced by the next readable one,
    so every batch is full and every process takes the same steps (a short or missing batch would leave the others
    waiting in the gradient all-reduce); in evaluation it is left out (``None``), each image counted once."""

    def __init__(self, split: Split, transform: Any, substitute: bool) -> None:
        self.split, self.transform, self.substitute = split, transform, substitute

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        for step in range(len(self.split) if self.substitute else 1):
            j = (i + step) % len(self.split)
            image = read_image(self.split.files[j])
            if image is not None:
                return self.transform(image), int(self.split.labels[j]), int(step > 0)
        if self.substitute:
            raise ConfigError("--root", f"has no readable image among its {len(self.split)} training files")
        return None


def _collate(batch: list[tuple[torch.Tensor, int, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; report how many files were unreadable (skipped, not fatal)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good) + sum(b[2] for b in good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), skipped
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), skipped


class FileBatches:
    """Batches of image files through a DataLoader (workers, pinned memory), for large images."""

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        train: bool,
        transform: Any,
        workers: int = 2,
        pin_memory: bool = False,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
    ) -> None:
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        self.dataset = _FileDataset(split, transform, substitute=train)
        # Training: torch's shuffling sampler (equal shares, the remainder dropped). Evaluation: every world-th
        # image, each exactly once (DistributedSampler would pad the last shares with repeats, counted twice).
        self.sampler = (
            DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
            if train else range(rank, len(self.dataset), world)
        )  # fmt: skip
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            drop_last=train,
            collate_fn=_collate,
            persistent_workers=False,
        )
        self.seed, self.rank, self.channels_last, self.skipped = seed, rank, channels_last, 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loader.generator = torch.Generator().manual_seed(_seed(self.seed, self.epoch, self.rank))  # worker seeds
        self.skipped = 0  # per pass: the same unreadable files are met again each epoch
        for x, y, skipped in self.loader:
            self.skipped += skipped
            if len(y):
                yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y
