"""Registry of task kinds, timm-style: a kind is one class in one module with ``@register_kind``.

    @register_kind("vqa")
    class VQAKind(TaskKind): ...

``get_kind("vqa")`` returns the class; ``available_kinds()`` lists the registered names. This module is
a leaf (it imports nothing of the package); the built-in kinds register when :mod:`mtl_lora_vl.tasks`
is imported, which Python does before it runs this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mtl_lora_vl.tasks.base import TaskKind

_KINDS: dict[str, type[TaskKind]] = {}
K = TypeVar("K", bound="type[TaskKind]")


def register_kind(name: str) -> Callable[[K], K]:
    """Class decorator registering a :class:`TaskKind` subclass under ``name`` (also set as ``cls.kind``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_kind needs a non-empty kind name, got {name!r}")

    def wrap(cls: K) -> K:
        existing = _KINDS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"task kind {name!r} is already registered by {existing.__module__}."
                             f"{existing.__qualname__}; choose another name for {cls.__qualname__}")
        cls.kind = name
        _KINDS[name] = cls
        return cls

    return wrap


def get_kind(name: str) -> type[TaskKind]:
    """The kind class registered under ``name``; an unknown name lists the registered kinds."""
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown task kind {name!r}; the registered kinds are {available_kinds()} "
                       f"(a new kind is a TaskKind subclass decorated with @register_kind)") from None


def available_kinds() -> list[str]:
    """Sorted names of every registered task kind."""
    return sorted(_KINDS)
