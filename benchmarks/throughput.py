#!/usr/bin/env python
"""Throughput and latency of zoo models: GPU first, CPU too.

    python benchmarks/throughput.py --models resnet50 --batch-sizes 1 8 32 --optimize --baseline torchvision
    python benchmarks/throughput.py --models resnet18_cifar --mode train loader --batch-sizes 500 --baseline eager
    python benchmarks/throughput.py --models resnet50 --optimize --dtype int8 --baseline torchvision
    python benchmarks/throughput.py --models resnet50 --optimize --baseline torchvision \
        --runtimes torch onnxruntime openvino pt2 int8
    python benchmarks/throughput.py --smoke [--runtimes torch onnxruntime openvino]

``--dtype auto`` (the default) is the device's fastest native precision: bf16 on CPUs with AVX-512 BF16 or
AMX and on Ampere+ GPUs, fp16 on Volta and Turing GPUs, else fp32 (``zoo.hardware``); rows say what it resolved to.

Modes: ``infer`` (forward under inference_mode), ``train`` (the step ``zoo train`` runs by default:
forward, backward and its SGD step, in its precision "auto" and layout, channels_last), ``latency``
(batch 1) and ``loader`` (the in-memory batches ``zoo train`` feeds it, augmented as the resnet18-fast
recipe augments: translate, flip and cutout on whole uint8 batches; no model). ``--runtimes`` adds,
for inference, the same model in the runtimes people deploy on: ``onnxruntime`` and ``openvino`` (an
ONNX export, fp32 input), ``pt2`` (an AOTInductor package, in ``--dtype`` when that is a CPU float
precision) and ``int8`` (``zoo.quantize_int8``); ``torch`` is the zoo model as the other flags set it.
Warm-up iterations are excluded; each configuration is timed in ``--repeats`` rounds of ``--iters``
iterations, interleaved with its baseline when one is asked for, so the speed-up ratio is measured
under the same machine conditions. Every row carries its environment (the CPU's name and features included) and its
share of the ceiling measured in its own precision (fp32, bf16 or int8). Outputs: a table, JSON
and CSV files and a PNG plot of img/s against batch size in ``--out``; with ``--profile N``, each row's
top ops by self time (torch.profiler, after the timed rounds) in ``profile.json``.
"""

from __future__ import annotations

import argparse
import csv
import signal
import sys
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo.benchmark import INT8, INT8_RUNTIMES, PeakMemory, Setting, environment, measure_ceiling, measure_group
from zoo.cli import format_table
from zoo.errors import ZooError
from zoo.hardware import DTYPES, resolve_precision
from zoo.optimize import COMPILE_MODES, CUDA_GRAPH_MODES, compile_problem

MODES = ("infer", "train", "latency", "loader")
BASELINES = ("none", "torchvision", "eager")
RUNTIMES = ("torch", "auto", "onnxruntime", "openvino", "pt2", INT8, *INT8_RUNTIMES)
TORCHVISION_ARCHS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"}  # fmt: skip


class BadInput(Exception):
    """A user error: printed as one line, exit code 2."""


# --- the run ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50"], help="names or fnmatch patterns")
    p.add_argument("--mode", nargs="+", choices=MODES, default=["infer"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    p.add_argument("--img-size", type=int, default=None, help="default: the family's (224 ImageNet, 32 CIFAR)")
    p.add_argument(
        "--dtype",
        choices=("auto", *DTYPES, INT8),
        default="auto",
        help="autocast dtype (weights too with --optimize); auto: the device's fastest native float precision; "
        "int8: with --optimize, x86 CPUs",
    )
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True,
        help="NHWC, the fast layout and zoo train's (default); --no-channels-last: NCHW",
    )  # fmt: skip
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
        help="inference rows per runtime: torch (the zoo model as set by the other flags), auto "
        "(optimize_for_inference's fastest backend), onnxruntime, openvino, pt2 (AOTInductor), int8 "
        "(zoo.quantize_int8), openvino-int8 (NNCF), onnxruntime-int8 (its static QDQ quantization)",
    )  # fmt: skip
    p.add_argument(
        "--data", default=None, metavar="ROOT",
        help="CIFAR-10 image folder or .tar.gz: the models' own weights, int8 rows calibrated on 512 of its training "
        "images, and each inference row's top-1 on its validation split (32-pixel models)",
    )  # fmt: skip
    p.add_argument("--data-images", type=int, default=1000, help="--data: validation images scored (seeded)")
    p.add_argument("--warmup", type=int, default=3, help="iterations before timing (compilation happens here)")
    p.add_argument("--iters", type=int, default=10, help="iterations per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the roofline measurement")
    p.add_argument(
        "--profile", type=int, default=0, metavar="ITERS",
        help="after timing, profile each row over ITERS iterations: its top ops by self time to profile.json",
    )  # fmt: skip
    p.add_argument("--out", default="runs/bench", help="folder for results.json, results.csv, throughput.png")
    p.add_argument("--smoke", action="store_true", help="a seconds-long check: resnet20, batch 2, 2 iterations")
    args = p.parse_args(argv)
    if args.smoke:
        modes = ["infer", "train"] if args.runtimes == ["torch"] else ["infer"]  # runtimes are for inference
        args.models, args.mode, args.batch_sizes, args.img_size = ["resnet20"], modes, [2], 32
        args.warmup, args.iters, args.repeats, args.no_ceiling = 1, 2, 1, True
    return args


def family_size(model: str) -> int:
    """The side a model is timed at by default: its family's (224 for ImageNet stems, 32 for CIFAR ones), whatever
    size its default weights were trained at (176 for the torchvision-V2 ResNeXts)."""
    from zoo.data import default_pretrained_cfg

    return default_pretrained_cfg(zoo.registry.get_entry(model).config)["input_size"][-1]


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
    if args.iters < 1 or args.repeats < 1 or args.warmup < 0 or args.profile < 0:
        raise BadInput("--iters and --repeats must be >= 1, --warmup and --profile >= 0")
    args.dtype_requested = args.dtype
    if args.dtype != INT8:
        args.dtype = resolve_precision(args.dtype, device, flag="--dtype")
    exported = [r for r in args.runtimes if r != "torch"]
    if exported and {"train", "loader"} & set(args.mode):
        raise BadInput(f"--runtimes {' '.join(exported)}: runtimes are timed for inference; drop --mode train/loader")
    if INT8 in args.runtimes and device.type != "cpu":
        raise BadInput("--runtimes int8: zoo.quantize_int8 is an x86 CPU path; use --device cpu")
    if args.data is not None:
        big = [m for m in models if family_size(m) != 32]
        if big or args.img_size not in (None, 32):
            raise BadInput(f"--data: CIFAR images are 32 px; {', '.join(big) or '--img-size'} take another size")
        if not Path(args.data).exists():
            raise BadInput(f"--data: {args.data!r} does not exist (a CIFAR-10 image folder or .tar.gz)")
        bare = [m for m in models if not zoo.list_pretrained(f"{m}.*")]
        if bare:  # the rows are scored with the models' own weights
            raise BadInput(f"--data: {', '.join(bare)} has no weights to score; drop --data or choose models with "
                           "weights (zoo list --pretrained)")  # fmt: skip
        if args.data_images < 1:
            raise BadInput(f"--data-images: expected a positive number of images, got {args.data_images}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise BadInput(f"--out: {args.out!r} is a file; give the folder for results.json, results.csv, throughput.png")
    on_cpu = [r for r in args.runtimes if r in ("onnxruntime", "openvino", *INT8_RUNTIMES)]
    if on_cpu and device.type != "cpu":  # their runners use the CPU: rows beside GPU rows would mislead
        raise BadInput(f"--runtimes {' '.join(on_cpu)}: these run on the CPU here; use --device cpu")
    if args.dtype == INT8 and not (args.optimize and device.type == "cpu" and "train" not in args.mode):
        raise BadInput("--dtype int8 is an inference fast path for CPUs: use it with --optimize, --device cpu "
                       "and --mode infer or latency")  # fmt: skip
    compiles = args.compile or (args.optimize and not args.no_compile) or INT8 in args.runtimes
    if args.compile_mode is not None and not compiles:  # it would be recorded for rows that ran eager
        raise BadInput(f"--compile-mode {args.compile_mode}: no row compiles; add --compile (or --optimize)")
    if compiles and args.warmup < 1:
        raise BadInput("--warmup 0: compiled rows compile in their first call; give --warmup 1 or more")
    if args.compile_mode in CUDA_GRAPH_MODES and args.warmup < 3:
        # CUDA graphs: call 1 compiles, call 2 records the graph, call 3 is the first replay
        raise BadInput(f"--warmup {args.warmup}: --compile-mode {args.compile_mode} records CUDA graphs in the "
                       "first calls; give --warmup 3 or more")  # fmt: skip
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
        size = args.img_size or family_size(model)
        for mode in args.mode:
            for batch in [1] if mode == "latency" else args.batch_sizes:
                if mode == "loader":  # the data alone: no model, no runtime, no baseline
                    groups.append(([Setting(model, mode, batch, size, "fp32", args.channels_last, False, False,
                                            label="zoo")], None))  # fmt: skip
                    continue
                optimize = args.optimize and mode != "train"
                compile = args.compile or (optimize and not args.no_compile)  # the fast path compiles by default
                ours = []
                own = args.data is not None  # the models' own weights, to score them
                if "torch" in args.runtimes or mode == "train":
                    ours.append(Setting(model, mode, batch, size, args.dtype, args.channels_last or optimize, compile,
                                        optimize, label="zoo", pretrained=own))  # fmt: skip
                for runtime in [r for r in args.runtimes if r != "torch" and mode != "train"]:
                    if runtime == INT8:
                        ours.append(Setting(model, mode, batch, size, INT8, True, True, True, label="zoo",
                                            pretrained=own))  # fmt: skip
                    elif runtime == "auto":
                        float_dtype = "fp32" if args.dtype == INT8 else args.dtype
                        ours.append(Setting(model, mode, batch, size, float_dtype, True, True, True, label="zoo",
                                            runtime="auto", pretrained=own))  # fmt: skip
                    else:
                        ours.append(Setting(model, mode, batch, size, runtime_precision(runtime, args.dtype), False,
                                            False, False, runtime, runtime, pretrained=own))  # fmt: skip
                base = None
                if args.baseline != "none":
                    base = Setting(model, mode, batch, size, "fp32", False, False, False, label=args.baseline,
                                   pretrained=own)  # fmt: skip
                groups.append((ours, base))
    return groups


def real_images(root: str, model: str, count: int) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """512 training images (4 batches of 128) to calibrate int8 rows on, and ``count`` validation images with their
    labels to score every row on: the seeded split ``zoo validate`` scores, normalized as the weights expect (the
    same images ``zoo validate --int8`` calibrates on)."""
    from zoo.train.data import load_dataset

    data = load_dataset("imagefolder", root, val_split=0.1, split_seed=0, in_memory=True)
    config = zoo.resolve_data_config(zoo.create_model(model, pretrained=True))
    mean, std = (torch.tensor(config[k]).view(1, -1, 1, 1) * 255 for k in ("mean", "std"))
    g = torch.Generator().manual_seed(0)
    train = data.train.images[torch.randperm(len(data.train), generator=g)[:512]]
    picks = torch.randperm(len(data.val), generator=g)[: min(count, len(data.val))].sort().values
    normalize = lambda x: (x.float() - mean) / std
    return list(normalize(train).split(128)), (normalize(data.val.images[picks]), data.val.labels[picks])


def runtime_precision(runtime: str, dtype: str) -> str:
    """What an exported runtime's row computes in: a .pt2 in ``dtype`` when that is a float precision of the CPU,
    ONNX Runtime in fp32, OpenVINO in the precision it picks itself (bf16 where the CPU has it); int8 rows, int8."""
    if runtime in INT8_RUNTIMES:
        return INT8
    if runtime == "pt2":
        return dtype if dtype in ("fp32", "bf16") else "fp32"
    if runtime == "openvino":
        from zoo.deploy import openvino_precision

        return openvino_precision()
    return "fp32"


def write(
    out: Path,
    rows: list[dict[str, Any]],
    ceiling: dict[str, dict[str, float]],
    ratios: list[dict[str, Any]],
    profiles: list[dict[str, Any]],
    env: dict[str, Any],
    final: bool = True,
) -> None:
    """results.json, results.csv and profile.json (after every group, so a kill keeps what was measured); the
    plot once ``final``."""
    from zoo.io import atomic_write, save_json

    if not rows:  # nothing measured (a failure before the first row): an earlier run's results stay as they were
        return
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "results.json", {"environment": env, "ceiling_gflops": ceiling, "speedups": ratios, "rows": rows})
    if profiles:
        save_json(out / "profile.json", profiles)
    with atomic_write(out / "results.csv", "w") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r))  # OOM rows have fewer fields
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if final:
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
    env = {**environment(device), "compile_mode": args.compile_mode or "default",
           "dtype_requested": args.dtype_requested}  # fmt: skip
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    ceiling: dict[str, dict[str, float]] = {}  # GFLOP/s per precision: each row is held against its own
    profiles: list[dict[str, Any]] = []
    memory = PeakMemory(device)
    on_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill also writes what is done
    print(f"{env['device_name']}: {', '.join(env['cpu_features']) or 'no AVX2'}; --dtype {args.dtype_requested} "
          f"-> {args.dtype}", flush=True)  # fmt: skip
    try:
        if not args.no_ceiling:
            precisions = dict.fromkeys(s.precision for ours, base in groups for s in [*ours, *([base] if base else [])])
            for precision in precisions:
                ceiling[precision] = measure_ceiling(device, precision)
                shown = ", ".join(f"{kind} {value} GFLOP/s" for kind, value in ceiling[precision].items())
                print(f"ceiling ({precision}, {env['device_name']}): {shown}", flush=True)
        for ours, base in groups:
            first = ours[0]
            model = zoo.create_model(first.model)
            shape = (model.pretrained_cfg["input_size"][0], first.img_size, first.img_size)
            macs = zoo.count(model, shape).conv_linear_macs
            calibration, scoring = real_images(args.data, first.model, args.data_images) if args.data else (None, None)
            results = measure_group(
                [*ours, *([base] if base else [])],
                device,
                memory,
                warmup=args.warmup,
                repeats=args.repeats,
                iters=args.iters,
                compile_mode=args.compile_mode,
                profile=args.profile,
                calibration=calibration,
                scoring=scoring,
            )
            new = [r.row(env, macs, ceiling) for r in results]
            rows += new
            for r in new:
                if r["status"] != "ok":
                    print(f"{r['model']} {r['mode']} b{r['batch_size']} {r['config']}: out of memory", flush=True)
                    continue
                pct = (f", {r['pct_of_conv_ceiling']}% of the {r['ceiling_precision']} conv ceiling"
                       if r.get("pct_of_conv_ceiling") is not None else "")  # fmt: skip
                print(f"{r['model']} {r['mode']} b{r['batch_size']} {r['config']}: {r['img_per_s']} img/s "
                      f"(p10 {r['img_per_s_p10']}, p90 {r['img_per_s_p90']}), p50 {r['latency_ms_p50']} ms, "
                      f"{r['gflops_achieved']} GFLOP/s{pct}", flush=True)  # fmt: skip
            for r in (r for r in results if r.ops):
                s = r.setting
                profiles.append({"model": s.model, "mode": s.mode, "batch_size": s.batch_size, "config": s.describe(),
                                 "iters": args.profile, "ops": r.ops})  # fmt: skip
                print(f"{s.model} {s.mode} b{s.batch_size} {s.describe()}: top ops by self time", flush=True)
                for op in r.ops[:8]:
                    print(f"  {100 * op['share']:5.1f}%  {op['self_ms_per_iter']:9.3f} ms/iter  {op['op']}  "
                          f"{op['input_shapes'][:70]}", flush=True)  # fmt: skip
            write(out, rows, ceiling, ratios, profiles, env, final=False)
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
            write(out, rows, ceiling, ratios, profiles, env, final=False)
    except KeyboardInterrupt:
        print("interrupted: writing the rows finished so far", file=sys.stderr)
        return 130
    finally:  # an interrupt, or any failure: what was measured is kept
        signal.signal(signal.SIGTERM, on_term)  # a caller (gpu_check) is killed as it expects to be again
        write(out, rows, ceiling, ratios, profiles, env)
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
