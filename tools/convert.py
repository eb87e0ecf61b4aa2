#!/usr/bin/env python
"""Convert a checkpoint to a zoo safetensors file (or NetsPresso Trainer's layout), proving it on the logits.

    python tools/convert.py resnet50-0676ba61.pth --arch resnet50 --out resnet50.tv_in1k.safetensors
    python tools/convert.py resnet20-12fca82f.th --arch resnet20 --tag c10 --out resnet20.safetensors
    python tools/convert.py best_cifar10_ResNet18.pth --arch resnet18_cifar --out resnet18.safetensors
    python tools/convert.py netspresso.safetensors --arch resnet50-classification.yaml --out resnet50.safetensors
    python tools/convert.py r50.safetensors --arch resnet50-classification.yaml --to netspresso --out np.safetensors

Reads every layout the zoo loads (``zoo.layouts``): torchvision and timm (keys already the zoo's),
NetsPresso Trainer (its TaskModel or backbone), the common CIFAR repositories (bareform/resnet,
``linear.*``, ``shortcut.*``), with a ``module.`` or ``_orig_mod.`` prefix and a ``state_dict``/``model``
wrapper; pickles are read with ``torch.load(weights_only=True)``. ``--arch`` is a registered name or a
YAML config. ``--to zoo`` (the default) writes the zoo's keys with metadata (arch, tag, config);
``--to netspresso`` writes NetsPresso Trainer's TaskModel keys (``backbone.*``, ``head.classifier.1.*``),
which its ``model.checkpoint.path`` loads. When torchvision (or timm) has the same architecture, the
converted model's logits are checked against it within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import zoo
from zoo.errors import ZooError
from zoo.io import atomic_path, load_state_dict, save_safetensors
from zoo.layouts import LAYOUTS, to_netspresso, to_zoo

TORCHVISION = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"}  # fmt: skip


class Mismatch(Exception):
    """The converted weights do not compute what the source model computes."""


def in_chans_of(state: dict[str, torch.Tensor]) -> int:
    """The input channels of the weights' first conv (a deep stem's first is conv1.0)."""
    first = state.get("conv1.weight", state.get("conv1.0.weight"))
    return first.shape[1] if first is not None and first.ndim == 4 else 3


def reference_model(arch: str, state: dict[str, torch.Tensor]) -> tuple[str, torch.nn.Module] | None:
    """The same network from torchvision or timm, holding the source weights, when one exists: with their head
    (none: the pooled features out) and their input channels."""
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0
    in_chans = in_chans_of(state)
    if arch in TORCHVISION:
        import torchvision

        model = getattr(torchvision.models, arch)(num_classes=num_classes or 1000)
        if not num_classes:
            model.fc = torch.nn.Identity()
        if in_chans != 3:  # torchvision's stem, for other input channels
            model.conv1 = torch.nn.Conv2d(in_chans, model.conv1.out_channels, 7, 2, 3, bias=False)
    else:
        try:
            import timm
        except ImportError:
            return None
        if arch not in timm.list_models():
            return None
        model = timm.create_model(arch, num_classes=num_classes, in_chans=in_chans)
        arch = f"timm {arch}"
    model.load_state_dict(state)
    return arch, model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help=".pth/.pt/.bin/.th or .safetensors")
    p.add_argument("--arch", required=True, help="registered zoo architecture, or a YAML config")
    p.add_argument("--tag", default="converted")
    p.add_argument("--to", choices=LAYOUTS, default="zoo", help="the layout written (default: the zoo's)")
    p.add_argument("--out", required=True, help="output .safetensors")
    args = p.parse_args(argv)
    try:
        raw = load_state_dict(args.checkpoint)  # unwraps containers; refuses code pickles
        state, layout = to_zoo(raw)
        num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0
        yaml = args.arch.endswith((".yaml", ".yml"))
        if not yaml:
            zoo.registry.get_entry(args.arch)
        model = zoo.create_model(args.arch, checkpoint_path=args.checkpoint, **({"num_classes": num_classes}
                                 if num_classes or not yaml else {})).eval()  # fmt: skip
        out = model.state_dict()
        if args.to == "netspresso":
            out = to_netspresso(out, head=bool(getattr(model, "num_classes", 0)))
        cfg = getattr(model, "cfg", None)
        metadata = {"arch": args.arch, "tag": args.tag, "layout": args.to, "source": args.checkpoint,
                    **({"config": json.dumps(cfg.to_dict())} if cfg is not None else {})}  # fmt: skip
        ref = reference_model(args.arch, state) if not yaml else None
        # Written aside and checked there: the output appears only once its logits match the reference.
        with atomic_path(args.out, suffix=".tmp.safetensors") as tmp:
            save_safetensors(tmp, out, metadata)
            if ref is not None:
                name, reference = ref
                size = model.pretrained_cfg["input_size"][-1]
                x = torch.randn(2, in_chans_of(state), size, size, generator=torch.Generator().manual_seed(0))
                loaded = zoo.create_model(args.arch, checkpoint_path=tmp, num_classes=num_classes).eval()
                with torch.no_grad():
                    diff = (loaded(x) - reference(x)).abs().max().item()
                if diff > 1e-5:
                    raise Mismatch(f"MISMATCH: logits differ from {name} by {diff:.3g} (> 1e-5); nothing written")
        renamed = "keys already the zoo's" if layout == "zoo" else f"renamed from {layout}'s layout"
        print(f"wrote {args.out}: {len(out)} tensors ({renamed}; written in the {args.to} layout), "
              f"{num_classes} classes")  # fmt: skip
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
