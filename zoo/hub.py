"""The Hugging Face Hub, the caches and the environment: where weights are found and fetched.

Files on disk (atomic writes, reading and verifying weights) are ``zoo.io``'s; this module decides
where to look (bundled weights, the Hub cache, the Hub) and talks to the network.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
from pathlib import Path
from typing import Any

from . import io
from .errors import ConfigError, WeightsIntegrityError, WeightsNotFoundError, ZooError

log = logging.getLogger(__name__)


def _env_path(value: str) -> Path:
    """A folder named by an environment variable, as huggingface_hub reads them: ``~`` and ``$VAR`` expanded."""
    return Path(os.path.expandvars(value)).expanduser()


def zoo_cache_dir() -> Path:
    return _env_path(os.environ.get("ZOO_CACHE") or str(Path.home() / ".cache" / "resnet-zoo"))


def stamp_dir() -> Path:
    """Where the sha256 of a checked file is remembered, so it is not hashed again (``zoo.io.verify``)."""
    return zoo_cache_dir() / "verified"


def bundled_dir() -> Path:
    """The zoo's own weights, one Hub model folder per tag: ``ZOO_WEIGHTS_DIR`` if set, else the package data
    ``zoo._weights`` (the repository's ``weights/``, installed with the package, editable or from a wheel)."""
    if os.environ.get("ZOO_WEIGHTS_DIR"):
        return _env_path(os.environ["ZOO_WEIGHTS_DIR"])
    try:
        return Path(str(importlib.resources.files("zoo._weights")))
    except ModuleNotFoundError:  # the checkout's zoo/ imported instead of an installed copy: weights/ beside it
        return Path(__file__).resolve().parent.parent / "weights"


# --- the Hugging Face Hub -------------------------------------------------------------------------
# huggingface_hub reads its environment once, when imported; the zoo reads it at every call,
# so HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE set later are honoured too.

_TRUE = {"1", "on", "yes", "true"}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")  # the latter: its old name
    if hub_cache:
        return _env_path(hub_cache)
    if os.environ.get("HF_HOME"):
        return _env_path(os.environ["HF_HOME"]) / "hub"
    return _env_path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "huggingface" / "hub"


def hub_offline() -> bool:
    """Offline when the environment says so now (huggingface_hub honours TRANSFORMERS_OFFLINE too: one switch
    turns both off), or when huggingface_hub is offline (set when it was imported, or by a program in code)."""
    if (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in _TRUE:
        return True
    _hf()
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hf() -> Any:
    # No usage telemetry: its first call would reach huggingface.co even with another HF_ENDPOINT.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import huggingface_hub
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("downloading weights needs huggingface_hub: pip install huggingface-hub") from e
    return huggingface_hub


class HubUnreachable(WeightsNotFoundError):
    """The Hub did not answer (after huggingface_hub's own retries, about 25 s): no use asking it for another file."""


def _evict(path: Path, checked: tuple[int, ...] | None) -> bool:
    """Remove a bad cache entry: the snapshot link and this repo's blob it names. One link only: the blob may
    itself link into a store shared with other repos (Xet), whose file their blobs still need. Only the file
    that was ``checked``: one another process put there meanwhile (a good download) stays. False if it could
    not be removed (a read-only or foreign cache)."""
    if io.file_identity(path) != checked:
        return True  # gone or replaced already: the damaged file is not there any more
    for entry in (path, _blob(path)):
        if entry is None:
            continue
        try:
            entry.unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not remove the damaged cache entry %s: %s", entry, e)
            return False
    return True


def snapshot_commit(path: Path) -> str | None:
    """The commit a Hub cache file belongs to (``.../snapshots/<commit>/<file>``), or None."""
    commit = path.parent.name
    return commit if path.parent.parent.name == "snapshots" and re.fullmatch("[0-9a-f]{40}", commit) else None


def cached_file(
    repo_id: str, filename: str, *, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """The file in the local Hub cache, found with no network request, or None."""
    hf = _hf()
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError("repo_id", f"{repo_id!r} is not a Hub repo id: {io.first_line(e)}") from e
    try:
        found = hf.try_to_load_from_cache(
            repo_id, filename, cache_dir=str(hub_cache_dir(cache_dir)), revision=revision or "main"
        )
    except ValueError as e:  # a name that would leave the repo's folder
        raise ConfigError("filename", f"{filename!r} is not a file name in a Hub repo: {io.first_line(e)}") from e
    return Path(found) if isinstance(found, str) else None


def hub_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    tried: list[str] | None = None,
) -> Path:
    """A verified local copy of a Hub file: from the cache with no request at all, else downloaded.

    A cached copy that fails verification is evicted and fetched again. ``tried``
    collects a line per place looked at, for the caller's error message.
    """
    tried = tried if tried is not None else []
    hf = _hf()
    from huggingface_hub import errors as hf_errors

    cache = hub_cache_dir(cache_dir)
    where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    cached = cached_file(repo_id, filename, revision=revision, cache_dir=cache)  # the names checked first
    if cached is not None:
        checked = io.file_identity(cached)
        try:
            io.verify(cached, sha256 or _blob_sha256(cached), stamp_dir())
            return cached
        except FileNotFoundError:  # evicted by another process meanwhile: as if it had not been there
            cached = None
        except WeightsIntegrityError as e:
            if not _evict(cached, checked):  # a download would hand back the same file
                raise WeightsIntegrityError(
                    f"cached {where} is damaged and could not be removed from the cache: {e}. Delete "
                    f"{_blob(cached) or cached}, or set HF_HUB_CACHE to a cache the zoo can write"
                ) from e
            log.warning("cached weights are damaged, fetching them again: %s", e)
    tried.append(f"Hub cache {cache} ({where}): " + ("damaged, evicted" if cached else "not there"))
    endpoint = hub_endpoint()
    if hub_offline():
        tried.append(f"Hub {endpoint}/{repo_id}: not asked, HF_HUB_OFFLINE is set")
        raise WeightsNotFoundError(_not_found(where, tried))
    try:
        path = Path(hf.hf_hub_download(repo_id, filename, revision=revision, cache_dir=str(cache), endpoint=endpoint))
    except Exception as e:
        if isinstance(e, ZooError):
            raise
        # huggingface_hub raises a refused first request (the HEAD) as a LocalEntryNotFoundError it caused
        local = isinstance(e, hf_errors.LocalEntryNotFoundError)  # an EntryNotFoundError: asked first
        status = _refused(e.__cause__ if local else e)
        if status:  # a token it refuses, or no access
            tried.append(f"Hub {endpoint}/{repo_id}: access refused (HTTP {status}): check HF_TOKEN and the repo")
            raise WeightsNotFoundError(_not_found(where, tried)) from e
        if local:  # network down or server failing
            tried.append(f"Hub {endpoint}/{repo_id}: unreachable ({io.first_line(e.__cause__ or e)})")
            raise HubUnreachable(_not_found(where, tried)) from e
        if isinstance(e, (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
                          hf_errors.EntryNotFoundError)):  # fmt: skip
            tried.append(f"Hub {endpoint}/{repo_id}: {type(e).__name__}: {io.first_line(e)}")
            raise WeightsNotFoundError(_not_found(where, tried)) from e
        # a broken transfer: huggingface_hub removes its partial file
        tried.append(f"Hub {endpoint}/{repo_id}: download failed ({type(e).__name__}: {io.first_line(e)})")
        raise WeightsIntegrityError(_not_found(where, tried)) from e
    checked = io.file_identity(path)
    try:
        io.verify(path, sha256 or _blob_sha256(path), stamp_dir())
    except WeightsIntegrityError as e:
        removed = "was removed from" if _evict(path, checked) else "could not be removed from"
        raise WeightsIntegrityError(f"downloaded {where} is damaged and {removed} the cache: {e}") from e
    return path


def _refused(e: BaseException | None) -> int | None:
    """401 or 403 when ``e`` is the Hub refusing a request outright (not a repo it reports as missing)."""
    from huggingface_hub import errors as hf_errors

    if not isinstance(e, hf_errors.HfHubHTTPError) or isinstance(e, hf_errors.RepositoryNotFoundError):
        return None
    status = getattr(e.response, "status_code", None)
    return status if status in (401, 403) else None


def _blob_sha256(path: Path) -> str | None:
    """The hash an unpinned file can still be checked against: the cache names the blob of an LFS file
    (all weights) by its ETag, the sha256 of its content. None for small git files (a sha1) or a copy."""
    blob = _blob(path)
    return blob.name if blob is not None and re.fullmatch("[0-9a-f]{64}", blob.name) else None


def _blob(path: Path) -> Path | None:
    """The blob a snapshot link names (``blobs/<etag>``): one link followed, not a shared store behind it."""
    return Path(os.path.normpath(path.parent / os.readlink(path))) if path.is_symlink() else None


def _not_found(where: str, tried: list[str]) -> str:
    places = "\n".join(f"  - {t}" for t in tried)
    return f"weights {where} not found. Looked in:\n{places}"
