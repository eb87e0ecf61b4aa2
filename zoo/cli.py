"""The ``zoo`` command: ``zoo list``, ``zoo count``, ``zoo info``, ``zoo download``, ``zoo train``, ...

Each subcommand lives with the code it drives; this module only dispatches, and
imports a subcommand's module only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("zoo.cli", "list registered models (fnmatch patterns)"),
    "train": ("zoo.train.cli", "train on CIFAR or an image folder (torchrun for many processes)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:  # `zoo list`
    parser.add_argument("patterns", nargs="*", default=["*"], help="fnmatch patterns, e.g. 'resnet*d'")
    parser.add_argument("--pretrained", action="store_true", help="list weight tags (arch.tag) instead")


def run(args: argparse.Namespace) -> int:  # `zoo list`
    from . import list_models, list_pretrained

    names = list_pretrained(args.patterns) if args.pretrained else list_models(args.patterns)
    print("\n".join(names))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo", description="resnet-zoo: the ResNet family for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if argv[:1] == [name]:  # import only the command that runs: `zoo list` needs no trainer
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    assert module is not None  # argparse has exited unless argv[0] named a command
    return module.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
