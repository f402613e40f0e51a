"""Per-row predictions of an evaluation, for error analysis (``eval --predictions``): ``OUT/predictions/<task>.jsonl``.

One JSON line per scored row, in split order: ``index`` (the row's position in the split), ``image`` (its file
path, a list for several images, null for an image held in memory), the kind's input text (``question``,
``statement``), ``reference``, and the prediction of each model scored: ``adapted`` and, when the base model is
scored too, ``zero_shot``. The kinds record them from the predictions their metrics are computed from
(``TaskKind.evaluate(records=...)``); under sharded evaluation those are gathered to every rank with the metrics
(:func:`~mtl_lora_vl.distributed.map_shards`), and rank 0 alone records the rows and writes the files.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_file

__all__ = ["check_recordable", "merge_passes", "write_predictions"]


def check_recordable(kinds: Mapping[str, Any]) -> None:
    """Refuse ``--predictions`` at start-up, not after training and scoring, when a task's kind records no rows: a
    kind registered elsewhere, written before ``--predictions``, whose ``_evaluate`` takes no ``records``."""
    lacking = {}
    for name, kind in kinds.items():
        params = inspect.signature(kind._evaluate).parameters.values()
        if not any(p.name == "records" or p.kind is p.VAR_KEYWORD for p in params):
            lacking[name] = type(kind).__name__
    if lacking:
        raise ValueError(f"--predictions: the kind of task(s) {', '.join(f'{t!r} ({k})' for t, k in lacking.items())} "
                         "records no per-row predictions (its _evaluate takes no records=); leave out --predictions, "
                         "or give the kind's _evaluate the records parameter of TaskKind._evaluate")


def merge_passes(passes: dict[str, list[dict[str, Any]] | None]) -> list[dict[str, Any]]:
    """One row per scored row, by ``index`` in split order: its input and reference, and each pass's prediction under
    the pass's name (``adapted``, ``zero_shot``); a pass that left the row out has no entry for it."""
    rows: dict[int, dict[str, Any]] = {}
    for name, records in passes.items():
        for rec in records or ():
            row = rows.setdefault(rec["index"], {k: v for k, v in rec.items() if k != "prediction"})
            row[name] = rec["prediction"]
    return [rows[i] for i in sorted(rows)]


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_predictions(run_dir: str | Path, predictions: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """``run_dir/predictions/<task>.jsonl`` for each task of ``predictions`` (task -> rows of :func:`merge_passes`),
    each written whole or not at all, one line at a time; returns the files."""
    folder = Path(run_dir) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for task, rows in predictions.items():
        path = folder / f"{task}.jsonl"
        with atomic_file(path, overwrite=True, what=f"the predictions of task {task!r}") as tmp, tmp.open("w") as f:
            for row in rows:   # line by line: the whole file's text is not held beside the rows (a large split)
                f.write(json.dumps(_plain(row), allow_nan=False) + "\n")
        files.append(path)
    return files
