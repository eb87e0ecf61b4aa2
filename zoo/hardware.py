"""What the machine computes fast, and the precision the zoo runs there: the one place both are decided.

The CPU's instruction sets decide what is native: bf16 math needs AVX-512 BF16 or AMX (without them
torch emulates bf16, 10-80x slower than fp32), and int8 needs VNNI or AMX to sum u8 x s8 products in
int32 (without them oneDNN sums pairs in int16 with VPMADDUBSW, which saturates on full-range
activations). ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is True on any AVX-512 CPU, bf16
hardware or not, so the CPU's own flags are read instead.

Overrides, for tests and for machines that misreport: ``ZOO_CPU_FLAGS`` replaces the flags read from
``/proc/cpuinfo`` (space- or comma-separated, as that file spells them: ``"avx2 fma"``), and oneDNN's
own ``ONEDNN_MAX_CPU_ISA`` (``AVX2``, ``AVX512_CORE``, ...) caps them as it caps oneDNN's kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, not_one_of

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the float precisions
PRECISIONS = ("auto", *DTYPES)  # what a user may ask for; "auto" is resolved by resolve_precision

# oneDNN's dispatch levels (ONEDNN_MAX_CPU_ISA), each with the CPU flags its kernels may use. Flags of the
# table that a level lacks are dropped; flags the table never names are kept.
_AVX2 = frozenset({"avx", "avx2", "fma", "f16c"})
_AVX512 = _AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
_AVX512_BF16 = _AVX512 | {"avx512_vnni", "avx512_bf16"}
_AMX = _AVX512_BF16 | {"avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"}
_ISA_LEVELS: dict[str, frozenset[str]] = {
    "SSE41": frozenset(),
    "AVX": frozenset({"avx"}),
    "AVX2": _AVX2,
    "AVX2_VNNI": _AVX2 | {"avx_vnni"},
    "AVX2_VNNI_2": _AVX2 | {"avx_vnni", "avx_vnni_int8", "avx_ne_convert"},
    "AVX512_CORE": _AVX512,
    "AVX512_CORE_VNNI": _AVX512 | {"avx512_vnni"},
    "AVX512_CORE_BF16": _AVX512_BF16,
    "AVX512_CORE_FP16": _AVX512_BF16 | {"avx512_fp16"},
    "AVX10_1_512": _AVX512_BF16 | {"avx512_fp16"},
    "AVX512_CORE_AMX": _AMX,
    "AVX10_1_512_AMX": _AMX,
}
_GOVERNED = frozenset().union(*_ISA_LEVELS.values(), {"amx_fp16", "avx_vnni", "avx_vnni_int8", "avx_ne_convert"})
BF16_SLOWDOWN = "10-80x slower than fp32"  # emulated bf16, measured on AVX2 and AVX-512 CPUs without bf16


class PrecisionWarning(UserWarning):
    """A precision that works here but runs far slower than another would."""


@dataclass(frozen=True)
class CpuInfo:
    """A CPU's name and the instruction-set flags that decide the zoo's precision and int8 kernels."""

    name: str
    flags: frozenset[str]

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return {"avx512f", "avx512bw", "avx512vl"} <= self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX-512 BF16 or AMX-BF16): bf16 runs faster than fp32."""
        return (self.avx512 and "avx512_bf16" in self.flags) or "amx_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return {"amx_tile", "amx_bf16"} <= self.flags

    @property
    def vnni(self) -> bool:
        """u8 x s8 dot products summed in int32 (AVX-512 VNNI or AVX-VNNI)."""
        return (self.avx512 and "avx512_vnni" in self.flags) or "avx_vnni" in self.flags

    @property
    def int8_saturates(self) -> bool:
        """Whether oneDNN's int8 kernels sum pairs of u8 x s8 products in int16 here (VPMADDUBSW, no VNNI
        or AMX), which overflows unless activations keep to 7 bits (``reduce_range``)."""
        return not (self.vnni or "amx_int8" in self.flags)

    def features(self) -> list[str]:
        """What the zoo looks at, by name: ``["AVX2", "AVX-512", "VNNI", "AVX-512 BF16", "AMX"]``."""
        named = {"AVX2": self.avx2, "AVX-512": self.avx512, "VNNI": self.vnni,
                 "AVX-512 BF16": self.avx512 and "avx512_bf16" in self.flags, "AMX": self.amx}  # fmt: skip
        return [name for name, present in named.items() if present]

    def describe(self) -> str:
        """``AMD EPYC (AVX2, AVX-512, VNNI, AVX-512 BF16)``."""
        return f"{self.name} ({', '.join(self.features()) or 'no AVX2'})"

    def to_dict(self) -> dict[str, Any]:
        """What benchmark rows and results JSON record of the CPU."""
        return {"cpu": self.name, "cpu_features": self.features(), "native_bf16": self.native_bf16,
                "vnni": self.vnni, "amx": self.amx, "isa_cap": _isa_cap()}  # fmt: skip


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> tuple[str, frozenset[str]]:
    """The first processor's model name and flags (Linux); elsewhere what torch's own CPU probe reports."""
    name, flags = "", frozenset[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    if not flags:  # no /proc (macOS, Windows, some containers): cpuinfo as torch bundles it
        name, flags = _torch_cpuinfo(name)
    return name or platform.processor() or platform.machine() or "cpu", flags


# torch.cpu.get_capabilities() spells a few flags otherwise than /proc/cpuinfo does
_TORCH_SPELLINGS = {"fma3": "fma", "avx512_f": "avx512f", "avx512_bw": "avx512bw", "avx512_vl": "avx512vl",
                    "avx512_dq": "avx512dq", "avx512_cd": "avx512cd"}  # fmt: skip


def _torch_cpuinfo(name: str) -> tuple[str, frozenset[str]]:
    """The CPU's name and flags from torch's bundled cpuinfo probe, in /proc/cpuinfo's spelling."""
    try:
        found = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch, or not an x86 CPU
        return name, frozenset()
    flags = frozenset(_TORCH_SPELLINGS.get(k, k) for k, v in found.items() if v is True)
    return name or str(found.get("cpu_name") or ""), flags


def _isa_cap() -> str | None:
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip().upper() in _ISA_LEVELS else None


def cpu_info() -> CpuInfo:
    """This CPU, as its kernels see it: ``/proc/cpuinfo`` (or ``ZOO_CPU_FLAGS``), capped by ``ONEDNN_MAX_CPU_ISA``.
    Read at each call, so an override set by a test or a user applies at once."""
    name, flags = _proc_cpuinfo()
    override = os.environ.get("ZOO_CPU_FLAGS")
    if override is not None:
        flags = frozenset(override.replace(",", " ").lower().split())
    cap = _isa_cap()
    if cap is not None:
        flags = frozenset(f for f in flags if f not in _GOVERNED or f in _ISA_LEVELS[cap])
    return CpuInfo(name, flags)


# --- GPUs ------------------------------------------------------------------------------------------


def gpu_supports_bf16(device: torch.device) -> bool:
    """Whether this GPU has bf16 tensor cores (Ampere, sm80, and later), not an emulation."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def device_label(device: torch.device) -> str:
    """``AMD EPYC (AVX2, AVX-512, ...)``, or ``NVIDIA H100, compute capability 9.0``."""
    if device.type != "cuda":
        return cpu_info().describe() if device.type == "cpu" else device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"


# --- precision -------------------------------------------------------------------------------------


def fast_precision(device: torch.device) -> str:
    """The fastest float precision ``device`` runs natively: bf16 on AVX-512 BF16/AMX CPUs and Ampere+ GPUs,
    fp16 on Volta and Turing GPUs (fp16 tensor cores), else fp32 (older GPUs: fp16 without tensor cores is
    no faster, on many far slower)."""
    if device.type == "cuda":
        if gpu_supports_bf16(device):
            return "bf16"
        return "fp16" if torch.cuda.get_device_capability(device) >= (7, 0) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_info().native_bf16 else "fp32"


def resolve_precision(precision: str | torch.dtype, device: torch.device, *, flag: str = "precision") -> str:
    """``precision`` ("auto", "fp32", "bf16", "fp16" or a torch dtype) as the precision to run on ``device``.

    "auto" is :func:`fast_precision`. A precision ``device`` cannot run is a ConfigError naming ``flag``;
    bf16 on a CPU without bf16 hardware runs, emulated, with one :class:`PrecisionWarning`.
    """
    if isinstance(precision, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if precision not in names:
            raise ConfigError(flag, not_one_of(str(precision), [str(d) for d in DTYPES.values()]))
        precision = names[precision]
    if precision not in PRECISIONS:
        raise ConfigError(flag, not_one_of(precision, PRECISIONS))
    if precision == "auto":
        return fast_precision(device)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(flag, f"'fp16' is for GPUs; on {device.type} use 'auto', 'bf16' or 'fp32'")
    if precision == "bf16" and device.type == "cuda" and not gpu_supports_bf16(device):
        raise ConfigError(flag, f"'bf16' needs a GPU of compute capability 8.0 or later ({device_label(device)}); "
                          "use 'auto' or 'fp16'")  # fmt: skip
    if precision == "bf16" and device.type == "cpu" and not cpu_info().native_bf16:
        warnings.warn(
            f"{flag} bf16 on {device_label(device)}: this CPU has no bf16 hardware (AVX-512 BF16 or AMX), so "
            f"torch emulates it, typically {BF16_SLOWDOWN}; 'auto' picks fp32 here",
            PrecisionWarning,
            stacklevel=2,
        )
    return precision


def explain(requested: str, resolved: str, device: torch.device) -> str:
    """One line for a CLI: ``bf16 (auto: AMD EPYC (AVX2, AVX-512, VNNI, AVX-512 BF16))``."""
    if requested != "auto":
        return resolved
    return f"{resolved} (auto on {device_label(device)})"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a model frees for its next call, process-wide, once; returns whether it
    did. Why: each call allocates its large activations afresh (51 MB for one resnet50 map at batch 32), glibc
    serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so each call page-faults through
    newly zeroed pages. Kept (no mmap, no trimming of the heap), a resnet50 batch ran 3-12% faster (Zen 4,
    benchmarks/README.md), at the cost of the process keeping its peak memory, as jemalloc or tcmalloc would.
    ``ZOO_KEEP_FREED_MEMORY=0`` leaves malloc as it is; other C libraries (musl, macOS, Windows) are left alone."""
    libc = _glibc()
    if os.environ.get("ZOO_KEEP_FREED_MEMORY", "1") == "0" or libc is None:
        return False
    kept = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    log.info("malloc keeps freed memory for reuse (ZOO_KEEP_FREED_MEMORY=0 to leave it): %s", kept)
    return kept


def release_freed_memory() -> None:
    """Return the free memory malloc holds to the OS now (glibc's malloc_trim), so that a peak measured next
    counts what the next block allocates, not what earlier ones left for reuse."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's own C library if it is glibc (looked up once: platform.libc_ver reads the interpreter's
    binary), else None."""
    return ctypes.CDLL(None) if sys.platform == "linux" and platform.libc_ver()[0] == "glibc" else None
