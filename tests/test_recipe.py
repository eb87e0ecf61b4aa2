"""The parts of a fast training recipe: the resnet18-fast preset, cutout on whole batches."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import zoo
from zoo.train.cli import parse
from zoo.train.data import Augment, Split, TensorBatches
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
