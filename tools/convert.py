#!/usr/bin/env python
"""Convert a checkpoint to a zoo safetensors file, and prove the conversion on the logits.

    python tools/convert.py resnet50-0676ba61.pth --arch resnet50 --out resnet50.tv_in1k.safetensors
    python tools/convert.py resnet20-12fca82f.th --arch resnet20 --tag c10 --out resnet20.safetensors

Reads torchvision and timm checkpoints (keys already the zoo's) and the common CIFAR
layouts (``linear.*`` classifier, ``shortcut.*`` projections, a ``module.`` prefix, a
``state_dict`` wrapper); pickles are read with ``torch.load(weights_only=True)``. The
output carries metadata (arch, tag, config). When torchvision (or timm) has the same
architecture, the converted model's logits are checked against it within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import zoo
from zoo.errors import ZooError
from zoo.io import atomic_path, load_state_dict, save_safetensors
from zoo.weights import convert_state_dict

TORCHVISION = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"}  # fmt: skip


class Mismatch(Exception):
    """The converted weights do not compute what the source model computes."""


def reference_model(arch: str, state: dict[str, torch.Tensor]) -> tuple[str, torch.nn.Module] | None:
    """The same network from torchvision or timm, holding the source weights, when one exists."""
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    if arch in TORCHVISION:
        import torchvision

        model = getattr(torchvision.models, arch)(num_classes=num_classes)
    else:
        try:
            import timm
        except ImportError:
            return None
        if arch not in timm.list_models():
            return None
        model = timm.create_model(arch, num_classes=num_classes)
        arch = f"timm {arch}"
    model.load_state_dict(state)
    return arch, model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help=".pth/.pt/.bin/.th or .safetensors")
    p.add_argument("--arch", required=True, help="registered zoo architecture")
    p.add_argument("--tag", default="converted")
    p.add_argument("--out", required=True, help="output .safetensors")
    args = p.parse_args(argv)
    try:
        raw = load_state_dict(args.checkpoint)  # unwraps containers; refuses code pickles
        state = convert_state_dict(raw)
        zoo.registry.get_entry(args.arch)
        num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0
        model = zoo.create_model(args.arch, num_classes=num_classes)
        model.load_state_dict(state, strict=True)
        model.eval()
        renamed = len(set(state) - set(raw))
        metadata = {
            "arch": args.arch,
            "tag": args.tag,
            "config": json.dumps(model.cfg.to_dict()),
            "source": args.checkpoint,
        }
        ref = reference_model(args.arch, state)
        # Written aside and checked there: the output appears only once its logits match the reference.
        with atomic_path(args.out, suffix=".tmp.safetensors") as tmp:
            save_safetensors(tmp, model.state_dict(), metadata)
            if ref is not None:
                name, reference = ref
                size = model.pretrained_cfg["input_size"][-1]
                x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
                loaded = zoo.create_model(args.arch, checkpoint_path=tmp).eval()
                with torch.no_grad():
                    diff = (loaded(x) - reference(x)).abs().max().item()
                if diff > 1e-5:
                    raise Mismatch(f"MISMATCH: logits differ from {name} by {diff:.3g} (> 1e-5); nothing written")
        print(f"wrote {args.out}: {len(state)} tensors ({renamed} keys renamed), {num_classes} classes")
        if ref is None:
            print("no reference model for this architecture here: keys and shapes verified, logits not compared")
        else:
            print(f"logits match {ref[0]} within {diff:.1e} (tolerance 1e-5)")
    except Mismatch as e:
        print(e, file=sys.stderr)
        return 1
    except (ZooError, RuntimeError) as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
