"""Files of weights on disk: atomic writes, the Hub model-folder layout, reading safetensors and pickles, and
verifying a file before it is trusted. No network and no environment: ``zoo.hub`` has those.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a crash, Ctrl-C or a
full disk never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import (
    ConfigError,
    DiskFullError,
    StateDictError,
    UnsafeCheckpointError,
    WeightsIntegrityError,
    WeightsNotFoundError,
)

_KEPT = "the file that was there is kept and nothing partial was left"
_UMASK = os.umask(0)
os.umask(_UMASK)


def usual_mode(folder: bool = False) -> int:
    """The mode a file (or folder) gets when created the usual way: what mkstemp's and mkdtemp's 0600/0700 become
    once the file is finished, so other users of a shared cache can read it."""
    return (0o777 if folder else 0o666) & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; on success it is synced and replaces ``path``.
    ``suffix`` ends the temporary name, for writers that insist on an extension (``.tmp.pt2``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.is_file():  # a writer may have made a folder or removed the file
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, usual_mode())  # mkstemp makes 0600; a finished file gets the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir() and not tmp.is_symlink():  # what a failing writer made of it
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError(f"no space left on the device to write {str(path)!r}; {_KEPT}") from e
        raise


# safetensors' writer (Rust) reports the OS error in its message: "IoError(Os { code: 28, kind: StorageFull" in
# older releases, "I/O error: No space left on device (os error 28)" in newer ones (122: the quota)
_FULL_MESSAGES = ("StorageFull", "QuotaExceeded", "code: 28", "os error 28", "os error 122")


def is_disk_full(e: BaseException | None) -> bool:
    """Whether ``e``, or an error it was raised from or while handling, is a full disk or quota: torch.save's zip
    writer, for one, raises "unexpected pos" while handling the OSError."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, SafetensorError) and any(m in str(e) for m in _FULL_MESSAGES):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def save_safetensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` as safetensors, atomically. Shared storage (tied or viewed tensors), which safetensors
    refuses, is copied apart first."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone(memory_format=torch.contiguous_format) if storage in seen else tensor.contiguous()
        seen.add(storage)
    tensors = out
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


_FILE_FACTS = frozenset({"sha256", "revision", "filename", "file", "bundled", "weights"})


def folder_config(
    architecture: str, model_config: dict[str, Any] | None, pretrained_cfg: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The ``config.json`` of a Hub model folder, in timm's layout plus the zoo's full architecture.

    ``architecture`` and ``pretrained_cfg`` are what timm reads; ``zoo_config``
    (the ResNetConfig as data) rebuilds any zoo model, registered or from YAML. The facts of the file
    the model was loaded from (its hash, revision, file name) are left out: this folder has its own.
    """
    own = {k: v for k, v in pretrained_cfg.items() if k not in _FILE_FACTS}
    cfg = {
        "architecture": architecture,
        "num_classes": pretrained_cfg.get("num_classes"),
        "num_features": extra.pop("num_features", None),
        "pretrained_cfg": _jsonable(own),
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


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """A JSON file the zoo reads (a model folder's config.json, ...), or a ConfigError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(what, f"{str(path)!r} is not readable JSON: {first_line(e)}") from e


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


# --- reading weights files --------------------------------------------------------------------------


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Cheap integrity check: a parseable header whose tensors end exactly at the end of the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightsIntegrityError(f"{path} is truncated: {size} bytes, not even a safetensors header")
        header_len = int.from_bytes(raw, "little")
        if header_len > size - 8 or header_len > 100_000_000:
            raise WeightsIntegrityError(f"{path} is truncated or not safetensors: header of {header_len} bytes")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsIntegrityError(f"{path} has a corrupted safetensors header: {e}") from e
    end = _check_header(path, header)
    if 8 + header_len + end != size:
        raise WeightsIntegrityError(
            f"{path} is truncated or padded: the header describes {8 + header_len + end} bytes, the file has {size}"
        )


# Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def _check_header(path: Path, header: Any) -> int:
    """The end offset of a safetensors header's data, or a WeightsIntegrityError if it has the wrong shape:
    JSON that parses is not yet a header (a dict of tensors, each with a dtype, a shape and offsets that fit)."""

    def bad(problem: str) -> WeightsIntegrityError:
        return WeightsIntegrityError(f"{path} has a malformed safetensors header: {problem}")

    if not isinstance(header, dict):
        raise bad(f"a JSON {type(header).__name__}, not an object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise bad("__metadata__ is not an object of strings")
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_BYTES:
            raise bad(f"tensor {name!r} has no known dtype")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (
            isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):  # fmt: skip
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]:
            raise bad(f"tensor {name!r} of shape {shape} and dtype {entry['dtype']} spans {offsets}")
        end = max(end, offsets[1])
    return end


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """Which file ``path`` leads to now and its state, or None if it is gone: size, mtime, ctime, device and
    inode. Any write to the file changes its ctime, even one that sets its mtime back; a new file may reuse a
    freed inode, but not with the same ctime."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino


def verify(path: str | os.PathLike[str], sha256: str | None, stamps: Path | None = None) -> None:
    """Check a weights file before it is trusted: header and size always, the hash when one is pinned.

    With ``stamps`` (a folder), a file whose hash was checked once is remembered there by (size,
    mtime, ctime, device, inode: ``file_identity``), so a warm load does not re-hash hundreds of megabytes.
    """
    if Path(path).name.endswith(".safetensors"):  # judged by the link's name: cache blobs have no suffix
        check_safetensors(path)
    path = Path(path).resolve()
    if not sha256:
        return
    stamp = stamps / sha256 if stamps is not None else None
    identity = file_identity(path)
    if identity is None:
        raise FileNotFoundError(path)
    seen = " ".join(map(str, identity))
    if stamp is not None and stamp.is_file() and stamp.read_text() == seen:
        return
    actual = sha256_of(path)
    if actual != sha256:
        raise WeightsIntegrityError(f"{path} is corrupted: sha256 {actual}, expected {sha256}")
    if stamp is not None:
        with contextlib.suppress(OSError), atomic_write(stamp, "w") as f:  # read-only cache: re-hash next time
            f.write(seen)


LEGACY_SUFFIXES = (".pth", ".pt", ".th", ".bin", ".ckpt", ".tar")


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive: what ``torch.save`` writes, whatever the file is called."""
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _readable_pickle(path: Path) -> bool:
    """Whether ``path`` holds a well-formed pickle (``torch.save``'s zip with its data.pkl, or a legacy
    file): its opcodes parse from the protocol header to the end. Random bytes do not; a pickle that
    merely needs code (custom classes) does."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        if not data.startswith(b"\x80"):  # the PROTO opcode every torch.save pickle starts with
            return False
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        return True
    except (StopIteration, ValueError, zipfile.BadZipFile, OSError, EOFError):
        return False


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a legacy pickle that holds only tensors.

    Pickles load with ``torch.load(weights_only=True)``: one that needs code
    execution (custom classes, functions) is refused, never run.
    """
    from .weights import clean_state_dict

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix not in LEGACY_SUFFIXES and not _is_zip(path):
        check_safetensors(path)  # a malformed header is named here, not deep inside the reader
    if path.suffix in LEGACY_SUFFIXES or _is_zip(path):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not _readable_pickle(path):  # torch says "weights only load failed" of both
                raise WeightsIntegrityError(f"{path} is not a readable checkpoint: {first_line(e)}") from e
            raise UnsafeCheckpointError(
                f"{path} is a pickle that needs code execution to load ({str(e).splitlines()[0][:200]}). "
                "The zoo only loads plain tensors; re-save it as safetensors (tools/convert.py) where you trust it"
            ) from e
        # a broken zip, a truncated file; garbage also trips the weights-only unpickler's own lookups
        except (RuntimeError, EOFError, ValueError, OSError, LookupError) as e:
            raise WeightsIntegrityError(f"{path} is not a readable checkpoint: {first_line(e)}") from e
        if not isinstance(state, dict):
            raise StateDictError(f"{path} holds a {type(state).__name__}, not a state dict")
        return clean_state_dict(state)
    try:
        return clean_state_dict(load_file(path))
    except SafetensorError as e:
        raise WeightsIntegrityError(f"{path} is not a readable safetensors file: {e}") from e


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
