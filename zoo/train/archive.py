"""A .tar.gz of images, unpacked once into the zoo's cache: atomically, shared by the runs and processes that
read it, and refused when it is damaged or would write outside its folder."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from ..errors import ConfigError
from ..io import usual_mode

log = logging.getLogger("zoo.train.data")
STALE_SECONDS = 24 * 3600  # a hidden unpacking folder this old was left by a killed process, not one at work


def unpack_once(archive: Path, cache_dir: Path) -> Path:
    """Unpack a .tar.gz into the cache, once per archive content, atomically."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "datasets" / f"{archive.name.split('.')[0]}-{key}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*"):  # a copy a killed unpack left: a day old is no one's now
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        log.info("unpacking %s into %s", archive, target)
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # "data": no absolute paths, links out or devices
            else:  # Python before 3.10.12 / 3.11.4: the same refusals for what an image folder holds, by hand
                for member in tar.getmembers():
                    if (
                        not (member.isfile() or member.isdir())
                        or Path(member.name).is_absolute()
                        or ".." in (Path(member.name).parts)
                    ):
                        raise ConfigError("--root", f"{str(archive)!r} holds {member.name!r}, which is not a plain "
                                          "file or folder inside the archive")  # fmt: skip
                tar.extractall(tmp)
        os.chmod(tmp, usual_mode(folder=True))  # mkdtemp's 0700 would keep a shared cache from other users
        os.replace(tmp, target)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:  # truncated, corrupt, not a tar.gz
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError("--root", f"{str(archive)!r} is not a readable .tar.gz (truncated or damaged?): "
                          f"{type(e).__name__}: {e}") from e  # fmt: skip
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.is_dir():  # another process unpacked the same archive first: use its copy
            return target
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
