"""Small phrasing helpers for messages (a leaf: it imports nothing of the package, so any module may use it)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["agree", "few", "tasks_named"]

#: the verbs whose third person singular is not the plural form plus "s"
_SINGULAR = {"have": "has", "are": "is", "were": "was", "do": "does", "cannot": "cannot", "can": "can"}


def few(items: list[str], n: int = 6) -> str:
    """The first ``n`` names of a list for an error message, and how many more there are."""
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def agree(verb: str, count: int) -> str:
    """``verb`` (given in its plural form; only its first word is changed) for ``count`` subjects:
    ``agree("have", 1) == "has"``, ``agree("end with", 1) == "ends with"``, ``agree("have", 2) == "have"``."""
    if count == 1 and verb:
        first, space, rest = verb.partition(" ")
        return _SINGULAR.get(first, first + "s") + space + rest
    return verb


def tasks_named(names: Iterable[object], verb: str = "", noun: str = "task") -> str:
    """``"task 'vqa' has"`` / ``"tasks 'a', 'b' have"`` for a message: ``noun`` (pluralised with "s"), the names
    (repr), and ``verb`` agreeing with them (given in its plural form, see :func:`agree`; none when empty)."""
    names = list(names)
    head = f"{noun}{'' if len(names) == 1 else 's'} {few([repr(n) for n in names])}"
    return f"{head} {agree(verb, len(names))}" if verb else head
