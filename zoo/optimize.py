"""One-call fast inference: fold batch norms, channels_last, bf16/fp16, inductor with weight freezing.

``optimize_for_inference(model)`` returns a module with the same call signature
that runs in inference mode. Each step is also usable alone (``fold_batch_norms``).
``quantize_int8(model, calibration)`` is the int8 path for x86 CPUs (PT2E, torchao).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import logging
import os
import platform
import shutil
from collections.abc import Iterable, Sized
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from .errors import ConfigError, MissingExtraError
from .hardware import DTYPES, cpu_info, keep_freed_memory, resolve_precision
from .layers import FrozenBatchNorm2d

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # their outputs live in memory the next call reuses


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for ``precision`` ("fp32": none) on ``device``: the trainer's and the benchmark's."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
_INFO = ("pretrained_cfg", "feature_info", "num_classes", "num_features", "head_hidden_size")  # read off a model


def _copy_info(source: nn.Module, target: nn.Module) -> None:
    for attr in _INFO:
        if hasattr(source, attr):
            setattr(target, attr, getattr(source, attr))


def fold_batch_norms(model: nn.Module) -> torch.fx.GraphModule:
    """A copy of ``model`` (eval mode) in which every batch norm that follows a conv is folded into it.

    The pairs are found on the traced graph (a norm with running statistics whose only input is a
    plain conv, called once and used nowhere else), so it works for any traceable model: classifiers
    and ``features_only`` backbones alike. Outputs equal the eval model's up to rounding.
    """
    model = copy.deepcopy(model).eval()
    graph_module = torch.fx.symbolic_trace(model)
    modules = dict(graph_module.named_modules())
    calls = collections.Counter(n.target for n in graph_module.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _NORMS):
            continue
        if getattr(modules[node.target], "running_mean", None) is None:  # track_running_stats=False: batch stats
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv = modules[source.target]
        # exactly a Conv2d (a weight-standardizing subclass computes another function), called only here
        if type(conv) is not nn.Conv2d or calls[source.target] != 1:
            continue
        parent, _, name = source.target.rpartition(".")
        owner = graph_module.get_submodule(parent) if parent else graph_module
        setattr(owner, name, fuse_conv_bn_eval(conv, modules[node.target]))
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
        folded += 1
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    log.info("folded %d batch norms into their convs", folded)
    _copy_info(model, graph_module)
    return graph_module


class InferenceModel(nn.Module):
    """Runs an optimized model in inference mode: input cast and laid out, outputs back in fp32.

    ``precision`` says what it computes in: "fp32", "bf16", "fp16" or "int8" (``quantization`` then
    records how its activations were quantized)."""

    def __init__(
        self, model: nn.Module, precision: str, channels_last: bool, compiled: Any, clone: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.dtype = DTYPES.get(precision, torch.float32)  # what inputs are cast to (int8 graphs take fp32)
        self.channels_last = channels_last
        self.clone = clone  # CUDA graphs reuse their output buffers: the next call would overwrite these
        # a plain attribute, not a submodule: the compiled wrapper shares the weights of ``model``
        self.__dict__["_run"] = model if compiled is None else compiled
        _copy_info(model, self)

    def train(self, mode: bool = True) -> InferenceModel:
        # Always in inference mode; exported (int8) graphs refuse train() and eval() anyway.
        return self

    def forward(self, x: torch.Tensor) -> Any:
        import torch._inductor.config  # here, not at the top: it costs 2 s of `import zoo`

        # Freezing turns the weights into constants, so inductor can fold and pre-pack them for oneDNN/cuDNN;
        # it applies when the first call compiles.
        with torch.inference_mode(), torch._inductor.config.patch(freezing=True):
            x = x.to(dtype=self.dtype, memory_format=torch.channels_last if self.channels_last else None)
            out = self._run(x)
            # fp32 out, and copies where CUDA graphs would overwrite their buffers at the next call
            cast = (lambda o: o.float().clone()) if self.clone else (lambda o: o.float())
            if isinstance(out, dict):  # a features_only backbone: a list, or a dict by map index
                return {k: cast(o) for k, o in out.items()}
            return [cast(o) for o in out] if isinstance(out, (list, tuple)) else cast(out)


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot work on ``device`` here, or None: checked before any work, so a run
    never fails at its first compiled call."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"TorchDynamo does not support Python {platform.python_version()} with torch {torch.__version__}"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton for CUDA code and it is not installed (pip install triton)"
    compiler = os.environ.get("CXX", "g++")
    if device.type == "cpu" and not (shutil.which(compiler) or shutil.which("clang++")):
        return f"inductor needs a C++ compiler for CPU code and {compiler!r} is not on PATH"
    return None


def optimize_for_inference(
    model: nn.Module,
    dtype: str | torch.dtype = "auto",
    *,
    backend: str = "auto",
    compile: bool = True,
    channels_last: bool = True,
    example_input: torch.Tensor | None = None,
    compile_mode: str | None = None,
) -> nn.Module:
    """A fast inference version of ``model`` with the same call signature; it returns fp32 tensors.

    ``dtype`` "auto" (the default) is the device's fastest native precision: bf16 on CPUs with
    AVX-512 BF16 or AMX and on Ampere+ GPUs, fp16 on Volta and Turing GPUs, else fp32
    (``zoo.hardware.resolve_precision``); fp32 with ``backend="onnxruntime"``, whose CPU provider computes
    nothing else; the result's ``precision`` says which.

    ``backend``: "inductor" folds every batch norm into its conv, converts to channels_last, casts
    the weights to ``dtype`` and with ``compile`` compiles with inductor and weight freezing;
    "onnxruntime" and "openvino" run the model's ONNX export (``pip install 'resnet-zoo[openvino]'``);
    "auto" (the default) times those that suit the device and ``dtype`` on ``example_input`` (a
    progress bar while it does; default 8 images at the weights' test size), keeps the fastest and
    remembers the choice (``zoo.backends``); the result's ``backend`` and ``selection`` say which and
    why. A runtime that fails on this model or machine is passed over with a warning naming the error.
    ``example_input`` also triggers the compilation now rather than at the first call.
    """
    from . import backends

    device = next(model.parameters()).device
    precision = resolve_precision(dtype, device, flag="dtype")
    if dtype == "auto" and precision not in backends.RUNTIME_PRECISIONS.get(backend, (precision,)):
        precision = "fp32"  # auto on a runtime: what it computes in (ONNX Runtime's CPU provider: fp32 only)
    backends.check_backend(backend, precision, device)
    log.info("optimize_for_inference: %s on %s", precision, device)
    if device.type == "cpu":
        keep_freed_memory()

    def inductor() -> nn.Module:
        return _inductor(model, precision, compile, channels_last, compile_mode, device)

    if backend == "inductor" or (backend == "auto" and backends.candidates(precision, device, compile) == ["inductor"]):
        optimized = inductor()
        optimized.backend = "inductor"
        why = "asked for" if backend == "inductor" else "the only candidate (no runtime here, not compiled, or a GPU)"
        optimized.selection = {"backend": "inductor", "precision": precision, "why": why, "cached": False}
        if example_input is not None:
            optimized(example_input.to(device))
        return optimized
    if example_input is None:
        from .data import resolve_data_config

        example_input = torch.randn(8, *resolve_data_config(model, use_test_size=True)["input_size"], device=device)
    example = example_input.to(device)
    if backend == "auto":
        options = {"channels_last": channels_last, "compile_mode": compile_mode}  # the inductor path's speed
        optimized = backends.choose(model, precision, example, device, compile, inductor, options)
    else:
        optimized = backends.build(model, backend, precision, example, inductor)
        optimized.selection = {"backend": backend, "precision": precision, "why": "asked for", "cached": False}
    optimized.backend = getattr(optimized, "backend", "inductor")
    optimized(example)
    return optimized


def _inductor(model: nn.Module, precision: str, compile: bool, channels_last: bool, compile_mode: str | None,
              device: torch.device) -> InferenceModel:  # fmt: skip
    """The zoo's own fast path: batch norms folded, channels_last, weights in ``precision``, inductor."""
    fused = fold_batch_norms(model).to(dtype=DTYPES[precision])
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    compiled = torch.compile(fused, mode=compile_mode) if compile else None
    cuda_graphs = compile and device.type == "cuda" and compile_mode in CUDA_GRAPH_MODES
    return InferenceModel(fused, precision, channels_last, compiled, clone=cuda_graphs)


def _import_pt2e() -> tuple[Any, Any, Any]:
    # torchao 0.18 registers an Enum as a pytree constant on import, which torch 2.14 logs a deprecation for
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        # Importing the x86 quantizer also registers inductor's int8 fusion and weight-prepack passes.
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise MissingExtraError(f"int8 quantization needs torchao ({e}): pip install 'resnet-zoo[int8]'") from e
    finally:
        pytree_log.setLevel(level)
    return x86, prepare_pt2e, convert_pt2e


def quantize_int8(
    model: nn.Module,
    calibration: Iterable[Any],
    *,
    max_batches: int | None = None,
    compile: bool = True,
    example_input: torch.Tensor | None = None,
    reduce_range: bool | None = None,
) -> InferenceModel:
    """Int8 post-training quantization for x86 CPUs, with the same call signature as ``model``.

    PT2E with torchao's ``X86InductorQuantizer``: the model is exported (batch size
    dynamic), observers record activation ranges on ``calibration`` (image batches,
    or ``(images, labels)`` pairs, e.g. a few hundred training images through the
    eval transform), then weights become int8 per channel and activations uint8 per
    tensor, batch norms folded. ``compile`` lowers it with inductor (oneDNN int8
    kernels, frozen weights). The result returns fp32 tensors.

    ``reduce_range`` (None: chosen by the CPU) keeps activations to 7 bits: on CPUs without VNNI or
    AMX, oneDNN sums pairs of u8 x s8 products in int16, which saturates on 8-bit activations
    (resnet20 on CIFAR-10: 89.6% fp32, 82.5% int8 at 8 bits, 89.7% at 7 bits, on an AVX2 CPU).
    The result's ``quantization`` records the choice and why.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ConfigError("model", f"int8 quantization runs on x86 CPUs; the model is on {device}")
    if max_batches is not None and max_batches < 1:
        raise ConfigError("max_batches", f"expected a positive integer or None, got {max_batches!r}")
    if reduce_range is not None and not isinstance(reduce_range, bool):  # 1 == True: refuse it too
        raise ConfigError("reduce_range", f"expected None (by the CPU), True or False, got {reduce_range!r}")
    keep_freed_memory()
    cpu = cpu_info()
    chosen = cpu.int8_saturates if reduce_range is None else reduce_range
    quantization = {
        "reduce_range": chosen,
        "activation_bits": 7 if chosen else 8,
        "why": ("given" if reduce_range is not None else
                f"{cpu.name} has {'no VNNI or AMX: int16 sums saturate' if chosen else 'VNNI or AMX'}"),
    }  # fmt: skip
    x86, prepare_pt2e, convert_pt2e = _import_pt2e()
    known = [n for n in (len(calibration) if isinstance(calibration, Sized) else None, max_batches) if n is not None]
    total = min(known) if known else None  # for the progress bar
    batches = (b[0] if isinstance(b, (list, tuple)) else b for b in calibration)
    batches = itertools.islice(batches, max_batches)
    first = next(batches, None)
    if first is None:
        raise ConfigError("calibration", "is empty; give at least one batch of images")
    if len(first) < 2:  # torch.export would specialize the batch axis to 1, and every other batch size would fail
        raise ConfigError("calibration", f"the first batch has {len(first)} image; give batches of 2 or more")
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        exported = torch.export.export(model, (first,), dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
        config = x86.get_default_x86_inductor_quantization_config(reduce_range=chosen)
        quantizer = x86.X86InductorQuantizer().set_global(config)
        observed = prepare_pt2e(exported, quantizer)
        seen = 0
        for x in tqdm(itertools.chain([first], batches), desc="calibrate", unit="batch", total=total):
            observed(x)
            seen += len(x)
        quantized = convert_pt2e(observed)
    log.info("int8: calibrated on %d images; %d-bit activations (%s)", seen, quantization["activation_bits"],
             quantization["why"])  # fmt: skip
    _copy_info(model, quantized)
    optimized = InferenceModel(quantized, "int8", True, torch.compile(quantized) if compile else None)
    optimized.quantization = quantization
    if example_input is not None:
        optimized(example_input)
    return optimized
