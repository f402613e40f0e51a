"""Names a package imports when they are first read (PEP 562), so that ``import mtl_lora_vl`` and the command
line's ``--help`` or a mistyped flag do not first import torch, transformers and open_clip (seconds on a busy
machine): the command imports them when it runs.

A package's ``__init__`` lists its public names with the module each comes from and sets
``__getattr__, __dir__ = lazy_names(globals(), TABLE)``; ``from mtl_lora_vl import attach`` and
``mtl_lora_vl.attach`` import ``mtl_lora_vl.adapters.attach`` then. A submodule's name imports the submodule
(``mtl_lora_vl.backbones.load_backbone`` after ``import mtl_lora_vl``), as the eager imports it replaces did.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .wording import did_you_mean

__all__ = ["imported", "lazy_names"]


def imported(target: str) -> Any:
    """The object a ``"module:name"`` string names, importing its module (the torch side of a command)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _is_submodule(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module (a wrong name such as ``x.y`` or a dunder is none, without a search)."""
    if not name.isidentifier() or name.startswith("__"):
        return False
    return importlib.util.find_spec(f"{package}.{name}") is not None


def _import(module: str, package: str, name: str) -> Any:
    """``module`` imported for ``package.name``. An AttributeError raised while importing it (a library too old or
    too new for the code: ``module 'torch' has no attribute ...``) is an ImportError naming both, with the original
    as its cause: as an AttributeError it would read as "no such name" -- ``from package import name`` and
    ``hasattr`` drop it, and Python said only "cannot import name 'name'", the real error gone."""
    try:
        return importlib.import_module(module)
    except AttributeError as e:
        raise ImportError(f"{package}.{name} could not be imported: importing {module} raised "
                          f"AttributeError: {e} (see the error above)", name=module) from e


def _no_attribute(namespace: dict[str, Any], table: Mapping[str, str], name: str) -> AttributeError:
    """The error for a name the package has not (``mtl_lora_vl.atach``), with a did-you-mean of its public names
    and submodules where one is close. Python's own suggestion (printed with an uncaught error only, and not of a
    submodule not yet imported) is then left off, lest it be said twice."""
    package = namespace["__name__"]
    if name.startswith("_"):   # a tool's probe (__wrapped__, _repr_html_), not a public name misspelt: no search
        return AttributeError(f"module {package!r} has no attribute {name!r}")
    known = [n for n in (*namespace, *table) if not n.startswith("_")]
    known += [m.name for m in pkgutil.iter_modules(namespace.get("__path__", []))]
    hint = did_you_mean(name, known)
    message = f"module {package!r} has no attribute {name!r}{hint}"
    if not hint:
        return AttributeError(message)
    return AttributeError(message, name=None, obj=sys.modules.get(package))   # (obj set: Python adds no name)


def lazy_names(namespace: dict[str, Any],
               table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package whose ``globals()`` is ``namespace``: a name of ``table``
    (name -> the module that defines it) is imported from that module when first read, and kept."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(_import(table[name], package, name), name)
        elif _is_submodule(package, name):
            value = _import(f"{package}.{name}", package, name)
        else:
            raise _no_attribute(namespace, table, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
