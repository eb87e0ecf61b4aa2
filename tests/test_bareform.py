"""bareform/resnet's checkpoints in the zoo: every depth, compiled or not, with its outputs and its normalization.

Its networks are rebuilt here from its published structure (nn/resnet.py, nn/blocks.py): a 3x3 stem named
``conv``/``bn``, stages ``layer1..4`` of basic or bottleneck blocks with ``shortcut`` projections, a 4x4 average
pool and ``fc``. Its trainer saves ``torch.save(model.state_dict())``, with ``_orig_mod.`` keys under
``--compile``, and normalizes with mean = std = 0.5 (``--transform``) or not at all.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

import zoo
from zoo.cli import main as zoo_main
from zoo.train.cli import validate_main

ROOT = Path(__file__).resolve().parent.parent


class Block(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        self.expansion = 4 if bottleneck else 1
        cout = planes * self.expansion
        if bottleneck:
            convs = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)]
        else:
            convs = [(cin, planes, 3, stride), (planes, planes, 3, 1)]
        for i, (a, b, k, s) in enumerate(convs, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(a, b, k, s, padding=k // 2, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(b))
        self.n = len(convs)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.n + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            out = torch.relu(out) if i < self.n else out
        return torch.relu(out + self.shortcut(x))


class BareformResNet(nn.Module):
    DEPTHS: ClassVar[dict[int, tuple[tuple[int, ...], bool]]] = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
              101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}  # fmt: skip

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        blocks, bottleneck = self.DEPTHS[depth]
        self.conv = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True), start=1):
            layers = []
            for j in range(n):
                layers.append(Block(cin, planes, 2 if i > 1 and j == 0 else 1, bottleneck))
                cin = planes * layers[-1].expansion
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(nn.functional.avg_pool2d(x, 4).flatten(1))


def trained_like(depth: int) -> BareformResNet:
    """Random weights and batch-norm statistics: every layer shows in the outputs."""
    torch.manual_seed(depth)
    model = BareformResNet(depth)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


# every depth plain; the _orig_mod. prefix of --compile is the same at every depth: a basic and a bottleneck net
CASES = [(depth, False) for depth in BareformResNet.DEPTHS] + [(18, True), (50, True)]


@pytest.mark.parametrize(("depth", "compiled"), CASES, ids=[f"{d}{'-compiled' if c else ''}" for d, c in CASES])
def test_a_checkpoint_of_any_depth_loads_with_its_outputs(depth: int, compiled: bool, tmp_path: Path) -> None:
    theirs = trained_like(depth)
    # what `--compile` saves: torch.compile's wrapper keys every tensor with _orig_mod. (compiled lazily: no work)
    state = (torch.compile(theirs) if compiled else theirs).state_dict()
    assert all(k.startswith("_orig_mod.") for k in state) is compiled
    path = tmp_path / f"best_cifar10_ResNet{depth}.pth"
    torch.save(state, path)
    ours = zoo.create_model(f"resnet{depth}_cifar", checkpoint_path=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_convert_brings_the_stem_and_shortcuts_over(tmp_path: Path) -> None:
    import subprocess

    torch.save(trained_like(18).state_dict(), tmp_path / "best_cifar10_ResNet18.pth")
    done = subprocess.run([sys.executable, "tools/convert.py", str(tmp_path / "best_cifar10_ResNet18.pth"), "--arch",
                           "resnet18_cifar", "--out", str(tmp_path / "r18.safetensors")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "renamed from CIFAR repository's layout" in done.stdout
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = zoo.create_model("resnet18_cifar", checkpoint_path=tmp_path / "r18.safetensors").eval()(x)
        torch.testing.assert_close(got, trained_like(18)(x), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/*.png: 12 random 32x32 images for each of the 10 CIFAR classes."""
    root = tmp_path_factory.mktemp("bareform-images")
    rng = random.Random(0)
    for c in zoo.weights.CIFAR10_CLASSES:
        (root / "train" / c).mkdir(parents=True)
        for i in range(12):
            pixels = bytes(rng.randrange(256) for _ in range(32 * 32 * 3))
            Image.frombytes("RGB", (32, 32), pixels).save(root / "train" / c / f"{i}.png")
    return root


def bareform_top1(model: nn.Module, files: list[Path], labels: list[int], mean: float, std: float) -> float:
    """Its own pipeline: ToTensor, then Normalize((mean,) * 3, (std,) * 3)."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,) * 3, (std,) * 3)])
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        return 100 * (model(x).argmax(1) == torch.tensor(labels)).float().mean().item()


@pytest.mark.parametrize(("mean", "std"), [(0.5, 0.5), (0.0, 1.0)], ids=["--transform", "none"])
def test_validate_and_predict_score_it_with_its_own_normalization(
    mean: float, std: float, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = trained_like(18)
    checkpoint = tmp_path / "best_cifar10_ResNet18.pth"
    torch.save(model.state_dict(), checkpoint)
    flags = ["--mean", *[str(mean)] * 3, "--std", *[str(std)] * 3]
    report = tmp_path / "val.json"
    common = ["--model", "resnet18_cifar", "--checkpoint", str(checkpoint), "--dataset", "imagefolder", "--root",
              str(images), "--val-split", "0.5", "--cache-dir", str(tmp_path / "cache"), "--precision", "fp32"]  # fmt: skip
    assert validate_main([*common, *flags, "--output", str(report)]) == 0
    result = json.loads(report.read_text())
    from zoo.train.data import load_dataset

    val = load_dataset("imagefolder", images, val_split=0.5, split_seed=0, in_memory=False,
                       cache_dir=tmp_path / "cache2").val  # fmt: skip
    files = [Path(f) for f in val.files]
    assert result["top1"] == pytest.approx(bareform_top1(model, files, val.labels.tolist(), mean, std), abs=1e-3)
    assert (result["mean"], result["std"], result["preprocessing"]) == ([mean] * 3, [std] * 3, "assumed")
    err = capsys.readouterr().err
    assert (
        "carries no preprocessing: assumed 32 px, bilinear, crop 1, mean (" in err
        and "from the flags: mean, std" in err
    )
    assert validate_main([*common, "--output", str(tmp_path / "plain.json")]) == 0  # no flags: said, on stderr
    assert "assumed 32 px, bilinear, crop 1, mean (0.4914, 0.4822, 0.4465)" in capsys.readouterr().err

    picks = files[:6]
    assert zoo_main(["predict", *map(str, picks), "--model", "resnet18_cifar", "--checkpoint", str(checkpoint),
                     "--format", "json", "--topk", "1", "--precision", "fp32", *flags]) == 0  # fmt: skip
    out = capsys.readouterr()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,) * 3, (std,) * 3)])
    with torch.no_grad():
        probs = model(torch.stack([tf(Image.open(f).convert("RGB")) for f in picks])).softmax(1)
    got = [json.loads(line)["topk"][0] for line in out.out.splitlines()]
    assert [g["index"] for g in got] == probs.argmax(1).tolist()
    assert all(abs(g["score"] - p) < 1e-5 for g, p in zip(got, probs.max(1).values.tolist(), strict=True))
    assert "carries no preprocessing" in out.err
    assert "names no classes: labelled as resnet18_cifar's published weights label theirs" not in out.err  # none


def test_export_records_the_normalization_given(tmp_path: Path) -> None:
    import onnx

    torch.save(trained_like(18).state_dict(), tmp_path / "r18.pth")
    args = ["export", "resnet18_cifar", "--checkpoint", str(tmp_path / "r18.pth"), "--output", str(tmp_path / "r18.onnx"),
            "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--image-size", "32"]  # fmt: skip
    assert zoo_main(args) == 0  # checked against the eager model, which holds the checkpoint's weights
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "r18.onnx")).metadata_props}
    assert json.loads(meta["mean"]) == json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert meta["weights"] == str(tmp_path / "r18.pth") and json.loads(meta["input_size"]) == [3, 32, 32]
    with pytest.raises(zoo.ConfigError, match=r"--mean: expected 3 values, one per input channel, got 2"):
        zoo.data.preprocessing_overrides(3, mean=(0.5, 0.5))
