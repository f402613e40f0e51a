"""Every public function, class and method of the package has a docstring and type hints.

Public: a module's ``__all__`` (or, without one, its names without a leading underscore) that the module defines,
and the methods and properties those classes define without a leading underscore. A method that overrides a
documented one inherits its docstring; a dataclass's generated signature is not a docstring.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator

import mtl_lora_vl

MODULES = ["mtl_lora_vl"] + sorted(m.name for m in pkgutil.walk_packages(mtl_lora_vl.__path__, "mtl_lora_vl.")
                                   if not m.name.endswith("__main__"))


def _public(module: object) -> Iterator[tuple[str, object]]:
    """(name, object) of the public functions and classes ``module`` itself defines."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
            yield name, obj


def _hint_gaps(fn: Callable) -> list[str]:
    """The parameters (and ``return``) of ``fn`` without a type hint (``self`` / ``cls`` need none)."""
    sig = inspect.signature(fn)
    gaps = [p.name for i, p in enumerate(sig.parameters.values())
            if p.annotation is inspect.Parameter.empty and not (i == 0 and p.name in ("self", "cls"))]
    return gaps + (["return"] if sig.return_annotation is inspect.Signature.empty else [])


def _inherited_doc(cls: type, name: str) -> str | None:
    """The docstring of ``name`` on ``cls`` or the first base that documents it."""
    for klass in cls.__mro__:
        member = vars(klass).get(name)
        if member is not None:
            doc = getattr(member.fget if isinstance(member, property) else inspect.unwrap(
                getattr(member, "__func__", member)), "__doc__", None)
            if doc and doc.strip():
                return doc
    return None


def _gaps() -> list[str]:
    out = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in _public(module):
            where = f"{module_name}.{name}"
            if inspect.isfunction(obj):
                out += [f"{where}: no docstring"] if not inspect.getdoc(obj) else []
                out += [f"{where}: no type hint for {g}" for g in _hint_gaps(obj)]
                continue
            doc = vars(obj).get("__doc__") or ""
            if not doc.strip() or doc.startswith(f"{obj.__name__}("):   # (a dataclass's generated signature)
                out.append(f"{where}: no class docstring")
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if not inspect.isfunction(fn):
                    continue
                if not _inherited_doc(obj, attr):
                    out.append(f"{where}.{attr}: no docstring")
                out += [f"{where}.{attr}: no type hint for {g}" for g in _hint_gaps(fn)]
    return out


def test_public_api_is_documented_and_typed():
    gaps = _gaps()
    assert not gaps, f"{len(gaps)} public functions / methods without a docstring or type hints:\n" + "\n".join(gaps)


def test_the_check_sees_gaps():
    class Documented:
        """A class."""

        def run(self, x: int) -> int:
            """Documented."""
            return x

    class Override(Documented):
        """Another."""

        def run(self, x: int) -> int:   # inherits run's docstring
            return x

        def bare(self, x):
            return x

    assert _inherited_doc(Override, "run") == "Documented."
    assert _inherited_doc(Override, "bare") is None
    assert _hint_gaps(Override.bare) == ["x", "return"] and _hint_gaps(Override.run) == []
