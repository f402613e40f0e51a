"""A list written as text in a row's cell: what pandas' ``DataFrame.to_csv`` writes for a list column
(``"['yes', 'yes', 'no']"``), or a JSON list kept as a string. Read as it stands it was one answer, caption, label or
path (``"['yes', 'yes', 'no']"``, which no model ever predicts); a file and line naming such a cell is refused, with
the fix. A leaf: the JSONL and CSV readers (:mod:`mtl_lora_vl.data.rows`) call :func:`refuse_list_cells`.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from .common import DataFormatError

__all__ = ["refuse_list_cells"]

#: The fields that hold several values '|'-separated in a CSV cell, or one text value.
_FIELDS = ("answers", "captions", "caption", "text", "images", "label")


def _as_list(cell: str) -> list[Any] | None:
    """The list a cell's text spells (as JSON or as Python writes it), or None: not a list of texts or numbers."""
    text = cell.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                           for v in value):
            return value
    return None


def refuse_list_cells(path: Path, rows: list[tuple[int, dict]], csv: bool) -> list[tuple[int, dict]]:
    """``rows`` (``(line, row)`` of ``path``, a CSV file or JSON lines) as they are; a :class:`DataFormatError` naming
    ``path``, the line and the field where a text cell spells a list."""
    for lineno, row in rows:
        for key in _FIELDS:
            cell = row.get(key)
            items = _as_list(cell) if isinstance(cell, str) else None
            if items is None:
                continue
            raise DataFormatError(f"{path}:{lineno}: the {key!r} cell {cell!r} is a list written as text (as pandas' "
                                  f"to_csv writes a list column), which would be read as one value; "
                                  f"{_fix(key, items, csv)}")
    return rows


def _fix(key: str, items: list[Any], csv: bool) -> str:
    """What to write instead of the list in field ``key``."""
    if key == "label":
        return "a row has one label: give the class name (or index) itself"
    if not items:
        return "leave the cell empty" if csv else f"give the {key} itself: [] or leave the field out"
    if not csv:
        return f"give the list itself ({json.dumps(items)}), not a string holding it"
    if key in ("answers", "images", "captions"):   # ('caption' and 'text' hold one caption: never split)
        return (f"give the {key} '|'-separated ({'|'.join(map(str, items))!r}), or write the rows as JSON lines "
                "(df.to_json(path, orient='records', lines=True) keeps lists)")
    return ("give each caption its own row (rows of one image are grouped), or write the rows as JSON lines "
            "(df.to_json(path, orient='records', lines=True) keeps lists)")
