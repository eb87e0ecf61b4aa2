"""The zoo's exceptions.

Every error is a ``ZooError`` and also the builtin a caller would catch without
knowing the zoo (``ValueError`` for a bad argument, ``LookupError`` for an
unknown name, ``FileNotFoundError`` for missing weights), so both
``except zoo.ZooError`` and ``except ValueError`` work. The ``check_*`` helpers
are the one place a config value's type and range are checked (architecture
options, the YAML schema, the trainer's flags) and their messages worded.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Base class of every error the zoo raises on purpose."""


class ConfigError(ZooError, ValueError):
    """An architecture option or config field has a bad value.

    ``field`` is the dotted path of the offending field (``"layers[2]"``), so a
    reader of another schema (the YAML backbone format) can re-word it in its own
    terms; ``problem`` is the message without the path.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class UnknownModelError(ZooError, LookupError):
    """No model or weight tag is registered under the requested name."""

    def __str__(self) -> str:  # LookupError would repr() a single argument
        return str(self.args[0]) if self.args else ""


class RegistryError(ZooError, ValueError):
    """A name was registered twice, or registered with a bad value."""


class StateDictError(ZooError, RuntimeError):
    """A state dict does not fit the model: missing, unexpected or misshapen keys."""


class WeightsNotFoundError(ZooError, FileNotFoundError):
    """Pretrained weights were found in none of the places the zoo looks."""


class WeightsIntegrityError(ZooError, OSError):
    """A weights file is truncated, corrupted or does not match its pinned hash."""


class UnsafeCheckpointError(ZooError, ValueError):
    """A legacy pickle checkpoint needs code execution to load, which the zoo refuses."""


class DiskFullError(ZooError, OSError):
    """The disk filled up while a file was written; the previous file is intact and nothing partial is left."""


class ExportError(ZooError, RuntimeError):
    """An exported model does not compute what the eager model computes, or could not be written."""


class MissingExtraError(ZooError, ImportError):
    """An optional dependency is not installed; the message names the pip command that brings it."""


class TrainingDiverged(ZooError, FloatingPointError):
    """The loss became NaN or infinite (the trainer keeps the last good checkpoint)."""


def require(module: str, extra: str) -> object:
    """Import ``module`` from the optional extra ``extra``, or raise a MissingExtraError naming the install."""
    import importlib
    import importlib.util

    try:
        return importlib.import_module(module)
    except ImportError as e:
        if importlib.util.find_spec(module.partition(".")[0]) is not None:  # there, but broken (a missing library)
            raise MissingExtraError(f"{module} is installed but does not import ({e}): reinstall it with "
                                    f"pip install --force-reinstall 'resnet-zoo[{extra}]'") from e  # fmt: skip
        raise MissingExtraError(f"{module} is not installed: pip install 'resnet-zoo[{extra}]'") from e


_LOOKALIKES = str.maketrans("oil", "011")  # resnet5O -> resnet50: typed letters that look like digits


def suggest(value: object, allowed: Iterable[str], n: int = 3) -> str:
    """Return ``"; did you mean 'a', 'b'?"`` for close matches of ``value``, or ``""``."""
    by_key = {}
    for name in allowed:  # YAML keys may be numbers: compared as text
        by_key.setdefault(str(name).lower().translate(_LOOKALIKES), name)
    key = str(value).lower().translate(_LOOKALIKES)
    close = [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=n, cutoff=0.6)]
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def not_one_of(value: object, allowed: Iterable[object]) -> str:
    """``"'botleneck' is not one of 'basic', 'bottleneck'; did you mean 'bottleneck'?"``"""
    allowed = list(allowed)
    hint = suggest(value, [a for a in allowed if isinstance(a, str)])
    return f"{value!r} is not one of {', '.join(map(repr, allowed))}{hint}"


def check_int(field: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (not a bool, not 8.0), else a ConfigError naming ``field``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(field, f"expected {kind}, got {value!r}")
    return value


def check_choice(field: str, value: object, allowed: Iterable[object]) -> object:
    """``value`` if it is one of ``allowed``, of the same type too (8.0 or True must not pass for 8 or 1)."""
    allowed = list(allowed)
    if not any(type(value) is type(a) and value == a for a in allowed):
        raise ConfigError(field, not_one_of(value, allowed))
    return value


def check_rate(field: str, value: object) -> float:
    """``value`` as a float if it is a probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:  # NaN too
        raise ConfigError(field, f"expected a probability in [0, 1), got {value!r}")
    return float(value)


def check_bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, f"expected true or false, got {value!r}")
    return value
