#!/usr/bin/env python
"""The GPU self-check: one command that runs every GPU path of the zoo once and says what passed.

    python benchmarks/gpu_check.py --out runs/gpu-check      # on a CUDA machine: under 5 minutes

On whatever device it finds (CUDA if present, else the CPU at a smaller size, which is how
``make test`` runs it), in order:

1. ``benchmark``: ``throughput.py`` on resnet50 at two batch sizes in fp32 (TF32 and cuDNN settings
   recorded in each row), the device's fastest precision (bf16 where it has bf16 hardware; fp16 too on
   CUDA) through ``optimize_for_inference``, one compiled
   row (exactly one graph: no graph breaks) and on CUDA one CUDA-graph row (``reduce-overhead``);
   every row must have run (none out of memory);
2. ``optimize-parity``: ``optimize_for_inference`` against the eager model, per dtype (fp32 with TF32
   off), on a model whose every residual branch counts (random norm statistics, no zero-initialized
   last norms, so a wrong kernel anywhere shows); on CUDA also the CUDA-graph path, whose outputs must
   survive the next call;
3. ``train``: ``torchrun --nproc_per_node 1 tools/train.py`` for 20 steps on a generated image
   folder with the device's process-group backend (nccl on CUDA), ``--sync-bn``, an evaluation and
   a checkpoint, in the precision "auto" picks;
4. ``pt2``: a ``zoo.export(format="pt2")`` package (the device's fastest precision) loaded back and compared
   with eager.

It writes ``results.json`` (every step's result, its details or error, and the environment) and
``summary.txt`` (one line per step) in ``--out`` and exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo import benchmark
from zoo.hardware import fast_precision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the benchmark beside this file)


def live_model(name: str, device: torch.device) -> torch.nn.Module:
    """Random weights under which every block computes: zero_init_last would zero each residual branch (a parity
    check would then see only the shortcuts), and running statistics of 0 and 1 would make folding a no-op."""
    model = zoo.create_model(name, zero_init_last=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model.to(device).eval()


def relative_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected).abs().max() / expected.abs().max()).item()


def run_benchmark(device: torch.device, out: Path) -> dict[str, Any]:
    cuda = device.type == "cuda"
    fast = fast_precision(device)  # bf16 on Ampere+ GPUs and bf16 CPUs, fp16 on Volta and Turing GPUs, else fp32
    size = [] if cuda else ["--img-size", "64", "--no-ceiling"]
    timing = ["--iters", "10", "--repeats", "3"] if cuda else ["--iters", "2", "--repeats", "1", "--warmup", "1"]
    runs = {
        "fp32": ["--models", "resnet50", "--batch-sizes", *(["32", "128"] if cuda else ["2", "4"]), "--dtype", "fp32"],
        "fast-optimize": [
            "--models",
            "resnet50",
            "--batch-sizes",
            "32" if cuda else "2",
            "--dtype",
            fast,
            "--optimize",
            *([] if cuda else ["--no-compile"]),
        ],
        "compiled": [
            "--models",
            "resnet50" if cuda else "resnet20",
            "--batch-sizes",
            "32" if cuda else "2",
            "--dtype",
            fast,
            "--compile",
            *([] if cuda else ["--img-size", "32"]),
        ],
    }
    if cuda:
        runs["fp16-optimize"] = ["--models", "resnet50", "--batch-sizes", "32", "--dtype", "fp16", "--optimize"]
        runs["cuda-graphs"] = ["--models", "resnet50", "--batch-sizes", "8", "--dtype", fast, "--optimize",
                               "--compile-mode", "reduce-overhead", "--warmup", "3"]  # fmt: skip
    rows = {}
    for name, args in runs.items():
        folder = out / f"bench-{name}"
        code = throughput.main([*args, *size, *timing, "--baseline", "eager", "--device", device.type,
                                "--out", str(folder)])  # fmt: skip
        if code != 0:
            raise RuntimeError(f"throughput.py {' '.join(args)} exited {code}")
        rows[name] = json.loads((folder / "results.json").read_text())["rows"]
    missing = [f"{name} b{r['batch_size']} {r['config']}" for name, rs in rows.items()
               for r in rs if r["status"] != "ok"]  # fmt: skip
    if missing:
        raise RuntimeError(f"rows that did not run (out of memory): {', '.join(missing)}")
    graphs = rows["compiled"][0]["compiled_graphs"]
    if graphs != 1:
        raise RuntimeError(f"the compiled row compiled {graphs} graphs, expected 1 (0: not compiled; more: breaks)")
    return {
        name: [{k: r.get(k) for k in ("model", "batch_size", "config", "img_per_s", "status", "peak_mem_mb",
                                      "compiled_graphs", "tf32_matmul", "tf32_conv", "cudnn_benchmark")} for r in rs]
        for name, rs in rows.items()
    }  # fmt: skip


def optimize_parity(device: torch.device, out: Path) -> dict[str, Any]:
    cuda = device.type == "cuda"
    model = live_model("resnet50", device)
    x = torch.randn(8 if cuda else 2, 3, 224 if cuda else 64, 224 if cuda else 64, device=device)
    tolerances = {"fp32": 1e-3, "bf16": 5e-2, **({"fp16": 1e-2} if cuda else {})}
    found = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:  # fp32 means fp32 here: TF32 (10-bit mantissa) would differ from eager by ~1e-3 by design
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad():
            expected = model(x).float()
        for dtype, tolerance in tolerances.items():
            if dtype == "bf16" and cuda and fast_precision(device) != "bf16":
                continue  # a GPU without bf16: optimize_for_inference refuses it, as it should
            found[dtype] = round(relative_diff(zoo.optimize_for_inference(model, dtype, compile=cuda)(x), expected), 6)
            if not found[dtype] <= tolerance:
                raise RuntimeError(f"optimize_for_inference({dtype}) differs from eager by {found[dtype]:.2e} "
                                   f"(> {tolerance})")  # fmt: skip
        if cuda:  # CUDA graphs reuse their output buffers: a returned output must survive the next call
            from torch._dynamo.utils import counters

            skipped = counters["inductor"]["cudagraph_skips"]
            graphs = zoo.optimize_for_inference(model, fast_precision(device), compile_mode="reduce-overhead")
            for _ in range(3):  # compile, record, replay
                graphs(x)
            first = graphs(x)
            graphs(torch.randn_like(x))
            found["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"] - skipped
            if found["cudagraph_skips"]:  # inductor ran it without graphs (it says why in its log): no proof
                raise RuntimeError(f"inductor skipped CUDA graphs {found['cudagraph_skips']} time(s)")
            found["cuda-graphs"] = round(relative_diff(first, expected), 6)
            if not found["cuda-graphs"] <= 5e-2:
                raise RuntimeError(f"a CUDA-graph output changed after the next call: {found['cuda-graphs']:.2e} "
                                   "from eager")  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"relative_max_diff": found}


def train_steps(device: torch.device, out: Path) -> dict[str, Any]:
    """20 steps under torchrun: 3 classes x 60 generated images, 10% validation, batch 8."""
    from PIL import Image, ImageDraw

    data = out / "shapes"
    rng = random.Random(0)
    for c, name in enumerate(("red", "green", "blue")):
        (data / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(60):
            img = Image.new("RGB", (32, 32), tuple(rng.randrange(0, 60) for _ in range(3)))
            color = [rng.randrange(40, 120) for _ in range(3)]
            color[c] = 230
            x, y = rng.randrange(4, 20), rng.randrange(4, 20)
            ImageDraw.Draw(img).rectangle((x, y, x + 10, y + 10), fill=tuple(color))
            img.save(data / "train" / name / f"{i:02d}.png")
    run = out / "train-run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", str(ROOT / "tools" / "train.py"),
               "--dataset", "imagefolder", "--root", str(data), "--model", "resnet20", "--epochs", "1",
               "--batch-size", "8", "--val-split", "0.1", "--lr", "0.05", "--sync-bn", "--device", device.type,
               "--precision", "auto", "--output", str(run), "--overwrite",
               "--cache-dir", str(out / "cache")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads((run / "summary.json").read_text())
    if summary["final"]["steps"] != 20 or not (run / "best" / "model.safetensors").is_file():
        raise RuntimeError(f"expected 20 steps and a best checkpoint, got {summary['final']}")
    return {"steps": summary["final"]["steps"], "val_acc1": summary["best"]["val_acc1"], "output": str(run)}


def pt2_package(device: torch.device, out: Path) -> dict[str, Any]:
    cuda = device.type == "cuda"
    name = "resnet50" if cuda else "resnet20"
    model = live_model(name, device)
    size = 224 if cuda else 32
    path = zoo.export(
        model, out / f"{name}.pt2", format="pt2", example_input=torch.randn(2, 3, size, size, device=device)
    )
    package = torch._inductor.aoti_load_package(str(path))
    precision = package.get_metadata()["precision"]  # dtype "auto": the device's fastest
    x = torch.randn(3, 3, size, size, device=device)
    with torch.no_grad():
        expected = model(x)
    diff = relative_diff(package(x), expected)
    tolerance = {"fp32": 1e-3}.get(precision, zoo.deploy.TOLERANCE[precision])
    if not diff <= tolerance:
        raise RuntimeError(f"the loaded {precision} package differs from eager by {diff:.2e} (> {tolerance})")
    return {"file": str(path), "precision": precision, "relative_max_diff": round(diff, 8),
            "mib": round(path.stat().st_size / 2**20, 1)}  # fmt: skip


STEPS: dict[str, Callable[[torch.device, Path], dict[str, Any]]] = {
    "benchmark": run_benchmark,
    "optimize-parity": optimize_parity,
    "train": train_steps,
    "pt2": pt2_package,
}


def _report(out: Path, device: torch.device, environment: dict[str, Any], results: list[dict[str, Any]]) -> None:
    from zoo.io import atomic_write, save_json

    save_json(out / "results.json", {"device": device.type, "environment": environment, "steps": results})
    with atomic_write(out / "summary.txt", "w") as f:
        f.write(f"{environment['device_name']} | torch {environment['torch']} | commit {environment['commit']}\n")
        f.writelines(f"{'PASS' if r['ok'] else 'FAIL'} {r['step']} ({r['seconds']} s)\n" for r in results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu-check", help="folder for results.json and summary.txt")
    p.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS), help="run only these")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the benchmark rows run: the environment records it so
    environment = benchmark.environment(device)
    for name in args.steps:
        start = time.perf_counter()
        try:
            details, ok, error = STEPS[name](device, out), True, None
        except Exception as e:  # every step is tried; a failure is recorded with its traceback, not fatal
            details, ok, error = {}, False, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
        seconds = round(time.perf_counter() - start, 1)
        results.append({"step": name, "ok": ok, "seconds": seconds, "details": details, "error": error})
        print(f"{'PASS' if ok else 'FAIL'} {name} ({seconds} s)" + (f": {error.splitlines()[0]}" if error else ""),
              flush=True)  # fmt: skip
        _report(out, device, environment, results)  # after each step: a kill keeps the steps done
    failed = [r["step"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
