"""All file and network IO of weights: safetensors files, checkpoints, the Hugging Face Hub.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so
a crash or Ctrl-C never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import save_file


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; on success it is synced and replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def save_safetensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` as safetensors, atomically. Shared storage is copied apart first."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})})


def save_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically (training state: optimizer, scheduler, RNG)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def folder_config(
    architecture: str, model_config: dict[str, Any] | None, pretrained_cfg: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The ``config.json`` of a Hub model folder, in timm's layout plus the zoo's full architecture.

    ``architecture`` and ``pretrained_cfg`` are what timm reads; ``zoo_config``
    (the ResNetConfig as data) rebuilds any zoo model, registered or from YAML.
    """
    cfg = {
        "architecture": architecture,
        "num_classes": pretrained_cfg.get("num_classes"),
        "num_features": extra.pop("num_features", None),
        "pretrained_cfg": _jsonable(pretrained_cfg),
    }
    if model_config is not None:
        cfg["zoo_config"] = _jsonable(model_config)
    return {**cfg, **_jsonable(extra)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_model_folder(
    folder: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json``: a folder ``create_model("local-dir:...")`` loads."""
    folder = Path(folder)
    save_safetensors(folder / "model.safetensors", state_dict, metadata)
    save_json(folder / "config.json", config)
    return folder
