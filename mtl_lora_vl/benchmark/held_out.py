"""The benchmark's checks of its tasks' splits: a val split to tune on and a test split to report on, and test rows
held out from the val rows (told by their row keys and their images' sources)."""

from __future__ import annotations

import hashlib
import os
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
    both = set(keys["val"]) & set(keys["test"])   # (only these rows' images are read: a table's are hashed)
    val, test_rows = ([(k, image_source(ex.image) if k in both else None) for k, ex in zip(keys[s], splits[s].examples)]
                      for s in ("val", "test"))
    val, test = set(val), set(test_rows)
    where = spec.source_file or f"task {spec.name!r}"
    if test and test <= val:
        raise ValueError(f"{where}: every one of the {len(test):,} rows of its test split is also a row of its val "
                         "split, so the benchmark would choose learning rates on the rows it reports; point "
                         "[data.val] and [data.test] at different files (e.g. hold out part of the training files "
                         "as val)")
    shared = sum(row[0] in both and row in val for row in test_rows)
    if shared and warn:
        warn_user(overlap_warning(spec, shared, len(test_rows)))
    return shared


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
