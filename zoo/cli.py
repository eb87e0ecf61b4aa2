"""The ``zoo`` command: ``list``, ``info``, ``download``, ``count``, ``train``, ``validate``, ``config``, ``export``,
``predict``.

Each subcommand is a function that adds its arguments to a parser and returns
the function that runs it. Argument parsing and table rendering live here (and in
``zoo/train/cli.py``, ``zoo/train/validate.py`` for the trainer), never in the
library modules the commands drive.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from . import __version__
from .counting import CONVENTION, FORMATS, Cost
from .errors import ConfigError, ZooError

Runner = Callable[[argparse.Namespace], int]

# subcommand -> ("module:function", one-line help); function(parser) -> runner
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("zoo.cli:list_command", "list registered models or weight tags (fnmatch patterns)"),
    "info": ("zoo.cli:info_command", "the weights of a model: tag, top-1, params, MACs, input size, license"),
    "download": ("zoo.cli:download_command", "prefetch weights into the Hub cache, for offline use later"),
    "count": ("zoo.cli:count_command", "parameters, MACs and FLOPs of models"),
    "train": ("zoo.train.cli:train_command", "train on CIFAR or an image folder (torchrun for many processes)"),
    "validate": ("zoo.train.cli:validate_command", "top-1/top-5 of a model on CIFAR or an image folder"),
    "config": ("zoo.cli:config_command", "write a model's YAML backbone config"),
    "export": ("zoo.cli:export_command", "export to ONNX or an AOTInductor package (.pt2), checked against eager"),
    "predict": ("zoo.cli:predict_command", "classify image files or folders, with the weights' label names"),
}


def list_command(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("patterns", nargs="*", default=["*"], help="fnmatch patterns, e.g. 'resnet*d'")
    parser.add_argument("--pretrained", action="store_true", help="list weight tags (arch.tag) instead")

    def run(args: argparse.Namespace) -> int:
        from .registry import list_models, list_pretrained

        names = list_pretrained(args.patterns) if args.pretrained else list_models(args.patterns)
        if not names:
            what = "weight tag" if args.pretrained else "model"
            raise ConfigError("patterns", f"no {what} matches {' '.join(args.patterns)} (`zoo list` shows them all)")
        print("\n".join(names))
        return 0

    return run


def info_command(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("names", nargs="+", help="architectures or patterns, e.g. resnet50 'resnext*'")

    def run(args: argparse.Namespace) -> int:
        from .registry import get_weights, list_pretrained

        rows = []
        for full in list_pretrained(args.names):
            _, w = get_weights(full)
            size = w.test_input_size or w.input_size
            rows.append([
                full,
                f"{w.top1:.2f}" if w.top1 is not None else "-",
                f"{w.top5:.2f}" if w.top5 is not None else "-",
                f"{w.num_params / 1e6:.2f}M" if w.num_params else "-",
                f"{w.gmacs:.2f}G" if w.gmacs else "-",
                f"{w.input_size[-1]}" + (f" / {size[-1]}" if size != w.input_size else ""),
                w.interpolation,
                w.license,
                ("bundled " if w.bundled else "") + w.hf_hub_id,
            ])  # fmt: skip
        if not rows:
            raise ZooError(f"no weights match {' '.join(args.names)}; see `zoo list --pretrained`")
        header = ["weights", "top-1", "top-5", "params", "MACs", "train / test size", "interp.", "license", "source"]
        print(format_table(header, rows))
        print("\ntop-1/top-5 as published and MACs (fused multiply-adds, incl. norms), both at the test size.")
        return 0

    return run


def download_command(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument(
        "names", nargs="+", help="weight tags, patterns, Hub repos: resnet50.tv2_in1k 'resnet*.tv_in1k' hf-hub:ORG/NAME"
    )
    parser.add_argument("--cache-dir", default=None, help="Hub cache (default: HF_HUB_CACHE or HF_HOME/hub)")

    def run(args: argparse.Namespace) -> int:
        from .factory import weights_file
        from .registry import get_weights, list_pretrained

        # a pattern names every tag it matches; a plain name is what pretrained=True loads (an arch: its default)
        names = [n for p in args.names for n in ((list_pretrained(p) or [p]) if set(p) & set("*?[") else [p])]
        for name in names:  # bundled tags are found in the package, hf-hub: repos with their config.json
            path = weights_file(name, cache_dir=args.cache_dir)
            print(f"{name if name.startswith(('hf-hub:', 'local-dir:')) else get_weights(name)[0]}: {path}")
        return 0

    return run


def add_preprocessing_arguments(parser: argparse.ArgumentParser, *, image_size: bool = True) -> None:
    """``--mean --std --interpolation --crop-pct --image-size``, as timm's validate.py and inference.py take them:
    each overrides that entry of the weights' data config."""
    from .data import INTERPOLATIONS

    group = parser.add_argument_group("preprocessing (default: the weights' own)")
    group.add_argument("--mean", type=float, nargs="+", default=None, metavar="M", help="per channel, e.g. 0.5 0.5 0.5")
    group.add_argument("--std", type=float, nargs="+", default=None, metavar="S", help="per channel, e.g. 0.5 0.5 0.5")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, default=None)
    group.add_argument("--crop-pct", type=float, default=None, help="center crop as a fraction of the resized image")
    if image_size:
        group.add_argument("--image-size", "--img-size", type=int, default=None, help="input side in pixels")


def preprocessing(args: argparse.Namespace, channels: int) -> dict:
    """The data-config overrides the preprocessing flags of ``args`` set (none given: an empty dict)."""
    from .data import preprocessing_overrides

    return preprocessing_overrides(
        channels, mean=args.mean, std=args.std, interpolation=args.interpolation, crop_pct=args.crop_pct,
        image_size=getattr(args, "image_size", None),
    )  # fmt: skip


def assumed_preprocessing(name: str, config: dict, overrides: dict) -> str:
    """The note for a checkpoint file, which carries no data config: what was assumed, and how to say otherwise."""
    from .data import describe_preprocessing

    given = f"; from the flags: {', '.join(sorted(overrides))}" if overrides else ""
    return (f"{name} carries no preprocessing: assumed {describe_preprocessing(config)} (the architecture's "
            f"defaults{given}); if it was trained otherwise, say so with --mean --std --interpolation --crop-pct "
            "--image-size")  # fmt: skip


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    """``--tta [MODE]``, as validate and predict both take it."""
    from .train.views import TTA_MODES

    parser.add_argument(
        "--tta", nargs="?", const="flip", default=None, choices=TTA_MODES,
        help="test-time augmentation, mean logits of: flip (image and mirror, the default), "
        "flip-shift (also both shifted one pixel up-left and down-right)",
    )  # fmt: skip


def note_weights_file(command: str, path: str, arch: str, model: Any, config: dict, overrides: dict) -> None:
    """Say on stderr what a weights file leaves assumed: it carries no preprocessing and no class names."""
    from .data import label_names

    print(f"{command}: {assumed_preprocessing(path, config, overrides)}", file=sys.stderr)
    names = label_names(model)
    if names:  # those of the architecture's published weights
        print(f"{command}: {path} names no classes: labelled as {arch}'s published weights label theirs "
              f"({', '.join(names[:3])}, ...); the indices are its own", file=sys.stderr)  # fmt: skip


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(flag, f"expected a positive integer, got {value}")


def export_command(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("name", help="model name (arch, arch.tag, hf-hub:..., local-dir:..., YAML)")
    parser.add_argument("--pretrained", action="store_true", help="with its weights (a tag or folder implies it)")
    parser.add_argument("--checkpoint", default=None, help="a weights file for NAME (any layout zoo.layouts reads)")
    parser.add_argument("--format", choices=("onnx", "pt2"), default=None, help="default: pt2 for a .pt2 --output, "
                        "else onnx")  # fmt: skip
    parser.add_argument("--output", required=True, help="the file to write (.onnx, or .pt2 for --format pt2)")
    parser.add_argument("--batch-size", type=int, default=2, help="the example batch (default 2)")
    parser.add_argument("--image-size", "--img-size", type=int, default=None,
                        help="example side (default: the weights' test size)")  # fmt: skip
    parser.add_argument("--static-batch", action="store_true", help="a fixed batch axis (default: any batch)")
    parser.add_argument("--features-only", action="store_true", help="the backbone: one output per feature map")
    parser.add_argument(
        "--dtype", choices=("auto", "fp32", "bf16"), default="auto",
        help="auto: fp32 for onnx, the CPU's fastest for pt2 (bf16 with AVX-512 BF16 or AMX); bf16: pt2 only",
    )  # fmt: skip
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with the eager model")
    parser.add_argument(
        "--portable", action="store_true",
        help="pt2: unfrozen AVX2 code for any x86-64 CPU (default: frozen, pre-packed for this CPU, the fastest)",
    )  # fmt: skip
    add_preprocessing_arguments(parser, image_size=False)  # --image-size is the example's side, above

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        import torch

        from .data import resolve_data_config
        from .deploy import check_options, export, format_for
        from .factory import create_model, names_weights
        from .hardware import explain

        _positive("--batch-size", args.batch_size)
        _positive("--image-size", args.image_size)
        args.format = format_for(args.output, args.format)
        flags = {"format": "--format", "dtype": "--dtype", "path": "--output", "batch": "--batch-size",
                 "static": "--static-batch"}  # fmt: skip
        dtype = check_options(args.format, args.dtype, Path(args.output), args.batch_size, not args.static_batch,
                              torch.device("cpu"), names=flags)  # fmt: skip
        if args.checkpoint is not None and not Path(args.checkpoint).is_file():
            raise ConfigError("--checkpoint", f"{args.checkpoint!r} is not a file")
        if args.portable and args.format != "pt2":  # before the weights are fetched
            raise ConfigError("--portable", f"applies to --format pt2 (an AOTInductor package), not {args.format!r}")
        pretrained = (args.pretrained or names_weights(args.name)) and args.checkpoint is None
        model = create_model(args.name, pretrained=pretrained, features_only=args.features_only,
                             checkpoint_path=args.checkpoint)  # fmt: skip
        overrides = preprocessing(args, model.pretrained_cfg["input_size"][0])  # recorded in the file's metadata
        config = resolve_data_config(model, use_test_size=True, **overrides)
        size = config["input_size"]
        if args.checkpoint is not None:  # the file's metadata records what is assumed: said, as predict says it
            note_weights_file("export", args.checkpoint, args.name, model, config, overrides)
        tag = args.checkpoint or ((model.pretrained_cfg or {}).get("weights") if pretrained else None)
        path = export(
            model, args.output, format=args.format, example_input=torch.randn(args.batch_size, *size),
            dynamic_batch=not args.static_batch, check=not args.no_check, dtype=dtype,
            metadata={"weights": tag or "random init"}, data_config=overrides, portable=args.portable,
        )  # fmt: skip
        batch = "any batch" if not args.static_batch else f"batch {args.batch_size}"
        precision = explain(args.dtype, dtype, torch.device("cpu"))
        weights = tag or "random init: give --pretrained or --checkpoint for trained weights"
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.format}, {precision}, {batch}, {size}; "
              f"weights: {weights})")  # fmt: skip
        return 0

    return run


def predict_command(parser: argparse.ArgumentParser) -> Runner:
    from .hardware import PRECISIONS
    from .predict import RUNTIMES

    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (read recursively)")
    parser.add_argument(
        "--model",
        default=None,
        help="model name; its default weights unless --checkpoint (not needed with a model folder)",
    )
    parser.add_argument(
        "--checkpoint", default=None,
        help="a weights file for --model, or a model folder (e.g. runs/x/best), which names its own architecture",
    )  # fmt: skip
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="torch and fast runtimes; auto: bf16 where the CPU has bf16 hardware (AVX-512 BF16, AMX), else fp32",
    )  # fmt: skip
    add_tta_argument(parser)
    add_preprocessing_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        import json
        from pathlib import Path

        from .factory import check_folder_architecture, create_model
        from .hardware import explain
        from .predict import IMAGE_SUFFIXES, Classifier, find_images
        from .registry import is_model, list_pretrained, split_name

        _positive("--topk", args.topk)
        _positive("--batch-size", args.batch_size)
        files = find_images(args.paths)
        if not files:
            raise ConfigError("PATH", f"no image files under {' '.join(args.paths)} (suffixes: "
                              f"{' '.join(sorted(IMAGE_SUFFIXES))})")  # fmt: skip
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if checkpoint is not None and not checkpoint.exists():
            raise ConfigError("--checkpoint", f"{args.checkpoint!r} does not exist")
        if checkpoint is not None and checkpoint.is_dir():  # a folder carries its architecture and label names
            model = create_model(f"local-dir:{checkpoint}", pretrained=True)
            check_folder_architecture(model, checkpoint, [args.model] if args.model else [])
        elif args.model is None:
            raise ConfigError(
                "--model", "is required unless --checkpoint is a model folder (which names its own architecture)"
            )
        elif checkpoint is None and is_model(args.model) and not list_pretrained(split_name(args.model)[0]):
            raise ConfigError("--model", f"{args.model!r} has no published weights to predict with; give --checkpoint "
                              "(a weights file, or a `zoo train` run's checkpoint folder)")  # fmt: skip
        else:
            model = create_model(args.model, pretrained=checkpoint is None, checkpoint_path=checkpoint)
        overrides = preprocessing(args, model.pretrained_cfg["input_size"][0])
        classifier = Classifier(model, runtime=args.runtime, batch_size=args.batch_size, tta=args.tta, topk=args.topk,
                                precision=args.precision, data_config=overrides)  # fmt: skip
        if checkpoint is not None and checkpoint.is_file():
            note_weights_file("predict", str(checkpoint), args.model, model, classifier.data_config, overrides)
        device = next(model.parameters()).device
        print(f"predict: {args.runtime} runtime, {explain(args.precision, classifier.precision, device)}",
              file=sys.stderr)  # fmt: skip
        rows = []
        for prediction in classifier(files):
            if args.format == "json":
                print(json.dumps({"path": prediction.path, "topk": prediction.topk}), flush=True)
            elif args.format == "csv":
                rows += [[prediction.path, rank, *p.values()] for rank, p in enumerate(prediction.topk, 1)]
            else:
                top = prediction.topk
                rows.append([prediction.path, top[0]["label"], f"{top[0]['score']:.3f}"])
                rows[-1] += [", ".join(f"{p['label']} {p['score']:.2f}" for p in top[1:])] if args.topk > 1 else []
        if classifier.skipped:
            print(f"skipped {len(classifier.skipped)} unreadable file(s), e.g. {classifier.skipped[0][0]}: "
                  f"{classifier.skipped[0][1]}", file=sys.stderr)  # fmt: skip
        if len(classifier.skipped) == len(files):
            raise ZooError(f"no readable image among {len(files)} file(s) under {' '.join(args.paths)}")
        if args.format == "csv":
            import csv

            writer = csv.writer(sys.stdout)
            writer.writerows([["path", "rank", "index", "label", "score"], *rows])
        elif args.format == "table":
            print(format_table(["path", "top-1", "score", *([f"next {args.topk - 1}"] if args.topk > 1 else [])], rows))
        return 0

    return run


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """An aligned text table (numbers right-aligned), or a markdown one."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def numeric(text: str) -> bool:
        return text.replace(".", "").replace(",", "").replace("%", "").rstrip("GMK").lstrip("-").isdigit()

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    rule = ("|" + "|".join("-" * (w + 2) for w in widths) + "|") if markdown else "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def render(costs: list[Cost], fmt: str = "table") -> str:
    """The costs as an aligned table, markdown, CSV or JSON."""
    if fmt not in FORMATS:
        raise ConfigError("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(
            {"convention": CONVENTION, "models": [{**asdict(c), "flops": c.flops} for c in costs]}, indent=2
        )
    stage_names = sorted({s for c in costs for s in c.stages}, key=lambda s: (s != "stem", s == "head", s))
    header = ["model", "input", "params (M)", "conv+linear MACs (G)", "total MACs (G)", "FLOPs (G)", "activations (M)"]
    header += [f"{s} MACs (G)" for s in stage_names]
    rows = [
        [
            c.model, "x".join(map(str, c.input_size[1:])), f"{c.params / 1e6:.3f}", f"{c.conv_linear_macs / 1e9:.3f}",
            f"{c.macs / 1e9:.3f}", f"{c.flops / 1e9:.3f}", f"{c.activations / 1e6:.2f}",
            *(f"{c.stages.get(s, 0) / 1e9:.3f}" for s in stage_names),
        ]
        for c in costs
    ]  # fmt: skip
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue()
    note = f"{CONVENTION}\n\n" if fmt == "table" else f"_{CONVENTION}_\n\n"
    return note + format_table(header, rows, markdown=fmt == "markdown")


def count_command(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("models", nargs="+", help="names or fnmatch patterns, e.g. 'resnet*'")
    parser.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's)")
    parser.add_argument("--stages", action="store_true", help="MACs per stem, stage and head")
    parser.add_argument("--format", choices=FORMATS, default="table")

    def run(args: argparse.Namespace) -> int:
        from .counting import count_models

        if args.input_size is not None and args.input_size < 1:
            raise ConfigError("--input-size", f"expected a positive side in pixels, got {args.input_size}")
        try:
            costs = count_models(args.models, args.input_size, stages=args.stages)
        except (RuntimeError, ValueError) as e:  # a side the model cannot run on (smaller than its stem's stride)
            if args.input_size is None or isinstance(e, ZooError):  # the zoo's own errors name what they refuse
                raise
            raise ConfigError("--input-size", f"{args.input_size} is too small: {str(e).splitlines()[0]}") from e
        print(render(costs, args.format))
        return 0

    return run


def config_command(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("model", help="a registered model name")
    parser.add_argument("-o", "--output", default=None, help="file to write (default: print)")

    def run(args: argparse.Namespace) -> int:
        from .yaml_config import dump, model_config, save_config

        if args.output:
            print(save_config(args.model, args.output))
        else:
            print(dump(model_config(args.model)), end="")
        return 0

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo", description="resnet-zoo: the ResNet family for PyTorch")
    parser.add_argument("--version", action="version", version=f"resnet-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    runner: Runner | None = None
    for name, (target, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if argv[:1] == [name]:  # build only the parser of the command that runs
            module, _, function = target.partition(":")
            runner = getattr(importlib.import_module(module), function)(sub_parser)
    args = parser.parse_args(argv)
    assert runner is not None  # argparse has exited unless argv named a command
    try:
        return runner(args)
    except ZooError as e:
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `zoo predict ... | head`: the reader has all it wanted
        sys.stderr.close()  # nothing more can be said; and no "Exception ignored" at exit
        return 0
    except OSError as e:  # a path the system refuses: a folder given as --output, no permission, ...
        if e.filename is None:
            raise
        path = e.filename2 or e.filename  # a rename names where it was going second: the path the user gave
        print(f"zoo {args.command}: error: {e.strerror or e}: {path!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
