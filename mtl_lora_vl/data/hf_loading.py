"""How the ``hf_datasets`` format (:mod:`.hf_datasets`, :mod:`.hf_table`) calls the ``datasets`` library: imported
when first needed (refused, saying how to install it, where it is missing), its progress bars off while a table opens,
its log lines held back until a refusal in our words may replace them, a saved folder loaded (one saved with no rows
refused), and parquet files of different columns read as one table refused naming how they differ."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..whole_files import read_whole
from .common import DataFormatError


def load_datasets() -> Any:
    """The optional ``datasets`` module; refused, saying how to install it, when it is missing."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("data format 'hf_datasets' needs the optional package `datasets` (and pyarrow): "
                          "pip install \"mtl-lora-vl[datasets]\" (or pip install datasets)") from e
    return datasets


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No progress bars while opening (the names below exist from datasets 2.x to 5.x; call it after
    :func:`load_datasets`)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    was = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        yield
    finally:
        if was:
            enable_progress_bar()


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_logs(name: str) -> Iterator[None]:
    """Hold back what logger ``name`` logs inside (its own handlers and its parents' see nothing meanwhile), and let
    it out at the end, unless a :class:`DataFormatError` leaves: a refusal in our words of what the held lines said
    in the library's (``datasets`` logged "Failed to read file ... CastError" above the refusal of parquet files of
    different columns, :func:`refuse_mixed_columns`). The logger is as it was after."""
    log = logging.getLogger(name)
    held, was, own = _Held(), log.propagate, list(log.handlers)
    for handler in own:   # (its own handlers too: they saw each record while held, and again when let out)
        log.removeHandler(handler)
    log.addHandler(held)
    log.propagate = False
    try:
        yield
    except DataFormatError:
        held.records.clear()
        raise
    finally:
        log.removeHandler(held)
        for handler in own:
            log.addHandler(handler)
        log.propagate = was
        for record in held.records:
            log.handle(record)


def load_saved(folder: Path, what: str) -> Any:
    """``datasets.load_from_disk`` of one saved ``Dataset`` folder; refused, naming ``what``, when it was saved with
    no rows (``datasets`` writes no data file then, and its loader fails with a bare IndexError)."""
    try:
        empty = json.loads(read_whole(folder / "state.json", encoding="utf-8")).get("_data_files") == []
    except (OSError, ValueError, AttributeError):   # unreadable or unusual: load_from_disk says what is wrong
        empty = False
    if empty:
        raise DataFormatError(f"hf_datasets {what} was saved with no rows; give a split that has rows, or leave that "
                              "split out of the task spec")
    with quiet_progress():
        return load_datasets().load_from_disk(str(folder))


def refuse_mixed_columns(files: list[str], error: BaseException) -> None:
    """Refuse parquet ``files`` read together as one table where ``error`` (what reading them raised) is ``datasets``'
    (its CastError, or a DatasetGenerationError around a CastError or a failed cast of a column's type) and their
    columns differ: name two files whose columns differ, and how, rather than the bare error (configs or different
    tables in one folder, e.g. GQA's images beside its questions). Returns where the columns do not differ."""
    import pyarrow.parquet as pq
    from datasets.exceptions import DatasetsError
    from datasets.table import CastError

    if not isinstance(error, (DatasetsError, CastError)) or len(files) < 2:
        return
    try:
        cols = {f: {n.name: str(n.type) for n in pq.read_schema(f)} for f in files}
    except (OSError, ValueError):   # (a footer unreadable: the error raised names it)
        return
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(repr(sorted(cols[f].items())), []).append(f)
    if len(groups) < 2:
        return
    (a, *_), (b, *_) = list(groups.values())[:2]
    only_a, only_b = [c for c in cols[a] if c not in cols[b]], [c for c in cols[b] if c not in cols[a]]
    typed = [f"{c!r} ({cols[a][c]} / {cols[b][c]})" for c in cols[a] if c in cols[b] and cols[a][c] != cols[b][c]]
    how = "; ".join([*([f"only {Path(a).name} has {only_a}"] if only_a else []),
                     *([f"only {Path(b).name} has {only_b}"] if only_b else []),
                     *([f"their types differ: {', '.join(typed)}"] if typed else [])])
    raise DataFormatError(f"hf_datasets: the parquet files read as one table have different columns ({len(groups)} "
                          f"kinds among {len(files)} files): {a} has columns {list(cols[a])}, {b} has "
                          f"{list(cols[b])} ({how}); they are no shards of one table (configs of a dataset, or other "
                          "tables, in one folder): give one table's folder or file as path (or a split whose files "
                          "are one table's); where one holds the images of the other's rows, join them with "
                          "image_table = {path = ..., key = ...}") from error
