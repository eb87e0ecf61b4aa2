#!/usr/bin/env python
"""Train a zoo model: ``python tools/train.py --help`` (same as ``zoo train``); torchrun for many processes."""

from zoo.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
