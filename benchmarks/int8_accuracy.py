#!/usr/bin/env python
"""Top-1 of each bundled CIFAR-10 default in fp32, bf16 (where the CPU has bf16 hardware) and int8, on this CPU.

    python benchmarks/int8_accuracy.py --root ../shared/data/cifar10-train-jpeg.tar.gz \\
        --out benchmarks/results/int8-accuracy-<cpu>
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/int8_accuracy.py ...   # oneDNN's AVX2 kernels, on any x86 CPU

Each score is ``zoo validate`` on the seeded 5,000-image validation split (``--int8``: calibrated on 512
training images). int8 is scored twice: with the activation range ``quantize_int8`` picks for this CPU
(7 bits without VNNI or AMX, else 8) and with the other one, so the table shows what the choice is worth.
Writes ``results.json`` (every ``zoo validate`` result, with the CPU) and ``table.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import zoo
from zoo.benchmark import git_commit
from zoo.cli import format_table
from zoo.io import atomic_write, save_json
from zoo.registry import get_weights, list_models
from zoo.train.validate import ValidateConfig, validate


def bundled_defaults() -> list[str]:
    """The default tag of every architecture whose default weights are the zoo's own."""
    tags = []
    for arch in list_models():
        try:
            tag, weights = get_weights(arch)
        except zoo.UnknownModelError:
            continue
        if weights.bundled:
            tags.append(tag)
    return tags


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the CIFAR-10 image folder or its .tar.gz")
    p.add_argument("--models", nargs="+", default=None, help="weight tags (default: every bundled default)")
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--out", default="runs/int8-accuracy")
    args = p.parse_args(argv)
    cpu = zoo.cpu_info()
    common = dict(dataset="imagefolder", root=args.root, calibration_images=args.calibration_images)
    results, rows = [], []
    for tag in args.models or bundled_defaults():
        fp32 = validate(ValidateConfig(model=(tag,), precision="fp32", int8=True, **common))
        other = validate(ValidateConfig(model=(tag,), precision="fp32", int8=True, **common,
                                        int8_reduce_range=not fp32["int8"]["reduce_range"]))  # fmt: skip
        bf16 = validate(ValidateConfig(model=(tag,), precision="bf16", **common)) if cpu.native_bf16 else None
        results += [r for r in (fp32, other, bf16) if r]
        auto, alt = fp32["int8"], other["int8"]
        change = lambda r, base=fp32["top1"]: f"{r['top1']:.2f} ({r['top1'] - base:+.2f})"
        rows.append(
            [
                tag,
                f"{fp32['top1']:.2f}",
                f"{bf16['top1']:.2f}" if bf16 else "- (no bf16 hardware)",
                change(auto),
                f"{auto['activation_bits']}-bit",
                f"{change(alt)} at {alt['activation_bits']}-bit",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    header = ["weights", "fp32", "bf16", "int8 (the zoo's choice)", "activations", "int8, the other range"]
    table = format_table(header, rows, markdown=True)
    out = Path(args.out)
    record = {"cpu": cpu.to_dict(), "commit": git_commit(), "command": " ".join(sys.argv), "results": results}
    save_json(out / "results.json", record)
    with atomic_write(out / "table.md", "w") as f:
        f.write(f"{cpu.describe()}, 5,000 validation images, int8 calibrated on {args.calibration_images} "
                f"training images\n\n{table}\n")  # fmt: skip
    print(f"\n{cpu.describe()}\n{table}\nwrote {out / 'results.json'}, {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
