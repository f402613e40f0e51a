"""Which rows two ``split`` options of a task spec share, told from their names alone: the spec warns where val or
test reads rows that train reads (:func:`mtl_lora_vl.tasks.spec.load_spec`), before any data is read.

A ``split`` joins splits with ``+`` and may slice each as ``datasets`` does (``train[:90%]``, ``train[100:200]``;
:mod:`.hf_slices` reads them). Two parts share rows where they name the same split and either is whole, or both slice
it in the same unit (rows, or percents: a slice with one end a percent is of percents, as ``datasets`` reads it,
``train[10:50%]`` is ``train[10%:50%]``) counted from its start into ranges that overlap. Rows against percents, a
bound counted from the end, or percents rounded two ways (``(pct1_dropremainder)`` beside the default, closest: a bound
falls on other rows in each) depend on the split's length: such parts are not said to share rows from their names (a
whole split still holds them: ``train`` beside ``train[-50:]``; and a slice written alike reads the same rows);
:func:`length_decides` tells where a pair has such parts, and :func:`shared_on` decides them once the split's length
is known (read), as ``datasets`` counts them: ``train[:90%]`` beside ``train[-10%:]`` share row 13 of 15, none of 10;
``train[-50:]`` beside ``train[-100:-40]``, rows 50 to 59 of 100; ``train[:50%]`` beside
``train[50%:](pct1_dropremainder)``, rows 50 to 74 of 150; ``train[:50%](pct1_dropremainder)`` beside
``train[40%:50%]``, none of 150 (rows 0 to 49 and 60 to 74), rows 80 to 99 of 200. A
table that gives no ``split`` reads the one split its files hold, whole (:mod:`.hf_parquet`, :mod:`.hf_datasets`): it
shares rows with every part of the other's, whatever that split's name (``train[80%:]`` beside no split read rows
that the training table read too, unwarned).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .hf_parquet import joined_splits
from .hf_slices import slice_rows

__all__ = ["NOT_ROW_CHOICE", "length_decides", "shared_on", "shared_parts", "split_parts"]

#: Reader options that change how rows are read or checked, not which rows: left out where two splits are compared
#: for reading the same rows (the spec's train / val check, eval's check against the adapter's training split).
NOT_ROW_CHOICE = frozenset({"strict", "verify", "one_per_image", "class_names", "cache_dir", "columns",
                            "question_type_field"})

#: One part of a split: its name, then maybe a slice ``[from:to]`` (each end rows or a percent) and a rounding.
#: Its ends are numbers as ``datasets`` reads them, digits maybe grouped by ``_`` (``train[:1_000]``); another end
#: (``train[-:5]``, which ``datasets`` refuses) leaves the part a name of its own.
_PART = re.compile(r"(?P<name>[^\[\]()]+)(?:\[(?P<lo>(?:-?\d+(?:_\d+)*)?)(?P<lo_pct>%?):"
                   r"(?P<hi>(?:-?\d+(?:_\d+)*)?)(?P<hi_pct>%?)\])?(?:\((?P<rounding>.*)\))?")


def split_parts(split: str) -> list[str]:
    """The parts ``split`` joins with ``+`` (:func:`.hf_parquet.joined_splits`), stripped: ``["train[:10%]", "test"]``
    for ``"train[:10%] + test"``."""
    return [p.strip() for p in joined_splits(split)]


_Part = tuple[str, "str | None", float, float, str]


def _rows(part: str) -> _Part:
    """``part``'s split name, the unit of its slice (``""`` rows, ``"%"``, None: the whole split; ``"?"``: its length
    decides), the slice's ends (``[lo, hi)``) and its rounding (``datasets``' default ``closest``, or as given)."""
    m = _PART.fullmatch(part)
    if m is None or m["lo"] is None:
        return part if m is None else m["name"], None, 0, math.inf, ""
    lo, hi = int(m["lo"] or 0), int(m["hi"]) if m["hi"] else math.inf
    # (one end a percent makes both percents, as datasets reads them: train[10:50%] is train[10%:50%])
    unit = "%" if m["lo_pct"] or m["hi_pct"] else "" if m["lo"] or m["hi"] else None
    unit = "?" if lo < 0 or hi < 0 else unit
    return m["name"], unit, lo, hi, (m["rounding"] or "closest").strip()


def _overlap(a: _Part, b: _Part) -> bool | None:
    """Whether parts ``a`` and ``b`` (:func:`_rows`) share rows, as their names tell; None where the split's length
    decides (a bound counted from the end, rows beside percents, or percents rounded two ways)."""
    if "" in (a[0], b[0]):   # (no split given: the one split the files hold, whole)
        return True
    if a[0] != b[0]:
        return False
    if a[1] is None or b[1] is None:   # (a whole split holds every slice's rows, counted from its end too)
        return True
    if a == b:   # (the same slice: the same rows, counted from the end or not)
        return True
    if "?" in (a[1], b[1]) or a[1] != b[1]:
        return None
    if a[1] == "%" and a[4] != b[4]:   # (rounded two ways: a bound may fall on other rows in each)
        return None
    return a[2] < b[3] and b[2] < a[3]


def shared_parts(one: str, other: str) -> list[str]:
    """The parts of split ``one`` (:func:`split_parts`) that read rows split ``other`` reads too, as far as the names
    tell (module docstring): ``["test"]`` for ``train+test`` beside ``test``, ``["train[:90%]"]`` beside
    ``train[80%:]``, none beside ``train[90%:]``. Where ``one`` is ``""`` (no split given: the one split the files hold,
    whole) beside a split, the parts of ``other`` it holds are named: ``["train[:80%]"]`` beside ``train[:80%]``."""
    theirs = [_rows(p) for p in split_parts(other)]
    if not one.strip() and other.strip():
        return split_parts(other)
    return [p for p in split_parts(one) if any(_overlap(_rows(p), q) for q in theirs)]


def length_decides(one: str, other: str) -> bool:
    """Whether a part of split ``one`` and one of ``other`` slice one split so that only its length tells whether they
    share rows (``train[:90%]`` beside ``train[-10%:]``; ``train[:100]`` beside ``train[90%:]``): :func:`shared_on`
    decides them once it is known."""
    theirs = [_rows(q) for q in split_parts(other)]
    return any(_overlap(_rows(p), q) is None for p in split_parts(one) for q in theirs)


def shared_on(one: str, other: str, lengths: Mapping[str, int]) -> list[str]:
    """The parts of split ``one`` that read rows split ``other`` reads where each split named has the rows ``lengths``
    gives (its whole length, as read): a pair whose names do not tell (:func:`length_decides`) by the rows
    ``datasets``' ``ReadInstruction`` chooses on that length (:func:`.hf_slices.slice_rows`), not shared where a
    split's length is not given or a part chooses no row; every other pair as :func:`shared_parts` tells."""
    theirs = split_parts(other)
    return [p for p in split_parts(one) if any(_share_on(p, q, lengths) for q in theirs)]


def _share_on(one: str, other: str, lengths: Mapping[str, int]) -> bool:
    a = _rows(one)
    told, name = _overlap(a, _rows(other)), a[0]
    if told is not None or name not in lengths:
        return bool(told)
    try:   # (a part datasets cannot read on these rows, or that chooses none, shares none: its read is refused)
        ((la, ha),), ((lb, hb),) = (slice_rows(p, {name: lengths[name]}, "") for p in (one, other))
    except ValueError:
        return False
    return la < hb and lb < ha
