#!/usr/bin/env python
"""Regenerate the documentation's tables and picture from the project's own tools (``make readme``).

Each table sits between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->`` in its page:
``defaults`` (README.md: each architecture's default weights), ``weights`` and ``training``
(weights/README.md: every weight tag; the bundled weights' training runs, from their
``results.json``) and ``models`` (docs/models.md: ``zoo count`` of every model). The picture
docs/accuracy_vs_cost.png plots top-1 against MACs for every tag. ``--only NAME`` makes one table
(``--only weights`` skips the slow counting); ``--check`` fails when a table is stale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from zoo import hub
from zoo.cli import format_table, render
from zoo.counting import count_models
from zoo.io import atomic_write
from zoo.registry import get_weights, list_models, list_pretrained
from zoo.train.views import TTA_MODES

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"defaults": "README.md", "weights": "weights/README.md", "training": "weights/README.md",
         "models": "docs/models.md", "runtimes": "README.md"}  # fmt: skip
# The runtime comparison the README shows: one interleaved run of benchmarks/throughput.py (benchmarks/README.md)
RUNTIMES = ROOT / "benchmarks" / "results" / "resnet50-runtimes-zen4" / "results.json"
PLOT = ROOT / "docs" / "accuracy_vs_cost.png"


def _is_default(full: str) -> bool:
    return get_weights(full.split(".")[0])[0] == full


def weights_table(defaults_only: bool = False) -> str:
    rows = []
    for full in list_pretrained():
        if defaults_only and not _is_default(full):
            continue
        _, w = get_weights(full)
        test = w.test_input_size or w.input_size
        default = " (default)" if _is_default(full) and not defaults_only else ""
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


def _runtime_name(row: dict) -> str:
    """What a benchmark row ran, in words."""
    runtime, label = row["runtime"], row["label"]
    names = {
        "onnxruntime": "ONNX Runtime, fp32", "openvino": f"OpenVINO, its default precision ({row['dtype']} here)",
        "pt2": "zoo `.pt2` package (frozen)", "openvino-int8": "OpenVINO int8 (NNCF)",
        "onnxruntime-int8": "ONNX Runtime int8 (static QDQ)",
        "auto": f"zoo `optimize_for_inference()`: auto chose {row.get('backend')}",
    }  # fmt: skip
    if runtime in names:
        return names[runtime]
    if label == "torchvision":
        return "torchvision eager fp32"
    return "zoo `quantize_int8`" if row["dtype"] == "int8" else 'zoo `optimize_for_inference(backend="inductor")`'


def runtimes_table(path: Path = RUNTIMES) -> str:
    """resnet50's rows of the stored runtime comparison: img/s, against torchvision and its own ceiling."""
    rows = json.loads(path.read_text())["rows"]
    base = next(r["img_per_s"] for r in rows if r["label"] == "torchvision")
    table = [[_runtime_name(r), r["ceiling_precision"], f"{r['img_per_s']:.1f}", f"{r['img_per_s'] / base:.2f}x",
              f"{r['pct_of_conv_ceiling']:.0f}%"] for r in rows]  # fmt: skip
    header = ["runtime", "computes in", "img/s", "vs torchvision", "% of its conv ceiling"]
    return format_table(header, table, markdown=True)


def tables(only: str | None = None) -> dict[str, str]:
    makers = {
        "defaults": lambda: weights_table(defaults_only=True),
        "weights": weights_table,
        "training": training_table,
        "models": lambda: render(count_models(list_models()), "markdown"),
        "runtimes": runtimes_table,
    }
    if only is not None and only not in makers:
        raise SystemExit(f"--only: {only!r} is not one of {', '.join(makers)}")
    return {name: make() for name, make in makers.items() if only in (None, name)}


def update(text: str, generated: dict[str, str], page: str = "README.md") -> str:
    for name, table in generated.items():
        pattern = re.compile(rf"(<!-- begin:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{page} has no <!-- begin:{name} --> ... <!-- end:{name} --> block")
        text = pattern.sub(lambda m, table=table: m[1] + table.rstrip("\n") + "\n" + m[2], text)
    return text


def pages(generated: dict[str, str]) -> dict[Path, tuple[str, str]]:
    """Each page touched: (its text now, its text with the generated tables)."""
    out = {}
    for page in sorted({PAGES[name] for name in generated}):
        path = ROOT / page
        text = path.read_text()
        mine = {name: table for name, table in generated.items() if PAGES[name] == page}
        out[path] = (text, update(text, mine, page))
    return out


def plot(path: Path = PLOT) -> None:
    """Top-1 against MACs (log scale) for every tag, ImageNet and CIFAR-10 side by side, defaults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, panels = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (title, cifar) in zip(panels, (("ImageNet-1k (published scores)", False),
                                          ("CIFAR-10 (the zoo's own weights)", True)), strict=True):  # fmt: skip
        for full in list_pretrained():
            _, w = get_weights(full)
            if w.top1 is None or not w.gmacs or (w.label_names == "cifar-10") != cifar:
                continue
            default = _is_default(full)
            ax.scatter(
                w.gmacs,
                w.top1,
                s=60 if default else 18,
                marker="*" if default else "o",
                color="C3" if default else "C0",
                alpha=0.9 if default else 0.6,
                zorder=3 if default else 2,
            )
            if default:  # the architecture's name; its tag is in the tables
                ax.annotate(full.split(".")[0], (w.gmacs, w.top1), fontsize=7, xytext=(4, -3),
                            textcoords="offset points")  # fmt: skip
        ax.set(xscale="log", xlabel="MACs per image (G, log scale)", ylabel="top-1 (%)", title=title)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[-1] in "25" else ""))
        ax.grid(alpha=0.3, which="both")
    panels[0].scatter([], [], marker="*", color="C3", s=60, label="default weights of an architecture")
    panels[0].scatter([], [], marker="o", color="C0", s=18, alpha=0.6, label="other weights")
    panels[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=None, help="one table: defaults, weights, training or models")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the stale pages")
    args = parser.parse_args()  # a typo such as --chek is an error, never a rewrite
    only = args.only
    changed = pages(tables(only))
    if args.check:
        stale = [str(path.relative_to(ROOT)) for path, (old, new) in changed.items() if old != new]
        if not PLOT.is_file():
            stale.append(str(PLOT.relative_to(ROOT)))
        raise SystemExit(f"stale: {', '.join(stale)}: run make readme" if stale else 0)
    for path, (_, new) in changed.items():
        with atomic_write(path, "w") as f:
            f.write(new)
        print(f"updated {path}")
    if only is None:
        plot()
        print(f"drew {PLOT}")
