"""A CSV's header row given again among its rows: what joining two CSV files (``cat a.csv b.csv``) leaves. Read as a
row, its ``label`` cell made a class named "label" (a class of no example, in every prediction's choices) and its
``image`` cell a missing file; :func:`refuse_repeated_header` refuses it, naming the line. A leaf: the CSV reader
(:mod:`mtl_lora_vl.data.rows`) calls it.
"""

from __future__ import annotations

from pathlib import Path

from .common import DataFormatError

__all__ = ["refuse_repeated_header"]


def refuse_repeated_header(path: Path, rows: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """``rows`` (``(line, row)`` of the CSV file ``path``, cells stripped) as they are; a :class:`DataFormatError`
    naming the line of a row whose every cell is its column's name (a second file's byte-order mark ignored)."""
    for lineno, row in rows:
        if row and all(isinstance(v, str) and v.lstrip("\ufeff").strip() == k for k, v in row.items()):
            raise DataFormatError(f"{path}:{lineno}: the row repeats the header ({','.join(row)}): two CSV files "
                                  "joined into one? Remove the line (it would be read as a row: a class named after "
                                  "the 'label' column, an image named after the 'image' column)")
    return rows
