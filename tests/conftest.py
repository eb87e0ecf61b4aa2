from __future__ import annotations

import ipaddress
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Tests never touch the user's caches, never phone home, and never leave this machine.
_SESSION_CACHE = tempfile.mkdtemp(prefix="zoo-tests-")
os.environ["HF_HOME"] = os.path.join(_SESSION_CACHE, "hf")
os.environ["ZOO_CACHE"] = os.path.join(_SESSION_CACHE, "zoo")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Subprocesses (the Hub server, tools, pip) and native clients are outside the audit hook below: no Xet
# transfers, no proxy between us and 127.0.0.1, no package index.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"
os.environ["PIP_NO_INDEX"] = "1"
os.environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
for _var in ("HF_ENDPOINT", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
    os.environ.pop(_var, None)
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # a dead local port: a stray download fails fast, here


def _loopback_only(event: str, args: tuple) -> None:
    """Refuse any connection that would leave this machine (audit hook: covers every library)."""
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address:
            host = str(address[0])
            try:
                local = ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                raise ConnectionRefusedError(f"tests may only connect to 127.0.0.1, not {host}")
    elif event == "socket.getaddrinfo" and args and args[0] not in (None, "localhost", b"localhost"):
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise socket.gaierror(f"tests may not resolve {host!r}") from None


sys.addaudithook(_loopback_only)

# Two cores here: one intra-op thread per core.
torch.set_num_threads(min(2, os.cpu_count() or 1))

from zoo.registry import get_entry  # noqa: E402


def small_size(name: str) -> int:
    """Smallest convenient input side: 32 for CIFAR stems, 64 for ImageNet stems (final map 2x2)."""
    return 32 if get_entry(name).config.stem == "cifar" else 64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


CIFAR_JPEG = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"


@pytest.fixture(scope="session")
def cifar_files(tmp_path_factory: pytest.TempPathFactory):
    """The real CIFAR-10 training JPEGs (../shared/data), unpacked once per session and split as the trainer and
    `zoo validate` split them (seed 0, 10% validation): the split the zoo's CIFAR weights never trained on."""
    if not CIFAR_JPEG.is_file():
        pytest.skip("needs ../shared/data/cifar10-train-jpeg.tar.gz")
    from zoo.train.data import load_dataset

    return load_dataset("imagefolder", CIFAR_JPEG, val_split=0.1, split_seed=0, in_memory=False,
                        cache_dir=tmp_path_factory.mktemp("cifar-cache"))  # fmt: skip
