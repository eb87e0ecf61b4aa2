"""Models out of PyTorch: an ONNX file (ONNX Runtime, OpenVINO) or an AOTInductor package, checked against eager.

Both are written atomically (a temporary sibling, then ``os.replace``) and only after
the check passed, so a failed export never leaves a file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .data import resolve_data_config
from .errors import ConfigError, ExportError, ZooError, not_one_of, require
from .hardware import DTYPES, resolve_precision
from .io import atomic_path, is_disk_full
from .optimize import compile_problem, fold_batch_norms

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
PRECISIONS = ("auto", *DTYPES)  # auto: an ONNX file is fp32; a .pt2 the device's fastest (zoo.hardware)
ONNX_OPSET = 18  # torch.onnx's dynamo exporter's own opset; ONNX Runtime >= 1.14 and OpenVINO run it
# The largest |exported - eager| allowed, relative to the largest |eager| output: fp32 is exact up to
# rounding; bf16 keeps 8 bits of mantissa, and its folded norms round differently from eager fp32.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
MAX_BATCH = 4096  # the dynamic batch axis's upper bound, which torch.export needs stated


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: str = "onnx",
    example_input: torch.Tensor | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
    dtype: str = "auto",
    metadata: dict[str, str] | None = None,
    data_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (put in eval mode) as an ONNX file or an AOTInductor ``.pt2`` package.

    Args:
        format: ``"onnx"`` (``torch.onnx.export(dynamo=True)``, opset 18, preprocessing and labels in
            ``metadata_props``) or ``"pt2"`` (``torch.export``, then ``aoti_compile_and_package``; load it
            with ``torch._inductor.aoti_load_package(path)``, no zoo needed).
        example_input: what the export traces and the check runs; default two random images at the
            weights' test size.
        dynamic_batch: a batch axis of any size (1 to 4096); else the example's batch only.
        check: run the file (ONNX Runtime for onnx, the loaded package for pt2) on the example and compare
            with eager: a relative max difference over 1e-4 (fp32) is an ExportError and no file is left.
        dtype: ``"auto"`` (the default): fp32 for onnx (ONNX Runtime and OpenVINO pick their own precision),
            the device's fastest native precision for pt2 (bf16 on CPUs with AVX-512 BF16 or AMX, else fp32;
            :func:`zoo.hardware.resolve_precision`). ``"bf16"``/``"fp16"`` (pt2 only): batch norms folded,
            channels_last, low-precision weights, fp32 in and out, as ``optimize_for_inference``. The
            metadata's ``precision`` says which.
        metadata: more metadata (``model_name``, ``weights``, ...): ``metadata_props`` of an ONNX file,
            the package metadata of a ``.pt2`` (``aoti_load_package(path).get_metadata()``).
        data_config: overrides of the weights' preprocessing (``mean``, ``std``, ``interpolation``,
            ``crop_pct``, ``input_size``) recorded in the metadata: a model trained with other statistics.
    """
    model = model.eval()
    data_config = resolve_data_config(model, use_test_size=True, **(data_config or {}))
    device = next(model.parameters()).device
    x = example_input if example_input is not None else torch.randn(2, *data_config["input_size"])
    x = x.to(device)
    path = Path(path)
    dtype = check_options(format, dtype, path, len(x), dynamic_batch, device, names={"batch": "example_input"})
    names = output_names(model)
    with torch.no_grad():
        expected = _as_list(model(x))
    props = {**_metadata(model, x, data_config, names), "precision": dtype, **(metadata or {})}
    if format == "onnx":
        require("onnxscript", "onnx")
        with atomic_path(path) as tmp:
            with _failures("torch.onnx.export"):
                _export_onnx(model, x, tmp, dynamic_batch, names, props)
            if check:
                check_outputs(expected, onnx_runner(tmp)(x), TOLERANCE[dtype], names, what="ONNX Runtime")
    else:
        runnable = _CastIO(model, DTYPES[dtype]) if dtype != "fp32" else model
        with atomic_path(path, suffix=".tmp.pt2") as tmp:
            with _failures("torch.export and AOTInductor"):
                _export_pt2(runnable, x, tmp, dynamic_batch, props)
            if check:
                package = torch._inductor.aoti_load_package(str(tmp))
                check_outputs(expected, _as_list(package(x)), TOLERANCE[dtype], names, what="the AOTInductor package")
    log.info("exported %s to %s", format, path)
    return path


def check_options(
    format: str,
    dtype: str,
    path: Path,
    batch: int,
    dynamic_batch: bool,
    device: torch.device,
    names: Mapping[str, str] | None = None,
) -> str:
    """Refuse an export that cannot work, before any work; the precision ``dtype`` resolves to. ``names``: the
    caller's name of each argument (``{"format": "--format", ...}`` for the command line), so the error names
    what the user typed."""
    name = {"format": "format", "dtype": "dtype", "path": "path", "batch": "batch", "static": "dynamic_batch=False",
            **(names or {})}  # fmt: skip
    if format not in FORMATS:
        raise ConfigError(name["format"], not_one_of(format, FORMATS))
    if dtype not in PRECISIONS:
        raise ConfigError(name["dtype"], not_one_of(dtype, PRECISIONS))
    if format == "onnx" and dtype not in ("auto", "fp32"):
        raise ConfigError(
            name["dtype"], f"{dtype!r} needs {name['format']} pt2: an ONNX file is fp32 (ONNX Runtime and "
            "OpenVINO pick their own precision)"
        )  # fmt: skip
    if format == "pt2" and path.suffix != ".pt2":
        raise ConfigError(name["path"], f"an AOTInductor package's name ends in .pt2, got {str(path)!r}")
    if not 1 <= batch <= MAX_BATCH:
        raise ConfigError(name["batch"], f"expected a batch of 1 to {MAX_BATCH} images, got {batch}")
    if dynamic_batch and batch < 2:
        raise ConfigError(
            name["batch"], f"a dynamic batch axis is traced from 2 or more images (torch.export specializes 1), "
            f"got {batch}; or {name['static']}"
        )  # fmt: skip
    problem = compile_problem(device) if format == "pt2" else None
    if problem:
        raise ConfigError(name["format"], f"pt2 is compiled by AOTInductor, which cannot work here: {problem}")
    return "fp32" if format == "onnx" else resolve_precision(dtype, device, flag=name["dtype"])


@contextlib.contextmanager
def _failures(exporter: str) -> Iterator[None]:
    """An exporter's own failure as an ExportError (one line, the cause chained), not a page of traceback."""
    try:
        yield
    except Exception as e:
        if isinstance(e, ZooError) or is_disk_full(e):  # named already, or atomic_path's DiskFullError
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{exporter} failed: {type(e).__name__}: {first}; no file was written") from e


def output_names(model: nn.Module) -> list[str]:
    """``logits`` for a classifier; one name per feature map for a ``features_only`` backbone (its module)."""
    from .features import Backbone

    if isinstance(model, Backbone):
        return list(model.feature_info.module_name())
    return ["logits"] if getattr(model, "num_classes", 0) else ["features"]


def _as_list(out: Any) -> list[torch.Tensor]:
    """A model's output(s) as a list of fp32 tensors: a classifier's logits, a backbone's maps (list or dict)."""
    out = list(out.values()) if isinstance(out, dict) else out
    return [o.float() for o in out] if isinstance(out, (list, tuple)) else [out.float()]


def _metadata(model: nn.Module, x: torch.Tensor, data_config: dict[str, Any], names: list[str]) -> dict[str, str]:
    """What a deploying user needs besides the graph: preprocessing, labels, provenance (JSON values).
    ``input_size`` is the graph's: only its batch axis may vary."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return {
        "model_name": str(cfg.get("architecture") or type(model).__name__),
        "weights": str(cfg.get("weights", "")),
        "input_size": json.dumps(list(x.shape[1:])),
        "mean": json.dumps(list(data_config["mean"])),
        "std": json.dumps(list(data_config["std"])),
        "interpolation": data_config["interpolation"],
        "crop_pct": json.dumps(data_config["crop_pct"]),
        "crop_mode": data_config["crop_mode"],
        "label_names": json.dumps(list(cfg.get("label_names") or [])),
        "output_names": json.dumps(names),
        "producer": f"resnet-zoo {__version__}",
    }


def _batch_axis(dynamic_batch: bool) -> tuple[dict[int, Any], ...] | None:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic_batch else None


def _export_onnx(
    model: nn.Module, x: torch.Tensor, out: Path, dynamic_batch: bool, names: list[str], props: dict[str, str]
) -> None:
    program = torch.onnx.export(
        model, (x,), dynamo=True, opset_version=ONNX_OPSET, input_names=["input"], output_names=names,
        dynamic_shapes=_batch_axis(dynamic_batch), verbose=False,
    )  # fmt: skip
    program.model.metadata_props.update(props)
    program.save(str(out))
    onnx = require("onnx", "onnx")
    onnx.checker.check_model(str(out), full_check=True)


def onnx_runner(path: str | os.PathLike[str]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """An ONNX Runtime session (CPU) of an ONNX file, called like the model; the file is read once."""
    ort = require("onnxruntime", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: [torch.from_numpy(o) for o in session.run(None, {"input": x.detach().cpu().numpy()})]


def runtime_runner(path: str | os.PathLike[str], runtime: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """An ONNX file run by ``runtime`` ("onnxruntime" or "openvino"), called like the model."""
    runners = {"onnxruntime": onnx_runner, "openvino": openvino_runner}
    if runtime not in runners:
        raise ConfigError("runtime", not_one_of(runtime, runners))
    return runners[runtime](path)


def openvino_precision() -> str:
    """The precision OpenVINO's CPU plugin computes an fp32 model in by default ("bf16" where the CPU has bf16
    hardware, else "fp32"), as it reports it."""
    openvino = require("openvino", "openvino")
    hint = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f32", ...
    return {"bf16": "bf16", "f16": "fp16"}.get(hint, "fp32")


def openvino_runner(path: str | os.PathLike[str]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """An OpenVINO model compiled for the CPU (its default precision: bf16 where the CPU has it)."""
    openvino = require("openvino", "openvino")
    compiled = openvino.Core().compile_model(str(path), "CPU")
    return lambda x: [torch.from_numpy(o) for o in compiled(x.detach().cpu().numpy()).values()]


def _export_pt2(model: nn.Module, x: torch.Tensor, out: Path, dynamic_batch: bool, props: dict[str, str]) -> None:
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=_batch_axis(dynamic_batch))
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(out), inductor_configs={"aot_inductor.metadata": props}
        )


class _CastIO(nn.Module):
    """The bf16 graph of ``optimize_for_inference`` without the compile: norms folded into convs, channels_last,
    bf16 weights; fp32 images in, fp32 outputs out, so the package is called like the model."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = fold_batch_norms(model).to(dtype=dtype, memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x.to(dtype=self.dtype, memory_format=torch.channels_last))
        return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()


def check_outputs(
    expected: list[torch.Tensor], got: list[torch.Tensor], tolerance: float, names: list[str], *, what: str
) -> None:
    """Raise an ExportError naming the output and by how much ``got`` differs from ``expected``."""
    if len(got) != len(expected):
        raise ExportError(f"{what} gave {len(got)} outputs, the eager model {len(expected)}")
    for name, a, b in zip(names, got, expected, strict=True):
        if a.shape != b.shape:
            raise ExportError(f"{what}: output {name!r} has shape {tuple(a.shape)}, eager {tuple(b.shape)}")
        a, b = a.float().cpu(), b.float().cpu()  # an ONNX runtime answers on the CPU, a CUDA model on its GPU
        diff = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(
                f"{what} does not match the eager model: output {name!r} differs by {diff:.2e} of its largest "
                f"value (allowed {tolerance:.0e}); no file was written"
            )
