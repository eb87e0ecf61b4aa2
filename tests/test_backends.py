"""optimize_for_inference on each backend, and backend="auto": the fastest, remembered."""

from __future__ import annotations

import copy
import json
import sys
import warnings

import pytest
import torch

import zoo
from zoo import backends


@pytest.fixture
def cache(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "zoo"))
    return tmp_path / "zoo" / "backends"  # one file per key


@pytest.mark.parametrize("backend", ["inductor", "onnxruntime", "openvino"])
def test_each_backend_is_called_as_the_model_and_gives_fp32(backend: str) -> None:
    model = zoo.create_model("resnet20", pretrained=True).eval()
    fast = zoo.optimize_for_inference(model, "fp32", backend=backend, example_input=torch.randn(3, 3, 32, 32))
    y = torch.randn(5, 3, 32, 32)  # another batch size than the example's
    with torch.no_grad():
        out, want = fast(y), model(y)
    assert fast.backend == backend and fast.precision == "fp32" and out.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=1e-4 * want.abs().max().item(), rtol=0)
    assert fast.num_classes == 10 and fast.pretrained_cfg["weights"] == "resnet20.c10_kd"


@pytest.mark.parametrize("feature_cls", ["list", "dict"])
def test_a_backbone_keeps_its_outputs_on_a_runtime(feature_cls: str) -> None:
    backbone = zoo.create_model("resnet20", features_only=True, feature_cls=feature_cls).eval()
    x = torch.randn(2, 3, 32, 32)
    fast = zoo.optimize_for_inference(backbone, "fp32", backend="onnxruntime", example_input=x)
    with torch.no_grad():
        got, want = fast(x), backbone(x)
    if feature_cls == "dict":
        assert list(got) == list(want)
        got, want = list(got.values()), list(want.values())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_auto_times_the_candidates_once_and_remembers(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    speed = {"inductor": 5.0, "onnxruntime": 1.0, "openvino": 3.0}  # ms: as if ONNX Runtime were the fastest here
    timed: list[str] = []

    def fake_time(model: torch.nn.Module, x: torch.Tensor) -> float:
        timed.append(getattr(model, "backend", "inductor"))
        return speed[timed[-1]]

    monkeypatch.setattr(backends, "_time", fake_time)
    model = zoo.create_model("resnet20").eval()
    x = torch.randn(4, 3, 32, 32)
    first = zoo.optimize_for_inference(model, "fp32", example_input=x)
    assert sorted(timed) == ["inductor", "onnxruntime", "openvino"]  # every candidate that computes fp32 here
    assert first.backend == "onnxruntime" and first.selection["cached"] is False
    assert first.selection["milliseconds"] == speed
    again = zoo.optimize_for_inference(model, "fp32", example_input=x)
    assert len(timed) == 3 and again.backend == "onnxruntime" and again.selection["cached"] is True  # no timing
    zoo.optimize_for_inference(model, "fp32", example_input=torch.randn(8, 3, 32, 32))  # another input: timed
    assert len(timed) == 6 and len(list(cache.glob("*.json"))) == 2
    zoo.optimize_for_inference(model, "fp32", example_input=x, channels_last=False)  # another inductor path: timed
    assert len(timed) == 9
    for record in cache.glob("*.json"):
        record.write_text(json.dumps(["not", "a", "record"]))
    assert zoo.optimize_for_inference(model, "fp32", example_input=x).selection["cached"] is False  # re-timed
    assert len(timed) == 12


def test_the_key_follows_what_the_speed_depends_on(monkeypatch: pytest.MonkeyPatch) -> None:
    model = zoo.create_model("resnet20").eval()
    x, cpu = torch.randn(2, 3, 32, 32), torch.device("cpu")

    def key(m: torch.nn.Module = model, options: dict | None = None) -> str:
        return backends.cache_key(m, x, "fp32", cpu, ["inductor", "onnxruntime"], options)

    base = key()
    assert key() == base and key(zoo.create_model("resnet20").eval()) == base  # the values do not count
    assert key(options={"channels_last": False}) != base
    other_act = copy.deepcopy(model)
    for parent in other_act.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, torch.nn.SiLU())
    assert key(other_act) != base  # the same tensors, another activation
    assert key(zoo.create_model("resnet20", num_classes=100).eval()) != base
    maps = [key(zoo.create_model("resnet20", features_only=True, out_indices=i)) for i in ((1, 3), (2, 3))]
    assert maps[0] != maps[1]  # the same modules and tensors, other maps out
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert key() != base


def test_a_runtime_that_fails_here_is_passed_over_and_named(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    speed = {"inductor": 5.0, "onnxruntime": 1.0, "openvino": 3.0}
    monkeypatch.setattr(backends, "_time", lambda m, x: speed[getattr(m, "backend", "inductor")])
    real = backends.RuntimeModel
    broken = {"openvino"}

    def runtime(model, backend, precision, example):
        if backend in broken:
            raise RuntimeError("Exception from src/inference: unsupported opset")
        return real(model, backend, precision, example)

    monkeypatch.setattr(backends, "RuntimeModel", runtime)
    model = zoo.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match=r"backend auto: passing over openvino, which failed here \(RuntimeError: "):
        fast = zoo.optimize_for_inference(model, "fp32", example_input=x)
    assert fast.backend == "onnxruntime" and fast.selection["milliseconds"] == {"inductor": 5.0, "onnxruntime": 1.0}
    assert fast.selection["failed"] == {"openvino": "RuntimeError: Exception from src/inference: unsupported opset"}
    broken = {"onnxruntime"}  # the remembered winner now fails (other weights, a full disk): chosen again
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        again = zoo.optimize_for_inference(model, "fp32", example_input=x)
    assert [str(w.message) for w in seen] == [
        "backend auto: the remembered onnxruntime failed (RuntimeError: Exception from src/inference: unsupported "
        "opset); timing the other candidates"
    ]  # once, and not tried again
    assert (
        again.backend == "openvino"
        and again.selection["cached"] is False
        and "onnxruntime" in again.selection["failed"]
    )

    def broken_inductor(m, x):
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(backends, "_time", broken_inductor)  # the zoo's own path failing is an error
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        zoo.optimize_for_inference(model, "fp32", example_input=torch.randn(4, 3, 32, 32))


def test_an_installed_runtime_that_does_not_import_is_passed_over(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def import_module(name: str, package: str | None = None):  # as with a missing libopenvino.so
        if name.partition(".")[0] == "openvino":
            raise ImportError("libopenvino.so.2600: cannot open shared object file")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    speed = {"inductor": 5.0, "onnxruntime": 1.0}
    monkeypatch.setattr(backends, "_time", lambda m, x: speed[getattr(m, "backend", "inductor")])
    with pytest.warns(UserWarning, match="passing over openvino, which failed here"):
        fast = zoo.optimize_for_inference(
            zoo.create_model("resnet20").eval(), "fp32", example_input=torch.randn(2, 3, 32, 32)
        )
    assert fast.backend == "onnxruntime"
    assert fast.selection["failed"]["openvino"].startswith(
        "MissingExtraError: openvino is installed but does not import (libopenvino.so.2600: cannot open shared"
    )


def test_the_inductor_path_alone_says_why_it_was_chosen(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    model = zoo.create_model("resnet20").eval()
    alone = zoo.optimize_for_inference(model, "fp32", compile=False)  # no runtime is timed against eager
    assert alone.selection["backend"] == "inductor" and alone.selection["why"].startswith("the only candidate")
    asked = zoo.optimize_for_inference(model, "fp32", backend="inductor", compile=False)
    assert asked.selection["why"] == "asked for"


def test_the_runtimes_run_on_torchs_thread_count(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.deploy import export, onnx_runner, openvino_runner

    path = export(zoo.create_model("resnet20").eval(), tmp_path / "m.onnx", example_input=torch.randn(2, 3, 32, 32))
    created = {}
    import onnxruntime
    import openvino

    real_session, real_compile = onnxruntime.InferenceSession, openvino.Core.compile_model

    def session(path, options=None, **kwargs):
        created["onnxruntime"] = options.intra_op_num_threads
        return real_session(path, options, **kwargs)

    def compile_model(self, model, device, config=None):
        created["openvino"] = (config or {}).get("INFERENCE_NUM_THREADS")
        return real_compile(self, model, device, config or {})

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(openvino.Core, "compile_model", compile_model)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a process that limits torch's threads
    onnx_runner(path), openvino_runner(path)
    assert created == {"onnxruntime": 1, "openvino": 1}


def test_bf16_leaves_onnx_runtime_out_and_bad_backends_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert backends.candidates("bf16", cpu, True) == ["inductor", "openvino"]  # ONNX Runtime's CPU provider: fp32
    assert backends.candidates("fp32", cpu, False) == ["inductor"]  # compile=False: the plain model, nothing to time
    model = zoo.create_model("resnet20").eval()
    with pytest.raises(zoo.ConfigError, match=r"backend: 'tensorrt' is not one of 'auto', 'inductor', 'onnxruntime'"):
        zoo.optimize_for_inference(model, backend="tensorrt")
    with pytest.raises(zoo.ConfigError, match=r"backend: 'onnxruntime' runs fp32 on a CPU, not bf16"):
        zoo.optimize_for_inference(model, "bf16", backend="onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None if name == "openvino" else object())
    with pytest.raises(
        zoo.MissingExtraError, match=r"backend 'openvino' needs openvino: pip install 'resnet-zoo\[openvino\]'"
    ):
        zoo.optimize_for_inference(model, "fp32", backend="openvino")
    assert "openvino" not in backends.candidates("fp32", cpu, True)  # auto passes over a missing extra
    # the runtimes run the zoo's ONNX export: without its exporter neither can, and the hint says so
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None if name == "onnxscript" else object())
    with pytest.raises(zoo.MissingExtraError, match=r"backend 'onnxruntime' needs onnxscript: .*resnet-zoo\[onnx\]"):
        zoo.optimize_for_inference(model, "fp32", backend="onnxruntime")
    assert backends.candidates("fp32", cpu, True) == ["inductor"]


def test_the_benchmark_puts_auto_and_each_runtimes_int8_beside_the_zoos(cifar_files, tmp_path) -> None:
    import json
    import subprocess
    from pathlib import Path

    from conftest import CIFAR_JPEG

    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "benchmarks/throughput.py", "--models", "resnet20", "--batch-sizes", "16", "--iters", "1",
            "--repeats", "1", "--warmup", "1", "--no-ceiling", "--optimize", "--dtype", "fp32", "--runtimes", "auto",
            "int8", "openvino-int8", "onnxruntime-int8", "--data", str(CIFAR_JPEG), "--data-images", "200", "--out",
            str(tmp_path)]  # fmt: skip
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["config"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert list(rows) == ["zoo:auto/fp32", "zoo:int8/NHWC/optimize/compile", "openvino-int8", "onnxruntime-int8"]
    assert rows["zoo:auto/fp32"]["backend"] in ("inductor", "onnxruntime", "openvino")
    assert rows["openvino-int8"]["dtype"] == rows["onnxruntime-int8"]["dtype"] == "int8"  # against the int8 ceiling
    for row in rows.values():  # the bundled resnet20 weights, scored on real validation images: about 90%
        assert 80 < row["top1"] <= 100, row
