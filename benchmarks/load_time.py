#!/usr/bin/env python
"""How long a pretrained model takes to be ready from a warm cache, against the usual way.

    python benchmarks/load_time.py --model resnet152 --repeats 5 --out benchmarks/results/load-time

Both sides read the same safetensors file from a warm Hub cache (the file is made
here from random weights and placed in a temporary cache: no network). The zoo
builds the model on the meta device and takes the file's tensors as its weights
(``assign=True``); the usual way builds torchvision's model with its random
initialization and then copies the weights in (``load_state_dict``). Rounds are
interleaved; the ratio of medians is the figure to track. The rounds, their medians and
the environment (with the git commit) go to ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet152", help="a torchvision architecture with a tv_in1k tag")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="runs/load-time", help="folder for results.json")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats: expected a positive number of rounds, got {args.repeats}")

    cache = Path(tempfile.mkdtemp(prefix="zoo-load-"))
    os.environ.update(HF_HOME=str(cache / "hf"), ZOO_CACHE=str(cache / "zoo"), HF_HUB_OFFLINE="1")
    import torchvision
    from safetensors.torch import load_file, save_file

    import zoo

    # A warm cache entry, laid out as huggingface_hub leaves it.
    repo = cache / "hf" / "hub" / f"models--timm--{args.model}.tv_in1k"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = {k: v.contiguous() for k, v in getattr(torchvision.models, args.model)().state_dict().items()}
    save_file(state, repo / "snapshots" / commit / "model.safetensors")
    path = repo / "snapshots" / commit / "model.safetensors"
    zoo.create_model(f"{args.model}.tv_in1k", pretrained=True)  # first load: hashes nothing, warms the page cache

    def ours() -> None:
        zoo.create_model(f"{args.model}.tv_in1k", pretrained=True)

    def usual() -> None:
        model = getattr(torchvision.models, args.model)()
        model.load_state_dict(load_file(path))

    times: dict[str, list[float]] = {"zoo.create_model(pretrained=True)": [], "torchvision build + load_state_dict": []}
    for _ in range(args.repeats):
        for seconds, fn in zip(times.values(), (ours, usual), strict=True):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in times.items()}
    for name, median in medians.items():
        print(f"{name}: median {median * 1000:.0f} ms over {args.repeats} rounds ({args.model}, warm cache)")
    a, b = medians.values()
    print(f"ratio: the zoo is ready {b / a:.1f}x faster ({torch.get_num_threads()} threads, torch {torch.__version__})")
    from throughput import environment  # the benchmarks' one record of where a number was measured

    from zoo.io import save_json

    result = {
        "model": args.model,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": medians,
        "speedup": round(b / a, 2),
        "environment": environment(torch.device("cpu")),
    }
    save_json(Path(args.out) / "results.json", result)
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
