"""The training loop: a run set up from its TrainConfig, epochs, the time budget, and the summary.

Where a process sits is ``processes.py``; checkpoints and resume ``checkpoints.py``; metrics and curves
``metrics.py``; evaluation ``evaluation.py``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .. import create_model
from ..data import pool_size, resolve_data_config
from ..errors import ConfigError
from ..factory import build, resolve
from ..features import stem_and_stages
from ..hardware import device_label, explain, resolve_precision
from ..io import atomic_write, folder_config, save_json
from ..layers import SyncBatchNorm2d
from ..optimize import compile_problem
from ..weights import DATA_CONFIG_KEYS
from .augment import Augment
from .checkpoints import Checkpoints, Resumed, check_output, claim, replace_run, resume, training_state
from .config import TrainConfig
from .data import Dataset, FileBatches, Split, TensorBatches, _seed, load_dataset
from .distill import Distillation, load_teacher
from .evaluation import evaluate
from .metrics import Metrics
from .processes import Processes, launch_command
from .recipe import ModelEma, make_optimizer, make_schedule
from .step import Budget, Step, train_one_epoch

log = logging.getLogger("zoo.train")


# --- the run --------------------------------------------------------------------------------------


def _normalization(args: TrainConfig, model: nn.Module, data: Dataset) -> tuple[tuple, tuple]:
    if args.norm == "dataset":
        return data.mean_std()
    if args.norm == "half":  # the minimal CIFAR trainer's --transform: Normalize((0.5,)*3, (0.5,)*3)
        return (0.5,) * 3, (0.5,) * 3
    cfg = resolve_data_config(model)
    return cfg["mean"], cfg["std"]


def _batches(
    args: TrainConfig, split: Split, train: bool, model: nn.Module, mean, std, procs, batch_size: int | None = None
) -> Any:
    common = dict(
        batch_size=batch_size or args.batch_size, train=train, seed=args.seed, rank=procs.rank, world=procs.world
    )
    if split.images is not None:
        augment = Augment(
            crop_pad=args.crop_pad, flip=args.flip, cutout=args.cutout, trivial_augment=args.trivial_augment,
            random_erasing=args.random_erasing,
        )  # fmt: skip
        return TensorBatches(
            split, mean=mean, std=std, augment=augment, channels_last=args.channels_last,
            pin_memory=procs.device.type == "cuda", **common,
        )  # fmt: skip
    from torchvision.transforms import v2

    if train and args.cutout:
        preset = f" (--recipe {args.recipe} sets --cutout {args.cutout}; give --cutout 0)" if args.recipe else ""
        raise ConfigError("--cutout", "squares are cut from in-memory images (up to 64 px); these stream from files: "
                          f"use --random-erasing{preset}")  # fmt: skip
    config = resolve_data_config(model, mean=tuple(mean), std=tuple(std))  # --image-size: set by _build_model
    size = config["input_size"][-2:]
    interpolation = v2.InterpolationMode(config["interpolation"])
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if train:
        ops = [v2.RandomResizedCrop(size, interpolation=interpolation, antialias=True)]
        ops += [v2.RandomHorizontalFlip()] if args.flip else []
        ops += [v2.TrivialAugmentWide(interpolation=interpolation)] if args.trivial_augment else []
        ops += to_tensor + ([v2.RandomErasing(args.random_erasing)] if args.random_erasing else [])
        transform = v2.Compose(ops)
    else:
        from ..data import create_transform

        transform = create_transform(config)
    return FileBatches(
        split, transform=transform, workers=args.workers, pin_memory=args.pin_memory,
        channels_last=args.channels_last, **common,
    )  # fmt: skip


def _model_options(args: TrainConfig, num_classes: int) -> dict[str, Any]:
    options: dict[str, Any] = {**args.model_kwargs, "num_classes": num_classes}
    for name in ("drop_rate", "drop_path_rate", "in_chans"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def _distillation(args: TrainConfig, classes: list[str], mean, std, procs: Processes) -> Distillation:
    teachers = [load_teacher(spec, classes).to(procs.device) for spec in args.teacher]
    if args.channels_last:
        teachers = [t.to(memory_format=torch.channels_last) for t in teachers]
    return Distillation(
        teachers, weight=args.distill_weight, temperature=args.distill_temperature, mean=mean, std=std,
        tta=args.teacher_tta,
    )  # fmt: skip


def train(args: TrainConfig) -> dict[str, Any]:
    """Run training as ``args`` says; returns the summary (also written to ``output/summary.json``)."""
    procs = Processes.start(args.device)
    try:
        with claim(Path(args.output), procs.main):
            return _train(args, procs)
    finally:
        procs.stop()


def _check_before_work(args: TrainConfig, procs: Processes) -> TrainConfig:
    """What the machine and the model must allow, checked before any data is read; ``args`` with the precision
    resolved for this device ("auto": its fastest native one)."""
    precision = resolve_precision(args.precision, procs.device, flag="--precision")
    if procs.main:
        log.info("precision: %s", explain(args.precision, precision, procs.device))
    args = replace(args, precision=precision)
    problem = compile_problem(procs.device) if args.compile else None
    if problem:
        raise ConfigError("--compile", f"torch.compile is unavailable here: {problem}; train without it")
    with torch.device("meta"):  # the architecture's stage count
        stem_and_stages(create_model(args.model, **args.model_kwargs), args.freeze_stages)
    return args


def _claim_output(args: TrainConfig, procs: Processes, output: Path) -> Path | None:
    """Check the output folder (every rank, before any rank writes); the checkpoint to resume, if any."""
    resume_from = check_output(args, output)
    procs.barrier()
    return resume_from


def _start_output(args: TrainConfig, procs: Processes, output: Path) -> None:
    """Write the run's first files, once its data, model and teachers are ready: a run that cannot start
    leaves the folder (and a run --overwrite would replace) as it was."""
    if procs.main:
        if args.overwrite:
            replace_run(output)
        output.mkdir(parents=True, exist_ok=True)
        with atomic_write(output / "command.txt", "w") as f:
            f.write(launch_command() + "\n")
        save_json(output / "args.json", args.to_dict())
    procs.barrier()


def _load_data(args: TrainConfig, procs: Processes) -> Dataset:
    """The main process unpacks and decodes into the cache first, the others then read it."""
    load = partial(
        load_dataset, args.dataset, args.root, val_split=args.val_split, split_seed=args.split_seed,
        download=args.download, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        in_memory=args.in_memory,
    )  # fmt: skip
    data = load() if procs.main else None
    procs.barrier()
    return data or load()


def _build_model(
    args: TrainConfig, procs: Processes, data: Dataset
) -> tuple[nn.Module, list[str], Any, Any, dict[str, str]]:
    """The model on its device with frozen stages and sync BN as asked; its normalization; what its checkpoints
    name as their origin (architecture, and the weights it was fine-tuned from)."""
    source = resolve(args.model)
    model = build(source, args.pretrained, **_model_options(args, data.num_classes))
    frozen = stem_and_stages(model, args.freeze_stages)
    for name in frozen:
        getattr(model, name).requires_grad_(False)
    if args.sync_bn and procs.grouped:
        # nccl: torch's SyncBatchNorm (its reductions stay on the GPU); gloo: ours, which torch's refuses to run
        cuda = procs.device.type == "cuda"
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if cuda else SyncBatchNorm2d.convert(model)
    model.to(procs.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = _normalization(args, model, data)
    # The run's checkpoints describe their inputs, never the scores or tag of the weights it started from.
    # They name the bare architecture: fine-tuning resnet56.c10_kd or local-dir:RUN/best writes resnet56
    # (a Hub folder's name adds the new tag); a YAML config writes "resnet", rebuilt from zoo_config.
    origin = {"architecture": source.architecture}
    if args.pretrained and model.pretrained_cfg.get("weights"):
        origin["fine_tuned_from"] = model.pretrained_cfg["weights"]
    # ... and the inputs this run trained and validated on, which zoo validate and predict then use too: no test size
    # of the weights it started from, the images' own size when decoded into memory, else --image-size.
    data_config = {k: v for k, v in model.pretrained_cfg.items() if k in DATA_CONFIG_KEYS and not k.startswith("test_")}
    if data.train.images is not None:
        data_config.update(input_size=tuple(data.train.images.shape[1:]), crop_pct=1.0)
    elif args.image_size:
        data_config["input_size"] = (data_config["input_size"][0], args.image_size, args.image_size)
    if "input_size" in data_config and getattr(model, "feature_info", None):  # the map pooled at that size
        data_config["pool_size"] = pool_size(data_config["input_size"], model.feature_info[-1]["reduction"])
    model.pretrained_cfg = {**data_config, "mean": tuple(mean), "std": tuple(std), "label_names": data.classes}
    return model, frozen, mean, std, origin


def _train_batch_size(args: TrainConfig, procs: Processes, images: int) -> int:
    """--batch-size, or all the images of a process when they are fewer: one smaller batch per epoch."""
    batch_size = min(args.batch_size, images // procs.world)
    if batch_size < 1:
        raise ConfigError("--batch-size", f"{procs.world} processes share {images} training images")
    if batch_size < args.batch_size and procs.main:
        log.warning("--batch-size %d is more than the %d training images per process: batches of %d",
                    args.batch_size, images // procs.world, batch_size)  # fmt: skip
    return batch_size


def _build_step(args: TrainConfig, procs: Processes, model: nn.Module, frozen: list[str], total_steps: int,
                steps_per_epoch: int, distill: Distillation | None) -> Step:  # fmt: skip
    optimizer = make_optimizer(
        args.optimizer, model, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        nesterov=args.nesterov, decay_norm_and_bias=args.decay_norm_and_bias,
    )  # fmt: skip
    schedule = make_schedule(
        args.schedule, optimizer, total_steps=total_steps, warmup_steps=round(args.warmup_epochs * steps_per_epoch),
        momentum=args.momentum, milestones=[round(m * steps_per_epoch) for m in args.milestones], gamma=args.gamma,
        min_factor=args.min_lr_factor or 0.0, cosine_steps=args.t_max * steps_per_epoch if args.t_max else None,
    )  # fmt: skip
    return Step(
        model=model,
        raw=model,
        optimizer=optimizer,
        schedule=schedule,
        budget=Budget(total_steps, seconds=60 * args.time_budget if args.time_budget else math.inf),
        criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
        distill=distill,
        ema=ModelEma(model, args.ema_decay) if args.ema_decay else None,
        scaler=torch.amp.GradScaler("cuda") if args.precision == "fp16" else None,
        clip_grad=args.clip_grad,
        precision=args.precision,
        frozen=frozen,
    )


def _validate(step: Step, model: nn.Module, batches: Any, procs: Processes, precision: str) -> dict[str, float]:
    """The epoch's validation columns: the model's and, with an EMA, the EMA's."""
    for scored in (model, step.ema.module if step.ema is not None else None):
        if scored is not None:
            procs.average_buffers(scored)
    val = evaluate(model, batches, procs, precision)
    row = {"val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"]}
    if step.ema is not None:
        ema = evaluate(step.ema.module, batches, procs, precision)
        row.update(ema_val_loss=ema["loss"], ema_val_acc1=ema["acc1"], ema_val_acc5=ema["acc5"])
    return row


def _train(args: TrainConfig, procs: Processes) -> dict[str, Any]:
    output = Path(args.output)
    args = _check_before_work(args, procs)
    resume_from = _claim_output(args, procs, output)
    torch.manual_seed(args.seed)
    data = _load_data(args, procs)
    model, frozen, mean, std, origin = _build_model(args, procs, data)
    batch_size = _train_batch_size(args, procs, len(data.train))
    train_batches = _batches(args, data.train, True, model, mean, std, procs, batch_size)
    val_batches = _batches(args, data.val, False, model, mean, std, procs)
    steps_per_epoch = len(train_batches)
    distill = _distillation(args, data.classes, mean, std, procs) if args.teacher else None
    step = _build_step(args, procs, model, frozen, args.epochs * steps_per_epoch, steps_per_epoch, distill)
    layout = {"processes": procs.world, "training_images": len(data.train), "steps_per_epoch": steps_per_epoch}
    checkpoints = Checkpoints(output, keep=args.keep_checkpoints)
    resumed = Resumed(0, None, None)
    if resume_from is not None:
        resumed = resume(resume_from, step, layout, data.classes, checkpoints, procs.main)
    start_epoch, best = resumed.epoch, resumed.best
    _start_output(args, procs, output)
    if resume_from is not None and procs.main:
        log.info("resumed from %s (epoch %d)", resume_from, start_epoch)
    if procs.grouped:
        step.model = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights to the others
        if step.ema is not None and resume_from is None:  # so the EMA starts from those on every rank
            step.ema.module.load_state_dict(model.state_dict())
    if args.compile:
        step.model = torch.compile(step.model, mode=args.compile_mode)
    eval_model = step.ema.module if step.ema is not None else model
    metrics = Metrics(output, start_epoch) if procs.main else None
    # a resumed run's time budget counts the time it has run (from its metrics, for checkpoints that lack it)
    elapsed = resumed.elapsed_s
    if elapsed is None:
        elapsed = metrics.rows[-1]["elapsed_s"] if metrics and metrics.rows else 0.0
    run_start = time.perf_counter() - elapsed
    step.budget.start = run_start
    if procs.main:
        log.info(
            "training %s on %s: %d train / %d val images, %d classes, %d epochs of %d steps, %d process(es)",
            args.model, args.dataset, len(data.train), len(data.val), data.num_classes, args.epochs,
            steps_per_epoch, procs.world,
        )  # fmt: skip
        if args.time_budget:
            log.info("time budget: %.1f minutes (the schedule follows the clock; at most %d epochs)",
                     args.time_budget, args.epochs)  # fmt: skip

    epochs_run = start_epoch
    for epoch in range(start_epoch + 1, args.epochs + 1):
        if step.budget.done(step.schedule):  # a resumed run whose time budget was already spent
            break
        # Everything random in an epoch derives from (seed, epoch): resuming is exact.
        torch.manual_seed(_seed(args.seed, epoch, procs.rank))
        train_batches.set_epoch(epoch)
        stats = train_one_epoch(step, train_batches, procs, epoch, args.epochs)
        finished, epochs_run = time.perf_counter(), epoch
        row: dict[str, Any] = {"epoch": epoch, "steps": step.schedule.last_epoch,
                               "lr": step.optimizer.param_groups[0]["lr"], "train_loss": stats["loss"],
                               "train_acc": stats["acc"]}  # fmt: skip
        is_best = False
        evaluated = epoch % args.eval_every == 0 or epoch == args.epochs or stats["done"]
        if evaluated:
            row.update(_validate(step, model, val_batches, procs, args.precision))
            validated_s = time.perf_counter() - finished
            chosen = row["ema_val_acc1"] if step.ema is not None else row["val_acc1"]
            is_best = best is None or chosen > best["val_acc1"]
            if is_best:
                best = {"epoch": epoch, "val_acc1": chosen, "val_acc5": row.get("ema_val_acc5", row["val_acc5"])}
        row.update(img_per_s=stats["img_per_s"], epoch_s=stats["seconds"], elapsed_s=time.perf_counter() - run_start)
        if metrics is not None:  # the main process writes
            metrics.add(row)
            config = folder_config(
                model_config=getattr(eval_model, "cfg", None) and eval_model.cfg.to_dict(),
                pretrained_cfg=eval_model.pretrained_cfg, num_features=getattr(eval_model, "num_features", None),
                **origin,
            )  # fmt: skip
            state = training_state(step, epoch, best, args, layout, row["elapsed_s"])
            checkpoints.save(epoch, eval_model.state_dict(), config, state, is_best)
            log.info(
                "epoch %d/%d: train loss %.4f acc %.2f%% | %s | %.0f img/s | best %s",
                epoch, args.epochs, row["train_loss"], row["train_acc"],
                f"val loss {row['val_loss']:.4f} acc {row['val_acc1']:.2f}%" if "val_acc1" in row else "not evaluated",
                row["img_per_s"], f"{best['val_acc1']:.2f}% (epoch {best['epoch']})" if best else "-",
            )  # fmt: skip
        scored = len(data.val) + (len(data.test) if data.test is not None else 0)
        if evaluated:  # the final validation and checkpoint will take about as long, and the test split at that pace
            test_share = len(data.test) / len(data.val) if data.test is not None and len(data.val) else 0.0
            step.budget.reserve = time.perf_counter() - finished + validated_s * test_share
        elif not step.budget.reserve:  # none scored yet (--eval-every): about a third of a training step per image
            step.budget.reserve = stats["seconds"] / max(len(data.train), 1) / 3 * scored
        procs.barrier()
        if stats["done"]:
            if procs.main and epoch < args.epochs:
                log.info("the time budget is spent: stopped after %d epochs", epoch)
            break
    return _summary(args, procs, output, data, (train_batches, val_batches), epochs_run, best, metrics, checkpoints,
                    eval_model, (mean, std))  # fmt: skip


def _summary(args: TrainConfig, procs: Processes, output: Path, data: Dataset, batches: tuple[Any, Any],
             epochs_run: int, best: dict | None, metrics: Metrics | None, checkpoints: Checkpoints,
             eval_model: nn.Module, mean_std: tuple[Any, Any]) -> dict[str, Any]:  # fmt: skip
    """summary.json: epochs, best, last row, wall time, skipped images; the test split scored once, if any."""
    streamed = torch.tensor(sum(getattr(b, "skipped", 0) for b in batches))  # each rank met its own share's
    skipped = data.train.skipped + data.val.skipped + int(procs.sum(streamed))
    summary: dict[str, Any] = {"model": args.model, "dataset": args.dataset, "epochs": epochs_run, "best": best,
                               "skipped_images": skipped, "precision": args.precision,
                               "device": device_label(procs.device)}  # fmt: skip
    if args.time_budget:
        summary["time_budget_min"] = args.time_budget
    if metrics is not None and metrics.rows:
        summary.update(final=metrics.rows[-1], wall_time_s=metrics.rows[-1]["elapsed_s"])
    # rank 0 wrote the best checkpoint, so it decides (the others' view of --output may be another node's, or stale)
    kept = procs.broadcast(torch.tensor([int(procs.main and checkpoints.best is not None)]))
    if data.test is not None and best is not None and kept.item():
        # The test split is looked at once, with the weights the validation split chose, rank 0's on every rank
        if procs.main:
            eval_model.load_state_dict(load_file(checkpoints.best / "model.safetensors"))
        procs.broadcast_state(eval_model)
        test_batches = _batches(args, data.test, False, eval_model, *mean_std, procs)
        summary["test"] = evaluate(eval_model, test_batches, procs, args.precision)
    if procs.main:
        save_json(output / "summary.json", summary)
    return summary
