#!/usr/bin/env python
"""Regenerate the README's tables from the project's own tools (``make readme``).

Each table sits between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->``:
``models`` (``zoo count`` of every model, markdown), ``weights`` (the weight tags) and
``training`` (the bundled weights' training runs, from their ``results.json``).
``--only weights`` skips the slow counting; ``--check`` fails when a table is stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from zoo import hub
from zoo.cli import format_table
from zoo.counting import count_models, render
from zoo.registry import get_weights, list_models, list_pretrained
from zoo.train.views import TTA_MODES

README = Path(__file__).resolve().parent.parent / "README.md"


def weights_table() -> str:
    rows = []
    for full in list_pretrained():
        _, w = get_weights(full)
        test = w.test_input_size or w.input_size
        default = " (default)" if get_weights(full.split(".")[0])[0] == full else ""
        rows.append([
            f"`{full}`{default}", f"{w.top1:.2f}" if w.top1 is not None else "-",
            f"{w.top5:.2f}" if w.top5 is not None else "-", f"{w.num_params / 1e6:.2f}M", f"{w.gmacs:.2f}G",
            f"{w.input_size[-1]} / {test[-1]}", w.interpolation, w.license,
            "bundled (`weights/`)" if w.bundled else f"`{w.hf_hub_id}`",
        ])  # fmt: skip
    header = ["weights", "top-1", "top-5", "params", "MACs", "train / test size", "interp.", "license", "source"]
    return format_table(header, rows, markdown=True)


def training_table() -> str:
    rows = []
    runs = [hub.bundled_dir() / full / "results.json" for full in list_pretrained()]  # the weights table's order
    for results in (r for r in runs if r.is_file()):
        run = json.loads(results.read_text())
        command = run.get("command", "")
        procs = re.search(r"--nproc_per_node[= ](\d+)", command)
        val = run["results"][0]  # the trainer's own evaluation of its best checkpoint
        tta = {r["tta"]: r for r in run["results"] if r.get("tta") and not r.get("int8")}  # zoo validate --tta
        rows.append([
            f"`{run['name']}`", str(run["epochs"]), f"{run['wall_time_s'] / 60:.1f}",
            f"torchrun x{procs[1]}" if procs else "1 process", f"{val['top1']:.2f}", f"{val['top5']:.2f}",
            *(f"{tta[mode]['top1']:.2f}" if mode in tta else "-" for mode in TTA_MODES),
        ])  # fmt: skip
    header = ["weights", "epochs", "wall time (min)", "launcher", "val top-1", "val top-5"]
    header += [f"val top-1, {mode} TTA" for mode in TTA_MODES]
    return format_table(header, rows, markdown=True)


def tables(only: str | None = None) -> dict[str, str]:
    makers = {
        "models": lambda: render(count_models(list_models()), "markdown"),
        "weights": weights_table,
        "training": training_table,
    }
    if only is not None and only not in makers:
        raise SystemExit(f"--only: {only!r} is not one of {', '.join(makers)}")
    return {name: make() for name, make in makers.items() if only in (None, name)}


def update(text: str, generated: dict[str, str]) -> str:
    for name, table in generated.items():
        pattern = re.compile(rf"(<!-- begin:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- begin:{name} --> ... <!-- end:{name} --> block")
        text = pattern.sub(lambda m, table=table: m[1] + table.rstrip("\n") + "\n" + m[2], text)
    return text


if __name__ == "__main__":
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv[:-1] else None  # e.g. --only weights
    new = update(README.read_text(), tables(only))
    if "--check" in sys.argv:
        raise SystemExit(0 if new == README.read_text() else "README.md tables are stale: run make readme")
    README.write_text(new)
    print(f"updated {README}")
