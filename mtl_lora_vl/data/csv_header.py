"""A CSV's header row given again among its rows: what joining two CSV files (``cat a.csv b.csv``) leaves. Read as a
row, its ``label`` cell made a class named "label" (a class of no example, in every prediction's choices) and its
``image`` cell a missing file; a second file's header of its columns in another order also put every row after it
under the wrong columns. :func:`refuse_repeated_header` refuses either, naming the line. A leaf: the CSV reader
(:mod:`mtl_lora_vl.data.rows`) calls it.
"""

from __future__ import annotations

from pathlib import Path

from .common import DataFormatError

__all__ = ["refuse_repeated_header"]


def refuse_repeated_header(path: Path, rows: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """``rows`` (``(line, row)`` of the CSV file ``path``, cells stripped) as they are; a :class:`DataFormatError`
    naming the line of a row whose cells are the columns' names, in order or not (a second file's byte-order mark
    ignored)."""
    for lineno, row in rows:
        cells = [v.lstrip("\ufeff").strip() if isinstance(v, str) else v for v in row.values()]
        if row and cells == list(row):
            raise DataFormatError(f"{path}:{lineno}: the row repeats the header ({','.join(row)}): two CSV files "
                                  "joined into one? Remove the line (it would be read as a row: a class named after "
                                  "the 'label' column, an image named after the 'image' column)")
        if len(row) > 1 and all(isinstance(v, str) for v in cells) and sorted(cells) == sorted(row):
            raise DataFormatError(f"{path}:{lineno}: the row names the header's columns in another order "
                                  f"({','.join(cells)}): a second CSV file, of other column order, joined on? Remove "
                                  "the line and put the rows after it in the header's column order (read as they "
                                  "stand, each of their cells would be read under another column)")
    return rows
