"""``datasets``' split slices for the ``hf_datasets`` format (:mod:`.hf_datasets`): ``split = "train[:10%]"``,
``"train[100:200]"``, ``"train[-50:]"``, ``"train[:1000]+test[:10]"``, read as ``load_dataset(split=...)`` reads them.

The slices are read by ``datasets``' own ``ReadInstruction`` (``datasets.arrow_reader``, public as
``datasets.ReadInstruction``): a percent rounded to the closest row (or ``(pct1_dropremainder)``), a negative index
counted from the split's end. Each split named is read once (a parquet folder's files of that split, or a
``save_to_disk`` folder's split), and the slices choose ranges of its rows, in the order given; a slice that
chooses no row, or two slices choosing a row twice (``datasets`` reads it twice over: it would count twice in
training or scoring), are refused, as a split joined to itself is (:func:`.hf_parquet.parquet_files`).
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

from .hf_parquet import parquet_files

__all__ = ["is_sliced", "joined_lengths", "parquet_slices", "row_name", "slice_names", "slice_rows", "split_row",
           "take_rows", "unsliced"]

#: Where a split of the task spec slices rows: a part ``name[...]`` (or ``name[...](rounding)``).
_SLICE = re.compile(r"[\[(]")


def is_sliced(split: str | None) -> bool:
    """Whether ``split`` slices the rows of a split (``train[:10%]``, ``train+test[:10]``)."""
    return split is not None and _SLICE.search(split) is not None


def slice_names(split: str) -> list[str]:
    """The splits ``split`` slices, each once, in the order named: ``["train", "test"]`` for
    ``train[:1000]+test[:10]``, ``["train"]`` for ``train[:50%]+train[50%:]``."""
    parts = re.split(r"\s*\+\s*", split.strip())
    return list(dict.fromkeys(_SLICE.split(p, maxsplit=1)[0].strip() for p in parts))


def unsliced(split: str | None) -> str | None:
    """``split`` without its slices (``train+test`` for ``train[:10]+test[:5]``): the splits it reads rows of."""
    return "+".join(slice_names(split)) if is_sliced(split) else split


def slice_rows(split: str, lengths: dict[str, int], where: str) -> tuple[tuple[int, int], ...]:
    """The rows ``split`` reads, as ranges ``(start, end)`` of the table of its splits' rows one after another (each
    split of :func:`slice_names` once, ``lengths`` its rows), in the order given; refused, naming ``where``, where
    ``datasets`` cannot read ``split``, a slice chooses no row, or rows twice."""
    from datasets import ReadInstruction

    try:
        instruction = ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as e:   # (its parse errors: ValueError; a bad rounding: AssertionError)
        raise ValueError(f"{where}: split {split!r} is not datasets' split syntax ({e}); write each split as "
                         "name[start:end], the ends rows (negative: from the end) or percents, e.g. split = "
                         "\"train[:10%]\", \"train[100:200]\" or \"train[:1000]+test[:10]\"") from None
    try:   # (well written, and refused by datasets for these rows: pct1_dropremainder on under 100 rows)
        chosen = instruction.to_absolute(lengths)
    except (ValueError, AssertionError) as e:
        rows = ", ".join(f"{name!r}: {n:,}" for name, n in lengths.items())
        raise ValueError(f"{where}: datasets cannot read split {split!r} from these rows ({e}; rows: {rows}); give "
                         "slices that fit the splits' rows (with the default rounding, closest, where a split has "
                         "under 100 rows)") from None
    start = dict(zip(lengths, itertools.accumulate(lengths.values(), initial=0)))   # (each split's first row)
    rows = []
    for c in chosen:
        if c.to <= c.from_:
            raise ValueError(f"{where}: split {split!r} chooses no row of split {c.splitname!r} "
                             f"({lengths[c.splitname]} rows) in one of its slices; give a slice that holds rows, or "
                             "leave it out")
        rows.append((start[c.splitname] + c.from_, start[c.splitname] + c.to))
    twice = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    if twice:
        raise ValueError(f"{where}: split {split!r} chooses some rows twice (its slices overlap); datasets' "
                         "load_dataset reads such rows twice over, and here they would count twice in training or "
                         "scoring: give slices that do not overlap, e.g. split = \"train[:50%]+train[50%:]\"")
    return tuple(rows)


def take_rows(ds: Any, rows: tuple[tuple[int, int], ...]) -> Any:
    """The rows ``rows`` (:func:`slice_rows`) of the ``datasets.Dataset`` ``ds``, in order: ranges of its memory map
    (``select`` of a range, joined with ``concatenate_datasets``), no indices mapping; ``ds`` where ``rows`` is
    empty (every row)."""
    if not rows:
        return ds
    from datasets import concatenate_datasets

    parts = [ds.select(range(a, b)) for a, b in rows]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def split_row(rows: tuple[tuple[int, int], ...], i: int) -> int:
    """Row ``i`` of a table read as ``rows`` (:func:`slice_rows`; ``()``: every row), numbered as in its splits' rows
    one after another: what a row's made-up image id is made of, so that a row read by two slices (``train[:60%]``,
    ``train[50%:]``) has one id, one row key, and the benchmark's check of shared rows sees it."""
    for a, b in rows:
        if i < b - a:
            return a + i
        i -= b - a
    return i


def row_name(table: Any, i: int) -> str:
    """How a message names row ``i`` of ``table`` (a :class:`.hf_table.DatasetTable` as read): ``row i`` where it
    reads one split whole; else by the row's number in its split, the row a user opening the file looks at, beside
    its place in the slice: ``row 105 of split 'train' (row 5 of the slice)`` for row 5 of ``train[100:200]``; of
    splits joined whole (``test+train``: :func:`joined_lengths`), ``row 7 of split 'train'``, not its place in the
    joined table (``row 13``: past the end of the train split's 12 rows)."""
    if not table.rows and len(table.lengths) < 2:
        return f"row {i}"
    n = split_row(table.rows, i)
    of_slice = f" (row {i} of the slice)" if table.rows else ""
    for split, length in table.lengths:   # (the splits' rows one after another: the split that holds row n)
        if n < length:
            return f"row {n} of split {split!r}{of_slice}"
        n -= length
    return f"row {n}{of_slice}"


def parquet_slices(base: Path, split: str, shown: str | os.PathLike,
                   note: bool = True) -> tuple[list[str], dict[str, int]]:
    """The parquet files under ``base`` of each split ``split`` slices (:func:`slice_names`), one split's after
    another's, and each split's rows (from the files' footers): what :func:`slice_rows` numbers the rows of. A file
    of two of the splits is refused (its rows would be numbered in both). ``shown``: ``base`` as the spec names it;
    ``note``: say, as the whole join's read does, which files named for a longer split it leaves out."""
    import pyarrow.parquet as pq

    files: list[str] = []
    lengths: dict[str, int] = {}
    names = slice_names(split)
    for name in names:   # (in a join, a file one part leaves out and another reads is not noted: the join's, below)
        mine = parquet_files(base, name, shown, written=split, note=note and len(names) == 1)
        both = [f for f in mine if f in files]
        if both:
            raise ValueError(f"hf_datasets {base}: split {split!r} slices the splits {slice_names(split)}, and the "
                             f"parquet file {both[0]} is of split {name!r} and of one before it; slice one of them")
        files += mine
        lengths[name] = sum(pq.read_metadata(f).num_rows for f in mine)
    if note and len(names) > 1:
        parquet_files(base, "+".join(names), shown, written=split)
    return files, lengths


def joined_lengths(base: Path, split: str | None, shown: str | os.PathLike) -> dict[str, int]:
    """Each split's rows where ``split`` joins splits of the parquet files under ``base`` whole (``test+train``), in
    order, so that :func:`row_name` names a row by its split; ``{}`` for one split, or where a file is of two of them
    (read once, :func:`.hf_parquet.parquet_files`: its rows are no one split's)."""
    if split is None or is_sliced(split) or len(slice_names(split)) < 2:
        return {}
    try:
        return parquet_slices(base, split, shown, note=False)[1]   # (the join's own read noted what it leaves out)
    except ValueError:   # (a file of two of the splits: parquet_slices refuses it, the whole join reads it once)
        return {}
