#!/usr/bin/env python
"""Throughput and latency of zoo models: GPU first, CPU too.

    python benchmarks/throughput.py --models resnet50 --batch-sizes 1 8 32 --optimize --dtype bf16 \\
        --baseline torchvision
    python benchmarks/throughput.py --models resnet18_cifar --mode train --batch-sizes 128 \\
        --dtype bf16 --channels-last --baseline eager
    python benchmarks/throughput.py --models resnet50 --optimize --dtype int8 --baseline torchvision
    python benchmarks/throughput.py --models resnet50 --optimize --dtype bf16 --baseline torchvision \
        --runtimes torch onnxruntime openvino pt2 int8
    python benchmarks/throughput.py --smoke [--runtimes torch onnxruntime openvino]

Modes: ``infer`` (forward under inference_mode), ``train`` (forward, backward, SGD step)
and ``latency`` (batch 1). ``--runtimes`` adds, for inference, the same model in the runtimes people
deploy on: ``onnxruntime`` and ``openvino`` (an ONNX export, fp32 input), ``pt2`` (an AOTInductor
package, bf16 when ``--dtype bf16``) and ``int8`` (``zoo.quantize_int8``); ``torch`` is the zoo model as
the other flags set it. Warm-up iterations are excluded; each configuration is
timed in ``--repeats`` rounds of ``--iters`` iterations, interleaved with its
baseline when one is asked for, so the speed-up ratio is measured under the same
machine conditions. Every row carries its environment. Outputs: a table, JSON
and CSV files and a PNG plot of img/s against batch size in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo.cli import format_table
from zoo.errors import ZooError
from zoo.optimize import DTYPES, autocast, compile_problem, optimize_for_inference, quantize_int8

MODES = ("infer", "train", "latency")
BASELINES = ("none", "torchvision", "eager")
INT8 = "int8"  # --optimize only: zoo.quantize_int8, calibrated on random batches (speed does not depend on them)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RUNTIMES = ("torch", "onnxruntime", "openvino", "pt2", INT8)
TORCHVISION_ARCHS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"}  # fmt: skip


class BadInput(Exception):
    """A user error: printed as one line, exit code 2."""


# --- environment --------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
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
    runtime: str = "torch"  # what executes the model: torch, onnxruntime, openvino, pt2 (an exported file)

    def describe(self) -> str:
        if self.runtime == "openvino":  # it picks its own inference precision (bf16 on CPUs that have it)
            return "openvino:default-precision"
        if self.runtime in EXPORTED:
            return f"{self.runtime}:{self.dtype}"
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
    compiled_graphs: int = 0  # dynamo graphs compiled while building and warming up this setting
    status: str = "ok"  # or "oom": it did not fit the device; its row has no speed

    def row(self, env: dict[str, Any], macs: float, ceiling: dict[str, float]) -> dict[str, Any]:
        s, ips = self.setting, sorted(self.img_per_s)
        if self.status != "ok":
            return {**asdict(s), "config": s.describe(), "status": self.status, "img_per_s": None, **env}
        lat = sorted(self.latencies_ms)
        q = lambda xs, p: xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]
        median = statistics.median(ips)
        achieved = 2 * macs * median / 1e9 * (3 if s.mode == "train" else 1)  # backward ~ 2x forward
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
            "compiled_graphs": self.compiled_graphs,
            "status": self.status,
            "gflops_achieved": round(achieved, 1),
            **env,
        }
        for kind, value in ceiling.items():
            row[f"pct_of_{kind}_ceiling"] = round(100 * achieved / value, 1) if value else None
        return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(setting: Setting, device: torch.device, compile_mode: str | None) -> Callable[[], None]:
    """The closure one iteration runs, with its model and data ready on the device."""
    if setting.label == "torchvision":
        import torchvision

        model: nn.Module = getattr(torchvision.models, setting.model)()
    else:
        model = zoo.create_model(setting.model)
    model.to(device)
    in_chans = model.pretrained_cfg["input_size"][0] if hasattr(model, "pretrained_cfg") else 3
    x = torch.randn(setting.batch_size, in_chans, setting.img_size, setting.img_size, device=device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    if setting.mode == "train":
        model.train()
        y = torch.randint(0, getattr(model, "num_classes", 1000) or 1000, (setting.batch_size,), device=device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
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
    if setting.runtime in EXPORTED:
        run = exported(model, setting, x)

        def exported_step() -> None:
            run(x)

        return exported_step
    if setting.dtype == INT8:
        fast = quantize_int8(model, [torch.randn_like(x) for _ in range(2)], compile=setting.compile)

        def int8_step() -> None:
            fast(x)

        return int8_step
    if setting.optimize:
        fast = optimize_for_inference(model, setting.dtype, compile=setting.compile, compile_mode=compile_mode)

        def optimized_step() -> None:
            fast(x)

        return optimized_step
    run = torch.compile(model, mode=compile_mode, dynamic=False) if setting.compile else model

    def infer_step() -> None:
        with torch.inference_mode(), autocast(device, setting.dtype):
            run(x)

    return infer_step


EXPORTED = ("onnxruntime", "openvino", "pt2")


def exported(model: nn.Module, setting: Setting, x: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """``model`` exported by ``zoo.export`` (dynamic batch, checked against eager) and loaded in its runtime."""
    import tempfile

    from zoo import deploy

    folder = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    example = x if len(x) >= 2 else torch.cat([x, x])  # a dynamic batch axis is traced from 2 or more
    if setting.runtime == "pt2":
        path = zoo.export(model, folder / "model.pt2", format="pt2", example_input=example, dtype=setting.dtype)
        return torch._inductor.aoti_load_package(str(path))
    path = zoo.export(model, folder / "model.onnx", example_input=example)
    return deploy.runtime_runner(path, setting.runtime)


def measure_group(
    settings: list[Setting], args: argparse.Namespace, device: torch.device, memory: PeakMemory
) -> list[Result]:
    """Build, warm up and time ``settings`` round by round, interleaved. A setting that runs out of device
    memory gets an OOM row (the cache is freed) and the others go on."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # this group compiles its own graphs: no shapes or recompile budget left by another
    results = [Result(s) for s in settings]
    steps: dict[int, Callable[[], None]] = {}
    for i, result in enumerate(results):
        graphs = counters["stats"]["unique_graphs"]
        try:
            step = build_step(result.setting, device, args.compile_mode)
            for _ in range(args.warmup):
                step()
            _sync(device)
        except torch.cuda.OutOfMemoryError:
            _out_of_memory(result, device)
            continue
        result.compiled_graphs = counters["stats"]["unique_graphs"] - graphs
        steps[i] = step
    for repeat in range(args.repeats):  # interleaved: ours, baseline, ours, baseline, ...
        for i, step in list(steps.items()):
            result = results[i]
            if repeat == 0:
                memory.reset()  # the peak of one timed round, above what the group holds already
            try:
                ips, lat = time_round(
                    step, args.iters, device, result.setting.batch_size, result.setting.mode == "latency"
                )
            except torch.cuda.OutOfMemoryError:
                _out_of_memory(result, device)
                del steps[i]
                continue
            if repeat == 0:
                result.peak_mb = memory.peak_mb()
            result.img_per_s.append(ips)
            result.latencies_ms += lat
    return results


def _out_of_memory(result: Result, device: torch.device) -> None:
    result.status, result.img_per_s, result.latencies_ms = "oom", [], []
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
    """The device's GFLOP/s for ``dtype`` on a large 3x3 conv (channels_last) and a large matmul."""

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
    with torch.inference_mode():  # no autocast: the operands are in the dtype already, no casts are timed
        return {
            "conv": round(rate(lambda: conv(x), conv_flops), 1),
            "matmul": round(rate(lambda: a @ b, 2 * n**3), 1),
        }


def ceiling_operands(device: torch.device, dtype: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 3x3 conv with its input (channels_last) and two square matrices, all in ``dtype``; large enough to
    saturate a big GPU (8192^2 matmul, batch 256 conv), smaller on a CPU. fp32 on CUDA runs as TF32 when
    ``torch.backends`` allows it, for conv and matmul alike (recorded in every row)."""
    dt = DTYPES[dtype]
    big = device.type == "cuda"
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dt).to(memory_format=torch.channels_last).eval()
    x = torch.randn(256 if big else 32, 256, 28, 28, device=device, dtype=dt).contiguous(
        memory_format=torch.channels_last
    )
    n = 8192 if big else 2048
    return conv, x, torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)


# --- the run ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50"], help="names or fnmatch patterns")
    p.add_argument("--mode", nargs="+", choices=MODES, default=["infer"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    p.add_argument("--img-size", type=int, default=None, help="default: each model's own input size")
    p.add_argument(
        "--dtype",
        choices=(*DTYPES, INT8),
        default="fp32",
        help="autocast dtype (weights too with --optimize); int8: with --optimize, x86 CPUs",
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile (inductor)")
    p.add_argument(
        "--compile-mode", default=None, choices=COMPILE_MODES,
        help="reduce-overhead: CUDA graphs, for small batches on GPUs",
    )  # fmt: skip
    p.add_argument("--optimize", action="store_true", help="zoo.optimize_for_inference: fold BN, NHWC, dtype, compile")
    p.add_argument("--no-compile", action="store_true", help="with --optimize: the fast path without inductor")
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        default="none",
        help="torchvision: its model, eager fp32 NCHW; eager: the same zoo model, eager fp32 NCHW",
    )
    p.add_argument(
        "--runtimes", nargs="+", choices=RUNTIMES, default=["torch"],
        help="inference rows per runtime: torch (the zoo model as set by the other flags), onnxruntime, openvino, "
        "pt2 (AOTInductor), int8 (zoo.quantize_int8)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=3, help="iterations before timing (compilation happens here)")
    p.add_argument("--iters", type=int, default=10, help="iterations per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the roofline measurement")
    p.add_argument("--out", default="runs/bench", help="folder for results.json, results.csv, throughput.png")
    p.add_argument("--smoke", action="store_true", help="a seconds-long check: resnet20, batch 2, 2 iterations")
    args = p.parse_args(argv)
    if args.smoke:
        modes = ["infer", "train"] if args.runtimes == ["torch"] else ["infer"]  # runtimes are for inference
        args.models, args.mode, args.batch_sizes, args.img_size = ["resnet20"], modes, [2], 32
        args.warmup, args.iters, args.repeats, args.no_ceiling = 1, 2, 1, True
    return args


def check(args: argparse.Namespace) -> tuple[torch.device, list[str]]:
    """Validate everything before any timing; each problem is one clear line."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        models = zoo.registry.expand_models(args.models, "--models")
    except zoo.ConfigError as e:
        raise BadInput(str(e)) from e
    for b in args.batch_sizes:
        if b < 1:
            raise BadInput(f"--batch-sizes: {b} is not a positive batch size")
    for flag, value in (("--img-size", args.img_size), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise BadInput(f"{flag}: expected a positive integer, got {value}")
    if args.iters < 1 or args.repeats < 1 or args.warmup < 0:
        raise BadInput("--iters and --repeats must be >= 1, --warmup >= 0")
    if args.dtype == "fp16" and device.type == "cpu":
        raise BadInput("--dtype fp16 needs a CUDA device; on a CPU use bf16 (fast with AVX-512 BF16 or AMX)")
    exported = [r for r in args.runtimes if r != "torch"]
    if exported and "train" in args.mode:
        raise BadInput(f"--runtimes {' '.join(exported)}: runtimes are timed for inference; drop --mode train")
    if INT8 in args.runtimes and device.type != "cpu":
        raise BadInput("--runtimes int8: zoo.quantize_int8 is an x86 CPU path; use --device cpu")
    if args.dtype == INT8 and not (args.optimize and device.type == "cpu" and "train" not in args.mode):
        raise BadInput("--dtype int8 is an inference fast path for CPUs: use it with --optimize, --device cpu "
                       "and --mode infer or latency")  # fmt: skip
    compiles = args.compile or (args.optimize and not args.no_compile) or INT8 in args.runtimes
    if compiles and args.warmup < 1:
        raise BadInput("--warmup 0: compiled rows compile in their first call; give --warmup 1 or more")
    if args.compile or (args.optimize and not args.no_compile):
        problem = compile_problem(device)
        if problem:
            flag, fix = ("--compile", "run without it") if args.compile else ("--optimize", "add --no-compile")
            raise BadInput(f"{flag}: torch.compile is unavailable here: {problem}; {fix}")
    if args.baseline == "torchvision":
        missing = [m for m in models if m not in TORCHVISION_ARCHS]
        if missing:
            raise BadInput(f"--baseline torchvision: torchvision has no {', '.join(missing)}; use --baseline eager")
    return device, models


def settings_for(args: argparse.Namespace, models: list[str]) -> list[tuple[list[Setting], Setting | None]]:
    """Groups timed together, interleaved: the zoo's settings (one per runtime) and the baseline."""
    groups = []
    for model in models:
        size = args.img_size or zoo.create_model(model).pretrained_cfg["input_size"][-1]
        for mode in args.mode:
            for batch in [1] if mode == "latency" else args.batch_sizes:
                optimize = args.optimize and mode != "train"
                compile = args.compile or (optimize and not args.no_compile)  # the fast path compiles by default
                ours = []
                if "torch" in args.runtimes or mode == "train":
                    ours.append(Setting(model, mode, batch, size, args.dtype, args.channels_last or optimize, compile,
                                        optimize, label="zoo"))  # fmt: skip
                for runtime in [r for r in args.runtimes if r != "torch" and mode != "train"]:
                    if runtime == INT8:
                        ours.append(Setting(model, mode, batch, size, INT8, True, True, True, label="zoo"))
                    else:
                        dtype = "bf16" if runtime == "pt2" and args.dtype == "bf16" else "fp32"
                        ours.append(Setting(model, mode, batch, size, dtype, False, False, False, runtime, runtime))
                base = None
                if args.baseline != "none":
                    base = Setting(model, mode, batch, size, "fp32", False, False, False, label=args.baseline)
                groups.append((ours, base))
    return groups


def write(out: Path, rows: list[dict[str, Any]], ceiling: dict[str, float], ratios: list[dict[str, Any]]) -> None:
    from zoo.io import atomic_write, save_json

    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "results.json", {"ceiling_gflops": ceiling, "speedups": ratios, "rows": rows})
    if rows:
        with atomic_write(out / "results.csv", "w") as f:
            fields = list(dict.fromkeys(k for r in rows for k in r))  # OOM rows have fewer fields
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        plot(out / "throughput.png", rows)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from zoo.io import atomic_write

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in (r for r in rows if r["status"] == "ok"):
        key = f"{r['model']} {r['mode']} {r['config']}"
        series.setdefault(key, []).append((r["batch_size"], r["img_per_s"], r["img_per_s_p10"], r["img_per_s_p90"]))
    for key, points in series.items():
        points.sort()
        xs = [p[0] for p in points]
        ax.errorbar(xs, [p[1] for p in points], yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                    marker="o", capsize=3, label=key)  # fmt: skip
    ax.set(xscale="log", xlabel="batch size", ylabel="images / s (median, p10-p90)",
           title=f"{rows[0]['device_name']}, torch {rows[0]['torch']}, {rows[0]['threads']} threads")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device, models = check(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        groups = settings_for(args, models)
    except (BadInput, ZooError) as e:
        print(f"throughput.py: error: {e}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's benchmark: fixed shapes, so let cuDNN pick its fastest
    env = environment(device)
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    ceiling: dict[str, float] = {}
    memory = PeakMemory(device)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill also writes what is done
    try:
        if not args.no_ceiling:
            # int8 rows are compared with the bf16 ceiling: the fastest float math of the same machine
            ceiling_dtype = "bf16" if args.dtype == INT8 else args.dtype
            ceiling = measure_ceiling(device, ceiling_dtype)
            print(f"ceiling ({ceiling_dtype}, {env['device_name']}): conv {ceiling['conv']} GFLOP/s, "
                  f"matmul {ceiling['matmul']} GFLOP/s", flush=True)  # fmt: skip
        for ours, base in groups:
            first = ours[0]
            macs = zoo.count(zoo.create_model(first.model), (3, first.img_size, first.img_size)).conv_linear_macs
            results = measure_group([*ours, *([base] if base else [])], args, device, memory)
            new = [r.row(env, macs, ceiling) for r in results]
            rows += new
            for r in new:
                if r["status"] != "ok":
                    print(f"{r['model']} {r['mode']} b{r['batch_size']} {r['config']}: out of memory", flush=True)
                    continue
                pct = f", {r['pct_of_conv_ceiling']}% of conv ceiling" if ceiling else ""
                print(f"{r['model']} {r['mode']} b{r['batch_size']} {r['config']}: {r['img_per_s']} img/s "
                      f"(p10 {r['img_per_s_p10']}, p90 {r['img_per_s_p90']}), p50 {r['latency_ms_p50']} ms, "
                      f"{r['gflops_achieved']} GFLOP/s{pct}", flush=True)  # fmt: skip
            if base is None or new[-1]["status"] != "ok":
                continue
            for setting, row in zip(ours, new, strict=False):
                if row["status"] != "ok":
                    continue
                ratio = row["img_per_s"] / new[-1]["img_per_s"]
                ratios.append(
                    {"model": setting.model, "mode": setting.mode, "batch_size": setting.batch_size,
                     "ours": setting.describe(), "runtime": setting.runtime, "baseline": base.describe(),
                     "speedup": round(ratio, 2)}
                )  # fmt: skip
                print(f"  {setting.describe()}: {ratio:.2f}x {base.describe()}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing the rows finished so far", file=sys.stderr)
        return 130
    finally:  # an interrupt, or any failure: what was measured is kept
        write(out, rows, ceiling, ratios)
    header = [
        "model",
        "mode",
        "batch",
        "config",
        "img/s",
        "p10",
        "p90",
        "p50 ms",
        "p99 ms",
        "GFLOP/s",
        "% conv ceil.",
        "peak MB",
    ]
    print()
    keys = ["model", "mode", "batch_size", "config", "img_per_s", "img_per_s_p10", "img_per_s_p90", "latency_ms_p50",
            "latency_ms_p99", "gflops_achieved", "pct_of_conv_ceiling", "peak_mem_mb"]  # fmt: skip
    print(format_table(header, [[r.get(k, "-") for k in keys] for r in rows]))
    for r in ratios:
        print(f"speed-up {r['model']} {r['mode']} b{r['batch_size']}: {r['ours']} vs {r['baseline']} = {r['speedup']}x")
    print(f"\n{env['device_name']} | torch {env['torch']} | {env['threads']} threads | commit {env['commit']}")
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
