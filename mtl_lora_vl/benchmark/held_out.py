"""The benchmark's checks of its tasks' splits: a val split to tune on and a test split to report on, and test rows
held out from the val rows (told by their row keys and their images' sources)."""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_left
from typing import Any

from ..data.hf_table import DatasetImage
from ..data.images import ImageError
from ..data.records import Split, row_key
from ..log import warn_user
from ..tasks import TaskSpec
from ..wording import tasks_named


def check_splits(specs: list[TaskSpec]) -> None:
    """Refuse tasks without both a val and a test split: learning rates are chosen on val and results
    reported on test, and a missing test split would be scored on val -- the split the choice was made on.
    And a task named twice (one would replace the other: a grid of fewer tasks, silently)."""
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--tasks: {tasks_named(twice, 'are')} named more than once; name each task once (a spec "
                         "file's `name = ...` tells it from the built-in task)")
    for spec in specs:
        missing = [s for s in ("val", "test") if s not in spec.data.splits]
        if missing:
            where = spec.source_file or f"task {spec.name!r}"
            raise ValueError(
                f"{where}: the benchmark needs a val split (to choose learning rates) and a test split (to report "
                f"on), but this spec has no {' and no '.join(missing)} split; add a [data.{missing[0]}] table "
                "(e.g. hold out part of the training files) so that no split both tunes and reports")


def check_held_out(spec: TaskSpec, splits: dict[str, Split], warn: bool = True) -> int:
    """Refuse a task whose test rows are all validation rows (its [data.val] and [data.test] read the same files, or
    test a part of them): learning rates would be chosen on the rows the report scores. Some of them: their count
    is returned (0: none), with a warning (:func:`overlap_warning`) unless not ``warn``. A row is told by its key
    (:func:`~mtl_lora_vl.data.records.row_key`, the rows' digest's) and its image's source: the row keys of two
    files' rows (a table's row number and label, no file name) can match."""
    keys = {s: [row_key(ex) for ex in splits[s].examples] for s in ("val", "test")}
    both = set(keys["val"]) & set(keys["test"])   # (only these rows' images are read)
    val_rows: dict[str, list[Any]] = {}
    for k, ex in zip(keys["val"], splits["val"].examples):
        if k in both:
            val_rows.setdefault(k, []).append(ex.image)
    rows = len(splits["test"].examples)
    shared = _shared(val_rows, [(k, ex.image) for k, ex in zip(keys["test"], splits["test"].examples) if k in both])
    where = spec.source_file or f"task {spec.name!r}"
    if rows and shared == rows:
        raise ValueError(f"{where}: every one of the {rows:,} rows of its test split is also a row of its val "
                         "split, so the benchmark would choose learning rates on the rows it reports; point "
                         "[data.val] and [data.test] at different files (e.g. hold out part of the training files "
                         "as val)")
    if shared and warn:
        warn_user(overlap_warning(spec, shared, rows))
    return shared


def _shared(val_rows: dict[str, list[Any]], test_rows: list[tuple[str, Any]]) -> int:
    """How many of ``test_rows`` (key, image) have an image of the :func:`image_source` of one of ``val_rows[key]``'s,
    told by the cheapest identity that can: one table cell is one image, a table's bytes of another length are
    another image, and only the rest are digested (a table's in a few reads of its column, not a read a row)."""
    cells = {k: {_cell(v) for v in vs} for k, vs in val_rows.items()}
    images = [*(v for vs in val_rows.values() for v in vs), *(im for _, im in test_rows)]
    lengths = _table_bytes(images, digest=False)
    same_cell, undecided = 0, []
    for k, im in test_rows:
        known = [lengths.get(id(v)) for v in val_rows[k]]
        if _cell(im) is not None and _cell(im) in cells[k]:
            same_cell += 1
        elif id(im) not in lengths or None in known or lengths[id(im)] in known:
            undecided.append((k, im))
    sources = _table_bytes([*(im for _, im in undecided), *(v for k, _ in undecided for v in val_rows[k])], digest=True)

    def source(image: Any) -> Any:
        if id(image) not in sources:
            sources[id(image)] = image_source(image)
        return sources[id(image)]

    val_sources = {k: {source(v) for v in val_rows[k]} for k in dict.fromkeys(k for k, _ in undecided)}
    return same_cell + sum(source(im) in val_sources[k] for k, im in undecided)


def _cell(image: Any) -> tuple[Any, str, int] | None:
    """A table image's cell (table, column, row); None for another image."""
    return (image.table, image.column, image.row) if isinstance(image, DatasetImage) else None


_SLICE = 4096   # table rows read at once


def _table_bytes(images: list[Any], digest: bool) -> dict[int, Any]:
    """{id(image): its bytes' length (or with ``digest``, :func:`image_source`'s digest of them)} for the table images
    among ``images`` that hold bytes, read a slice of their column at a time; an image left out (another kind, no
    bytes, a column read otherwise) is told by :func:`image_source`, which reads it alone."""
    groups: dict[tuple[Any, str], dict[int, list[int]]] = {}
    for im in images:
        if isinstance(im, DatasetImage):
            groups.setdefault((im.table, im.column), {}).setdefault(im.row, []).append(id(im))
    out: dict[int, Any] = {}
    if not groups:
        return out
    import pyarrow as pa  # (installed with datasets, which a table image needs)
    import pyarrow.compute as pc

    for (table, column), by_row in groups.items():
        rows = sorted(by_row)
        try:
            for start in range(rows[0] - rows[0] % _SLICE, rows[-1] + 1, _SLICE):
                wanted = rows[bisect_left(rows, start):bisect_left(rows, start + _SLICE)]
                if not wanted:
                    continue
                for r in wanted:   # (before: a file cut short under the map is not read)
                    table.check_read(r, column)
                cells = table.column(column)[start:start + _SLICE].column(0)
                if pa.types.is_struct(cells.type):
                    cells = pc.struct_field(cells, "bytes")
                picked = cells.take([r - start for r in wanted])
                values = (pc.binary_length(picked).to_pylist() if not digest else
                          [hashlib.sha256(b).hexdigest() if b else None for b in picked.to_pylist()])
                for r in wanted:   # (after: nor bytes a save in place changed while read)
                    table.check_read(r, column)
                for r, value in zip(wanted, values):
                    if value:   # (no bytes: image_source tells it by its place)
                        out.update(dict.fromkeys(by_row[r], value))
        except (ImageError, OSError, KeyError, TypeError, pa.ArrowException):
            continue   # (those left out are read one by one, as image_source reads them)
    return out


def overlap_warning(spec: TaskSpec, shared: int, rows: int) -> str:
    """What is said of a task ``shared`` of whose ``rows`` test rows are also val rows."""
    named = f"task {spec.name!r}" + (f" ({spec.source_file})" if spec.source_file else "")
    return (f"{named}: {shared:,} of the {rows:,} rows of its test split {'is' if shared == 1 else 'are'} also "
            f"{'a row' if shared == 1 else 'rows'} of its val split: learning rates are chosen on the val rows, so "
            "the report scores those test rows with rates tuned on them and its test scores are not wholly held out; "
            "give [data.val] and [data.test] files that share no rows")


def image_source(image: Any) -> Any:
    """Where an example's image is read from: its file (resolved), its bytes' digest (a table's image: its cell's);
    an image held in memory by the object itself (a tuple of them for several images)."""
    if isinstance(image, tuple):
        return tuple(image_source(part) for part in image)
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        return image_source(image["bytes"] if image.get("bytes") is not None else image.get("path"))
    if isinstance(image, str | os.PathLike):
        return os.path.realpath(image)
    if isinstance(image, bytes | bytearray | memoryview):
        return hashlib.sha256(image).hexdigest()
    if isinstance(image, DatasetImage):   # its bytes: a copy of a table in another file holds the same images
        try:
            return hashlib.sha256(image.fetch()).hexdigest()
        except (ImageError, OSError):   # (unreadable: told by its place, as the training's substitute would be)
            return tuple(image.table.location), image.table.split, image.column, image.row
    return id(image)
