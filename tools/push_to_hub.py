#!/usr/bin/env python
"""Write a Hugging Face Hub model folder and upload it.

    # from a `zoo train` run: its best checkpoint, metrics and command become the model card
    python tools/push_to_hub.py --run runs/c10/resnet20 --tag c10 --out weights/resnet20.c10 --dry-run
    # from a weights file
    python tools/push_to_hub.py --weights r50.safetensors --arch resnet50 --tag mine --out hub/resnet50.mine --dry-run
    # upload a folder as it is (a token from --token or HF_TOKEN)
    python tools/push_to_hub.py --folder weights/resnet20.c10 --repo-id ORG/resnet20.c10
    # add `zoo validate` results of the folder's own weights (e.g. with --tta) to its card first
    zoo validate --model resnet20.c10 --dataset imagefolder --root DATA --tta flip --output runs/validate/r20.json
    python tools/push_to_hub.py --folder weights/resnet20.c10 --eval runs/validate/r20.json --dry-run

The folder holds model.safetensors, a timm-compatible config.json and a README.md
model card; it loads with ``zoo.create_model("local-dir:FOLDER", pretrained=True)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import zoo
from zoo import hub
from zoo.errors import ConfigError, ZooError
from zoo.io import folder_config, read_json, sha256_of
from zoo.publish import Card, add_results, merge_results, read_run, upload_folder, write_folder

PAPER_NETS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110, "resnet1202": 1202}


def _describe(
    arch: str, dataset: str, trained_here: bool, teachers: list[str] | None = None, start: str | None = None
) -> str:
    if arch in PAPER_NETS:
        what = (f"The paper's CIFAR ResNet-{PAPER_NETS[arch]} (He et al. 2016, section 4.2: 16/32/64 channels, "
                "parameter-free option A shortcuts)")  # fmt: skip
    else:
        what = f"`{arch}`"
    if not trained_here:
        how = f"weights for {dataset}"
    elif start:
        how = f"fine-tuned by `zoo train` from `{start}` on {dataset}"
    else:
        how = f"trained from scratch by `zoo train` on {dataset}"
    if teachers:
        how += " with knowledge distillation from " + " and ".join(_teacher_name(t) for t in teachers)
    return f"{what}, {how}."


def _teacher_name(teacher: str) -> str:
    """A teacher given as a checkpoint path is named by the bundled weights it is byte-identical to, if any,
    so the card says which published weights reproduce the run."""
    path = Path(teacher)
    file = path / "model.safetensors" if path.is_dir() else path
    if file.is_file():
        digest = sha256_of(file)
        for bundled in sorted(hub.bundled_dir().glob("*/model.safetensors")):
            if sha256_of(bundled) == digest:
                return f"`{bundled.parent.name}` (given as `{teacher}`)"
    return f"`{teacher}`"


def _validation_rows(path: str, weights: Path) -> list[dict]:
    """Results-table rows from a ``zoo validate`` JSON file (TTA, int8) that scored the file of ``weights`` (a run's
    best checkpoint or a folder), under whatever name or path it was given (``--checkpoint``, a tag)."""
    r = read_json(path, "--eval")
    if not isinstance(r, dict) or not {"split", "images", "top1", "top5"} <= set(r):
        raise ConfigError("--eval", f"{path!r} is not a `zoo validate --output` result")
    own = sha256_of(weights / "model.safetensors")  # the file is what was scored, whatever it was called
    if r.get("weights_sha256") != own:
        raise ConfigError(
            "--eval", f"{path!r} scored {r.get('weights', '?')!r}, a file with sha256 {r.get('weights_sha256')}, "
            f"not {str(weights)!r} ({own})"
        )  # fmt: skip
    split = "validation" if r["split"] == "val" else r["split"]
    how = f", {r['tta']} TTA" if r.get("tta") else ""
    rows = [{"split": f"{split}, `zoo validate` {r.get('precision', 'fp32')}{how}", "images": r["images"],
             "top1": r["top1"], "top5": r["top5"], "tta": r.get("tta")}]  # fmt: skip
    if "int8" in r:
        q = r["int8"]
        rows.append({"split": f"{split}, `zoo validate` int8{how}", "images": r["images"], "top1": q["top1"],
                     "top5": q["top5"], "tta": r.get("tta"), "int8": True})  # fmt: skip
    return rows


def from_run(args: argparse.Namespace) -> Path:
    run = read_run(args.run)
    config, summary, rows = run["config"], run["summary"], run["rows"]
    arch = config["architecture"]
    name = f"{arch}.{args.tag}"
    dataset = args.dataset or summary.get("dataset", "")
    start = config.get("fine_tuned_from")  # a --pretrained run names the weights it started from
    best = summary.get("best") or {}
    config["pretrained_cfg"].update(  # these weights' own facts: their tag (as timm writes it) and their scores
        tag=args.tag, license=args.license, hf_hub_id=args.repo_id or name, top1=best.get("val_acc1"),
        top5=best.get("val_acc5"),
    )  # fmt: skip
    last = rows[-1] if rows else {}
    nan = float("nan")
    results = [{"split": f"validation ({args.val_note})", "images": args.val_images,
                "top1": best.get("val_acc1", nan), "top5": best.get("val_acc5", nan)}]  # fmt: skip
    if summary.get("test"):
        results.append(
            {"split": "test", "images": "-", "top1": summary["test"]["acc1"], "top5": summary["test"]["acc5"]}
        )
    for path in args.eval:  # a later result of a split replaces an earlier one (--int8 results restate fp32's)
        results = merge_results(results, _validation_rows(path, run["best"]))
    wall = summary.get("wall_time_s") or last.get("elapsed_s", 0)
    env = args.machine or summary.get("device") or "a machine not recorded"
    budget = f" (--time-budget {summary['time_budget_min']:g})" if summary.get("time_budget_min") else ""
    training = "\n".join([
        "## Training",
        "",
        f"Trained on {env}: {summary.get('epochs', len(rows))} epochs, {wall / 60:.1f} minutes of wall time{budget}, "
        f"best validation top-1 {best.get('val_acc1', float('nan')):.2f}% at epoch {best.get('epoch', '-')} "
        f"(final epoch: {last.get('val_acc1', float('nan')):.2f}%).",
        *(["", args.note] if args.note else []),
        "",
        "```bash",
        run["command"],
        "```",
        "",
        "![training curves](curves.png)" if (Path(args.run) / "curves.png").is_file() else "",
    ])  # fmt: skip
    describe = _describe(arch, dataset, True, run["args"].get("teacher"), start)
    card = Card(name, describe, dataset=args.card_dataset, results=results, training=training, license=args.license)
    extra = {n: Path(args.run) / n for n in ("curves.png", "metrics.csv") if (Path(args.run) / n).is_file()}
    record = {"name": name, "results": results, "epochs": summary.get("epochs"), "wall_time_s": round(wall, 1),
              "best_epoch": best.get("epoch"), "command": run["command"]}  # fmt: skip
    return write_folder(args.out, run["best"] / "model.safetensors", config, card, extra=extra, record=record,
                        half=args.half)  # fmt: skip


def from_weights(args: argparse.Namespace) -> Path:
    model = zoo.create_model(args.arch, checkpoint_path=args.weights)
    name = f"{args.arch}.{args.tag}"
    pretrained_cfg = {**model.pretrained_cfg, "tag": args.tag, "license": args.license}
    config = folder_config(args.arch, model.cfg.to_dict(), pretrained_cfg, num_features=model.num_features)
    card = Card(name, _describe(args.arch, args.card_dataset, False), dataset=args.card_dataset, license=args.license)
    return write_folder(args.out, args.weights, config, card, half=args.half)


def _report_pin(folder: Path) -> None:
    """The written file's sha256, and a warning when the registry pins another for the folder's tag."""
    digest = sha256_of(folder / "model.safetensors")
    print(f"model.safetensors sha256 {digest}")
    try:
        pinned = zoo.registry.get_weights(folder.name)[1].sha256
    except ZooError:  # not a registered tag: nothing pinned
        return
    if pinned and pinned != digest:
        print(f"push_to_hub.py: warning: the registry pins {folder.name} to sha256 {pinned}: loading it now fails "
              "until the pin is changed to the line above", file=sys.stderr)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a `zoo train` output folder")
    source.add_argument("--weights", help="a .safetensors (or tensors-only .pth) file; needs --arch")
    source.add_argument("--folder", help="an existing Hub model folder to upload unchanged")
    p.add_argument("--arch", help="registered architecture of --weights")
    p.add_argument("--tag", default="custom", help="weight tag: the folder is ARCH.TAG")
    p.add_argument("--out", help="folder to write (default: hub/ARCH.TAG)")
    p.add_argument("--repo-id", help="ORG/NAME on the Hub")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dataset", default=None, help="dataset name for the card's text")
    p.add_argument("--card-dataset", default="cifar10", help="dataset id for the card's metadata")
    p.add_argument("--val-images", default="-", help="validation images, for the results table")
    p.add_argument("--val-note", default="held out from training", help="how the validation split was made")
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="JSON",
        help="add the rows of a `zoo validate` result of --run's best checkpoint or of --folder's weights (repeatable)",
    )
    p.add_argument("--machine", default="", help="where it was trained, for the card (default: the run's device)")
    p.add_argument(
        "--half", action="store_true",
        help="store the weights as fp16: half the file, loaded into an fp32 model (score the written folder)",
    )  # fmt: skip
    p.add_argument("--note", default="", help="a paragraph for the card's training section")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="write the folder only; do not upload")
    args = p.parse_args(argv)
    try:
        token = args.token or os.environ.get("HF_TOKEN")
        if not args.dry_run and not (token and args.repo_id):  # before any work
            raise ZooError("uploading needs --repo-id and a token (--token or HF_TOKEN); or pass --dry-run")
        if args.folder:
            folder = Path(args.folder)
            zoo.create_model(f"local-dir:{folder}", pretrained=True)  # refuse to upload a folder that does not load
            if args.eval:
                add_results(folder, [row for path in args.eval for row in _validation_rows(path, folder)])
                print(f"updated {folder / 'README.md'} and {folder / 'results.json'}")
        else:
            if args.weights and not args.arch:
                raise ZooError("--weights needs --arch")
            arch = args.arch or read_run(args.run)["config"]["architecture"]
            args.out = args.out or f"hub/{arch}.{args.tag}"
            folder = from_run(args) if args.run else from_weights(args)
            print(f"wrote {folder}")
            _report_pin(folder)
        if args.dry_run:
            return 0
        print(upload_folder(folder, args.repo_id, token=token, private=args.private))
    except ZooError as e:
        print(f"push_to_hub.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
