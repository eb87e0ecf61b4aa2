"""Deployment: ONNX and AOTInductor exports checked against eager, and `zoo predict` on real images."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
import torchvision

import zoo
import zoo.predict
from zoo import deploy
from zoo.cli import main as zoo_main

ROOT = Path(__file__).resolve().parent.parent


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_onnx_matches_eager_for_any_batch_and_carries_its_preprocessing(tmp_path: Path) -> None:
    model = zoo.create_model("resnet18").eval()
    path = zoo.export(model, tmp_path / "resnet18.onnx", example_input=torch.randn(2, 3, 64, 64))
    run = deploy.onnx_runner(path)
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert relative_error(run(x)[0], model(x)) <= 1e-4
    meta = metadata(path)
    assert meta["model_name"] == "resnet18" and meta["weights"] == ""  # random init
    # the graph's input size (only the batch varies), not the weights' 224: what a deploying user must feed it
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["input_size"]) == [3, 64, 64]
    # the preprocessing of resnet18's default weights (a1_in1k) at their test size, as timm's random init has it
    assert meta["interpolation"] == "bicubic" and json.loads(meta["crop_pct"]) == 1.0
    assert json.loads(meta["output_names"]) == ["logits"]
    assert onnx.load(str(path)).opset_import[0].version == deploy.ONNX_OPSET
    static = zoo.export(model, tmp_path / "static.onnx", example_input=torch.randn(1, 3, 64, 64), dynamic_batch=False)
    dims = onnx.load(str(static)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 64, 64]


def test_the_cli_exports_pretrained_weights_with_their_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "resnet20.onnx"
    assert zoo_main(["export", "resnet20", "--pretrained", "--output", str(out)]) == 0
    assert f"weights: {zoo.registry.get_weights('resnet20')[0]})" in capsys.readouterr().out
    meta = metadata(out)
    assert meta["model_name"] == "resnet20" and meta["weights"] == zoo.registry.get_weights("resnet20")[0]
    assert json.loads(meta["label_names"])[3] == "cat" and json.loads(meta["input_size"]) == [3, 32, 32]
    assert zoo_main(["export", "resnet20", "--output", str(tmp_path / "random.onnx"), "--no-check"]) == 0
    assert "weights: random init: give --pretrained or --checkpoint" in capsys.readouterr().out  # said, not silent
    model = zoo.create_model("resnet20", pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(deploy.onnx_runner(out)(x)[0], model(x)) <= 1e-4


def test_a_features_only_backbone_exports_one_named_output_per_map(tmp_path: Path) -> None:
    backbone = zoo.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    x = torch.randn(2, 3, 64, 64)
    path = zoo.export(backbone, tmp_path / "backbone.onnx", example_input=x)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        for got, want in zip(deploy.onnx_runner(path)(x), backbone(x), strict=True):
            assert got.shape == want.shape and relative_error(got, want) <= 1e-4


def test_a_mismatch_leaves_no_file_and_says_by_how_much(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = deploy.onnx_runner

    def off_by_one_percent(path: Path):
        run = real(path)
        return lambda x: [o * 1.01 for o in run(x)]

    monkeypatch.setattr(deploy, "onnx_runner", off_by_one_percent)
    path = tmp_path / "bad.onnx"
    model = zoo.create_model("resnet20")
    with pytest.raises(zoo.ExportError, match=r"output 'logits' differs by 1\.\d+e-02 of its largest value"):
        zoo.export(model, path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_export_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = zoo.create_model("resnet20")
    with pytest.raises(zoo.ConfigError, match=r"format: 'tflite' is not one of 'onnx', 'pt2'"):
        zoo.export(model, tmp_path / "x", format="tflite")
    with pytest.raises(zoo.ConfigError, match=r"path: an AOTInductor package's name ends in .pt2"):
        zoo.export(model, tmp_path / "x.zip", format="pt2")
    with pytest.raises(zoo.ConfigError, match=r"dtype: 'bf16' needs format pt2: an ONNX file is fp32"):
        zoo.export(model, tmp_path / "x.onnx", dtype="bf16")
    with pytest.raises(zoo.ConfigError, match=r"example_input: a dynamic batch axis is traced from 2 or more images "
                       r"\(torch.export specializes 1\), got 1; or dynamic_batch=False"):  # fmt: skip
        zoo.export(model, tmp_path / "x.onnx", example_input=torch.randn(1, 3, 32, 32))

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the flags were checked")

    monkeypatch.setattr(zoo.factory, "create_model", never)
    out = str(tmp_path / "x.onnx")
    for args, message in (
        (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
        (["--batch-size", "1"], "--batch-size: a dynamic batch axis is traced from 2 or more images"),
        (["--batch-size", "1"], "got 1; or --static-batch"),
        (["--batch-size", "5000"], "--batch-size: expected a batch of 1 to 4096 images, got 5000"),
        (["--dtype", "bf16"], "--dtype: 'bf16' needs --format pt2: an ONNX file is fp32"),
        (["--format", "pt2"], f"--output: an AOTInductor package's name ends in .pt2, got {out!r}"),
    ):
        assert zoo_main(["export", "resnet20", "--output", out, *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    monkeypatch.setattr(deploy, "compile_problem", lambda device: "'g++' is not on PATH")
    assert zoo_main(["export", "resnet20", "--format", "pt2", "--output", str(tmp_path / "x.pt2")]) == 2
    assert "--format: pt2 is compiled by AOTInductor, which cannot work here: 'g++' is not on PATH" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_an_exporter_failure_is_an_export_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_written_then_broken(model, x, out: Path, *args) -> None:
        out.write_bytes(b"half an onnx file")
        raise RuntimeError("the exporter broke on some op\n<a page of exporter traceback>")

    monkeypatch.setattr(deploy, "_export_onnx", half_written_then_broken)
    with pytest.raises(zoo.ExportError) as caught:
        zoo.export(zoo.create_model("resnet20"), tmp_path / "x.onnx")
    assert str(caught.value) == (
        "torch.onnx.export failed: RuntimeError: the exporter broke on some op; no file was written"
    )
    assert isinstance(caught.value.__cause__, RuntimeError) and list(tmp_path.iterdir()) == []


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(zoo.MissingExtraError, match=r"onnxruntime is not installed: pip install 'resnet-zoo\[onnx\]'"):
        deploy.onnx_runner("model.onnx")


def test_bf16_packages_fold_norms_and_run_channels_last() -> None:
    model = zoo.create_model("resnet20", pretrained=True).eval()
    cast = deploy._CastIO(model, torch.bfloat16)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cast.modules())
    assert cast.model.conv1.weight.dtype == torch.bfloat16
    assert cast.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out, want = cast(x), model(x)
    assert out.dtype == torch.float32 and relative_error(out, want) <= deploy.TOLERANCE["bf16"]


@pytest.mark.slow
def test_a_pt2_package_runs_in_a_process_without_zoo(tmp_path: Path) -> None:
    model = zoo.create_model("resnet20", pretrained=True).eval()
    path = zoo.export(model, tmp_path / "resnet20.pt2", format="pt2", dtype="fp32")  # checked against eager here
    x = torch.randn(3, 3, 32, 32)  # another batch size than the example's
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        f"package = torch._inductor.aoti_load_package({str(path)!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "y = package(io['x'])\n"
        "assert 'zoo' not in sys.modules\n"
        "meta = package.get_metadata()\n"
        "assert meta['model_name'] == 'resnet20' and meta['label_names'].startswith('[\"airplane\"'), meta\n"
        "assert meta['precision'] == 'fp32', meta\n"
        "print(((y - io['y']).abs().max() / io['y'].abs().max()).item())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) <= 1e-4


@pytest.mark.slow
def test_a_frozen_package_names_the_cpu_it_needs_and_a_portable_one_runs_anywhere(tmp_path: Path, monkeypatch) -> None:
    model = zoo.create_model("resnet20", pretrained=True).eval()
    frozen = zoo.export(model, tmp_path / "frozen.pt2", format="pt2", dtype="fp32")
    meta = deploy.package_metadata(frozen)
    assert json.loads(meta["cpu_features"]) == zoo.cpu_info().features() and json.loads(meta["portable"]) is False
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    assert relative_error(zoo.load_package(frozen)(x), want) <= 1e-4  # this CPU has what it was built for
    portable = zoo.export(model, tmp_path / "portable.pt2", format="pt2", dtype="fp32", portable=True)
    assert json.loads(deploy.package_metadata(portable)["cpu_features"]) == ["AVX2"]
    assert deploy.package_metadata(portable)["AOTI_CPU_ISA"] == "AVX2"  # its generated code: AVX2 vectors
    if shutil.which("objdump"):  # and its compiled code no AVX-512 (-march=native would allow it anywhere)
        import zipfile

        with zipfile.ZipFile(portable) as archive:
            libraries = [n for n in archive.namelist() if n.endswith(".so")]
            archive.extractall(tmp_path / "unpacked", libraries)
        for library in libraries:
            code = subprocess.run(["objdump", "-d", str(tmp_path / "unpacked" / library)], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
            assert "zmm" not in code and "ymm" in code, library
    monkeypatch.setenv("ZOO_CPU_FLAGS", "avx avx2 fma f16c")  # an AVX2-only CPU, as an AMD Zen 3
    if zoo.cpu_info().features() != json.loads(meta["cpu_features"]):  # this machine has more than AVX2
        with pytest.raises(zoo.ConfigError, match=r"was compiled for a CPU with AVX2, .*; this one \(.*\(AVX2\)\) lacks "
                           r".*export a portable package \(zoo export --portable"):  # fmt: skip
            zoo.load_package(frozen)
    assert relative_error(zoo.load_package(portable)(x), want) <= 1e-4
    with pytest.raises(zoo.ConfigError, match=r"portable: applies to format 'pt2'"):
        zoo.export(model, tmp_path / "x.onnx", portable=True)


def test_a_portable_package_is_fp32_unless_told_even_built_on_a_bf16_cpu(tmp_path: Path, monkeypatch) -> None:
    """Built on a bf16 machine for CPUs not known: bf16 would be emulated, 10-80x slower, on AVX2-only ones."""
    monkeypatch.setenv("ZOO_CPU_FLAGS", "avx avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16")
    built = []

    def record(model, x, out, dynamic_batch, props, portable):  # what would be compiled, without compiling it
        built.append((props["precision"], portable))
        raise RuntimeError("recorded")

    monkeypatch.setattr(deploy, "_export_pt2", record)
    model = zoo.create_model("resnet20").eval()
    for portable, dtype in ((False, "auto"), (True, "auto"), (True, "bf16")):
        with pytest.raises(zoo.ExportError, match="recorded"):
            zoo.export(model, tmp_path / "m.pt2", format="pt2", portable=portable, dtype=dtype)
    assert built == [("bf16", False), ("fp32", True), ("bf16", True)]
    with pytest.raises(zoo.ConfigError, match=r"^data_config: unknown data config keys \['img_size'\]"):
        zoo.export(model, tmp_path / "m.onnx", data_config={"img_size": 64})  # the argument it came in


def test_a_model_from_elsewhere_exports_with_the_data_config_it_is_given(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(zoo.ConfigError, match=r"model: has no pretrained_cfg .*: give pretrained_cfg=, or input_size, "
                       r"mean, std \(zoo.export and predict: in data_config=\)"):  # fmt: skip
        zoo.export(model, tmp_path / "tv.onnx")
    config = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    path = zoo.export(model, tmp_path / "tv.onnx", data_config=config)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    got = [json.loads(meta[k]) for k in ("input_size", "mean", "crop_pct", "output_names")]
    assert got == [[3, 64, 64], [0.5] * 3, 0.875, ["output"]]  # timm's defaults where not told; "output": its own


def test_only_a_cpu_package_records_cpu_features_and_portable_is_for_cpus(tmp_path: Path, monkeypatch) -> None:
    cpu = deploy.package_target(torch.device("cpu"), portable=False)
    assert json.loads(cpu["cpu_features"]) == zoo.cpu_info().features() and cpu["device"] == "cpu"
    assert json.loads(deploy.package_target(torch.device("cpu"), portable=True)["cpu_features"]) == ["AVX2"]
    assert deploy.package_target(torch.device("cuda"), portable=False) == {"device": "cuda"}  # no CPU check
    model = zoo.create_model("resnet20").eval().to("meta")  # another device than the CPU, without a GPU
    with pytest.raises(zoo.ConfigError, match=r"portable: is for CPU packages .*; the model is on meta"):
        zoo.export(model, tmp_path / "x.pt2", format="pt2", portable=True)
    assert not list(tmp_path.iterdir())
    import zipfile

    with zipfile.ZipFile(tmp_path / "gpu.pt2", "w") as archive:  # a GPU package's metadata, as AOTInductor files it
        archive.writestr("gpu/data/aotinductor/model/wrapper_metadata.json", json.dumps({"device": "cuda"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(zoo.ConfigError, match=r"gpu\.pt2' was compiled for a CUDA GPU and this machine has none"):
        zoo.load_package(tmp_path / "gpu.pt2")


@pytest.fixture(scope="module")
def validation_images(cifar_files) -> list[Path]:
    """50 images drawn (seed 0) from the validation split the trainer carves (seed 0, 10%)."""
    return [Path(f) for f in sorted(random.Random(0).sample(cifar_files.val.files, 50))]


def test_predict_names_the_right_class_of_real_images(
    validation_images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    assert len(validation_images) == 50
    args = ["predict", *map(str, validation_images), "--model", "resnet56", "--format", "json", "--topk", "3"]
    assert zoo_main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in lines] == list(map(str, validation_images))
    right = sum(r["topk"][0]["label"] == Path(r["path"]).parent.name for r in lines)
    # resnet56's default weights score 91.3% on the whole split, with `zoo validate` and with predict alike
    assert right >= 45, f"{right} of 50"
    assert all(len(r["topk"]) == 3 and r["topk"][0]["score"] >= r["topk"][1]["score"] for r in lines)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_runtimes_agree_with_torch(validation_images: list[Path], runtime: str, capsys) -> None:
    images = list(map(str, validation_images[:8]))
    tops = {}
    for name in ("torch", runtime):  # fp32 against fp32 (--precision auto would be bf16 on a bf16 CPU)
        args = ["predict", *images, "--model", "resnet20", "--format", "json", "--runtime", name, "--precision", "fp32"]
        assert zoo_main(args) == 0
        tops[name] = [json.loads(line)["topk"][0] for line in capsys.readouterr().out.splitlines()]
    assert [t["index"] for t in tops["torch"]] == [t["index"] for t in tops[runtime]]
    # fp32 as asked and said on stderr, OpenVINO too (its own default is bf16 on a bf16 CPU)
    assert all(abs(a["score"] - b["score"]) <= 1e-4 for a, b in zip(tops["torch"], tops[runtime], strict=True))


def test_predict_reads_folders_skips_unreadable_files_and_refuses_bad_input(
    validation_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "mixed" / "nested"
    folder.mkdir(parents=True)
    for image in validation_images[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either, and not an image suffix: never read")
    assert zoo_main(["predict", str(tmp_path / "mixed"), "--model", "resnet20", "--format", "csv", "--topk", "2"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0] == "path,rank,index,label,score" and len(rows) == 1 + 3 * 2
    assert "skipped 1 unreadable file(s), e.g." in captured.err and "broken.jpg" in captured.err
    assert zoo_main(["predict", str(folder / "broken.jpg"), "--model", "resnet20"]) == 2
    assert "no readable image among 1 file(s)" in capsys.readouterr().err
    for args, message in (
        ([str(tmp_path / "missing.jpg")], f"PATH: {str(tmp_path / 'missing.jpg')!r} does not exist"),
        ([str(folder), "--topk", "11"], "--topk: expected 1 to 10 (the model's classes), got 11"),
        ([str(folder), "--topk", "0"], "--topk: expected a positive integer, got 0"),
        ([str(folder), "--checkpoint", str(tmp_path / "nope")], "--checkpoint: "),
    ):
        assert zoo_main(["predict", *args, "--model", "resnet20"]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert zoo_main(["predict", str(folder), "--model", "resnet34_cifar"]) == 2  # an architecture without weights
    assert "--model: 'resnet34_cifar' has no published weights to predict with; give --checkpoint" in (
        capsys.readouterr().err
    )


def test_predict_takes_the_architecture_from_a_model_folder_and_refuses_another(
    validation_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from zoo.io import folder_config, save_model_folder

    source = zoo.create_model("resnet20", pretrained=True)
    folder = save_model_folder(tmp_path / "best", source.state_dict(),
                               folder_config("resnet20", source.cfg.to_dict(), source.pretrained_cfg))  # fmt: skip
    image = str(validation_images[0])
    outputs = []
    for model in ([], ["--model", "resnet20"], ["--model", "resnet20.c10"]):  # the tag names weights, not architecture
        assert zoo_main(["predict", image, "--checkpoint", str(folder), "--format", "json", *model]) == 0, model
        outputs.append(json.loads(capsys.readouterr().out)["topk"])
    assert outputs[0] == outputs[1] == outputs[2]
    assert zoo_main(["predict", image, "--checkpoint", str(folder), "--model", "resnet56"]) == 2
    err = capsys.readouterr().err
    assert f"--model: 'resnet56' disagrees with the folder {str(folder)!r}, which holds a resnet20" in err, err
    assert zoo_main(["predict", image]) == 2  # neither: which model?
    assert "--model: is required unless --checkpoint is a model folder" in capsys.readouterr().err
    assert zoo_main(["predict", image, "--model", "resnet20", "--checkpoint", str(folder / "model.safetensors")]) == 0
    err = capsys.readouterr().err  # a file names no classes: whose names label its outputs is said
    assert "names no classes: labelled as resnet20's published weights label theirs (airplane, automobile, bird" in err


def test_predict_skips_what_pillow_cannot_read_and_checks_its_flags_first(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made-up images, so this runs without the CIFAR tarball: Pillow's other ways of failing, empty input."""
    import io
    import struct
    import zlib

    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.effect_noise((32, 32), 40 + i).convert("RGB").save(folder / f"noise{i}.png")
    png = (folder / "noise0.png").read_bytes()
    start = png.index(b"IDAT") - 4
    length = int.from_bytes(png[start : start + 4], "big")
    data, end = png[start + 8 : start + 8 + length], start + 12 + length

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    half = len(data) // 2  # IDAT split in two around a chunk whose type is not ASCII: Pillow's SyntaxError
    broken = png[:start] + chunk(b"IDAT", data[:half]) + b"\0\0\0\4\xff\xfe\xfd\xfc" + bytes(8)
    (folder / "broken-chunk.png").write_bytes(broken + chunk(b"IDAT", data[half:]) + png[end:])
    jpeg = io.BytesIO()
    Image.effect_noise((32, 32), 40).convert("RGB").save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])  # OSError
    assert zoo_main(["predict", str(folder), "--model", "resnet20", "--topk", "1"]) == 0
    captured = capsys.readouterr()
    header, _, *rows = captured.out.splitlines()
    assert header.split() == ["path", "top-1", "score"] and len(rows) == 2  # no empty "next 0" column
    assert "skipped 2 unreadable file(s), e.g." in captured.err and "Traceback" not in captured.err

    def never(*args, **kwargs):
        raise AssertionError("work began before the input was checked")

    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(zoo.predict, "make_runner", never)  # --topk is checked before any export or compile
    assert zoo_main(["predict", str(folder), "--model", "resnet20", "--topk", "11", "--runtime", "onnxruntime"]) == 2
    assert "--topk: expected 1 to 10 (the model's classes), got 11" in capsys.readouterr().err
    monkeypatch.setattr(zoo.factory, "create_model", never)
    assert zoo_main(["predict", str(tmp_path / "empty"), "--model", "resnet20", "--format", "csv"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"PATH: no image files under {tmp_path / 'empty'} (suffixes: .bmp" in captured.err


def test_predict_refuses_the_fast_runtime_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.optimize

    monkeypatch.setattr(zoo.optimize, "compile_problem", lambda device: "'g++' is not on PATH")
    with pytest.raises(zoo.ConfigError, match="--runtime: fast compiles with inductor, which cannot work here: "
                       "'g\\+\\+' is not on PATH; use --runtime torch"):  # fmt: skip
        zoo.predict.make_runner(zoo.create_model("resnet20"), "fast", torch.randn(2, 3, 32, 32))


def test_predict_reads_grayscale_images_for_a_one_channel_model(tmp_path: Path) -> None:
    from PIL import Image

    model = zoo.create_model("resnet20", in_chans=1, num_classes=10).eval()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    classifier = zoo.predict.Classifier(model, topk=1)
    assert classifier.mode == "L" and len(list(classifier([tmp_path / "red.png"], progress=False))) == 1
    with pytest.raises(zoo.ConfigError, match="takes 4-channel images; predict reads RGB"):
        zoo.predict.Classifier(zoo.create_model("resnet20", in_chans=4, num_classes=10))


def test_16_bit_and_float_images_are_scaled_not_clipped_by_predict_and_the_trainer(tmp_path: Path) -> None:
    """Pillow's convert clips 16-bit (I;16, I) and float (F) pixels to 255: such a file read as white or black."""
    import numpy as np
    from PIL import Image

    from zoo.train.data import read_image

    gray = np.asarray(Image.effect_noise((32, 32), 60)).astype(np.float64)  # 8-bit content, mean about 128
    Image.fromarray(gray.astype(np.uint8)).save(tmp_path / "gray8.png")
    Image.fromarray((gray * 257).astype(np.uint16)).save(tmp_path / "gray16.png")  # mode I;16
    Image.fromarray((gray * 257).astype(np.uint16)).save(tmp_path / "gray16.tif")
    body = (gray * 257).astype(">u2").tobytes()
    (tmp_path / "gray16.pgm").write_bytes(b"P5 32 32 65535\n" + body)  # mode I
    Image.fromarray((gray / 255).astype(np.float32)).save(tmp_path / "gray-float.tif")  # mode F, 0-1
    files = sorted(tmp_path.iterdir())
    assert {Image.open(f).mode for f in files} == {"L", "I;16", "I", "F"}
    for f in files:
        assert np.abs(np.asarray(read_image(str(f)), dtype=np.float64)[..., 0] - gray).max() <= 1, f.name
    classifier = zoo.predict.Classifier(zoo.create_model("resnet20", pretrained=True), topk=10)
    scores = [[t["score"] for t in sorted(p.topk, key=lambda t: t["index"])] for p in classifier(files, progress=False)]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(scores[:1] * len(files)), atol=0.02, rtol=0)


def test_export_goes_by_the_file_name_and_says_what_a_weights_file_leaves_assumed(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    assert [deploy.format_for(n, None) for n in ("m.pt2", "m.onnx", "m")] == ["pt2", "onnx", "onnx"]
    assert deploy.format_for("m.pt2", "onnx") == "onnx"
    assert zoo_main(["export", "resnet20", "--format", "onnx", "--output", str(tmp_path / "m.pt2")]) == 2
    assert "--output: " in (err := capsys.readouterr().err) and "a .pt2 name is for --format pt2" in err, err
    (tmp_path / "onnx.pt2").write_bytes(b"\x08\x09 an ONNX file, not a zip archive")
    with pytest.raises(zoo.ConfigError, match=r"holds no AOTInductor metadata: not a zoo\.export \.pt2 package"):
        zoo.load_package(tmp_path / "onnx.pt2")
    written = []

    def fake_export(model, path, **options):  # what the command asks for, without compiling
        written.append(options)
        Path(path).write_bytes(b"x")
        return Path(path)

    monkeypatch.setattr(deploy, "export", fake_export)
    weights = tmp_path / "mine.safetensors"
    save_file(zoo.create_model("resnet20").state_dict(), weights)
    assert zoo_main(["export", "resnet20", "--checkpoint", str(weights), "--output", str(tmp_path / "m.pt2")]) == 0
    assert written[0]["format"] == "pt2"  # by the name, as the help says
    err = capsys.readouterr().err  # its metadata records the architecture's preprocessing and labels: said
    assert f"export: {weights} carries no preprocessing: assumed" in err
    assert f"export: {weights} names no classes: labelled as resnet20's published weights label theirs" in err


def test_predict_takes_a_torchvision_model_tta_as_validate_does_and_names_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import os

    from PIL import Image

    Image.effect_noise((32, 32), 50).convert("RGB").save(tmp_path / "noise.png")
    model = torchvision.models.resnet18(num_classes=7)  # no num_classes attribute: its output's width
    config = {"input_size": (3, 32, 32), "mean": zoo.data.CIFAR10_MEAN, "std": zoo.data.CIFAR10_STD}
    classifier = zoo.predict.Classifier(model, data_config=config, topk=7)
    assert classifier.num_classes == 7 and classifier.labels == tuple("0123456")
    (prediction,) = classifier([tmp_path / "noise.png"], progress=False)
    assert sorted(t["index"] for t in prediction.topk) == list(range(7))
    for tta in ([], ["--tta"], ["--tta", "flip-shift"]):  # validate's modes, a bare --tta meaning flip
        assert zoo_main(["predict", str(tmp_path / "noise.png"), "--model", "resnet20", *tta]) == 0, tta
    capsys.readouterr()
    os.mkfifo(tmp_path / "pipe")
    assert zoo_main(["predict", str(tmp_path / "pipe"), "--model", "resnet20"]) == 2
    assert f"PATH: {str(tmp_path / 'pipe')!r} is not a regular file or a folder" in capsys.readouterr().err


def test_a_replaced_head_loses_the_weights_class_names_everywhere() -> None:
    model = zoo.create_model("resnet20.c10", pretrained=True)
    assert len(zoo.data.label_names(model)) == 10
    model.reset_classifier(10)  # fresh, even with as many classes: its outputs are no longer airplane, ...
    assert "label_names" not in model.pretrained_cfg and zoo.data.label_names(model) == ()


def test_the_pt2_wrapper_keeps_a_dict_backbone_a_dict_of_fp32() -> None:
    backbone = zoo.create_model("resnet20", features_only=True, feature_cls="dict").eval()
    out = deploy._CastIO(backbone, torch.bfloat16)(torch.randn(2, 3, 32, 32))
    assert list(out) == ["0", "1", "2", "3"] and all(v.dtype == torch.float32 for v in out.values())
