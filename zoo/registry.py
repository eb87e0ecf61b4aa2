"""The model registry: name -> builder, and arch -> weight tags.

Standard library only. A full model name is ``arch`` or ``arch.tag``
(``resnet50.tv2_in1k``); ``arch`` alone means the arch's default weights.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from .errors import ConfigError, RegistryError, UnknownModelError, suggest

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]  # builder(**kwargs) -> nn.Module
    config: Any = None  # the architecture as data (a ResNetConfig), when the model is data
    module: str = ""  # where it was registered, for error messages


_models: dict[str, ModelEntry] = {}
_weights: dict[str, dict[str, Any]] = {}  # arch -> {tag: weight spec}, default tag first

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _natural_key(name: str) -> list[Any]:
    """resnet18 < resnet34 < resnet101: numbers compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@overload
def register_model(fn: F) -> F: ...
@overload
def register_model(*, name: str | None = None, config: Any = None) -> Callable[[F], F]: ...
def register_model(fn: F | None = None, *, name: str | None = None, config: Any = None) -> Any:
    """Register a model builder, as ``@register_model`` or ``@register_model(name=...)``.

    The builder takes keyword options and returns an ``nn.Module``. Registering a
    name twice is an error: silently replacing a model is how zoos lose weights.
    """

    def wrap(builder: F) -> F:
        key = name or builder.__name__
        if not isinstance(key, str) or not _NAME.match(key):
            raise RegistryError(f"model name {key!r} must be letters, digits, '_' or '-' (no '.' or ':')")
        if key in _models:
            raise RegistryError(f"model {key!r} is already registered (by {_models[key].module}); choose another name")
        _models[key] = ModelEntry(key, builder, config, getattr(builder, "__module__", ""))
        return builder

    return wrap(fn) if fn is not None else wrap


def register_weights(arch: str, tag: str, spec: Any, *, default: bool = False) -> None:
    """Attach weight tag ``arch.tag``; ``default`` makes it what plain ``arch`` loads."""
    get_entry(arch)
    if not isinstance(tag, str) or not _NAME.match(tag):
        raise RegistryError(f"weight tag {tag!r} must be letters, digits, '_' or '-'")
    tags = _weights.setdefault(arch, {})
    if tag in tags:
        raise RegistryError(f"weights {arch}.{tag} are already registered")
    _weights[arch] = {tag: spec, **tags} if default else {**tags, tag: spec}


def split_name(name: str) -> tuple[str, str | None]:
    """``"resnet50.tv2_in1k"`` -> ``("resnet50", "tv2_in1k")``; ``"resnet50"`` -> ``("resnet50", None)``."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    arch, _, tag = name.partition(".")
    return arch, tag or None


def get_entry(name: str) -> ModelEntry:
    """The entry of ``name`` (a tag is ignored), or an error naming close matches."""
    arch, _ = split_name(name)
    try:
        return _models[arch]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {arch!r}{suggest(arch, _models) or '; see zoo.list_models()'}"
        ) from None


def is_model(name: str) -> bool:
    """Whether ``name`` (with or without a weight tag) names a registered architecture."""
    return isinstance(name, str) and split_name(name)[0] in _models if name else False


def get_weights(name: str) -> tuple[str, Any]:
    """``(full name, spec)`` of the weights ``name`` means: its tag, or the arch's default."""
    arch, tag = split_name(name)
    get_entry(arch)
    tags = _weights.get(arch, {})
    if not tags:
        raise UnknownModelError(f"model {arch!r} has no pretrained weights; use pretrained=False")
    if tag is None:
        tag = next(iter(tags))
    if tag not in tags:
        raise UnknownModelError(
            f"unknown weights {arch}.{tag}; {arch} has {', '.join(f'{arch}.{t}' for t in tags)}{suggest(tag, tags)}"
        )
    return f"{arch}.{tag}", tags[tag]


def _patterns(pattern: str | Iterable[str] | None) -> list[str]:
    """A pattern or patterns as a list; "" and None match everything, as timm's filters."""
    if not pattern:
        return ["*"]
    return [pattern] if isinstance(pattern, str) else list(pattern)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def list_models(
    filter: str | Iterable[str] = "",
    module: str | Iterable[str] = "",
    pretrained: bool = False,
    exclude_filters: str | Iterable[str] = "",
    name_matches_cfg: bool = False,
    include_tags: bool | None = None,
) -> list[str]:
    """Registered architectures matching fnmatch ``filter``(s), in natural order, with timm's keywords.

    Args:
        filter: fnmatch pattern(s); "" for all.
        module: timm's model module; the zoo's architectures are all "resnet" (others match none).
        pretrained: only architectures that have weights.
        exclude_filters: fnmatch pattern(s) left out of what ``filter`` matched.
        name_matches_cfg: accepted for timm's signature; every zoo name has its own config.
        include_tags: list each weight tag (``resnet50.a1_in1k``) instead of the architecture; default
            ``pretrained``, as timm's.
    """
    modules = _patterns(module) if module else []
    if modules and not any(m in ("resnet", "*") for m in modules):
        return []
    if include_tags is None:
        include_tags = pretrained
    if include_tags:
        return sorted(list_pretrained(filter or "*", exclude=exclude_filters or ()), key=_natural_key)
    include, excluded = _patterns(filter), _patterns(exclude_filters) if exclude_filters else []
    names = (
        n for n in _models if (not pretrained or _weights.get(n)) and _matches(n, include) and not _matches(n, excluded)
    )
    return sorted(names, key=_natural_key)


def get_pretrained_cfg_value(model_name: str, cfg_key: str) -> Any:
    """One field of the ``pretrained_cfg`` of the weights ``model_name`` names (an arch: its default weights), as
    the model built with them carries it, or None when it has no such field, as timm's:
    ``get_pretrained_cfg_value("resnet50", "input_size")`` -> ``(3, 224, 224)``."""
    from .data import default_pretrained_cfg

    full, spec = get_weights(model_name)
    arch, tag = split_name(full)
    return spec.pretrained_cfg(default_pretrained_cfg(get_entry(arch).config), tag=tag).get(cfg_key)


def expand_models(patterns: Iterable[str], flag: str = "models") -> list[str]:
    """The registered names that ``patterns`` (names or fnmatch patterns) stand for, in the order given.

    One that matches nothing is a ConfigError naming ``flag`` and the closest names."""
    found = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:  # one name given as a string
        names = list_models(pattern) if any(c in pattern for c in "*?[") else [pattern] if pattern in _models else []
        if not names:
            raise ConfigError(flag, f"{pattern!r} matches no registered model{suggest(pattern, _models)}")
        found += names
    return found


def list_pretrained(pattern: str | Iterable[str] = "*", *, exclude: str | Iterable[str] = ()) -> list[str]:
    """Weight tags ``arch.tag`` whose full name or arch matches ``pattern``; default tag first."""
    include, excluded = _patterns(pattern), _patterns(exclude) if exclude else []
    return [
        f"{arch}.{tag}"
        for arch in list_models(pretrained=True, include_tags=False)
        for tag in _weights[arch]
        if (_matches(f"{arch}.{tag}", include) or _matches(arch, include))
        and not (_matches(f"{arch}.{tag}", excluded) or _matches(arch, excluded))  # as timm: an arch excludes its tags
    ]
