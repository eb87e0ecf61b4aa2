"""A run's metrics: per-epoch rows in metrics.jsonl and metrics.csv, and the curves as a PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..io import atomic_write


class Metrics:
    """Per-epoch rows in metrics.jsonl and metrics.csv, and the curves as a PNG."""

    def __init__(self, output: Path, start_epoch: int) -> None:
        self.output = output
        self.rows: list[dict[str, Any]] = []
        jsonl = output / "metrics.jsonl"
        if start_epoch and jsonl.exists():  # resumed: keep the epochs before the resume point
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["epoch"] <= start_epoch]

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with atomic_write(self.output / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        with atomic_write(self.output / "metrics.csv", "w") as f:
            fields = list(dict.fromkeys(k for r in self.rows for k in r))  # epochs without validation lack some
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        self.plot()

    def plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # plots are optional: pip install 'resnet-zoo[plot]'
            return
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))

        def curve(ax: Any, key: str, label: str) -> None:
            points = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=label)

        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            curve(ax_loss, key, label)
        for key, label in (("train_acc", "train"), ("val_acc1", "validation"), ("ema_val_acc1", "validation (EMA)")):
            curve(ax_acc, key, label)
        ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
        ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        with atomic_write(self.output / "curves.png") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
