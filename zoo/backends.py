"""The backends ``optimize_for_inference`` can run a model on, and how ``backend="auto"`` picks one.

``inductor`` is the zoo's own path (``zoo.optimize``); ``onnxruntime`` and ``openvino`` run the model's
``zoo.export`` ONNX file (optional extras). ``auto`` times the candidates that suit the device and the
precision on the example batch, keeps the fastest and remembers the choice in the zoo's cache folder,
keyed by the architecture, the input shape, the precision, the CPU and the library versions, so the next
call with the same key builds the winner only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .deploy import output_names
from .errors import ConfigError, MissingExtraError, not_one_of

log = logging.getLogger(__name__)

BACKENDS = ("auto", "inductor", "onnxruntime", "openvino")
# The modules each runtime backend needs (the zoo's ONNX export, checked in ONNX Runtime, then the runtime) and the
# extra that installs them
EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")
RUNTIMES = {"onnxruntime": (EXPORT_MODULES, "onnx"), "openvino": ((*EXPORT_MODULES, "openvino"), "openvino")}
# The precisions each runtime computes in on a CPU: ONNX Runtime's CPU provider fp32 only; OpenVINO as told
RUNTIME_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}
TIMED_CALLS = 3  # after two warm-up calls, the median of these decides


def check_backend(backend: str, precision: str, device: torch.device) -> None:
    """Refuse a backend that cannot run here, naming it and what is allowed (or the extra to install)."""
    if backend not in BACKENDS:
        raise ConfigError("backend", not_one_of(backend, BACKENDS))
    if backend in RUNTIMES:
        if device.type != "cpu":
            raise ConfigError("backend", f"{backend!r} runs on the CPU here; the model is on {device}")
        if precision not in RUNTIME_PRECISIONS[backend]:
            raise ConfigError("backend", f"{backend!r} runs {' or '.join(RUNTIME_PRECISIONS[backend])} on a CPU, "
                              f"not {precision}; give another dtype or backend")  # fmt: skip
        missing = missing_modules(backend)
        if missing:
            raise MissingExtraError(f"backend {backend!r} needs {', '.join(missing)}: "
                                    f"pip install 'resnet-zoo[{RUNTIMES[backend][1]}]'")  # fmt: skip


def missing_modules(backend: str) -> list[str]:
    """The modules runtime ``backend`` needs that are not installed."""
    return [m for m in RUNTIMES[backend][0] if importlib.util.find_spec(m) is None]


def candidates(precision: str, device: torch.device, compile: bool) -> list[str]:
    """What ``auto`` times: inductor always; on a CPU, each installed runtime that computes in ``precision``."""
    found = ["inductor"]
    if device.type == "cpu" and compile:
        for name in RUNTIMES:
            if precision in RUNTIME_PRECISIONS[name] and not missing_modules(name):
                found.append(name)
    return found


class RuntimeModel(nn.Module):
    """A model run by ONNX Runtime or OpenVINO from its ``zoo.export`` file, called as the model: fp32 images
    in, fp32 tensors out (a classifier's logits, a backbone's list or dict of maps)."""

    def __init__(self, model: nn.Module, backend: str, precision: str, example: torch.Tensor) -> None:
        super().__init__()
        from .deploy import export, onnx_runner, openvino_runner
        from .optimize import _copy_info

        with torch.no_grad():
            out = model.eval()(example)
        self.keys = list(out) if isinstance(out, dict) else None  # a dict backbone's keys, to give them back
        self.many = isinstance(out, (list, tuple, dict))
        with tempfile.TemporaryDirectory(prefix="zoo-backend-") as folder:  # the runtime keeps the graph in memory
            path = export(
                model,
                Path(folder) / "model.onnx",
                example_input=example if len(example) > 1 else torch.cat([example, example]),
            )  # fmt: skip  (a dynamic batch is traced from 2)
            self._run = onnx_runner(path) if backend == "onnxruntime" else openvino_runner(path, precision)
        self.backend, self.precision = backend, precision
        _copy_info(model, self)

    def train(self, mode: bool = True) -> RuntimeModel:
        return self  # an inference graph: no training mode to switch to

    def forward(self, x: torch.Tensor) -> Any:
        outs = [o.float() for o in self._run(x)]
        if self.keys is not None:
            return dict(zip(self.keys, outs, strict=True))
        return outs if self.many else outs[0]


def build(model: nn.Module, backend: str, precision: str, example: torch.Tensor,
          inductor: Callable[[], nn.Module]) -> nn.Module:  # fmt: skip
    """``model`` on ``backend`` (not "auto"); ``inductor`` builds the zoo's own path."""
    return inductor() if backend == "inductor" else RuntimeModel(model, backend, precision, example)


def choose(model: nn.Module, precision: str, example: torch.Tensor, device: torch.device, compile: bool,
           inductor: Callable[[], nn.Module], options: dict[str, Any] | None = None) -> nn.Module:  # fmt: skip
    """``backend="auto"``: the fastest candidate on ``example`` (cached per key), with ``selection`` recording what
    was chosen, every candidate's time, the runtimes that failed here and whether the choice came from the cache.
    ``options``: the inductor path's settings (channels_last, compile_mode), part of the key. A runtime that fails
    to export or run is passed over with a warning naming it and why; the zoo's own path failing is an error."""
    from tqdm import tqdm

    names = candidates(precision, device, compile)
    key = cache_key(model, example, precision, device, names, options)
    cache = _cache_file(key)
    known = _read_cache(cache)
    failed: dict[str, str] = {}
    if isinstance(known, dict) and known.get("backend") in names:
        try:
            chosen = build(model, known["backend"], precision, example, inductor)
            chosen.selection = {**known, "cached": True}
            return chosen
        except Exception as e:  # the remembered runtime fails on these weights or here now: choose among the rest
            _pass_over(known["backend"], e, failed, "the remembered {name} failed ({why}); timing the other candidates")
    timings: dict[str, float] = {}
    built: dict[str, nn.Module] = {}
    for name in tqdm([n for n in names if n not in failed], desc="choose backend", unit="backend"):
        try:
            built[name] = build(model, name, precision, example, inductor)
            timings[name] = round(_time(built[name], example), 2)
        except Exception as e:
            built.pop(name, None)
            _pass_over(name, e, failed, "passing over {name}, which failed here ({why})")
    best = min(timings, key=timings.__getitem__)
    record = {"backend": best, "precision": precision, "milliseconds": timings, "input_size": list(example.shape)}
    if failed:
        record["failed"] = failed
    _write_cache(cache, record)
    log.info("backend auto: %s (%s)", best, ", ".join(f"{n} {t} ms" for n, t in timings.items()))
    chosen = built[best]
    chosen.selection = {**record, "cached": False}
    return chosen


def _pass_over(name: str, error: Exception, failed: dict[str, str], message: str) -> None:
    """Record a runtime that failed here in ``failed`` and warn with ``message``; the zoo's own path failing is
    raised: there is nothing to fall back on."""
    if name == "inductor":
        raise error
    failed[name] = f"{type(error).__name__}: {error}"
    warnings.warn("backend auto: " + message.format(name=name, why=failed[name]), stacklevel=4)


def _time(model: nn.Module, x: torch.Tensor) -> float:
    """The median of TIMED_CALLS calls on ``x`` after two warm-up calls (compilation happens there), in ms."""
    for _ in range(2):
        model(x)
    _sync(x.device)  # the warm-up's queued GPU work is not the timed calls'
    times = []
    for _ in range(TIMED_CALLS):
        begin = time.perf_counter()
        model(x)
        _sync(x.device)
        times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_key(model: nn.Module, example: torch.Tensor, precision: str, device: torch.device, names: list[str],
              options: dict[str, Any] | None = None) -> str:  # fmt: skip
    """What a choice depends on: the architecture (its config, its modules' types, its tensors' names and shapes,
    not their values), the input, the precision, the inductor path's options and torch's thread count, the device
    (the CPU's name and features, or the GPU), the candidates and their versions."""
    from . import __version__
    from .hardware import cpu_info, device_label

    versions = {"torch": torch.__version__, "zoo": __version__}
    for name in names:
        if name in RUNTIMES:
            try:
                module = importlib.import_module(RUNTIMES[name][0][-1])  # the runtime itself
                versions[name] = str(getattr(module, "__version__", "?"))
            except Exception as e:  # installed but broken (a missing library): building it fails and passes it over
                versions[name] = f"not importable: {type(e).__name__}"
    cfg = getattr(model, "cfg", None)
    architecture = {
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
        "modules": [type(m).__name__ for m in model.modules()],  # activations, pools: nothing in the state dict
        "tensors": [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items()],
        "outputs": output_names(model),  # a backbone's maps: the same modules may return others (out_indices)
    }
    facts = {"architecture": architecture, "input": [list(example.shape), str(example.dtype)], "precision": precision,
             "options": options or {}, "threads": torch.get_num_threads(), "device": device_label(device),
             "cpu": cpu_info().to_dict(), "versions": versions}  # fmt: skip
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _cache_file(key: str) -> Path:
    """One file per key: processes choosing at once each write their own (one file for all lost their entries)."""
    from .hub import zoo_cache_dir

    return zoo_cache_dir() / "backends" / f"{key}.json"


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):  # none yet, or unreadable: time again
        return None


def _write_cache(path: Path, record: dict[str, Any]) -> None:
    from .io import save_json

    try:
        save_json(path, record)  # atomically
    except OSError as e:  # a read-only cache folder costs a timing next time, nothing more
        log.warning("could not remember the backend choice in %s: %s", path, e)
