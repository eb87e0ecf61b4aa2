"""zoo.hardware's decisions on every kind of CPU (each forced on whatever machine runs the suite), the precision
"auto" at every entry point, and int8 that keeps its accuracy on real CIFAR-10 images."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import zoo
from zoo import benchmark, deploy, hardware
from zoo.hardware import PrecisionWarning, resolve_precision
from zoo.predict import runner_precision
from zoo.train.config import TrainConfig
from zoo.train.validate import ValidateConfig

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

# /proc/cpuinfo flags of the CPUs this project has met, cut to what matters here (and some that do not).
ZEN3 = "fpu sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni"  # AMD EPYC Zen 3: AVX2 only
SKYLAKE = ZEN3 + " avx512f avx512dq avx512cd avx512bw avx512vl"  # AVX-512 without VNNI or bf16
ZEN4 = SKYLAKE + " avx512_vnni avx512_bf16 avx512ifma"  # AMD EPYC Zen 4
SAPPHIRE_RAPIDS = ZEN4 + " avx512_fp16 amx_tile amx_bf16 amx_int8"  # Intel Xeon with AMX
ALDER_LAKE = ZEN3 + " avx_vnni"  # AVX2 with AVX-VNNI: int8 sums in int32, no bf16


@pytest.fixture
def simulate(monkeypatch: pytest.MonkeyPatch):
    """Make the zoo see a CPU with ``flags`` (and oneDNN's ISA ``cap``), whatever this machine is."""

    def apply(flags: str, cap: str | None = None) -> hardware.CpuInfo:
        monkeypatch.setenv("ZOO_CPU_FLAGS", flags)
        if cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        return zoo.cpu_info()

    return apply


@pytest.mark.parametrize(
    ("flags", "features", "bf16", "int8_saturates"),
    [
        (ZEN3, ["AVX2"], False, True),
        (SKYLAKE, ["AVX2", "AVX-512"], False, True),
        (ZEN4, ["AVX2", "AVX-512", "VNNI", "AVX-512 BF16"], True, False),
        (SAPPHIRE_RAPIDS, ["AVX2", "AVX-512", "VNNI", "AVX-512 BF16", "AMX"], True, False),
        (ALDER_LAKE, ["AVX2", "VNNI"], False, False),
        ("fpu sse4_2", [], False, True),
    ],
)
def test_each_kind_of_cpu_is_read_off_its_flags(simulate, flags, features, bf16, int8_saturates) -> None:
    cpu = simulate(flags)
    assert cpu.features() == features and cpu.native_bf16 is bf16 and cpu.int8_saturates is int8_saturates
    assert hardware.fast_precision(CPU) == ("bf16" if bf16 else "fp32")
    assert cpu.describe() == f"{cpu.name} ({', '.join(features) or 'no AVX2'})"
    recorded = cpu.to_dict()
    assert recorded["cpu_features"] == features and recorded["native_bf16"] is bf16 and recorded["cpu"] == cpu.name


def test_onednn_isa_cap_lowers_what_the_zoo_counts_on(simulate) -> None:
    # oneDNN's own switch caps its kernels; the zoo's choices follow the kernels that will run
    assert simulate(SAPPHIRE_RAPIDS, "AVX2").features() == ["AVX2"]
    assert simulate(SAPPHIRE_RAPIDS, "avx512_core_bf16").features() == ["AVX2", "AVX-512", "VNNI", "AVX-512 BF16"]
    assert simulate(ZEN4, "AVX512_CORE").int8_saturates
    assert simulate(ZEN3, "AVX512_CORE_AMX").features() == ["AVX2"]  # a cap never adds what the CPU lacks
    assert simulate(ZEN4, "not-an-isa").native_bf16  # oneDNN ignores what it does not know; so does the zoo
    assert "sha_ni" in simulate(ZEN4, "AVX2").flags  # flags no level names stay


def test_the_real_cpu_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOO_CPU_FLAGS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpu = zoo.cpu_info()
    assert cpu.name and cpu.describe().startswith(cpu.name)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # what torch dispatches to, it must have
        assert cpu.avx2
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        assert cpu.avx512
    assert benchmark.environment(CPU)["cpu_features"] == cpu.features()


def test_without_proc_cpuinfo_the_cpu_is_read_from_torchs_probe(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    probe = {"cpu_name": "Intel Xeon Gold 6248", "avx2": True, "fma3": True, "avx512_f": True, "avx512_bw": True,
             "avx512_vl": True, "avx512_vnni": True, "avx512_bf16": False, "amx_bf16": False, "num_sockets": 1}  # fmt: skip
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: probe)
    monkeypatch.setattr(hardware, "Path", lambda _: tmp_path / "no-cpuinfo")  # as on macOS or Windows
    name, flags = hardware._proc_cpuinfo.__wrapped__()
    cpu = hardware.CpuInfo(name, flags)
    assert name == "Intel Xeon Gold 6248" and flags == {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    assert cpu.features() == ["AVX2", "AVX-512", "VNNI"] and not cpu.native_bf16
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: (_ for _ in ()).throw(RuntimeError("not x86")))
    assert hardware._proc_cpuinfo.__wrapped__()[1] == frozenset()  # nothing known: the fp32, 7-bit branches


def test_auto_is_bf16_only_where_bf16_is_hardware(simulate, monkeypatch: pytest.MonkeyPatch) -> None:
    simulate(ZEN3)
    assert resolve_precision("auto", CPU) == "fp32"
    simulate(ZEN4)
    assert resolve_precision("auto", CPU) == "bf16"
    # torch's test says yes on any AVX-512 CPU (Skylake emulates bf16): the zoo does not ask it
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    simulate(SKYLAKE)
    assert resolve_precision("auto", CPU) == "fp32"
    gpu = torch.device("cuda", 0)
    # Pascal and older: no fp16 tensor cores (fp16 no faster, on most far slower); Volta/Turing fp16; Ampere+ bf16
    for capability, auto in (((6, 1), "fp32"), ((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", gpu) == auto
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(zoo.ConfigError, match=r"--dtype: 'bf16' needs a GPU of compute capability 8.0 or later "
                       r"\(Tesla T4, compute capability 7.5\); use 'auto' or 'fp16'"):  # fmt: skip
        resolve_precision("bf16", gpu, flag="--dtype")


def test_explicit_precisions_are_checked_and_slow_bf16_is_named(simulate) -> None:
    cpu = simulate(ZEN3)
    with pytest.warns(PrecisionWarning, match=rf"precision bf16 on {cpu.name} \(AVX2\): this CPU has no bf16 "
                      r"hardware .* 10-80x slower than fp32; 'auto' picks fp32 here"):  # fmt: skip
        assert resolve_precision("bf16", CPU) == "bf16"  # still runs: asked for explicitly
    simulate(ZEN4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision(torch.bfloat16, CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(zoo.ConfigError, match=r"precision: 'fp16' is for GPUs; on cpu use 'auto', 'bf16' or 'fp32'"):
        resolve_precision("fp16", CPU)
    with pytest.raises(zoo.ConfigError, match=r"precision: 'int4' is not one of 'auto', 'fp32', 'bf16', 'fp16'"):
        resolve_precision("int4", CPU)
    with pytest.raises(zoo.ConfigError, match=r"precision: 'torch.int8' is not one of"):
        resolve_precision(torch.int8, CPU)


@pytest.mark.parametrize(("flags", "fast"), [(ZEN3, "fp32"), (ZEN4, "bf16")])
def test_every_entry_point_defaults_to_auto(
    simulate, flags: str, fast: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulate(flags)
    model = zoo.create_model("resnet20").eval()
    optimized = zoo.optimize_for_inference(model, compile=False)
    assert optimized.precision == fast and optimized.model.conv1.weight.dtype == hardware.DTYPES[fast]
    assert optimized(torch.randn(2, 3, 32, 32)).dtype == torch.float32
    assert deploy.check_options("pt2", "auto", tmp_path / "m.pt2", 2, True, CPU) == fast
    assert deploy.check_options("onnx", "auto", tmp_path / "m.onnx", 2, True, CPU) == "fp32"  # ONNX files are fp32
    assert runner_precision("torch", "auto", CPU) == runner_precision("fast", "auto", CPU) == fast
    assert runner_precision("onnxruntime", "auto", CPU) == "fp32"
    monkeypatch.setattr("zoo.backends.missing_modules", lambda backend: ["onnxscript"])  # stops it before an export
    with pytest.raises(
        zoo.MissingExtraError, match="backend 'onnxruntime' needs onnxscript"
    ):  # not "runs fp32, not bf16"
        zoo.optimize_for_inference(model, backend="onnxruntime")
    with pytest.raises(zoo.ConfigError, match=r"--precision: 'bf16': --runtime openvino runs an fp32 ONNX file"):
        runner_precision("openvino", "bf16", CPU)
    assert TrainConfig().precision == ValidateConfig(model=("resnet20",)).precision == "auto"
    from zoo.train.engine import _check_before_work
    from zoo.train.processes import Processes

    assert _check_before_work(TrainConfig(), Processes()).precision == fast  # the run, its args.json and summary
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput

    args = throughput.parse_args(["--models", "resnet20"])
    throughput.check(args)
    assert (args.dtype_requested, args.dtype) == ("auto", fast)


def test_int8_activation_range_follows_the_cpu(simulate) -> None:
    model = zoo.create_model("resnet20").eval()
    calibration = [torch.randn(4, 3, 32, 32)]
    cpu = simulate(ZEN3)
    int8 = zoo.quantize_int8(model, calibration, compile=False)
    assert int8.precision == "int8"
    assert int8.quantization == {"reduce_range": True, "activation_bits": 7,
                                 "why": f"{cpu.name} has no VNNI or AMX: int16 sums saturate"}  # fmt: skip
    simulate(ZEN4)
    assert zoo.quantize_int8(model, calibration, compile=False).quantization["activation_bits"] == 8
    forced = zoo.quantize_int8(model, calibration, compile=False, reduce_range=True)  # the non-VNNI branch, here
    assert forced.quantization == {"reduce_range": True, "activation_bits": 7, "why": "given"}
    with pytest.raises(zoo.ConfigError, match=r"reduce_range: expected None \(by the CPU\), True or False, got 'yes'"):
        zoo.quantize_int8(model, calibration, reduce_range="yes")  # type: ignore[arg-type]
    with pytest.raises(zoo.ConfigError, match=r"reduce_range: .*got 1$"):  # 1 == True, but not a choice
        zoo.quantize_int8(model, calibration, reduce_range=1)  # type: ignore[arg-type]


def test_benchmark_rows_are_held_against_their_own_precision() -> None:
    ceilings = {"fp32": {"conv": 200.0, "matmul": 250.0}, "bf16": {"conv": 800.0, "matmul": 900.0},
                "int8": {"conv": 1600.0}}  # fmt: skip
    rows = {}
    for dtype in ("fp32", "bf16", "int8"):
        result = benchmark.Result(benchmark.Setting("resnet20", "infer", 2, 32, dtype, True, True, True, "zoo"))
        result.img_per_s, result.latencies_ms = [1000.0], [2.0]
        rows[dtype] = result.row({}, macs=50e6, ceilings=ceilings)  # 100 GFLOP/s each
    assert {d: (r["ceiling_precision"], r["pct_of_conv_ceiling"]) for d, r in rows.items()} == {
        "fp32": ("fp32", 50.0), "bf16": ("bf16", 12.5), "int8": ("int8", 6.2),
    }  # fmt: skip
    assert "pct_of_matmul_ceiling" not in rows["int8"]  # no int8 matmul is measured


def test_the_int8_ceiling_runs_the_int8_kernels() -> None:
    rate = benchmark.measure_ceiling(CPU, "int8", seconds=0.2)
    assert set(rate) == {"conv"} and rate["conv"] > 0


# --- int8 accuracy on real images --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_sample(cifar_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 training images to calibrate on and 1,000 validation images to score (seeded), as resnet20's eval
    transform makes them, saved for a subprocess too."""
    from PIL import Image

    model = zoo.create_model("resnet20", pretrained=True)
    transform = zoo.create_transform(zoo.resolve_data_config(model))
    rng = random.Random(0)

    def load(split, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        picks = sorted(rng.sample(range(len(split)), n))
        images = [transform(Image.open(split.files[i]).convert("RGB")) for i in picks]
        return torch.stack(images), split.labels[picks]

    calibration, _ = load(cifar_files.train, 512)
    images, labels = load(cifar_files.val, 1000)
    path = tmp_path_factory.mktemp("int8") / "sample.pt"
    torch.save({"calibration": calibration, "images": images, "labels": labels}, path)
    return path


INT8_SCORES = """
import json, sys, torch, zoo
data = torch.load(sys.argv[1])
model = zoo.create_model("resnet20", pretrained=True).eval()
calibration = list(data["calibration"].split(64))
def top1(m):
    with torch.no_grad():
        return 100 * (m(data["images"]).argmax(1) == data["labels"]).float().mean().item()
auto = zoo.quantize_int8(model, calibration)
full = zoo.quantize_int8(model, calibration, reduce_range=False)
print(json.dumps({"cpu": zoo.cpu_info().features(), "fp32": top1(model), "auto": top1(auto),
                  "reduce_range": auto.quantization["reduce_range"], "full_range": top1(full)}))
"""


def int8_scores(sample: Path, **env: str) -> dict:
    import os

    environment = {k: v for k, v in os.environ.items() if k not in ("ZOO_CPU_FLAGS", "ONEDNN_MAX_CPU_ISA")}
    done = subprocess.run([sys.executable, "-c", INT8_SCORES, str(sample)], capture_output=True, text=True,
                          timeout=600, env={**environment, **env})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_int8_keeps_its_accuracy_on_this_cpu(cifar_sample: Path) -> None:
    scores = int8_scores(cifar_sample)
    assert abs(scores["auto"] - scores["fp32"]) <= 1.0, scores
    assert scores["fp32"] > 85, scores  # resnet20.c10_kd scores 90.1% on the whole validation split


@pytest.mark.slow
def test_int8_keeps_its_accuracy_on_int8_kernels_without_vnni(cifar_sample: Path) -> None:
    # oneDNN's AVX2 kernels, on any x86 CPU: they sum u8 x s8 pairs in int16 (VPMADDUBSW), as on a Zen 3
    scores = int8_scores(cifar_sample, ONEDNN_MAX_CPU_ISA="AVX2")
    assert scores["cpu"] == ["AVX2"] and scores["reduce_range"] is True, scores
    assert abs(scores["auto"] - scores["fp32"]) <= 1.0, scores
    assert scores["fp32"] - scores["full_range"] > 1.0, scores  # what 8-bit activations cost here: the fix matters


def test_slow_bf16_asked_for_on_the_command_line_is_one_warning_on_stderr(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "ZOO_CPU_FLAGS": ZEN3}
    done = subprocess.run([sys.executable, "benchmarks/throughput.py", "--smoke", "--dtype", "bf16", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("PrecisionWarning: --dtype bf16 on") == 1 and "10-80x slower than fp32" in done.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["dtype"] for r in rows} == {"bf16"} and rows[0]["cpu_features"] == ["AVX2"]


def test_a_train_config_survives_replace() -> None:
    from dataclasses import replace

    for schedule in ("onecycle", "multistep", "cosine", "linear"):
        config = TrainConfig(schedule=schedule)
        assert replace(config) == config and replace(config, precision="fp32").precision == "fp32"


# --- malloc keeps what a model frees ------------------------------------------------------------------------

_PAGE_FAULTS = """
import resource, sys, torch
from pathlib import Path
from zoo.hardware import keep_freed_memory, release_freed_memory

def faults():  # minor page faults of allocating, touching and freeing a 64 MB buffer three times
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        buffer = torch.empty(64 * 2**20, dtype=torch.uint8)
        buffer.fill_(1)
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss_mb():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

faults()
default = faults()
kept = keep_freed_memory()
faults()
after = faults()
held = rss_mb()
release_freed_memory()
print(default, kept, after, held - rss_mb())
"""


@pytest.mark.skipif(not hardware._glibc(), reason="glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults_and_can_be_released() -> None:
    # reused: the pages stay mapped (0 faults in most runs; in some, one of the three buffers lands on fresh heap
    # above the kept one and faults once, so at most one 64 MB buffer's worth is allowed). Twice in a full suite
    # (sessions 33 and 34) three processes in a row faulted every buffer again, a state that passed within minutes
    # and did not come back when the files run before it were rerun: the best of five processes, a second apart,
    # counts. keep_freed_memory not working fails all five.
    runs = []
    for attempt in range(5):
        time.sleep(attempt and 1.0)
        run = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], capture_output=True, text=True, check=True)
        runs.append(run.stdout.split())
        if int(runs[-1][2]) <= 16_384 + 1_000:
            break
    default, kept, after, released = runs[-1]
    assert int(default) > 3 * 10_000  # 64 MB is 16,384 pages: mapped afresh and faulted in on every allocation
    assert kept == "True" and int(after) <= 16_384 + 1_000, runs
    assert float(released) > 50  # malloc_trim gives the 64 MB back when a measurement asks for it
    off = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], capture_output=True, text=True, check=True,
                         env={**os.environ, "ZOO_KEEP_FREED_MEMORY": "0"})  # fmt: skip
    assert off.stdout.split()[1] == "False" and int(off.stdout.split()[2]) > 3 * 10_000  # left as it was


def test_malloc_is_left_alone_off_glibc_and_the_cpu_paths_ask_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    hardware.keep_freed_memory.cache_clear()
    hardware._glibc.cache_clear()
    monkeypatch.setattr(hardware.platform, "libc_ver", lambda: ("", ""))  # musl
    try:
        assert hardware.keep_freed_memory() is False
    finally:
        hardware.keep_freed_memory.cache_clear()
        hardware._glibc.cache_clear()
    asked = []
    monkeypatch.setattr(zoo.optimize, "keep_freed_memory", lambda: asked.append(1))
    zoo.optimize_for_inference(zoo.create_model("resnet20").eval(), "fp32", backend="inductor", compile=False)
    assert asked == [1]
