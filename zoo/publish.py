"""Hub model folders: weights, a timm-compatible config.json and a model card; and their upload.

A folder written here loads with ``zoo.create_model("local-dir:FOLDER", pretrained=True)``
and, once uploaded, with ``zoo.create_model("hf-hub:ORG/NAME", pretrained=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hub
from .errors import ConfigError, WeightsNotFoundError, ZooError
from .io import (
    LEGACY_SUFFIXES,
    atomic_write,
    check_safetensors,
    first_line,
    load_state_dict,
    save_json,
    save_safetensors,
)

CARD_TEMPLATE = """\
---
license: {license}
library_name: resnet-zoo
tags:
- image-classification
- resnet
- resnet-zoo
datasets:
- {dataset}
metrics:
- accuracy
---

# {name}

{description}

## Results

{results}

## Use

```python
import zoo

model = zoo.create_model("{use_name}", pretrained=True).eval()
transform = zoo.create_transform(zoo.resolve_data_config(model))  # {input_note}
```

## Model

| | |
|---|---|
| architecture | `{arch}` ({paper}) |
| parameters | {params:,} |
| MACs | {macs} |
| input | {input_size}, mean {mean}, std {std} |
| classes | {num_classes}: {labels} |
| license | {license} |

{training}
"""


@dataclass
class Card:
    """What a model card says beyond what config.json holds."""

    name: str  # "resnet20.c10"
    description: str
    dataset: str = "imagenet-1k"
    results: list[dict[str, Any]] = field(default_factory=list)  # rows: split, images, top1, top5
    training: str = ""  # markdown: recipe, command, wall time
    license: str = "apache-2.0"


def _results_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No evaluation recorded."
    lines = ["| split | images | top-1 (%) | top-5 (%) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r.get('images', '-')} | {r['top1']:.2f} | {r.get('top5', float('nan')):.2f} |")
    return "\n".join(lines)


def model_card(card: Card, config: dict[str, Any], params: int, macs: float | None) -> str:
    cfg = config["pretrained_cfg"]
    labels = cfg.get("label_names") or []
    size = cfg["input_size"]
    return CARD_TEMPLATE.format(
        name=card.name,
        description=card.description,
        dataset=card.dataset,
        results=_results_table(card.results),
        use_name=card.name,
        input_note=f"{size[-1]}x{size[-1]}, crop_pct {cfg.get('crop_pct')}, {cfg.get('interpolation')}",
        arch=config["architecture"],
        paper=cfg.get("paper") or "He et al. 2016",
        params=params,
        macs=f"{macs / 1e9:.3f} G (fused multiply-adds, incl. norms)" if macs else "-",
        input_size="x".join(map(str, size)),
        mean=tuple(round(m, 4) for m in cfg["mean"]),
        std=tuple(round(s, 4) for s in cfg["std"]),
        num_classes=config["num_classes"],
        labels=", ".join(labels[:10]) + (", ..." if len(labels) > 10 else ""),
        license=card.license,
        training=card.training,
    )


def write_folder(
    out: str | Path,
    weights: str | Path,
    config: dict[str, Any],
    card: Card,
    *,
    extra: dict[str, Path] | None = None,
    record: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """A Hub model folder: model.safetensors (verified; a tensors-only pickle is converted; ``half``: its float
    tensors stored as fp16, half the size, loaded back into an fp32 model), config.json, README.md, ``extra``
    files and ``record`` as results.json. Built in a hidden folder beside ``out`` and proved to load there, then
    put in place of the whole folder at once: an earlier folder at ``out`` keeps working when the new one does not,
    and none of its files is left beside the new ones."""
    from .factory import create_model

    out, weights = Path(out), Path(weights)
    if not weights.is_file():
        raise WeightsNotFoundError(f"weights file {str(weights)!r} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if weights.suffix in LEGACY_SUFFIXES or half:
            state = load_state_dict(weights)
            if half:
                state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            save_safetensors(staging / "model.safetensors", state)
        else:
            check_safetensors(weights)
            shutil.copyfile(weights, staging / "model.safetensors")
        save_json(staging / "config.json", config)
        model = create_model(f"local-dir:{staging}", pretrained=True)  # the folder must load: prove it now
        params = sum(p.numel() for p in model.parameters())
        from .counting import count

        macs = count(model).macs
        (staging / "README.md").write_text(model_card(card, config, params, macs))
        for name, path in (extra or {}).items():
            shutil.copyfile(path, staging / name)
        if record is not None:
            save_json(staging / "results.json", record)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _swap_in(staging: Path, out: Path) -> None:
    """Put the folder ``staging`` at ``out`` by renames: an earlier ``out`` goes whole (moved aside, then removed)."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def merge_results(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` then ``new``; a new row for a split already there (the same ``split`` text) replaces it."""
    latest = {r["split"]: r for r in new}
    return [r for r in rows if r["split"] not in latest] + list(latest.values())


def add_results(folder: str | Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add result rows to a written folder's results.json and its card's results table; a row for a split
    already there (the same ``split`` text) replaces it. Returns all rows."""
    folder = Path(folder)
    if not (folder / "results.json").is_file():
        raise ConfigError("--folder", f"{str(folder)!r} has no results.json: write it with --run first")
    record = json.loads((folder / "results.json").read_text())
    record["results"] = merge_results(record["results"], rows)
    card = (folder / "README.md").read_text()
    head, sep, rest = card.partition("## Results\n\n")
    table_end = rest.find("\n\n## ")
    if not sep or table_end < 0:
        raise ConfigError("--folder", f"{str(folder / 'README.md')!r} has no '## Results' table to update")
    with atomic_write(folder / "README.md", "w") as f:
        f.write(head + sep + _results_table(record["results"]) + rest[table_end:])
    save_json(folder / "results.json", record)
    return record["results"]


def upload_folder(folder: str | Path, repo_id: str, *, token: str | None, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL."""
    if "/" not in repo_id:
        raise ConfigError("--repo-id", f"expected ORG/NAME, got {repo_id!r}")
    hf = hub._hf()
    api = hf.HfApi(endpoint=hub.hub_endpoint(), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Upload from resnet-zoo",
            ignore_patterns=[".*"],  # hidden files: the temporaries of an interrupted atomic write, never the model's
        )  # fmt: skip
    except Exception as e:  # HTTP errors, a refused connection (httpx's own types), offline mode: one line
        raise ZooError(f"uploading {folder} to {hub.hub_endpoint()}/{repo_id} failed: {first_line(e)}") from e
    return str(getattr(info, "commit_url", info))


def read_run(run: str | Path) -> dict[str, Any]:
    """What a training run left: its best checkpoint folder, summary, metrics, command and arguments."""
    run = Path(run)
    best = run / "best"
    if not (best / "model.safetensors").is_file():
        raise WeightsNotFoundError(f"{str(run)!r} has no best/model.safetensors: is it a `zoo train` output folder?")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    rows = (
        [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        if (run / "metrics.jsonl").is_file()
        else []
    )
    command = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else ""
    config = json.loads((best / "config.json").read_text())
    args = json.loads((run / "args.json").read_text()) if (run / "args.json").is_file() else {}
    return {"best": best, "summary": summary, "rows": rows, "command": command, "config": config, "args": args}
