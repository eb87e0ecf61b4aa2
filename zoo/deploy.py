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
from .data import check_data_config_keys, label_names, resolve_data_config
from .errors import ConfigError, ExportError, ZooError, not_one_of, require
from .hardware import DTYPES, cpu_info, resolve_precision
from .io import atomic_path, is_disk_full
from .optimize import compile_problem, fold_batch_norms

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
PRECISIONS = ("auto", *DTYPES)  # auto: an ONNX file is fp32; a .pt2 the device's fastest (zoo.hardware)
ONNX_OPSET = 18  # torch.onnx's dynamo exporter's own opset; ONNX Runtime >= 1.14 and OpenVINO run it
# The largest |exported - eager| allowed, relative to the largest |eager| output: fp32 is exact up to
# rounding; bf16 keeps 8 bits of mantissa, and its folded norms round differently from eager fp32.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2, "tf32": 5e-3}


def tolerance(dtype: str, device: torch.device) -> float:
    """How far an export may differ from eager: fp32 convolutions on a GPU run as TF32 where cuDNN allows it
    (its default), eager and the package each picking their own algorithms: a 10-bit mantissa, not fp32's."""
    if dtype == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return TOLERANCE["tf32"]
    return TOLERANCE[dtype]


MAX_BATCH = 4096  # the dynamic batch axis's upper bound, which torch.export needs stated


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    example_input: torch.Tensor | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
    dtype: str = "auto",
    metadata: dict[str, str] | None = None,
    data_config: dict[str, Any] | None = None,
    portable: bool = False,
) -> Path:
    """Write ``model`` (put in eval mode) as an ONNX file or an AOTInductor ``.pt2`` package.

    Args:
        format: None (the default) goes by the file name: ``"pt2"`` for a ``.pt2`` name, else ``"onnx"``.
            ``"onnx"`` (``torch.onnx.export(dynamo=True)``, opset 18, preprocessing and labels in
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
        portable: pt2 only. False (the default): frozen, the weights pre-packed for this CPU and its widest
            vector code, as fast as ``optimize_for_inference``, for this kind of CPU only (the metadata's
            ``cpu_features``; :func:`load_package` checks them). True: unfrozen AVX2 code, for any x86-64 CPU
            with AVX2 (build once, ship to machines you do not know), in fp32 unless ``dtype`` says otherwise.
    """
    format = format_for(path, format)
    if portable and format != "pt2":
        raise ConfigError("portable", f"applies to format 'pt2' (an AOTInductor package), not {format!r}")
    model = model.eval()
    check_data_config_keys(data_config or {}, "data_config")
    data_config = resolve_data_config(model, use_test_size=True, **(data_config or {}))
    device = next(model.parameters()).device
    x = example_input if example_input is not None else torch.randn(2, *data_config["input_size"])
    x = x.to(device)
    path = Path(path)
    if portable and device.type != "cpu":
        raise ConfigError("portable", f"is for CPU packages (AVX2 code for any x86-64 CPU); the model is on {device}")
    if portable and dtype == "auto":  # for CPUs not known: fp32, which every AVX2 CPU computes natively
        dtype = "fp32"
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
                check_outputs(expected, onnx_runner(tmp)(x), tolerance(dtype, device), names, what="ONNX Runtime")
    else:
        props.update(package_target(device, portable))
        runnable = _CastIO(model, DTYPES[dtype])  # norms folded, channels_last: the fast path's graph
        with atomic_path(path, suffix=".tmp.pt2") as tmp:
            with _failures("torch.export and AOTInductor"):
                _export_pt2(runnable, x, tmp, dynamic_batch, props, portable)
            if check:
                package = torch._inductor.aoti_load_package(str(tmp))
                check_outputs(
                    expected, _as_list(package(x)), tolerance(dtype, device), names, what="the AOTInductor package"
                )
    log.info("exported %s to %s", format, path)
    return path


def format_for(path: str | os.PathLike[str], format: str | None) -> str:
    """``format``, or the one the file name says when it is None: pt2 for a ``.pt2`` name, else onnx."""
    return format if format is not None else "pt2" if Path(path).suffix == ".pt2" else "onnx"


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
    if format == "onnx" and path.suffix == ".pt2":  # load_package would take it for a package
        raise ConfigError(name["path"], f"{str(path)!r}: a .pt2 name is for {name['format']} pt2; name an ONNX file "
                          ".onnx")  # fmt: skip
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
    """``logits`` for a classifier, ``features`` for one without a head; one name per feature map for a
    ``features_only`` backbone (its module); ``output`` for a model from elsewhere."""
    from .features import Backbone

    if isinstance(model, Backbone):
        return list(model.feature_info.module_name())
    if not hasattr(model, "num_classes"):  # a model from elsewhere: what it returns is not known here
        return ["output"]
    return ["logits"] if model.num_classes else ["features"]


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
        "label_names": json.dumps(list(label_names(model))),
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
    """An ONNX Runtime session (CPU) of an ONNX file, called like the model; the file is read once. It runs on
    torch's thread count, as the zoo's own path does (its default, every core, would oversubscribe a process
    that limits torch's threads, and would be timed against the zoo's path on more cores)."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: [torch.from_numpy(o) for o in session.run(None, {"input": x.detach().cpu().numpy()})]


def runtime_runner(
    path: str | os.PathLike[str], runtime: str, precision: str | None = None
) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """An ONNX file run by ``runtime`` ("onnxruntime" or "openvino"), called like the model; ``precision`` is
    OpenVINO's (None: its default, bf16 where the CPU has it); ONNX Runtime runs the file's fp32."""
    if runtime == "onnxruntime":
        return onnx_runner(path)
    if runtime == "openvino":
        return openvino_runner(path, precision)
    raise ConfigError("runtime", not_one_of(runtime, ("onnxruntime", "openvino")))


def openvino_precision() -> str:
    """The precision OpenVINO's CPU plugin computes an fp32 model in by default ("bf16" where the CPU has bf16
    hardware, else "fp32"), as it reports it."""
    openvino = require("openvino", "openvino")
    hint = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f32", ...
    return {"bf16": "bf16", "f16": "fp16"}.get(hint, "fp32")


OPENVINO_TYPES = {"fp32": "f32", "bf16": "bf16"}


def openvino_runner(
    path: str | os.PathLike[str] | Any, precision: str | None = None
) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """An OpenVINO model (an ONNX file, or a model OpenVINO holds) compiled for the CPU, in ``precision``
    ("fp32", "bf16"; None: its default, bf16 where the CPU has it), on torch's thread count (as ``onnx_runner``)."""
    openvino = require("openvino", "openvino")
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = OPENVINO_TYPES[precision]
    compiled = openvino.Core().compile_model(path if not isinstance(path, (str, os.PathLike)) else str(path), "CPU",
                                             config)  # fmt: skip
    return lambda x: [torch.from_numpy(o) for o in compiled(x.detach().cpu().numpy()).values()]


INT8_RUNTIMES = ("openvino-int8", "onnxruntime-int8")  # each runtime's own post-training int8


def int8_runner(
    path: str | os.PathLike[str], runtime: str, calibration: list[torch.Tensor]
) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """An fp32 ONNX file quantized to int8 by ``runtime``'s own post-training tool, calibrated on ``calibration``
    (image batches, the same ones ``zoo.quantize_int8`` takes): ``openvino-int8`` is NNCF's ``quantize`` on the
    OpenVINO model; ``onnxruntime-int8`` is ``onnxruntime.quantization.quantize_static`` (QDQ, u8 activations, s8
    weights per channel, 7-bit activations on CPUs without VNNI as its docs advise), run by ONNX Runtime."""
    if runtime not in INT8_RUNTIMES:
        raise ConfigError("runtime", not_one_of(runtime, INT8_RUNTIMES))
    if runtime == "openvino-int8":
        openvino = require("openvino", "openvino")
        nncf = require("nncf", "openvino")
        batches = [b.detach().cpu().numpy() for b in calibration]
        model = nncf.quantize(openvino.Core().read_model(str(path)), nncf.Dataset(batches), subset_size=len(batches))
        return openvino_runner(model)
    require("onnxruntime", "onnx")
    from onnxruntime import quantization as q

    class Batches(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": b.detach().cpu().numpy()} for b in calibration])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    out = Path(path).with_name(Path(path).stem + ".int8.onnx")
    q.quantize_static(str(path), str(out), Batches(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      reduce_range=cpu_info().int8_saturates)  # fmt: skip
    return onnx_runner(out)


def package_target(device: torch.device, portable: bool) -> dict[str, str]:
    """What a ``.pt2`` package records of the machine it was compiled for: on a CPU, the features its code and
    pre-packed weights need (``load_package`` checks them) and whether it is portable; a GPU package, its device."""
    if device.type != "cpu":
        return {"device": device.type}
    return {"device": "cpu", "cpu_features": json.dumps(["AVX2"] if portable else cpu_info().features()),
            "portable": json.dumps(portable)}  # fmt: skip


def _export_pt2(
    model: nn.Module, x: torch.Tensor, out: Path, dynamic_batch: bool, props: dict[str, str], portable: bool
) -> None:
    """Frozen (the default): the weights are constants, folded and pre-packed for this CPU's oneDNN kernels, and
    the generated code uses its widest vector ISA, as the fast path does. Portable: neither (weights as they are,
    AVX2 code), so any x86-64 CPU with AVX2 runs it, at the speed of an unfrozen graph."""
    configs: dict[str, Any] = {"aot_inductor.metadata": props, "freezing": not portable}
    if portable:  # AVX2 vectors, and the compiler told the ISA (it would be told -march=native, AVX-512 here)
        configs.update({"cpp.simdlen": 256, "cpp.march": "x86-64-v3"})
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=_batch_axis(dynamic_batch))
        torch._inductor.aoti_compile_and_package(program, package_path=str(out), inductor_configs=configs)


def package_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A ``.pt2`` package's metadata, read from the archive without loading its compiled code."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("wrapper_metadata.json"):
                    return json.loads(archive.read(name))
    except zipfile.BadZipFile:  # an ONNX file or anything else: no zip archive at all
        pass
    raise ConfigError("path", f"{str(path)!r} holds no AOTInductor metadata: not a zoo.export .pt2 package")


def load_package(path: str | os.PathLike[str]) -> Callable[[torch.Tensor], Any]:
    """A ``zoo.export(format="pt2")`` package, loaded after checking that this CPU has what it was compiled for:
    a frozen package's weights are pre-packed for its CPU's kernels (AVX-512, VNNI, bf16 or AMX layouts) and its
    code uses that CPU's vector ISA; on a CPU without them it would fail or compute wrongly. Its metadata (labels,
    preprocessing) is the loaded package's ``get_metadata()``."""
    meta = package_metadata(path)
    if meta.get("device") == "cuda" and not torch.cuda.is_available():
        raise ConfigError("path", f"{str(path)!r} was compiled for a CUDA GPU and this machine has none; export it "
                          "from a model on the CPU for CPUs")  # fmt: skip
    needed = json.loads(meta.get("cpu_features", "[]"))
    cpu = cpu_info()
    missing = [f for f in needed if f not in cpu.features()]
    if missing:
        raise ConfigError(
            "path", f"{str(path)!r} was compiled for a CPU with {', '.join(needed)}; this one ({cpu.describe()}) "
            f"lacks {', '.join(missing)}. Export it on this machine, or export a portable package "
            "(zoo export --portable, or portable=True) where it is built: that one runs on any AVX2 CPU"
        )  # fmt: skip
    return torch._inductor.aoti_load_package(str(path))


class _CastIO(nn.Module):
    """The graph of ``optimize_for_inference`` without the compile: norms folded into convs, channels_last,
    weights in the package's precision; fp32 images in, fp32 outputs out, so the package is called like the model."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = fold_batch_norms(model).to(dtype=dtype, memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x.to(dtype=self.dtype, memory_format=torch.channels_last))
        if isinstance(out, dict):  # feature_cls="dict"
            return {k: o.float() for k, o in out.items()}
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
