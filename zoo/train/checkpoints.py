"""A run's checkpoints: epoch folders and their last/best links, what a run leaves in its output folder,
and the training state saved and resumed."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file

from ..errors import ConfigError
from ..io import read_json, save_model_folder, save_torch
from .config import TRAINING_KEYS, TrainConfig
from .step import Step

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("zoo.train")


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` atomically (a crash leaves the old or the new one)."""
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def _resolve(link: Path) -> Path | None:
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


class Checkpoints:
    """``output/checkpoints/epoch-NNNN/`` folders, ``last`` and ``best`` symlinks, older ones pruned.

    A folder is written under a temporary name and renamed when complete; the
    symlinks flip only then. Each folder is a Hub model folder (model.safetensors,
    config.json: the EMA's weights in an EMA run) plus ``state.pt`` to resume (the
    optimizer, schedule, the raw weights of an EMA run, epoch, RNG, best, layout).
    """

    def __init__(self, output: Path, keep: int = 1) -> None:
        self.output = output
        self.root = output / "checkpoints"
        self.keep = keep  # most recent epochs kept, besides best
        self.best_name: str | None = None  # the folder best points at, as this run decided it (not read off the link)
        self._saved: list[Path] = []  # this run's folders, in the order it saved them

    @property
    def last(self) -> Path | None:
        return _resolve(self.output / "last")

    @property
    def best(self) -> Path | None:
        return _resolve(self.output / "best")

    def save(
        self, epoch: int, weights: dict[str, torch.Tensor], config: dict[str, Any], state: dict[str, Any], best: bool
    ) -> Path:
        final = self.root / f"epoch-{epoch:04d}"
        for n in itertools.count(1):  # one left by a run resumed from an earlier epoch stays until pruned
            if not final.exists():
                break
            final = self.root / f"epoch-{epoch:04d}.{n}"
        tmp = self.root / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # the folder best points at once this one is in place: a resumed run puts its best link back there
        state = {**state, "best_folder": final.name if best else self.best_name}
        try:
            save_model_folder(tmp, weights, config, {"epoch": str(epoch)})
            save_torch(tmp / "state.pt", state)
            os.replace(tmp, final)
        except BaseException:  # a full disk, a kill: the earlier checkpoints and links stay as they were
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _point(self.output / "last", final)
        if best:
            _point(self.output / "best", final)
            self.best_name = final.name
        self._saved.append(final.resolve())
        # The newest `keep` are this run's own; until it has saved as many, the newest of those an earlier run left
        # (a resumed run's; later epochs of a continuation it abandoned sort after its own, but are not newer)
        mine = self._saved[-self.keep :]
        epochs = sorted(self.root.glob("epoch-*"), key=_epoch_order)  # epoch-10000 after epoch-9999
        left = [p.resolve() for p in epochs if p.resolve() not in self._saved]
        keep = {self.best, *mine, *left[len(left) - max(0, self.keep - len(mine)) :]}
        for old in epochs:
            if old.resolve() not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def restore_best(self, ckpt: Path, folder: str | None, *, write: bool = True) -> bool:
        """Point ``best`` at ``folder``, the best checkpoint as of ``ckpt`` (a resumed run's), if it is one of this
        output's; if it is not (none yet, another run's folder, or pruned by a continuation now abandoned), remove
        the link and return False. ``write``: False on the processes other than the main one, which only read."""
        target = ckpt.resolve().parent / folder if folder else None
        found = target is not None and target.is_dir() and target.is_relative_to(self.root.resolve())
        self.best_name = target.name if found else None
        if write and found:
            _point(self.output / "best", target)
        elif write:
            with contextlib.suppress(FileNotFoundError):
                (self.output / "best").unlink()
        return found


def _epoch_order(folder: Path) -> tuple[int, int]:
    """``epoch-0012`` -> (12, 0); ``epoch-0012.3`` (a resumed run's second epoch 12) -> (12, 3)."""
    epoch, _, n = folder.name.removeprefix("epoch-").partition(".")
    return (int(epoch), int(n or 0)) if epoch.isdigit() and (n or "0").isdigit() else (-1, 0)


# What a run leaves in its --output folder: a folder holding any of these holds a run.
RUN_FILES = ("args.json", "command.txt", "metrics.jsonl", "metrics.csv", "curves.png", "summary.json", "last", "best",
             "checkpoints")  # fmt: skip


@contextlib.contextmanager
def claim(output: Path, main: bool) -> Iterator[None]:
    """Hold ``output`` for this run (its main process) until it ends: a second run started into it meanwhile is
    refused, where both would pass check_output before either wrote a file. The lock (flock, released when the
    process ends however it ends) lives in the zoo's cache, so the output folder holds the run's files only."""
    if not main or fcntl is None:  # the main process claims for all; no flock (Windows): unguarded
        yield
        return
    from ..hub import zoo_cache_dir

    lock = zoo_cache_dir() / "runs" / f"{hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:16]}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as e:  # a read-only cache: the run goes on unguarded
        log.warning("could not claim %s for this run (%s): another run started into it would not be refused", output, e)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError("--output", f"{str(output)!r} is being written by another run now (process {holder}): "
                              "wait for it to end, or choose another --output") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_output(args: TrainConfig, output: Path) -> Path | None:
    """Refuse to lose a run: a folder that holds one is continued (--resume, with the same arguments) or
    replaced (--overwrite), never silently written over. Returns the checkpoint to resume from."""
    if args.resume:
        ckpt = Path(args.resume) if isinstance(args.resume, str) else Checkpoints(output).last
        if ckpt is None or not (ckpt / "state.pt").is_file():
            raise ConfigError("--resume", f"no checkpoint to resume from in {str(ckpt or output)!r}")
        saved = torch.load(ckpt / "state.pt", weights_only=True, mmap=True)["args"]
        changed = args.resume_differences(saved)
        if changed:  # the schedule and the model were laid out from these
            raise ConfigError(
                "--resume", f"{str(ckpt)!r} belongs to a run with other arguments: {'; '.join(changed)}. "
                "Resume with the run's own arguments, or start a new run in another --output"
            )  # fmt: skip
        altered = args.resume_differences(saved, TRAINING_KEYS)
        if altered:
            log.warning("--resume: the run goes on training otherwise than it began: %s", "; ".join(altered))
        found = _run_files(output)  # continuing another run's checkpoint in here would mix the two runs
        if found and not ckpt.resolve().is_relative_to(output.resolve()):
            raise ConfigError(
                "--output", f"{str(output)!r} holds another run ({', '.join(found)}) than the one --resume "
                f"{str(ckpt)!r} continues: give that run's own folder, or an empty --output"
            )  # fmt: skip
        return ckpt
    found = _run_files(output)
    if found and not args.overwrite:
        raise ConfigError(
            "--output", f"{str(output)!r} already holds a run ({', '.join(found)}): continue it with --resume, "
            "replace it with --overwrite, or choose another --output"
        )  # fmt: skip
    return None


def _run_files(output: Path) -> list[str]:
    return [name for name in RUN_FILES if (output / name).exists() or (output / name).is_symlink()]


def replace_run(output: Path) -> None:
    log.warning("--overwrite: replacing the run in %s", output)
    for name in RUN_FILES:
        path = output / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def training_state(step: Step, epoch: int, best: dict | None, args: TrainConfig, layout: dict[str, int],
                   elapsed_s: float) -> dict[str, Any]:  # fmt: skip
    """What ``resume`` restores. ``layout``: what the schedule's steps were counted from (processes, training
    images, steps per epoch); ``elapsed_s``: the run's wall time so far, which a time budget counts."""
    return {
        "epoch": epoch,
        "best": best,
        "layout": layout,
        "elapsed_s": elapsed_s,
        "budget_reserve": step.budget.reserve,  # kept for the final scoring: a resumed run's first epochs need it too
        "model": step.raw.state_dict() if step.ema is not None else None,  # EMA runs save the EMA as the model
        "optimizer": step.optimizer.state_dict(),
        "schedule": step.schedule.state_dict(),
        "scaler": step.scaler.state_dict() if step.scaler is not None else None,
        "rng": torch.get_rng_state(),
        "args": {
            k: v for k, v in args.to_dict().items() if isinstance(v, (str, int, float, bool, type(None), list, dict))
        },
    }


class Resumed(NamedTuple):
    epoch: int
    best: dict | None
    elapsed_s: float | None  # None: a checkpoint from before it was recorded


def resume(ckpt: Path, step: Step, layout: dict[str, int], classes: list[str], checkpoints: Checkpoints,
           main: bool) -> Resumed:  # fmt: skip
    """Restore ``step`` from ``ckpt``, and ``best`` (the link: by the ``main`` process) to the checkpoint that was
    best then. A run laid out otherwise (other processes or data: the schedule's steps would not match) or trained
    on other ``classes`` (its outputs would name other ones) is refused before anything changes."""
    state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
    saved = state.get("layout") or {}  # checkpoints of zoo 0.x before it was recorded: not checked
    changed = [f"{k.replace('_', ' ')} {saved[k]} -> {v}" for k, v in layout.items() if k in saved and saved[k] != v]
    if changed:
        raise ConfigError(
            "--resume", f"{str(ckpt)!r} was laid out for other data or processes: {'; '.join(changed)}; the schedule "
            "counts its steps from these. Resume with the same --root and number of processes"
        )  # fmt: skip
    trained_on = read_json(ckpt / "config.json", "--resume").get("pretrained_cfg", {}).get("label_names")
    if trained_on is not None and list(trained_on) != list(classes):
        raise ConfigError(
            "--resume", f"{str(ckpt)!r} was trained on other classes ({', '.join(trained_on[:4])}, ... against the "
            f"data's {', '.join(classes[:4])}, ...): each output would be taken for another class. Resume with the "
            "run's own --root"
        )  # fmt: skip
    weights = load_file(ckpt / "model.safetensors")
    if step.ema is not None:
        step.ema.module.load_state_dict(weights)
        step.raw.load_state_dict(state["model"])
    else:
        step.raw.load_state_dict(weights)
    step.optimizer.load_state_dict(state["optimizer"])
    step.schedule.load_state_dict(state["schedule"])
    if step.scaler is not None and state["scaler"] is not None:
        step.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    step.budget.reserve = state.get("budget_reserve", 0.0)
    best = state["best"]
    folder = state["best_folder"] if "best_folder" in state else _named_best(ckpt, int(state["epoch"]), best)
    if not checkpoints.restore_best(ckpt, folder, write=main) and best is not None:
        if main:
            log.warning("the best checkpoint as of %s (epoch %d) is not in %s: best starts again from this run's "
                        "epochs", ckpt, best["epoch"], checkpoints.output)  # fmt: skip
        best = None
    return Resumed(int(state["epoch"]), best, state.get("elapsed_s"))


def _named_best(ckpt: Path, epoch: int, best: dict | None) -> str | None:
    """The best folder of a checkpoint written before ``best_folder`` was recorded: by its epoch's name."""
    if best is None:
        return None
    return ckpt.resolve().name if best["epoch"] == epoch else f"epoch-{best['epoch']:04d}"
