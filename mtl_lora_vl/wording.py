"""Small phrasing helpers for messages (a leaf: it imports nothing of the package, so any module may use it)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["agree", "comma_hint", "did_you_mean", "few", "given_as", "name_hint", "tasks_named"]

#: the verbs whose third person singular is not made by the rules in :func:`agree`: irregular ones and modals
_SINGULAR = {"have": "has", "are": "is", "were": "was", "be": "is", "cannot": "cannot", "can": "can", "could": "could",
             "may": "may", "might": "might", "must": "must", "shall": "shall", "should": "should", "will": "will",
             "would": "would"}


def few(items: list[str], n: int = 6) -> str:
    """The first ``n`` names of a list for an error message, and how many more there are."""
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def given_as(name: str, value: object) -> str:
    """A value as the caller gave it, for a message: ``--pretrained /w.bin`` where ``name`` is a command-line flag
    (it starts with ``-``), ``pretrained='/w.bin'`` where it is a Python argument or a file's key (``base.pretrained``).
    A function that both the command line and Python reach takes the name from its caller, as here."""
    return f"{name} {value}" if name.startswith("-") else f"{name}={value!r}"


def agree(verb: str, count: int) -> str:
    """``verb`` (given in its plural form; only its first word is changed) for ``count`` subjects:
    ``agree("have", 1) == "has"``, ``agree("end with", 1) == "ends with"``, ``agree("have", 2) == "have"``."""
    if count == 1 and verb:
        first, space, rest = verb.partition(" ")
        return (_SINGULAR.get(first) or _third_person(first)) + space + rest
    return verb


def _third_person(verb: str) -> str:
    """A regular verb's third person singular: "matches", "does", "fixes", "carries", "holds"."""
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(verb) > 1 and verb[-1] == "y" and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def tasks_named(names: Iterable[object], verb: str = "", noun: str = "task") -> str:
    """``"task 'vqa' has"`` / ``"tasks 'a', 'b' have"`` for a message: ``noun`` (pluralised with "s"), the names
    (repr), and ``verb`` agreeing with them (given in its plural form, see :func:`agree`; none when empty)."""
    names = list(names)
    head = f"{noun}{'' if len(names) == 1 else 's'} {few([repr(n) for n in names])}"
    return f"{head} {agree(verb, len(names))}" if verb else head


def comma_hint(name: str, flag: str, known: Iterable[str] = ()) -> str:
    """`` (task names are separated by commas: FLAG a,b)`` when ``name`` is several words (``'vqa retrieval'``,
    ``'vqa;retrieval'``), else ``""``: a did-you-mean of one of the words would drop the others. Also ``""`` when
    the words joined by '_', '-' or nothing are one of the ``known`` task names (``'caption cls'``: caption_cls)."""
    parts = [p for p in re.split(r"[\s;]+", name.strip()) if p]
    spelt = {sep.join(parts).casefold() for sep in ("_", "-", "")}
    if len(parts) < 2 or any(k.casefold() in spelt for k in known):
        return ""
    return f" (task names are separated by commas: {flag} {','.join(parts)})"


def name_hint(name: str, flag: str, known: Iterable[str]) -> str:
    """What an unknown task name's message adds: :func:`comma_hint` for several words (``'vqa retrieval'``: not "did
    you mean 'retrieval'"), else `` (did you mean 'x'?)`` for the one of ``known`` it is close to (case aside)."""
    known = list(known)
    return comma_hint(name, flag, known) or did_you_mean(name, known)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the one of ``known`` that ``name`` is close to (case aside), else ``""``."""
    by_case = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(name.strip().casefold(), list(by_case), n=1, cutoff=0.6)
    return f" (did you mean {by_case[close[0]]!r}?)" if close else ""
