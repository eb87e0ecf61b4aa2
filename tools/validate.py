#!/usr/bin/env python
"""Top-1/top-5 of a zoo model on CIFAR or an image folder: ``python tools/validate.py --help`` (= ``zoo validate``)."""

from zoo.train.cli import validate_main as main

if __name__ == "__main__":
    raise SystemExit(main())
