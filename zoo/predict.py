"""Classify image files: the weights' own preprocessing and label names, on a chosen runtime.

``Classifier(model, runtime="onnxruntime")(files)`` yields one :class:`Prediction` per
readable image; unreadable files are skipped and kept in ``classifier.skipped`` (of the last call).
A model from elsewhere (torchvision's) is taken too, given its preprocessing in ``data_config``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .data import check_data_config_keys, create_transform, label_names, open_image, resolve_data_config
from .errors import ConfigError, not_one_of, require
from .hardware import resolve_precision
from .train.views import tta_views

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "fast", "onnxruntime", "openvino")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prediction:
    path: str
    topk: list[dict[str, Any]]  # [{"index": 3, "label": "cat", "score": 0.91}, ...], best first


def find_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files named, and the image files under the folders named (recursively, sorted).

    A path that does not exist is a ConfigError naming it; a file named explicitly is taken whatever
    its suffix (an unreadable one is skipped later, and counted).
    """
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        elif path.exists():  # a pipe, a socket, a device: Pillow reads files it can seek in
            raise ConfigError("PATH", f"{str(given)!r} is not a regular file or a folder")
        else:
            raise ConfigError("PATH", f"{str(given)!r} does not exist")
    return found


def runner_precision(runtime: str, precision: str, device: torch.device) -> str:
    """The precision ``runtime`` computes in: ``precision`` resolved for the torch runtimes ("auto": the
    device's fastest native one); an ONNX runtime runs its fp32 file, OpenVINO held to fp32 too (its own default
    is bf16 on a bf16 CPU)."""
    if runtime not in RUNTIMES:
        raise ConfigError("--runtime", not_one_of(runtime, RUNTIMES))
    if runtime in ("onnxruntime", "openvino"):
        if precision not in ("auto", "fp32"):
            raise ConfigError("--precision", f"{precision!r}: --runtime {runtime} runs an fp32 ONNX file; give "
                              "auto or fp32, or --runtime torch/fast")  # fmt: skip
        return "fp32"
    return resolve_precision(precision, device, flag="--precision")


def make_runner(model: nn.Module, runtime: str, example: torch.Tensor, precision: str = "auto") -> Runner:
    """images (fp32, NCHW) -> logits through ``runtime``: ``torch`` (eager, autocast to ``precision``), ``fast``
    (``optimize_for_inference`` in ``precision``), ``onnxruntime`` or ``openvino`` (an ONNX export).
    ``precision`` "auto" is the device's fastest native one (bf16 where the CPU has it, else fp32)."""
    model = model.eval()
    device = next(model.parameters()).device  # images are decoded on the CPU; torch runs them where the model is
    precision = runner_precision(runtime, precision, device)
    if runtime == "torch":
        from .optimize import autocast

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast(device, precision):
                return model(x.to(device)).float()

        return run
    if runtime == "fast":
        from .optimize import compile_problem, optimize_for_inference

        problem = compile_problem(device)
        if problem:
            raise ConfigError("--runtime", f"fast compiles with inductor, which cannot work here: {problem}; "
                              "use --runtime torch")  # fmt: skip
        fast = optimize_for_inference(model, precision, example_input=example.to(device))
        return lambda x: fast(x.to(device))
    from .deploy import export, runtime_runner

    require(runtime, "onnx" if runtime == "onnxruntime" else "openvino")
    with tempfile.TemporaryDirectory(prefix="zoo-predict-") as folder:  # the runtime keeps the graph in memory
        path = export(model, Path(folder) / "model.onnx", example_input=example)
        run = runtime_runner(path, runtime, precision)  # the precision said on stderr, not OpenVINO's own
    return lambda x: run(x)[0]


def _num_classes(model: nn.Module, input_size: Sequence[int]) -> int:
    """The classes ``model`` predicts: its ``num_classes`` (a zoo or timm model; 0 for a headless one), else
    (torchvision's models have no such attribute) the width of its output for one image."""
    if hasattr(model, "num_classes"):
        return int(model.num_classes or 0)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(torch.zeros(1, *input_size, device=device))
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else 0


class Classifier:
    """A model with its preprocessing, label names and runtime: files in, top-k predictions out."""

    def __init__(
        self,
        model: nn.Module,
        *,
        runtime: str = "torch",
        batch_size: int = 32,
        tta: str | None = None,
        topk: int = 5,
        precision: str = "auto",
        data_config: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("--batch-size", f"expected a positive integer, got {batch_size}")
        tta_views(torch.zeros(1, 3, 2, 2), tta)  # an unknown mode is refused before any work
        check_data_config_keys(data_config or {}, "data_config")
        config = resolve_data_config(model, use_test_size=True, **(data_config or {}))  # the flags' overrides
        self.data_config = config
        self.transform = create_transform(config)
        channels = config["input_size"][0]
        if channels not in (1, 3):
            raise ConfigError("--model", f"takes {channels}-channel images; predict reads RGB (3) or grayscale (1)")
        self.mode = "L" if channels == 1 else "RGB"  # what Pillow decodes each file to
        self.num_classes = _num_classes(model.eval(), config["input_size"])
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if not self.num_classes:
            name = cfg.get("weights") or cfg.get("architecture") or type(model).__name__
            raise ConfigError("--model", f"{name} has no classifier head (num_classes=0); nothing to predict")
        self.topk = self._checked_topk(topk)  # before the runner: an export can take a while
        self.labels = label_names(model) or tuple(str(i) for i in range(self.num_classes))
        self.batch_size, self.tta = batch_size, tta
        device = next(model.parameters()).device
        self.precision = runner_precision(runtime, precision, device)  # checked before the runner's work
        self.run = make_runner(model, runtime, torch.randn(2, *config["input_size"]), self.precision)
        self.skipped: list[tuple[Path, str]] = []

    def _checked_topk(self, topk: int) -> int:
        if not 1 <= topk <= self.num_classes:
            raise ConfigError("--topk", f"expected 1 to {self.num_classes} (the model's classes), got {topk}")
        return topk

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        views = tta_views(images, self.tta)
        return sum(self.run(v).float() for v in views) / len(views)  # type: ignore[return-value]

    def __call__(self, files: Sequence[Path], topk: int | None = None, progress: bool = True) -> Iterator[Prediction]:
        topk = self.topk if topk is None else self._checked_topk(topk)
        self.skipped = []
        batch: list[tuple[Path, torch.Tensor]] = []
        for path in tqdm(files, desc="predict", unit="img", disable=not progress):
            image = self._load(path)
            if image is not None:
                batch.append((path, image))
            if len(batch) == self.batch_size:
                yield from self._classify(batch, topk)
                batch = []
        if batch:
            yield from self._classify(batch, topk)

    def _load(self, path: Path) -> torch.Tensor | None:
        from PIL import Image

        try:
            return self.transform(open_image(path, self.mode))
        # Pillow's ways of saying a file is no image it can read: not an image or truncated (OSError), a broken
        # PNG chunk (SyntaxError), a short multi-frame file (EOFError), a decompression bomb, a bad mode
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
            self.skipped.append((path, f"{type(e).__name__}: {e}"))
            log.info("skipped %s: %s", path, e)
            return None

    def _classify(self, batch: list[tuple[Path, torch.Tensor]], topk: int) -> Iterator[Prediction]:
        probs = self.logits(torch.stack([image for _, image in batch])).softmax(1)
        scores, indices = probs.topk(topk, dim=1)
        for (path, _), row_scores, row_indices in zip(batch, scores.tolist(), indices.tolist(), strict=True):
            pairs = zip(row_indices, row_scores, strict=True)
            top = [{"index": i, "label": self.labels[i], "score": round(s, 6)} for i, s in pairs]
            yield Prediction(str(path), top)
