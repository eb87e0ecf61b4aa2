"""The installed package is the product: the wheel carries the zoo's own weights, pinned by sha256, and every
figure about them agrees with its artifact."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image, JpegImagePlugin

import zoo
from zoo import hub
from zoo.io import sha256_of
from zoo.registry import get_weights

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = sorted(t for t in zoo.list_pretrained() if get_weights(t)[1].bundled)
CIFAR_JPEG = ROOT.parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"

# Run in the installed copy: every bundled tag loads offline, from another folder, with an empty Hub cache.
LOAD_ALL = """
import json, sys, zoo
from zoo.registry import get_weights
loaded = {}
for tag in zoo.list_pretrained():
    if get_weights(tag)[1].bundled:
        model = zoo.create_model(tag, pretrained=True)
        loaded[tag] = model.pretrained_cfg["sha256"]
print(json.dumps({"file": zoo.__file__, "version": zoo.__version__, "loaded": loaded}))
"""


def test_the_openvino_extra_brings_what_its_export_check_runs() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # predict --runtime openvino exports ONNX and checks the file in ONNX Runtime before OpenVINO runs it
    assert "resnet-zoo[onnx]" in extras["openvino"] and any(r.startswith("onnxruntime") for r in extras["onnx"])


@pytest.mark.slow
def test_the_wheel_carries_every_bundled_tag_and_loads_it_offline_anywhere(tmp_path: Path) -> None:
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    # sdist, then the wheel built from it: what `make dist` does, without network (no build isolation)
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = dist.glob("resnet_zoo-*.whl")
    assert wheel.stat().st_size < 100 * 2**20  # the README states the size; the issue caps it at 100 MB
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for tag in BUNDLED:  # the Hub folder layout per tag; curves and CSVs stay in the repository
        files = sorted(p.name for p in (site / "zoo" / "_weights" / tag).iterdir())
        assert files == ["README.md", "config.json", "model.safetensors", "results.json"], (tag, files)

    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "HF_"))}
    env.update(PYTHONPATH=str(site), HF_HOME=str(tmp_path / "empty-hf"), ZOO_CACHE=str(tmp_path / "zoo-cache"),
               HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", LOAD_ALL], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert Path(report["file"]).is_relative_to(site)  # the installed copy, not the checkout
    assert report["version"] == zoo.__version__
    assert report["loaded"] == {t: get_weights(t)[1].sha256 for t in BUNDLED}
    version = subprocess.run([str(site / "bin" / "zoo"), "--version"], cwd=elsewhere, env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert version.stdout.strip() == f"resnet-zoo {zoo.__version__}", version.stderr


def test_every_bundled_tag_pins_its_file() -> None:
    assert len(BUNDLED) >= 11
    for tag in BUNDLED:
        pinned = get_weights(tag)[1].sha256
        assert pinned and sha256_of(hub.bundled_dir() / tag / "model.safetensors") == pinned, tag


def test_a_flipped_byte_in_bundled_weights_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = "resnet20.c10"
    copy = tmp_path / "weights" / tag
    shutil.copytree(hub.bundled_dir() / tag, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-100] ^= 0x01  # inside a tensor: the header and size still look right
    (copy / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(copy.parent))
    expected = get_weights(tag)[1].sha256
    actual = sha256_of(copy / "model.safetensors")
    with pytest.raises(zoo.WeightsIntegrityError) as caught:
        zoo.create_model(tag, pretrained=True)
    message = str(caught.value)
    assert str((copy / "model.safetensors").resolve()) in message and expected in message and actual in message


def _card_first_row(card: str) -> tuple[float, float]:
    table = card.split("## Results\n\n", 1)[1]
    row = table.splitlines()[2]  # header, rule, then the run's own validation row
    top1, top5 = row.strip("|").split("|")[2:4]
    return float(top1), float(top5)


@pytest.mark.parametrize("tag", BUNDLED)
def test_a_bundled_folder_agrees_with_the_registry_on_its_scores(tag: str) -> None:
    """config.json, results.json, the model card and the registry name the same top-1/top-5: the folder's own."""
    folder = hub.bundled_dir() / tag
    record = get_weights(tag)[1]
    config = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    results = json.loads((folder / "results.json").read_text())
    card = _card_first_row((folder / "README.md").read_text())
    assert results["name"] == tag and config["tag"] == tag.split(".")[1] and config["hf_hub_id"] == record.hf_hub_id
    for top1, top5 in ((config["top1"], config["top5"]), (results["results"][0]["top1"], results["results"][0]["top5"]),
                       card):  # fmt: skip
        assert (top1, top5) == (pytest.approx(record.top1, abs=0.005), pytest.approx(record.top5, abs=0.005))


@pytest.mark.parametrize("tag", BUNDLED)
def test_int8_accuracy_quoted_for_a_tag_is_stored_in_its_results(tag: str) -> None:
    """Each `A% -> B%` int8 figure in the READMEs is the fp32 and int8 rows of that tag's results.json."""
    rows = json.loads((hub.bundled_dir() / tag / "results.json").read_text())["results"]
    plain = [r for r in rows if r["split"] == "validation, `zoo validate` fp32"]
    int8 = [r for r in rows if r["split"] == "validation, `zoo validate` int8"]
    assert len(plain) == len(int8) == 1, f"{tag}: run `zoo validate --model {tag} ... --int8` and add it"
    quoted = f"{tag} {plain[0]['top1']:.2f}% -> {int8[0]['top1']:.2f}%"
    text = re.sub(r"\s+", " ", (ROOT / "benchmarks" / "README.md").read_text())
    assert quoted in text, f"benchmarks/README.md should quote {quoted!r}"


def test_the_readme_int8_range_is_the_stored_one() -> None:
    changes = []
    for tag in BUNDLED:
        rows = {
            r["split"]: r["top1"] for r in json.loads((hub.bundled_dir() / tag / "results.json").read_text())["results"]
        }
        changes.append(rows["validation, `zoo validate` int8"] - rows["validation, `zoo validate` fp32"])
    claim = f"{min(changes):+.2f} to {max(changes):+.2f} points"
    assert claim in re.sub(r"\s+", " ", (ROOT / "README.md").read_text()), claim


IJG_LUMINANCE = (  # the JPEG standard's example luminance table (Annex K), quality 50, in natural order
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def ijg_table(quality: int) -> list[int]:
    """libjpeg's luminance table at ``quality`` (jcparam.c: jpeg_quality_scaling)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((q * scale + 50) // 100, 1), 255) for q in IJG_LUMINANCE]


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason="needs ../shared/data/cifar10-train-jpeg.tar.gz")
def test_the_training_jpegs_are_ijg_quality_75_with_420_chroma() -> None:
    """The README says the training files are JPEG at IJG quality 75 with 4:2:0 chroma: read it off them."""
    seen: dict[str, tuple[int, int]] = {}
    with tarfile.open(CIFAR_JPEG) as tar:
        for member in tar:
            label = Path(member.name).parent.name
            if not member.isfile() or label in seen:
                continue
            with Image.open(tar.extractfile(member)) as image:  # type: ignore[arg-type]
                table = list(image.quantization[0])  # Pillow gives the table in natural order
                quality = next((q for q in range(1, 101) if ijg_table(q) == table), -1)
                seen[label] = (quality, JpegImagePlugin.get_sampling(image))
    assert len(seen) == 10
    assert set(seen.values()) == {(75, 2)}, seen  # get_sampling 2 = 4:2:0
