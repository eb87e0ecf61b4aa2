#!/usr/bin/env python
"""Where the inductor fast path's time goes, conv by conv, against OpenVINO's own per-layer counters.

    python benchmarks/conv_profile.py --model resnet50 --batch-size 32 --dtype bf16 --out benchmarks/results/X

One call of ``optimize_for_inference(backend="inductor")`` under oneDNN's verbose log (every primitive it runs:
its implementation, memory formats, shape and time), and one inference of the same network's ONNX export in
OpenVINO with ``PERF_COUNT`` (every layer: its type, implementation and time), both after warm-up. Writes
``profile.json`` (every primitive and layer, with GFLOP/s for convolutions) and prints the slowest convs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo.benchmark import environment
from zoo.io import save_json

_CONV = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)sh\d+\w*_iw\d+ow(\d+)kw(\d+)")


def onednn_primitives(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """The oneDNN primitives one call of ``model`` runs, from oneDNN's verbose log (written to stdout by C++)."""
    read, write = os.pipe()
    saved = os.dup(1)
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, saved)
        os.dup2(write, 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                model(x)
        finally:
            os.dup2(saved, 1)
            os.close(write)
    with open(read, closefd=True) as f:
        lines = f.read().splitlines()
    rows = []
    for line in lines:
        fields = line.split(",")
        if len(fields) < 8 or fields[0] != "onednn_verbose" or fields[3] != "exec":
            continue
        row = {"kind": fields[5], "implementation": fields[6], "formats": fields[8], "problem": fields[-2],
               "ms": float(fields[-1])}  # fmt: skip
        m = _CONV.match(fields[-2])
        if row["kind"] == "convolution" and m:
            mb, ic, oc, oh, kh, ow, kw = map(int, m.groups())
            row["gflops"] = round(2 * mb * oh * ow * oc * ic * kh * kw / row["ms"] / 1e6, 1)
        rows.append(row)
    return rows


def openvino_layers(model: torch.nn.Module, x: torch.Tensor, precision: str) -> list[dict[str, Any]]:
    """OpenVINO's per-layer counters for one inference of ``model``'s ONNX export, in ``precision``."""
    import openvino

    from zoo.deploy import OPENVINO_TYPES

    with tempfile.TemporaryDirectory() as folder:
        path = zoo.export(model, Path(folder) / "model.onnx", example_input=x[:2], check=False)
        compiled = openvino.Core().compile_model(
            str(path), "CPU", {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": OPENVINO_TYPES[precision]}
        )
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer({0: x.numpy()})
    return [{"kind": p.node_type, "implementation": p.exec_type, "name": p.node_name,
             "ms": round(p.real_time.total_seconds() * 1000, 3)} for p in request.get_profiling_info()]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--out", default="runs/conv-profile")
    args = p.parse_args(argv)
    model = zoo.create_model(args.model).eval()
    x = torch.randn(args.batch_size, *model.pretrained_cfg["input_size"])
    fast = zoo.optimize_for_inference(model, args.dtype, backend="inductor", example_input=x)
    for _ in range(2):
        fast(x)
    ours = onednn_primitives(fast, x)
    theirs = openvino_layers(model, x, fast.precision)
    total = lambda rows: round(sum(r["ms"] for r in rows), 1)
    record = {"model": args.model, "batch_size": args.batch_size, "precision": fast.precision,
              "environment": environment(torch.device("cpu")), "onednn_ms": total(ours),
              "openvino_ms": total(theirs), "onednn": ours, "openvino": theirs}  # fmt: skip
    save_json(Path(args.out) / "profile.json", record)
    print(f"{args.model} b{args.batch_size} {fast.precision}: the zoo's oneDNN primitives {total(ours)} ms, "
          f"OpenVINO's layers {total(theirs)} ms")  # fmt: skip
    for r in sorted((r for r in ours if "gflops" in r), key=lambda r: -r["ms"])[:10]:
        print(f"  {r['ms']:7.2f} ms {r['gflops']:6.0f} GFLOP/s  {r['implementation']:28} {r['problem']}")
    print(f"wrote {Path(args.out) / 'profile.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
