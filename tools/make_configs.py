#!/usr/bin/env python
"""Write configs/<model>.yaml (NetsPresso backbone schema) for the registered ResNets; a test checks them."""

from pathlib import Path

from zoo import save_config

MODELS = [f"resnet{d}" for d in (18, 34, 50, 101, 152)] + [f"resnet{d}_cifar" for d in (18, 34, 50, 101, 152)]
MODELS += ["resnet50d"]

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "configs"
    for name in MODELS:
        print(save_config(name, out / f"{name}.yaml"))
