#!/usr/bin/env python
"""Parameters, MACs and FLOPs of zoo models: ``python tools/count.py 'resnet*' --format markdown`` (= ``zoo count``)."""

import sys

from zoo.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["count", *sys.argv[1:]]))
