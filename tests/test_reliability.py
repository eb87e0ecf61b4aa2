"""No run is ever lost, no flag goes unchecked, every failure is a named error."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from test_train import args_for, shapes  # noqa: F401  (the generated image folder fixture)

import zoo
from zoo import hub
from zoo.cli import COMMANDS
from zoo.cli import main as zoo_main
from zoo.io import atomic_path, folder_config, is_disk_full, save_safetensors, sha256_of, verify
from zoo.train.checkpoints import Checkpoints
from zoo.train.cli import main as train_main
from zoo.train.cli import parse
from zoo.train.engine import train

ROOT = Path(__file__).resolve().parent.parent

# --- every flag is checked before any work ----------------------------------------------------------------

BAD_TRAINING_FLAGS = [  # (arguments, what the error must say); the data folder is never read
    (["--lr", "0"], "--lr: expected a learning rate > 0, got 0.0"),
    (["--lr", "nan"], "--lr: expected a learning rate > 0, got nan"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--epochs", "2", "--warmup-epochs", "2"], "--warmup-epochs: expected epochs in [0, 2) (shorter than the run), got 2.0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs: expected epochs in [0, 30)"),
    (["--weight-decay=-1e-4"], "--weight-decay: expected a number >= 0, got -0.0001"),
    (["--momentum", "1"], "--momentum: expected a number in [0, 1), got 1.0"),
    (["--clip-grad", "-1"], "--clip-grad: expected a gradient norm >= 0 (0: off), got -1.0"),
    (["--ema-decay", "1.5"], "--ema-decay: expected a decay in [0, 1) (0: off), got 1.5"),
    (["--ema-decay", "1"], "--ema-decay: expected a decay in [0, 1) (0: off), got 1.0"),
    (["--label-smoothing", "1"], "--label-smoothing: expected a fraction in [0, 1), got 1.0"),
    (["--random-erasing", "1.2"], "--random-erasing: expected a probability in [0, 1), got 1.2"),
    (["--val-split", "1"], "--val-split: expected a fraction in (0, 1), got 1.0"),
    (["--val-split", "0"], "--val-split: expected a fraction in (0, 1), got 0.0"),
    (["--teacher", "resnet56.c10_kd3"], "--teacher: 'resnet56.c10_kd3' names no weights: unknown weights resnet56.c10_kd3"),
    (["--teacher", "resnet34_cifar"], "--teacher: 'resnet34_cifar' names no weights"),
    (["--teacher", "local-dir:/nowhere"], "--teacher: 'local-dir:/nowhere': no config.json in that folder"),
    (["--distill-weight", "1.5"], "--distill-weight: expected a weight in [0, 1], got 1.5"),
    (["--distill-temperature", "0"], "--distill-temperature: expected a temperature > 0, got 0.0"),
    (["--time-budget", "0"], "--time-budget: expected a positive number of minutes, got 0.0"),
    (["--time-budget", "-5"], "--time-budget: expected a positive number of minutes, got -5.0"),
    (["--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
    (["--crop-pad", "-1"], "--crop-pad: expected an integer >= 0, got -1"),
    (["--eval-every", "0"], "--eval-every: expected a positive integer, got 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints: expected a positive integer, got 0"),
    (["--in-chans", "0"], "--in-chans: expected a positive integer, got 0"),
    (["--in-chans", "1"], "--in-chans: the trainer's images are RGB: expected 3 (or leave it out), got 1"),
    (["--compile-mode", "fastest"], "--compile-mode: 'fastest' is not one of 'default', 'reduce-overhead'"),
    (["--image-size", "0"], "--image-size: expected a positive integer, got 0"),
    (["--drop-path-rate", "1"], "--drop-path-rate: expected a probability in [0, 1), got 1.0"),
    (["--drop-rate", "-0.1"], "--drop-rate: expected a probability in [0, 1), got -0.1"),
    (["--gamma", "0"], "--gamma: expected a factor in (0, 1], got 0.0"),
    (["--gamma", "0.5"], "--gamma: has no effect without --schedule multistep"),
    (["--optimizer", "adamw", "--schedule", "cosine", "--momentum", "0.8"],
     "--momentum: has no effect without --optimizer sgd (AdamW reads"),
    (["--optimizer", "adamw", "--no-nesterov"], "--nesterov: has no effect without --optimizer sgd"),
    (["--compile-mode", "max-autotune"], "--compile-mode: has no effect without --compile"),
    (["--teacher-tta", "flip"], "--teacher-tta: has no effect without --teacher"),
    (["--distill-weight", "0.5"], "--distill-weight: has no effect without --teacher"),
    (["--freeze-stages", "-2"], "--freeze-stages: expected -1 (none) or a stage count >= 0, got -2"),
    (["--freeze-stages", "9"], "--freeze-stages: expected -1 (none) to 3, the model's stages; got 9"),
    (["--schedule", "onecycle", "--milestones", "10"], "--milestones: the onecycle schedule ignores it (it is for multistep)"),
    (["--schedule", "onecycle", "--t-max", "5"], "--t-max: the onecycle schedule ignores it (it is for cosine)"),
    (["--schedule", "multistep", "--min-lr-factor", "0.1"], "--min-lr-factor: the multistep schedule ignores it (it is for cosine and linear)"),
    (["--schedule", "cosine", "--t-max", "0"], "--t-max: expected a positive integer, got 0"),
    (["--schedule", "multistep", "--milestones", "40"], "--milestones: expected epochs inside the run (0, 30), got 40.0"),
    (["--schedule", "linear", "--min-lr-factor", "2"], "--min-lr-factor: expected a fraction of the peak lr in [0, 1], got 2.0"),
    (["--resume", "--overwrite"], "--overwrite: replaces the run that --resume would continue; give one of them"),
    (["--model-kwargs", "zero_init_last"], "--model-kwargs: expected KEY=VALUE, got 'zero_init_last'"),
    (["--model-kwargs", "norm_layer=[x"], "--model-kwargs: 'norm_layer=[x': the value is not YAML"),
    (["--cutout", "-1"], "--cutout: expected an integer >= 0, got -1"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_TRAINING_FLAGS, ids=[" ".join(a) for a, _ in BAD_TRAINING_FLAGS])
def test_every_training_flag_is_checked_before_any_work(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = train_main(["--dataset", "imagefolder", "--root", str(tmp_path / "never-read"), "--output", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()  # nothing was written


OTHER_COMMANDS = [  # (a command line with one bad value, what the error must say): the other commands' flags
    (["count", "resnet20", "--input-size", "0"], "--input-size: expected a positive side in pixels, got 0"),
    (["validate", "--model", "resnet20", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["validate", "--model", "resnet20", "--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
    (["validate", "--model", "resnet20", "--val-split", "1.5"], "--val-split: expected a fraction in (0, 1), got 1.5"),
    (["predict", ".", "--model", "resnet20", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["export", "resnet20", "--output", "x.onnx", "--image-size", "0"], "--image-size: expected a positive integer"),
    (["export", "resnet20", "--output", "x.onnx", "--portable"], "--portable: applies to --format pt2"),
    (
        ["export", "resnet20", "--output", "x.onnx", "--crop-pct", "2"],
        "--crop-pct: expected a fraction in (0, 1], got 2.0",
    ),
    (["export", "resnet20", "--output", "x.onnx", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["download", "resnet5O.tv_in1k"], "unknown model 'resnet5O'"),
    (["config", "resnet5O"], "unknown model 'resnet5O'"),
]


@pytest.mark.parametrize(("args", "message"), OTHER_COMMANDS, ids=[" ".join(a) for a, _ in OTHER_COMMANDS])
def test_the_other_commands_check_their_flags(args: list[str], message: str, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = zoo_main(args)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def _tokens() -> st.SearchStrategy[str]:
    flags = ["--lr", "--batch-size", "--workers", "--val-split", "--warmup-epochs", "--clip-grad", "--epochs", "--topk", "--format", "--output", "--model", "--dtype", "--runtime",
             "--checkpoint", "--pretrained", "--image-size", "--stages", "--input-size", "--tta", "--split", "--int8",
             "--cache-dir", "--static-batch", "--features-only", "-o", "--help-me"]  # fmt: skip
    odd = ["nan", "inf", "-1e9", "0.5", "", "resnet5O", "hf-hub:", "local-dir:/nowhere", "x.yaml", "json",
           "onnx", "fp16", "flip"]  # fmt: skip
    return st.one_of(
        st.sampled_from(flags), st.integers(-3, 3).map(str), st.sampled_from(odd), st.text("abc-_./:", max_size=6)
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(COMMANDS)), rest=st.lists(_tokens(), max_size=5))
def test_random_argument_lists_end_in_a_message_never_a_traceback(
    command: str, rest: list[str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # `zoo config` and the like may write here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        code = zoo_main([command, *rest])
    except SystemExit as e:  # argparse: usage errors (2) and --help (0)
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (command, rest, err)
    assert "Traceback" not in err


# --- runs are never lost ----------------------------------------------------------------------------------


def test_a_second_run_into_the_same_output_is_refused_unless_overwrite(
    shapes: Path,  # noqa: F811
    tmp_path: Path,
    capsys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    first = train(parse(args_for(shapes, out, "--epochs", "1")))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert train_main(args_for(shapes, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert f"--output: {str(out)!r} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    with caplog.at_level(logging.WARNING, logger="zoo.train"):
        second = train(parse(args_for(shapes, out, "--epochs", "1", "--seed", "1", "--overwrite")))
    assert f"--overwrite: replacing the run in {out}" in caplog.text
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert second["best"] is not None and first["best"] is not None
    assert json.loads((out / "args.json").read_text())["seed"] == 1


def test_short_runs_work(shapes: Path, tmp_path: Path) -> None:  # noqa: F811
    # one epoch, and one step: the whole training set (180 images) is smaller than one batch
    summary = train(parse(args_for(shapes, tmp_path / "one", "--epochs", "1", "--batch-size", "1000")))
    assert summary["epochs"] == 1 and summary["final"]["steps"] == 1
    # a validation split of one image per class
    summary = train(parse(args_for(shapes, tmp_path / "tiny-val", "--epochs", "1", "--val-split", "0.005")))
    assert json.loads((tmp_path / "tiny-val" / "summary.json").read_text())["best"]["epoch"] == 1
    for schedule in ("linear", "cosine", "multistep", "constant"):
        train(parse(args_for(shapes, tmp_path / schedule, "--epochs", "1", "--schedule", schedule)))


def test_torch_saves_full_disk_is_known_under_the_error_it_raises_instead(tmp_path: Path) -> None:
    class Full(io.RawIOBase):  # a file on a device with 1000 bytes left
        written = 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

    with pytest.raises(RuntimeError, match="unexpected pos") as info:  # the zip writer's error, raised while handling
        torch.save({"x": torch.randn(10_000)}, Full())
    assert is_disk_full(info.value) and not is_disk_full(RuntimeError("unexpected pos"))


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    checkpoints = Checkpoints(tmp_path)
    model = zoo.create_model("resnet20")
    config = folder_config("resnet20", model.cfg.to_dict(), model.pretrained_cfg)
    first = checkpoints.save(1, model.state_dict(), config, {"epoch": 1}, best=True)
    saved = {p.name: p.read_bytes() for p in first.iterdir()}
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a partial file, then the device is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(zoo.DiskFullError, match=r"no space left on the device to write .*state.pt.*nothing partial"):
        checkpoints.save(2, model.state_dict(), config, {"epoch": 2}, best=True)
    assert checkpoints.last == checkpoints.best == first.resolve()
    assert {p.name: p.read_bytes() for p in first.iterdir()} == saved
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0001"]  # no partial folder


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what safetensors' Rust writer raises: the OS error only in its message
        SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
        SafetensorError("I/O error: No space left on device (os error 28)"),  # safetensors 0.8's wording
    ],
    ids=["oserror", "safetensors", "safetensors-0.8"],
)
def test_a_full_disk_while_writing_a_file_keeps_the_previous_one(tmp_path: Path, monkeypatch, error) -> None:
    path = tmp_path / "weights.safetensors"
    save_safetensors(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise error

    monkeypatch.setattr("zoo.io.save_file", disk_full)
    with pytest.raises(zoo.DiskFullError, match="no space left"):
        save_safetensors(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_a_writer_that_made_a_folder_and_failed_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the writer broke"), atomic_path(tmp_path / "model.pt2") as tmp:
        tmp.unlink()
        tmp.mkdir()  # as AOTInductor's packager may
        (tmp / "part").write_text("half")
        raise RuntimeError("the writer broke")  # not hidden by an IsADirectoryError
    assert list(tmp_path.iterdir()) == []


def test_a_file_rewritten_behind_its_stamps_back_is_hashed_again(tmp_path: Path) -> None:
    path, stamps = tmp_path / "w.safetensors", tmp_path / "stamps"
    save_safetensors(path, {"w": torch.ones(64)})
    good = sha256_of(path)
    verify(path, good, stamps)  # hashed once, remembered
    before = path.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size, same inode
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back; the ctime moves anyway
    with pytest.raises(zoo.WeightsIntegrityError, match="is corrupted"):
        verify(path, good, stamps)


def test_a_full_disk_while_exporting_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    from zoo import deploy

    def disk_full(model, x, out, *args):
        Path(out).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deploy, "_export_onnx", disk_full)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous export")
    with pytest.raises(zoo.DiskFullError, match="no space left on the device"):
        zoo.export(zoo.create_model("resnet20"), path)
    assert path.read_bytes() == b"the previous export" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# --- weights IO: every bad input is a named error -----------------------------------------------------------


def test_a_corrupt_checkpoint_is_not_called_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    for seed in range(300):  # garbage fails torch's weights-only unpickler in several ways: IndexError, KeyError, ...
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(zoo.WeightsIntegrityError, match=r"x.pth is not a readable checkpoint"):
            zoo.create_model("resnet20", checkpoint_path=path)

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"obj": Checkpoints(tmp_path)}, unsafe)  # a readable pickle of an object: needs code to load
    with pytest.raises(zoo.UnsafeCheckpointError, match="needs code execution"):
        zoo.create_model("resnet20", checkpoint_path=unsafe)


def _with_header(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ([], "a JSON list, not an object"),
        ({"w": 1}, "tensor 'w' has no known dtype"),
        ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, "tensor 'w' has shape '2'"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "tensor 'w' has data_offsets [8, 0]"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "tensor 'w' of shape [3] and dtype F32 spans"),
        ({"__metadata__": [1], "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, "__metadata__ is not"),
    ],
)
def test_a_malformed_safetensors_header_fails_verification(header: object, problem: str, tmp_path: Path) -> None:
    path = _with_header(tmp_path / "model.safetensors", header, bytes(8))
    with pytest.raises(zoo.WeightsIntegrityError, match="malformed safetensors header") as caught:
        verify(path, None)
    assert problem in str(caught.value)
    with pytest.raises(zoo.WeightsIntegrityError, match="malformed safetensors header"):
        zoo.create_model("resnet20", checkpoint_path=path)


def test_a_cached_file_with_a_malformed_header_is_evicted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--bad" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--org--bad" / "refs").mkdir()
    (cache / "models--org--bad" / "refs" / "main").write_text("0" * 40)
    bad = _with_header(snapshot / "model.safetensors", {"w": {"dtype": "F32", "shape": [9], "data_offsets": [0, 8]}},
                       bytes(8))  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.WeightsNotFoundError, match=r"damaged, evicted"):
        hub.hub_file("org/bad", "model.safetensors", cache_dir=cache)
    assert not bad.exists()


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("hf-hub:", zoo.UnknownModelError, "'hf-hub:': expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION"),
        ("hf-hub:a/b/c", zoo.UnknownModelError, "expected hf-hub:ORG/NAME"),
        ("hf-hub:org/name@", zoo.UnknownModelError, "expected hf-hub:ORG/NAME"),
        ("hf-hub:org/..", zoo.ConfigError, "repo_id: 'org/..' is not a Hub repo id"),
    ],
)
def test_bad_hub_names_are_named_errors(name: str, error: type, message: str, monkeypatch) -> None:
    with pytest.raises(error) as caught:
        zoo.create_model(name, pretrained=True)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "config.json' is not readable JSON"), ("[1, 2]", "expected a JSON object, got a list"),
     ('{"pretrained_cfg": 3, "architecture": "resnet20"}', "pretrained_cfg: expected a JSON object")],
)  # fmt: skip
def test_a_broken_folder_config_names_the_file(content: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(zoo.ConfigError) as caught:
        zoo.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)


def test_an_unknown_overlay_key_names_the_allowed_keys() -> None:
    with pytest.raises(
        zoo.ConfigError, match=r"pretrained_cfg_overlay: unknown keys \['mena'\]; allowed: file, hf_hub_id"
    ):
        zoo.create_model("resnet20", pretrained=True, pretrained_cfg_overlay={"mena": (0.5,) * 3})


def test_convert_writes_nothing_when_the_logits_differ(tmp_path: Path, monkeypatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("convert", ROOT / "tools" / "convert.py")
    convert = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(convert)  # type: ignore[union-attr]
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    other = torchvision.models.resnet18().eval()  # other random weights: the logits differ
    monkeypatch.setattr(convert, "reference_model", lambda arch, state: ("resnet18", other))
    out = tmp_path / "r18.safetensors"
    assert convert.main([str(tmp_path / "r18.pth"), "--arch", "resnet18", "--out", str(out)]) == 1
    assert "MISMATCH: logits differ from resnet18" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pth"]


# --- data: stated policies, never silent -------------------------------------------------------------------


def _folder(root: Path, sizes: dict[str, list[int]], split: str = "train") -> Path:
    from PIL import Image

    for label, sides in sizes.items():
        (root / split / label).mkdir(parents=True)
        for i, side in enumerate(sides):
            Image.new("RGB", (side, side), (40 * i % 255, 80, 120)).save(root / split / label / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("filters", [True, False], ids=["tarfile-filter", "older-python"])
def test_an_archive_that_writes_outside_its_folder_is_refused(tmp_path: Path, monkeypatch, filters: bool) -> None:
    import io
    import tarfile

    from zoo.train.archive import unpack_once

    if not filters:  # as on Python before 3.10.12 / 3.11.4, which lack extraction filters
        monkeypatch.delattr(tarfile, "data_filter")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises((zoo.ConfigError, tarfile.TarError)):
        unpack_once(archive, tmp_path / "cache")
    assert not (tmp_path / "cache" / "outside.txt").exists() and not (tmp_path / "outside.txt").exists()


def test_in_memory_decoding_is_decided_from_every_class(tmp_path: Path) -> None:
    from zoo.train.data import load_dataset

    # the first class is small, a later one large: the first 16 files alone would say "decode into memory"
    root = _folder(tmp_path / "data", {"a": [32] * 20, "b": [32] * 20, "c": [200] * 20})
    data = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert not data.in_memory and data.train.images is None


def test_mixed_sizes_decoded_into_memory_are_resized_counted_and_logged(tmp_path: Path, caplog) -> None:
    from zoo.train.data import load_dataset

    root = _folder(tmp_path / "data", {"a": [32] * 10, "b": [32] * 8 + [40, 24]})
    with caplog.at_level(logging.WARNING, logger="zoo.train"):
        data = load_dataset("imagefolder", root, val_split=0.1, cache_dir=tmp_path / "cache", in_memory=True)
    assert tuple(data.train.images.shape[-2:]) == (32, 32)  # type: ignore[union-attr]
    resized = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
    assert resized and all("to 32x32 (the training images')" in m for m in resized)
    assert sum(int(m.split()[1]) for m in resized) == 2  # the two odd images, whichever split they fell in


def test_validation_images_decoded_into_memory_take_the_training_size(tmp_path: Path) -> None:
    from zoo.train.data import load_dataset

    root = _folder(tmp_path / "data", {"a": [32] * 6, "b": [32] * 6})
    _folder(root, {"a": [28] * 3, "b": [28] * 3}, split="val")  # a val/ folder whose images are smaller
    data = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache", in_memory=True)
    assert data.train.images.shape[-2:] == data.val.images.shape[-2:] == (32, 32)  # type: ignore[union-attr]


def test_an_archive_unpacked_by_another_process_first_is_used(tmp_path: Path, monkeypatch) -> None:
    import tarfile

    from zoo.train import archive as unpacking

    root = _folder(tmp_path / "data", {"a": [32] * 2})
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="images")
    real = os.replace

    def second(src, dst):  # the other job renames its copy into place a moment before this one does
        if not Path(dst).exists():
            shutil.copytree(src, dst)
        real(src, dst)

    monkeypatch.setattr(unpacking.os, "replace", second)
    target = unpacking.unpack_once(archive, tmp_path / "cache")
    assert (target / "images" / "train" / "a").is_dir()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # this process's copy is gone


def test_an_unpacked_archive_is_readable_by_others_and_a_killed_unpacks_copy_is_removed(tmp_path: Path) -> None:
    import stat
    import tarfile

    from zoo.io import usual_mode
    from zoo.train.archive import STALE_SECONDS, unpack_once

    root = _folder(tmp_path / "data", {"a": [32] * 2})
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="images")
    key = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_size}:{archive.stat().st_mtime_ns}".encode())
    datasets = tmp_path / "cache" / "datasets"
    stale, busy = datasets / f".images-{key.hexdigest()[:16]}.old", datasets / f".images-{key.hexdigest()[:16]}.busy"
    for left in (stale, busy):
        (left / "images").mkdir(parents=True)
    os.utime(stale, (time.time() - STALE_SECONDS - 60,) * 2)  # a killed unpack's, a day ago; busy: another's now
    target = unpack_once(archive, tmp_path / "cache")
    assert stat.S_IMODE(target.stat().st_mode) == usual_mode(folder=True)  # not mkdtemp's 0700: a shared cache
    assert not stale.exists() and busy.exists()


def test_distributed_evaluation_sees_each_image_once(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    from zoo.train.data import FileBatches, Split

    root = _folder(tmp_path / "data", {"a": [32] * 7})  # 7 images over 2 ranks: shares of 4 and 3
    files = sorted(str(p) for p in (root / "train" / "a").iterdir())
    split = Split(torch.arange(len(files)), files=files)  # each image's label: its index
    seen = []
    for rank in (0, 1):
        batches = FileBatches(split, batch_size=3, train=False, workers=0, rank=rank, world=2,
                              transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))  # fmt: skip
        batches.set_epoch(1)
        seen += [i for _, y in batches for i in y.tolist()]
    assert sorted(seen) == list(range(7))


def test_skipped_images_are_counted_per_pass(tmp_path: Path) -> None:
    from zoo.train.data import FileBatches, Split

    root = _folder(tmp_path / "data", {"a": [32] * 6})
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    files = sorted(str(p) for p in (root / "train" / "a").iterdir())
    split = Split(torch.zeros(len(files), dtype=torch.int64), files=files)
    from torchvision.transforms import v2

    batches = FileBatches(split, batch_size=7, train=False, workers=0,
                          transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))  # fmt: skip
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        assert sum(len(y) for _, y in batches) == 6
        assert batches.skipped == 1  # the same file met again, not a second unreadable image


def test_training_batches_stay_full_when_files_are_unreadable(tmp_path: Path) -> None:
    """A training batch of unreadable files must still be a step, or under DDP the other processes wait forever."""
    from torchvision.transforms import v2

    from zoo.train.data import FileBatches, Split

    root = _folder(tmp_path / "data", {"a": [32] * 6})
    for name in ("x1.png", "x2.png", "x3.png"):  # a third of the files: a batch of three may hold only these
        (root / "train" / "a" / name).write_bytes(b"not an image")
    files = sorted(str(p) for p in (root / "train" / "a").iterdir())
    split = Split(torch.zeros(len(files), dtype=torch.int64), files=files)
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    batches = FileBatches(split, batch_size=3, train=True, workers=0, transform=to_tensor)
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        sizes = [len(y) for _, y in batches]
        assert sizes == [3, 3, 3] == [3] * len(batches)
        assert batches.skipped == 3  # each unreadable file counted once a pass, its place taken by a readable one
    broken = Split(torch.zeros(3, dtype=torch.int64), files=files[-3:])
    with pytest.raises(Exception, match="no readable image among its 3 training files"):
        next(iter(FileBatches(broken, batch_size=3, train=True, workers=0, transform=to_tensor)))


def test_tied_and_viewed_tensors_are_saved_apart(tmp_path: Path) -> None:
    """safetensors refuses tensors that share memory; save_safetensors copies them apart, values kept."""
    from safetensors.torch import load_file

    from zoo.io import save_safetensors

    t = torch.randn(4, 4)
    tensors = {"a": t, "tied": t, "rows": t[1:], "transposed": t.t()}
    save_safetensors(tmp_path / "x.safetensors", tensors)
    loaded = load_file(tmp_path / "x.safetensors")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())
