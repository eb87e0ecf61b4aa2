"""The parts of a fast training recipe: the resnet18-fast preset, cutout on whole batches."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import zoo
from zoo.train.augment import Augment
from zoo.train.cli import parse
from zoo.train.data import Split, TensorBatches
from zoo.train.recipe import RECIPES


def test_the_resnet18_fast_preset_is_airbench_s_recipe() -> None:
    config = parse(["--recipe", "resnet18-fast"])
    assert (config.model, config.epochs, config.batch_size, config.lr, config.momentum, config.nesterov) == (
        "resnet18_cifar", 26, 500, 0.2, 0.9, True,
    )  # fmt: skip
    assert (config.weight_decay, config.decay_norm_and_bias, config.label_smoothing) == (5e-4, True, 0.0)
    assert (config.schedule, config.warmup_epochs) == ("triangular", pytest.approx(0.2 * 26))  # peak at 20%
    assert (config.crop_pad, config.flip, config.cutout, config.channels_last) == (4, True, 12, True)
    assert config.recipe == "resnet18-fast" and config.to_dict()["recipe"] == "resnet18-fast"  # in args.json
    assert parse([]).recipe is None and parse([]).model == "resnet20"  # no preset: the flags' own defaults


def test_an_unknown_recipe_names_the_known_ones(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse(["--recipe", "resnet18-slow"])
    assert "argument --recipe: 'resnet18-slow' is not one of resnet18-fast" in capsys.readouterr().err


def test_a_flag_overrides_its_preset_value_and_is_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zoo.train"):
        config = parse(["--batch-size", "256", "--recipe", "resnet18-fast", "--lr", "0.2", "--no-channels-last"])
    # given before or after --recipe, even equal to the flag's own default (256): the user's value wins
    assert (config.batch_size, config.lr, config.channels_last, config.epochs) == (256, 0.2, False, 26)
    assert "--recipe resnet18-fast, overridden: --batch-size 256 (the recipe's 500)" in caplog.text
    assert "--channels-last False (the recipe's True)" in caplog.text and "--lr" not in caplog.text  # equal: silent
    # a switch the preset turns on can be turned off again
    assert parse(["--recipe", "resnet18-fast", "--no-decay-norm-and-bias"]).decay_norm_and_bias is False
    for preset in RECIPES.values():
        assert set(preset) <= set(zoo.train.config.TrainConfig.__dataclass_fields__)


def test_cutout_cuts_one_mean_coloured_square_per_image_inside_it() -> None:
    n, side = 64, 12
    images = torch.full((n, 3, 32, 32), 7, dtype=torch.uint8)
    split = Split(torch.zeros(n, dtype=torch.int64), images)
    mean = (0.5, 0.25, 0.75)  # the fill is the mean colour, so 0 once normalized
    batches = TensorBatches(split, batch_size=n, train=True, mean=mean, std=(1.0,) * 3,
                            augment=Augment(crop_pad=0, flip=False, cutout=side))  # fmt: skip
    batches.set_epoch(1)
    x, _ = next(iter(batches))
    cut = x.abs().amax(1) < 1.0 / 255  # pixels set to the mean, rounded to uint8: 0 once normalized, give or take
    assert (cut.flatten(1).sum(1) == side * side).all()  # exactly one whole square each
    rows, cols = cut.any(2), cut.any(1)
    assert (rows.sum(1) == side).all() and (cols.sum(1) == side).all()  # a square, not scattered pixels
    tops = rows.float().argmax(1)
    assert len(set(tops.tolist())) > 5  # placed at random per image
    again, _ = next(iter(batches))
    assert torch.equal(x, again)  # seeded by (seed, epoch)
    with pytest.raises(zoo.ConfigError, match=r"--cutout: a 40-pixel square does not fit 32-pixel images"):
        TensorBatches(split, batch_size=n, train=True, mean=mean, std=(1.0,) * 3, augment=Augment(cutout=40))


def test_cutout_is_refused_for_streamed_images(tmp_path: Path) -> None:
    from PIL import Image

    from zoo.train.engine import train

    for label in ("a", "b"):
        (tmp_path / "data" / "train" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (80, 80), (i * 40, 0, 0)).save(tmp_path / "data" / "train" / label / f"{i}.png")
    args = ["--dataset", "imagefolder", "--root", str(tmp_path / "data"), "--cutout", "8", "--val-split", "0.5",
            "--batch-size", "2", "--output", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    with pytest.raises(zoo.ConfigError, match=r"--cutout: squares are cut from in-memory images \(up to 64 px\)"):
        train(parse(args))
    preset = [a for a in args if a not in ("--cutout", "8")] + ["--recipe", "resnet18-fast", "--overwrite"]
    with pytest.raises(zoo.ConfigError, match=r"\(--recipe resnet18-fast sets --cutout 12; give --cutout 0\)"):
        train(parse(preset))


def test_the_benchmark_times_the_loader_and_the_step_zoo_train_runs(tmp_path: Path, monkeypatch) -> None:
    import json
    import sys

    from zoo import benchmark
    from zoo.train import recipe

    made = []
    real = recipe.make_optimizer
    monkeypatch.setattr(recipe, "make_optimizer", lambda *a, **k: made.append((a[0], k)) or real(*a, **k))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import throughput

    args = ["--models", "resnet20", "--mode", "train", "loader", "--batch-sizes", "8", "--iters", "2", "--repeats",
            "1", "--warmup", "1", "--no-ceiling", "--out", str(tmp_path)]  # fmt: skip
    assert throughput.main(args) == 0
    rows = {r["mode"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    fast = zoo.hardware.fast_precision(torch.device("cpu"))
    assert rows["train"]["config"] == f"zoo:{fast}/NHWC/eager"  # zoo train's precision "auto" and layout
    defaults = zoo.train.config.TrainConfig()
    assert made == [("sgd", {"lr": defaults.lr, "weight_decay": defaults.weight_decay, "momentum": defaults.momentum,
                             "nesterov": defaults.nesterov, "decay_norm_and_bias": defaults.decay_norm_and_bias})]  # fmt: skip
    assert rows["loader"]["config"] == "zoo:loader/NHWC" and rows["loader"]["img_per_s"] > 0
    assert rows["loader"]["gflops_achieved"] == 0.0 and "pct_of_conv_ceiling" not in rows["loader"]
    assert benchmark.Setting("resnet20", "loader", 8, 32, "fp32", True, False, False, "zoo").precision == "fp32"
