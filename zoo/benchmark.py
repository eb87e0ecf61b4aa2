"""Timing zoo models: what one benchmark row measures and how, the device's ceiling, the environment.

``benchmarks/throughput.py`` is the command line around it (and ``benchmarks/gpu_check.py`` uses it):
a :class:`Setting` is one configuration, :func:`measure_group` builds, warms up and times a group of
them round by round, interleaved, so their ratios are measured under the same machine conditions.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .deploy import INT8_RUNTIMES
from .factory import create_model
from .hardware import DTYPES, cpu_info, keep_freed_memory, release_freed_memory
from .optimize import autocast, optimize_for_inference, quantize_int8

INT8 = "int8"  # --optimize only: zoo.quantize_int8, calibrated on random batches (speed does not depend on them)
EXPORTED = ("onnxruntime", "openvino", "pt2")  # runtimes that run a file zoo.export wrote


# --- environment --------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info().name


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "malloc_keeps_freed_memory": device.type == "cpu" and keep_freed_memory(),  # as the zoo's CPU paths run
        **cpu_info().to_dict(),  # the host CPU, also beside a GPU: what decides int8 kernels and bf16
    }
    if device.type == "cuda":  # what decides which kernels an fp32 row ran: TF32 and cuDNN's autotuner
        env.update(
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_conv=torch.backends.cudnn.allow_tf32,
        )  # fmt: skip
    return env


class PeakMemory:
    """Peak memory of a measured block: CUDA's max allocated, or the process's peak RSS on CPU.

    On Linux the RSS high-water mark is reset for each block (``/proc/self/clear_refs``);
    elsewhere it is the process peak so far.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.before = 0.0

    def reset(self) -> None:
        """Start a measured block: the peak so far is forgotten and what is held now is the zero."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            release_freed_memory()  # what earlier blocks left for reuse would hide this block's peak
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
            self.before = self._rss("VmRSS:")

    def peak_mb(self) -> float:
        """The block's peak above what was held at ``reset``: its own activations and workspace."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.before
        return max(0.0, self._rss("VmHWM:") - self.before)

    @staticmethod
    def _rss(field: str) -> float:
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- what is timed ------------------------------------------------------------------------------------


@dataclass
class Setting:
    model: str
    mode: str
    batch_size: int
    img_size: int
    dtype: str
    channels_last: bool
    compile: bool
    optimize: bool
    label: str = ""  # "zoo", a runtime's name, or the baseline's name
    runtime: str = "torch"  # what executes the model: torch, auto, onnxruntime, openvino, pt2, *-int8
    pretrained: bool = False  # the model's own weights (for a top-1), not a random init (speed is the same)

    @property
    def precision(self) -> str:
        """What the row computes in, which picks its ceiling: the dtype, or int8."""
        return INT8 if self.dtype == INT8 or self.runtime in INT8_RUNTIMES else self.dtype

    def describe(self) -> str:
        if self.mode == "loader":
            return f"{self.label}:loader/{'NHWC' if self.channels_last else 'NCHW'}"
        if self.runtime in EXPORTED:  # openvino: the precision it picked itself (deploy.openvino_precision)
            return f"{self.runtime}:{self.dtype}"
        if self.runtime in INT8_RUNTIMES:
            return self.runtime
        if self.runtime == "auto":
            return f"zoo:auto/{self.dtype}"
        parts = [self.dtype, "NHWC" if self.channels_last else "NCHW"]
        parts += ["optimize"] if self.optimize else []
        parts += ["compile"] if self.compile else ([] if self.optimize else ["eager"])
        return f"{self.label}:{'/'.join(parts)}"


@dataclass
class Result:
    setting: Setting
    img_per_s: list[float] = field(default_factory=list)  # one per repeat
    latencies_ms: list[float] = field(default_factory=list)  # one per iteration
    peak_mb: float = 0.0  # above what was allocated before, over one timed round
    # over building and warming up: compile workspace included, and the only place a CUDA graph's memory shows
    # (its private pool is allocated while recording; replays allocate nothing)
    warmup_peak_mb: float = 0.0
    compiled_graphs: int = 0  # dynamo graphs compiled while building and warming up this setting
    status: str = "ok"  # or "oom": it did not fit the device; its row has no speed
    ops: list[dict[str, Any]] = field(default_factory=list)  # where one iteration's time goes, when profiled
    info: dict[str, Any] = field(default_factory=dict)  # what the row adds: the backend auto chose, a top-1, ...

    def row(self, env: dict[str, Any], macs: float, ceilings: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The row of results.json; ``ceilings``: GFLOP/s per precision (:func:`measure_ceiling`), each row held
        against its own precision's."""
        s, ips = self.setting, sorted(self.img_per_s)
        if self.status != "ok":
            return {**asdict(s), "config": s.describe(), "status": self.status, "img_per_s": None, **env}
        lat = sorted(self.latencies_ms)
        q = _percentile  # interpolated: over 5 rounds, p10/p90 are not the slowest and fastest
        median = statistics.median(ips)
        achieved = 2 * macs * median / 1e9 * (3 if s.mode == "train" else 1)  # backward ~ 2x forward
        if s.mode == "loader":  # the data alone: no model computes
            achieved, ceilings = 0.0, {}
        row = {
            **asdict(s),
            "config": s.describe(),
            "img_per_s": round(median, 2),
            "img_per_s_p10": round(q(ips, 0.1), 2),
            "img_per_s_p90": round(q(ips, 0.9), 2),
            "latency_ms_p50": round(q(lat, 0.5), 3),
            "latency_ms_p90": round(q(lat, 0.9), 3),
            "latency_ms_p99": round(q(lat, 0.99), 3),
            "peak_mem_mb": round(self.peak_mb, 1),
            "warmup_peak_mem_mb": round(self.warmup_peak_mb, 1),
            "compiled_graphs": self.compiled_graphs,
            "status": self.status,
            "gflops_achieved": round(achieved, 1),
            **self.info,
            **env,
        }
        ceiling = ceilings.get(s.precision, {})
        if ceiling:
            row["ceiling_precision"] = s.precision
        for kind, value in ceiling.items():
            row[f"pct_of_{kind}_ceiling"] = round(100 * achieved / value, 1) if value else None
        return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(
    setting: Setting, device: torch.device, compile_mode: str | None, calibration: list[torch.Tensor] | None = None
) -> Callable[[], None]:
    """The closure one iteration runs, with its model and data ready on the device; an inference step also holds
    its ``predict`` (called on a batch) and the ``info`` its row records."""
    if setting.mode == "loader":
        return loader_step(setting)
    if setting.label == "torchvision":
        import torchvision

        model: nn.Module = getattr(torchvision.models, setting.model)()
    else:
        model = create_model(setting.model, pretrained=setting.pretrained)
    model.to(device)
    in_chans = model.pretrained_cfg["input_size"][0] if hasattr(model, "pretrained_cfg") else 3
    x = torch.randn(setting.batch_size, in_chans, setting.img_size, setting.img_size, device=device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    if setting.mode == "train":
        from .train.config import TrainConfig
        from .train.recipe import make_optimizer

        model.train()
        y = torch.randint(0, getattr(model, "num_classes", 1000) or 1000, (setting.batch_size,), device=device)
        cfg = TrainConfig()  # zoo train's defaults: its optimizer, as it builds it
        opt = make_optimizer(cfg.optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                             nesterov=cfg.nesterov, decay_norm_and_bias=cfg.decay_norm_and_bias)  # fmt: skip
        run = torch.compile(model, mode=compile_mode, dynamic=False) if setting.compile else model
        scaler = torch.amp.GradScaler(device.type) if setting.dtype == "fp16" else None  # as the trainer does

        def train_step() -> None:
            with autocast(device, setting.dtype):
                loss = nn.functional.cross_entropy(run(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

        return train_step

    model.eval()
    predict, info = predictor(setting, model, x, device, compile_mode, calibration)

    def infer_step() -> None:
        predict(x)

    infer_step.predict, infer_step.info = predict, info  # type: ignore[attr-defined]
    return infer_step


def predictor(
    setting: Setting,
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    compile_mode: str | None,
    calibration: list[torch.Tensor] | None = None,
) -> tuple[Callable[[torch.Tensor], Any], dict[str, Any]]:
    """What an inference row runs, called on a batch, and what the row should record of it (the backend "auto"
    chose). int8 rows calibrate on ``calibration`` (real images for a top-1; random ones are enough for speed)."""
    calibration = calibration or [torch.randn_like(x) for _ in range(2)]
    if setting.runtime in EXPORTED:
        return exported(model, setting, x), {}
    if setting.runtime in INT8_RUNTIMES:
        return exported_int8(model, setting, x, calibration), {}
    if setting.dtype == INT8:
        fast = quantize_int8(model, calibration, compile=setting.compile)
        return fast, {"activation_bits": fast.quantization["activation_bits"]}
    if setting.runtime == "auto":  # optimize_for_inference as users call it: the fastest backend, remembered
        fast = optimize_for_inference(model, setting.dtype, example_input=x, compile_mode=compile_mode)
        selection = getattr(fast, "selection", None) or {}
        return fast, {"backend": fast.backend, "backend_ms": selection.get("milliseconds")}
    if setting.optimize:
        fast = optimize_for_inference(model, setting.dtype, backend="inductor", compile=setting.compile,
                                      compile_mode=compile_mode)  # fmt: skip
        return fast, {}
    run = torch.compile(model, mode=compile_mode, dynamic=False) if setting.compile else model

    def eager(inputs: torch.Tensor) -> Any:
        with torch.inference_mode(), autocast(device, setting.dtype):
            return run(inputs)

    return eager, {}


def loader_step(setting: Setting) -> Callable[[], None]:
    """The next training batch of ``zoo train``'s in-memory loader: uint8 images (4 batches of them, random),
    augmented on the whole batch as the resnet18-fast recipe augments, normalized, laid out."""
    from .data import default_pretrained_cfg
    from .registry import get_entry
    from .train.augment import Augment
    from .train.data import Split, TensorBatches
    from .train.recipe import RECIPES

    cfg = default_pretrained_cfg(get_entry(setting.model).config)
    n, side = 4 * setting.batch_size, setting.img_size
    images = torch.randint(0, 256, (n, cfg["input_size"][0], side, side), dtype=torch.uint8)
    recipe = RECIPES["resnet18-fast"]
    augment = Augment(crop_pad=recipe["crop_pad"], flip=recipe["flip"], cutout=min(recipe["cutout"], side))
    batches = TensorBatches(Split(torch.zeros(n, dtype=torch.int64), images), batch_size=setting.batch_size,
                            train=True, mean=cfg["mean"], std=cfg["std"], augment=augment,
                            channels_last=setting.channels_last)  # fmt: skip
    stream = iter(())

    def next_batch() -> None:
        nonlocal stream
        try:
            next(stream)
        except StopIteration:  # a new epoch: a new order and new draws
            batches.set_epoch(batches.epoch + 1)
            stream = iter(batches)
            next(stream)

    return next_batch


def exported_int8(
    model: nn.Module, setting: Setting, x: torch.Tensor, calibration: list[torch.Tensor]
) -> Callable[[torch.Tensor], Any]:
    """``model``'s ONNX export, quantized by the row's runtime's own int8 tool on ``calibration``."""
    import tempfile

    from . import deploy

    folder = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    example = x if len(x) >= 2 else torch.cat([x, x])
    path = deploy.export(model, folder / "model.onnx", example_input=example)
    return deploy.int8_runner(path, setting.runtime, calibration)


def exported(model: nn.Module, setting: Setting, x: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """``model`` exported by ``zoo.export`` (dynamic batch, checked against eager) and loaded in its runtime."""
    import tempfile

    from . import deploy

    folder = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    example = x if len(x) >= 2 else torch.cat([x, x])  # a dynamic batch axis is traced from 2 or more
    if setting.runtime == "pt2":
        path = deploy.export(model, folder / "model.pt2", format="pt2", example_input=example, dtype=setting.dtype)
        return deploy.load_package(path)
    path = deploy.export(model, folder / "model.onnx", example_input=example)
    return deploy.runtime_runner(path, setting.runtime)


def measure_group(
    settings: list[Setting],
    device: torch.device,
    memory: PeakMemory,
    *,
    warmup: int,
    repeats: int,
    iters: int,
    compile_mode: str | None = None,
    profile: int = 0,
    calibration: list[torch.Tensor] | None = None,
    scoring: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Result]:
    """Build, warm up and time ``settings`` round by round, interleaved. A setting that runs out of device
    memory gets an OOM row (the cache is freed) and the others go on. ``profile`` > 0: afterwards, each
    setting's ops over that many untimed iterations (:func:`profile_ops`). ``calibration``: the images int8 rows
    calibrate on; ``scoring`` (images, labels): afterwards, each inference row's top-1 on them."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # this group compiles its own graphs: no shapes or recompile budget left by another
    results = [Result(s) for s in settings]
    steps: dict[int, Callable[[], None]] = {}
    for i, result in enumerate(results):
        graphs = counters["stats"]["unique_graphs"]
        step = None
        try:
            memory.reset()
            step = build_step(result.setting, device, compile_mode, calibration=calibration)
            result.info = dict(getattr(step, "info", {}))
            for _ in range(warmup):
                step()
            _sync(device)
            result.warmup_peak_mb = memory.peak_mb()
        except torch.cuda.OutOfMemoryError:
            result.status = "oom"
        if result.status == "oom":  # out of the except: its traceback no longer holds the step's tensors
            step = None
            _out_of_memory(result, device)
            continue
        result.compiled_graphs = counters["stats"]["unique_graphs"] - graphs
        steps[i] = step
    for repeat in range(repeats):  # interleaved, each round starting one setting later: no row always goes first
        ordered = list(steps.items())
        start = repeat % len(ordered) if ordered else 0
        for i, step in ordered[start:] + ordered[:start]:
            result = results[i]
            try:
                if repeat == 0:  # the peak of one call, above what the group holds already; measured untimed, as
                    memory.reset()  # on a CPU the reset gives freed memory back, which that call faults in again
                    step()
                    _sync(device)
                    result.peak_mb = memory.peak_mb()
                ips, lat = time_round(step, iters, device, result.setting.batch_size, result.setting.mode == "latency")
            except torch.cuda.OutOfMemoryError:
                result.status = "oom"
            if result.status == "oom":  # out of the except, as above: the setting's memory goes with it
                del steps[i]
                step = None
                _out_of_memory(result, device)
                continue
            result.img_per_s.append(ips)
            result.latencies_ms += lat
    if profile:  # after the timed rounds: the profiler's overhead never reaches a speed
        for i, step in steps.items():
            results[i].ops = profile_ops(step, profile, device)
    if scoring is not None:  # after the timed rounds too
        for i, step in steps.items():
            if hasattr(step, "predict") and results[i].setting.label != "torchvision":  # its random init: no score
                results[i].info["top1"] = round(top1(step.predict, *scoring, batch=results[i].setting.batch_size), 2)
    return results


def top1(predict: Callable[[torch.Tensor], Any], images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    """Top-1 (%) of ``predict`` (a row's model, on normalized images) over ``images``, ``batch`` at a time."""
    hits = 0
    for x, y in zip(images.split(batch), labels.split(batch), strict=True):
        out = predict(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        hits += int((out.float().argmax(1) == y).sum())
    return 100 * hits / len(labels)


def profile_ops(step: Callable[[], None], iters: int, device: torch.device, top: int = 25) -> list[dict[str, Any]]:
    """The ``top`` ops by self time per iteration, over ``iters`` iterations of ``step`` under torch.profiler.

    Each op is keyed by its call path (``aten::copy_ < aten::clone < onednn::qconv2d_pointwise``: work an
    op does inside another shows up where it happens), input shapes and dtypes; ``share`` is its fraction
    of all self time (device time on CUDA, where the GPU's time is the one that counts).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(iters):
            step()
        _sync(device)
    ops: dict[tuple[str, str, str], dict[str, Any]] = {}
    total = 0.0
    for event in prof.events():
        if event.device_type != DeviceType.CPU:  # kernels and GPU ranges: already in their CPU op's device time
            continue
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        total += us
        path, parent = [event.name], event.cpu_parent
        while parent is not None and len(path) < 3:
            path.append(parent.name)
            parent = parent.cpu_parent
        key = (" < ".join(path), str(event.input_shapes), str(getattr(event, "input_dtypes", "")))
        op = ops.setdefault(key, {"op": key[0], "shapes": key[1], "dtypes": key[2], "calls": 0, "us": 0.0})
        op["calls"] += 1
        op["us"] += us
    ranked = sorted(ops.values(), key=lambda o: o["us"], reverse=True)[:top]
    return [
        {"op": o["op"], "calls_per_iter": round(o["calls"] / iters, 2),
         "self_ms_per_iter": round(o["us"] / iters / 1e3, 3), "share": round(o["us"] / total, 4) if total else 0.0,
         "input_shapes": o["shapes"], "input_dtypes": o["dtypes"]}
        for o in ranked
    ]  # fmt: skip


def _percentile(xs: list[float], p: float) -> float:
    """The ``p`` quantile (0-1) of sorted ``xs``, interpolated between neighbours: over 5 rounds p10 and p90 are
    not simply the slowest and the fastest."""
    k = p * (len(xs) - 1)
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _out_of_memory(result: Result, device: torch.device) -> None:
    """A setting that ran out of memory: its row says so, and its memory (no longer referenced) goes back."""
    result.status, result.img_per_s, result.latencies_ms = "oom", [], []
    gc.collect()  # a compiled step's reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_round(
    step: Callable[[], None], iters: int, device: torch.device, batch: int, latency: bool = False
) -> tuple[float, list[float]]:
    """img/s over ``iters`` iterations and each iteration's latency (ms); CUDA events on GPU. ``latency``
    waits for each step to finish before the next starts, as a request at a time would."""
    latencies = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        starts[0].record()
        for i in range(iters):
            step()
            starts[i + 1].record()
            if latency:
                starts[i + 1].synchronize()
        torch.cuda.synchronize(device)
        latencies = [starts[i].elapsed_time(starts[i + 1]) for i in range(iters)]
        total = sum(latencies) / 1000
    else:
        begin = time.perf_counter()
        for _ in range(iters):
            t = time.perf_counter()
            step()
            latencies.append((time.perf_counter() - t) * 1000)
        total = time.perf_counter() - begin
    return batch * iters / total, latencies


# --- the ceiling ------------------------------------------------------------------------------------------


def measure_ceiling(device: torch.device, dtype: str, seconds: float = 2.0) -> dict[str, float]:
    """The device's GFLOP/s for ``dtype`` on a large 3x3 conv (channels_last) and a large matmul; for int8, a
    stack of such convs through ``quantize_int8`` (the oneDNN int8 kernels the int8 rows run)."""
    if dtype == INT8:
        return {"conv": round(_int8_conv_rate(device, seconds), 1)}

    def rate(fn: Callable[[], Any], flops: float) -> float:
        fn()
        _sync(device)
        n, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < seconds:
            fn()
            n += 1
        _sync(device)
        return flops * n / (time.perf_counter() - begin) / 1e9

    conv, x, a, b = ceiling_operands(device, dtype)
    n = a.shape[0]
    conv_flops = 2 * x.shape[0] * 28 * 28 * 256 * 256 * 9
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:  # the matmul in the math the convs run in (cuDNN: TF32 for fp32 by default; matmuls: strict fp32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
        with torch.inference_mode():  # no autocast: the operands are in the dtype already, no casts are timed
            return {
                "conv": round(rate(lambda: conv(x), conv_flops), 1),
                "matmul": round(rate(lambda: a @ b, 2 * n**3), 1),
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def ceiling_operands(device: torch.device, dtype: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 3x3 conv with its input (channels_last) and two square matrices, all in ``dtype``; large enough to
    saturate a big GPU (8192^2 matmul, batch 256 conv), smaller on a CPU. fp32 on CUDA runs as TF32 where cuDNN
    allows it (its default), the ceiling's matmul then too (:func:`measure_ceiling`; recorded in every row)."""
    dt = DTYPES[dtype]
    big = device.type == "cuda"
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dt).to(memory_format=torch.channels_last).eval()
    x = torch.randn(256 if big else 32, 256, 28, 28, device=device, dtype=dt).contiguous(
        memory_format=torch.channels_last
    )
    n = 8192 if big else 2048
    return conv, x, torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)


INT8_CEILING_DEPTH = 4  # convs in a row: the fp32 quantize at the input and dequantize at the output are shared


def _int8_conv_rate(device: torch.device, seconds: float) -> float:
    """GFLOP/s of the ceiling's 3x3 conv in int8: ``INT8_CEILING_DEPTH`` of them with ReLUs (fused by oneDNN, as
    in the models), quantized and compiled by ``quantize_int8``."""
    conv, x, _, _ = ceiling_operands(device, "fp32")
    stack = nn.Sequential(*(m for _ in range(INT8_CEILING_DEPTH) for m in (copy.deepcopy(conv), nn.ReLU())))
    fast = quantize_int8(stack.to(memory_format=torch.contiguous_format), [x[:2], x[2:4]], example_input=x)
    flops = INT8_CEILING_DEPTH * 2 * x.shape[0] * x.shape[2] * x.shape[3] * 256 * 256 * 9
    fast(x)
    n, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        fast(x)
        n += 1
    return flops * n / (time.perf_counter() - begin) / 1e9
