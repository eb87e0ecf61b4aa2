"""The ``zoo`` command: ``zoo list``, ``info``, ``download``, ``count``, ``train``, ``validate``, ``config``.

Each subcommand is a function that adds its arguments to a parser and returns
the function that runs it; the bigger ones live with the code they drive. Only
the module of the subcommand that runs is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import ZooError

Runner = Callable[[argparse.Namespace], int]

# subcommand -> ("module:function", one-line help); function(parser) -> runner
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("zoo.cli:list_command", "list registered models or weight tags (fnmatch patterns)"),
    "info": ("zoo.cli:info_command", "the weights of a model: tag, top-1, params, MACs, input size, license"),
    "download": ("zoo.cli:download_command", "prefetch weights into the Hub cache, for offline use later"),
    "count": ("zoo.counting:count_command", "parameters, MACs and FLOPs of models"),
    "train": ("zoo.train.cli:train_command", "train on CIFAR or an image folder (torchrun for many processes)"),
    "validate": ("zoo.train.validate:validate_command", "top-1/top-5 of a model on CIFAR or an image folder"),
    "config": ("zoo.yaml_config:config_command", "write a model's YAML backbone config"),
}


def list_command(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("patterns", nargs="*", default=["*"], help="fnmatch patterns, e.g. 'resnet*d'")
    parser.add_argument("--pretrained", action="store_true", help="list weight tags (arch.tag) instead")

    def run(args: argparse.Namespace) -> int:
        from .registry import list_models, list_pretrained

        names = list_pretrained(args.patterns) if args.pretrained else list_models(args.patterns)
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
    parser.add_argument("names", nargs="+", help="weight tags or patterns: resnet50.tv2_in1k, 'resnet*.tv_in1k'")
    parser.add_argument("--cache-dir", default=None, help="Hub cache (default: HF_HUB_CACHE or HF_HOME/hub)")

    def run(args: argparse.Namespace) -> int:
        from . import hub
        from .registry import get_weights, list_pretrained

        names = [n for pattern in args.names for n in (list_pretrained(pattern) or [pattern])]
        for name in names:
            full, w = get_weights(name)
            path = hub.hub_file(w.hf_hub_id, w.filename, revision=w.revision, sha256=w.sha256, cache_dir=args.cache_dir)
            print(f"{full}: {path}")
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


if __name__ == "__main__":
    raise SystemExit(main())
