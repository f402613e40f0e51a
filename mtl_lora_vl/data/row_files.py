"""A JSONL or CSV file read into its rows, ``(line, row)`` pairs, before any row is interpreted: the file-level
checks (JSON per line, the CSV's header and its records). A leaf: the row readers (:mod:`mtl_lora_vl.data.rows`)
call :func:`jsonl_rows` and :func:`csv_rows`.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

from .common import DataFormatError, open_text

logger = logging.getLogger(__name__)

__all__ = ["csv_rows", "jsonl_rows"]


def _constant(name: str) -> float | None:
    """A JSON ``NaN`` is a missing value (``json.dumps`` of a pandas row writes a blank cell so), as null is: read as
    it stood it was the caption, question or type "nan". ``Infinity`` stays a number."""
    return None if name == "NaN" else float(name)


def jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line, row)`` of each JSON object line of ``path`` (a ``NaN`` read as null); blank lines are passed over,
    anything else refused."""
    rows = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            # a first line "[" or "{", or a list: one JSON document (LLaVA's .json, an indented file), not JSON lines
            whole = "; the file looks like one JSON document, not JSON lines: write one JSON object per line"
            try:
                row = json.loads(line, parse_constant=_constant)
            except json.JSONDecodeError as e:
                one = whole if not rows and line.strip() in ("[", "{") else ""
                raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg}){one}") from e
            if not isinstance(row, dict):
                one = whole if not rows and isinstance(row, list) else ""
                raise DataFormatError(f"{path}:{lineno}: each line must be a JSON object, got "
                                      f"{type(row).__name__}{one}")
            rows.append((lineno, row))
    return rows


#: The CSV columns whose text may hold a line break (a quoted field over several lines); any other is a quote left open.
_FREE_TEXT = ("text", "caption", "captions", "statement", "question")


def csv_rows(path: Path) -> list[tuple[int, dict]]:
    """``(last line, row)`` of each record of the CSV file ``path`` (cells stripped); a header naming a column
    twice, a record of more or fewer cells than the header and a quote left open over a path or label are refused."""
    with open_text(path, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)   # "image, caption": a space after the comma
        rows, spans, last = [], [], 0
        try:
            if reader.fieldnames is None:
                raise DataFormatError(f"{path}: empty CSV file; expected a header row with an 'image' column")
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            twice = sorted(n for n, c in Counter(reader.fieldnames).items() if c > 1)
            if twice:   # DictReader keeps the last column of a name and drops the others without a word
                raise DataFormatError(f"{path}:1: the header names the column(s) {', '.join(map(repr, twice))} "
                                      "twice; give each column its own name")
            last = 1
            for row in reader:   # line_num: the record's last line (blank lines and quoted newlines counted)
                rows.append((reader.line_num, row))
                broken = [k for k, v in row.items() if isinstance(v, str) and ("\n" in v or "\r" in v)]
                if set(broken) - set(_FREE_TEXT):   # a path, label or answer never holds a line break
                    raise DataFormatError(f"{path}:{last + 1}: the {sorted(set(broken) - set(_FREE_TEXT))[0]!r} field "
                                          f"runs over lines {last + 1}-{reader.line_num}; a quote left open (\") takes "
                                          "the rows after it into one field: close it")
                if broken:
                    spans.append(f"{last + 1}-{reader.line_num}")
                last = reader.line_num
        except csv.Error as e:   # e.g. a quote left open: the rows after it grow one field past csv's limit
            raise DataFormatError(f"{path}:{last + 1}: the CSV record that starts on this line cannot be read ({e}); a "
                                  "quote left open (\") takes the rows after it into one field: close it, or quote the "
                                  "whole field") from None
    for lineno, row in rows:
        if None in row:
            raise DataFormatError(f"{path}:{lineno}: more fields than header columns; quote fields with commas")
        short = [k for k, v in row.items() if v is None]   # DictReader's restval: the row ended early
        if short:
            raise DataFormatError(f"{path}:{lineno}: fewer fields than header columns (no "
                                  f"{', '.join(map(repr, short))}); give every row a cell per column (an empty one: a "
                                  "comma with nothing after it)")
        for key, value in row.items():   # "img/0.jpg , cat": the space before a comma is no part of the value
            if isinstance(value, str):
                row[key] = value.strip()
    if spans:
        logger.warning("%s: %d quoted field(s) run over several lines (lines %s%s): a quote left open takes the "
                       "rows after it into one field; close it, or ignore this if the line breaks are meant",
                       path, len(spans), ", ".join(spans[:3]), " ..." if len(spans) > 3 else "")
    return rows
