"""The decisions the GPU paths make, tested on the CPU; and the GPU self-check in its small CPU form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo import benchmark
from zoo.optimize import InferenceModel
from zoo.train.engine import _batches
from zoo.train.processes import Processes, backend

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402

SMALL = ["--models", "resnet20", "--img-size", "32", "--batch-sizes", "2", "--iters", "1", "--repeats", "1"]


def test_the_process_group_reduces_cpu_tensors_next_to_nccl() -> None:
    assert backend(cuda=True) == "cpu:gloo,cuda:nccl"  # the time budget's tick and small sums are CPU tensors
    assert backend(cuda=False) == "gloo"


def test_an_out_of_memory_setting_gets_its_row_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    real = benchmark.build_step

    def tight(setting, device, compile_mode, **kwargs):
        if setting.label == "zoo" and setting.batch_size == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(setting, device, compile_mode, **kwargs)

    monkeypatch.setattr(benchmark, "build_step", tight)
    args = ["--models", "resnet20", "--img-size", "32", "--batch-sizes", "1", "2", "--iters", "1", "--repeats", "1",
            "--warmup", "1", "--no-ceiling", "--baseline", "eager", "--out", str(tmp_path)]  # fmt: skip
    assert throughput.main(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["batch_size"], r["label"], r["status"]) for r in rows] == [
        (1, "zoo", "ok"), (1, "eager", "ok"), (2, "zoo", "oom"), (2, "eager", "ok"),
    ]  # fmt: skip
    assert rows[2]["img_per_s"] is None


def test_p10_and_p90_are_interpolated_not_the_slowest_and_fastest_round() -> None:
    result = benchmark.Result(benchmark.Setting("resnet20", "infer", 2, 32, "fp32", False, False, False, "zoo"))
    result.img_per_s, result.latencies_ms = [50.0, 10.0, 30.0, 20.0, 40.0], [1.0, 2.0]
    row = result.row({}, 1e6, {})
    assert (row["img_per_s_p10"], row["img_per_s"], row["img_per_s_p90"]) == (14.0, 30.0, 46.0)


def test_a_failing_sweep_still_writes_what_it_measured(tmp_path: Path, monkeypatch) -> None:
    real, calls = throughput.measure_group, []

    def second_fails(settings, device, memory, **timing):
        calls.append(settings)
        if len(calls) == 2:
            raise RuntimeError("the device fell off the bus")
        return real(settings, device, memory, **timing)

    monkeypatch.setattr(throughput, "measure_group", second_fails)
    args = ["--models", "resnet20", "--img-size", "32", "--batch-sizes", "1", "2", "--iters", "1", "--repeats", "1",
            "--warmup", "1", "--no-ceiling", "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(RuntimeError, match="fell off the bus"):
        throughput.main(args)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [1]
    calls[:] = [None]  # again, failing before its first row: this run's results stay
    with pytest.raises(RuntimeError, match="fell off the bus"):
        throughput.main(args)
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows


def test_each_group_compiles_its_own_graphs(tmp_path: Path, monkeypatch) -> None:
    import torch._dynamo

    resets = []
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (resets.append(1), real_reset())[1])
    args = ["--models", "resnet20", "--img-size", "32", "--batch-sizes", "1", "2", "--iters", "2", "--repeats", "1",
            "--warmup", "2", "--no-ceiling", "--compile", "--out", str(tmp_path)]  # fmt: skip
    assert throughput.main(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(resets) == 2  # one per (model, batch) group: batch 2 never reuses batch 1's cache
    assert [r["compiled_graphs"] for r in rows] == [1, 1]  # each row ran the graph compiled for it


def test_each_round_starts_one_setting_later(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        benchmark, "build_step", lambda setting, device, mode, **kw: lambda: calls.append(setting.label)
    )
    settings = [benchmark.Setting("resnet20", "infer", 1, 32, "fp32", False, False, False, label=name)
                for name in ("a", "b", "c")]  # fmt: skip
    device = torch.device("cpu")

    class Memory(benchmark.PeakMemory):
        def reset(self) -> None:
            calls.append("reset")  # a CPU's reset gives freed memory back: the next call faults it in again
            super().reset()

    results = benchmark.measure_group(settings, device, Memory(device), warmup=0, repeats=3, iters=1)
    built = ["reset"] * 3  # each setting built and warmed up (no warm-up here)
    first = ["reset", "a", "a", "reset", "b", "b", "reset", "c", "c"]  # the peak from an untimed call, then timed
    assert calls == [*built, *first, "b", "c", "a", "c", "a", "b"]  # no row always first, or always last
    assert all(len(r.img_per_s) == 3 for r in results) and "warmup_peak_mem_mb" in results[0].row({}, 1.0, {})


def test_every_row_records_the_kernel_settings_on_cuda(monkeypatch) -> None:
    monkeypatch.setattr(benchmark, "device_name", lambda device: "a GPU")
    env = benchmark.environment(torch.device("cuda"))
    assert {"cuda", "cudnn", "cudnn_benchmark", "tf32_matmul", "tf32_conv"} <= set(env)
    assert "tf32_matmul" not in benchmark.environment(torch.device("cpu"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_ceiling_is_measured_in_the_target_dtype(dtype: str) -> None:
    conv, x, a, b = benchmark.ceiling_operands(torch.device("cpu"), dtype)
    want = benchmark.DTYPES[dtype]
    assert conv.weight.dtype == x.dtype == a.dtype == b.dtype == want  # no casts inside the timed call
    assert x.is_contiguous(memory_format=torch.channels_last) and a.shape == (2048, 2048)


def test_compiled_rows_need_a_warm_up(tmp_path: Path, capsys) -> None:
    assert throughput.main([*SMALL, "--compile", "--warmup", "0", "--out", str(tmp_path)]) == 2
    assert "--warmup 0: compiled rows compile in their first call" in capsys.readouterr().err


def test_fp16_training_rows_use_a_grad_scaler(monkeypatch) -> None:
    made = []
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **k: made.append(a) or real(*a, **k))
    setting = benchmark.Setting("resnet20", "train", 2, 32, "fp16", False, False, False, label="zoo")
    benchmark.build_step(setting, torch.device("cpu"), None)()
    assert made == [("cpu",)]


def test_int8_validation_is_refused_before_any_work_where_it_cannot_run(tmp_path: Path, capsys, monkeypatch) -> None:
    import platform

    from zoo.train.cli import validate_main

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert validate_main(["--model", "resnet20", "--dataset", "imagefolder", "--root", str(tmp_path / "never-read"),
                          "--int8"]) == 2  # fmt: skip
    assert "--int8: quantized inference runs on x86 CPUs; this machine is aarch64" in capsys.readouterr().err


def test_cuda_graph_outputs_are_copied_before_they_are_returned() -> None:
    class Reuses(nn.Module):  # as a CUDA graph does: every call writes into the same output buffer
        def __init__(self) -> None:
            super().__init__()
            self.out = torch.zeros(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out.copy_(x.flatten(1)[:, :3])

    first_input, second_input = torch.ones(2, 3, 1, 1), torch.full((2, 3, 1, 1), 2.0)
    unsafe = InferenceModel(Reuses(), torch.float32, False, None)
    first = unsafe(first_input)
    unsafe(second_input)
    assert first.eq(2).all()  # overwritten by the next call
    safe = InferenceModel(Reuses(), torch.float32, False, None, clone=True)
    first = safe(first_input)
    safe(second_input)
    assert first.eq(1).all()


def test_in_memory_batches_are_pinned_for_cuda_only() -> None:
    from zoo.train.config import TrainConfig
    from zoo.train.data import Split

    split = Split(torch.zeros(4, dtype=torch.int64), torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    model = zoo.create_model("resnet20")
    for device, pinned in (("cuda", True), ("cpu", False)):
        procs = Processes(device=torch.device(device))
        batches = _batches(TrainConfig(batch_size=2), split, True, model, (0.5,) * 3, (0.5,) * 3, procs)
        assert batches.pin_memory is pinned


def test_training_with_compile_is_refused_up_front_without_a_compiler(tmp_path: Path, monkeypatch) -> None:
    from zoo.train import engine
    from zoo.train.cli import parse

    monkeypatch.setattr(engine, "compile_problem", lambda device: "inductor needs a C++ compiler")
    args = parse(["--dataset", "imagefolder", "--root", str(tmp_path / "never-read"), "--compile",
                  "--output", str(tmp_path / "run")])  # fmt: skip
    with pytest.raises(zoo.ConfigError, match=r"--compile: torch\.compile is unavailable here: inductor needs a C"):
        engine.train(args)


@pytest.mark.slow
def test_the_gpu_self_check_passes_in_its_small_cpu_form(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["device"] == "cpu"
    assert [(s["step"], s["ok"]) for s in report["steps"]] == [
        ("benchmark", True), ("optimize-parity", True), ("train", True), ("pt2", True),
    ]  # fmt: skip
    assert report["steps"][2]["details"]["steps"] == 20
    assert (tmp_path / "summary.txt").read_text().count("PASS") == 4


def test_the_gpu_trip_trains_packs_within_the_return_limits_and_unpacks(tmp_path: Path) -> None:
    """tools/gpu_trip.sh on the CPU with a small image folder in place of the CIFAR tarball: what comes back is at
    most 8 files under the piece size, and unpacks here into a folder the zoo loads."""
    import tarfile

    from PIL import Image

    trip, out = tmp_path / "trip", tmp_path / "out"
    (trip / "src").mkdir(parents=True)
    out.mkdir()
    generator = torch.Generator().manual_seed(0)
    for c in range(3):
        folder = trip / "src" / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(16):
            pixels = (torch.rand(32, 32, 3, generator=generator) * 80 + 60 * c).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    with tarfile.open(trip / "cifar10-train-jpeg.tar.gz", "w:gz") as tar:
        tar.add(trip / "src" / "train", arcname="train")
    env = {"OUT": str(out), "TRIP": str(trip), "WORK": str(tmp_path / "work"), "EPOCHS": "1", "BUDGET": "5",
           "CHECK": "0", "PART": "8M", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # python3: this interpreter's
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_trip.sh"), "run", "--batch-size", "16"], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    back = [p for p in out.rglob("*") if p.is_file()]
    assert len(back) <= 8 and all(p.stat().st_size <= 8 << 20 for p in back), back
    assert len([p for p in back if ".part-" in p.name]) == 6  # 45 MB of weights in 8 MiB pieces
    assert "epoch 1/1" in (out / "train.log").read_text() and "batch/s" not in (out / "train.log").read_text()
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_trip.sh"), "unpack", str(out), str(tmp_path / "here")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "resnet18.tar: OK" in done.stdout, done.stdout + done.stderr
    run = tmp_path / "here" / "resnet18"
    model = zoo.create_model(f"local-dir:{run / 'best'}", pretrained=True)
    assert model.num_classes == 3 and json.loads((run / "summary.json").read_text())["epochs"] == 1
    assert (run / "metrics.jsonl").is_file() and (run / "curves.png").is_file()  # the model card's rows and curves


def test_on_a_gpu_exports_allow_for_tf32_and_training_lets_cudnn_pick(monkeypatch) -> None:
    from zoo import deploy

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default
    assert deploy.tolerance("fp32", cpu) == 1e-4 and deploy.tolerance("fp32", cuda) == 5e-3
    assert deploy.tolerance("bf16", cuda) == 5e-2
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # true fp32 convolutions: fp32's tolerance
    assert deploy.tolerance("fp32", cuda) == 1e-4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Processes.start("auto").device == torch.device("cuda", 0)
    assert torch.backends.cudnn.benchmark  # fixed training shapes: cuDNN times its algorithms once, as timm's
