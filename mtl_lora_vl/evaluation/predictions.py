"""Per-row predictions of an evaluation, for error analysis (``eval --predictions``): ``OUT/predictions/<task>.jsonl``.

One JSON line per scored row, in split order: ``index`` (the row's position in the split), ``image`` (its file
path, a list for several images, null for an image held in memory), the kind's input text (``question``,
``statement``), ``reference``, and the prediction of each model scored: ``adapted`` and, when the base model is
scored too, ``zero_shot``. The kinds record them from the predictions their metrics are computed from
(``TaskKind.evaluate(records=...)``); under sharded evaluation those are gathered to every rank with the metrics
(:func:`~mtl_lora_vl.distributed.map_shards`), and rank 0 alone records the rows and writes the files.

Each task's file is written as soon as the task is scored (:class:`PredictionFiles`), atomically, and its rows are
then dropped: at most one task's rows are held (~2.5 KB a row), and a run stopped in a later task keeps the files of
the tasks scored before it. ``eval`` writes them to a folder of its own beside ``OUT`` (:class:`StagedFiles`), each
also linked into ``OUT/predictions.partial/`` (what a stopped eval leaves), and moves its own files to
``OUT/predictions/`` with eval.json when it ends (its ``OUT`` is replaced whole): two evals writing the same OUT at
once each move their own rows. ``train`` writes them to ``RUN/predictions/``.
"""

from __future__ import annotations

import glob
import inspect
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..config import check_task_file_names
from ..io.atomic import atomic_file
from ..io.locks import lock_holder, take_lock
from ..wording import agree, tasks_named

__all__ = ["PARTIAL", "PredictionFiles", "StagedFiles", "check_file_names", "check_recordable", "merge_passes",
           "stopped_predictions", "write_predictions"]

#: The folder of ``eval``'s OUT that holds the task files written so far (moved to OUT/predictions at the end).
PARTIAL = "predictions.partial"


def check_file_names(tasks: Iterable[str]) -> None:
    """ValueError unless every task can name its ``<task>.jsonl`` (a name such as '/tmp/x' wrote /tmp/x.jsonl)."""
    check_task_file_names(tasks, "predictions", "and each task's rows are written to predictions/<task>.jsonl; rename "
                          "the task (its spec's name), or leave out predictions")


def check_recordable(kinds: Mapping[str, Any]) -> None:
    """Refuse ``--predictions`` at start-up, not after training and scoring, when a task's kind records no rows (a
    kind registered elsewhere, written before ``--predictions``, whose ``_evaluate`` takes no ``records``) or its
    name cannot name its file."""
    check_file_names(kinds)
    lacking = {}
    for name, kind in kinds.items():
        params = inspect.signature(kind._evaluate).parameters.values()
        if not any(p.name == "records" or p.kind is p.VAR_KEYWORD for p in params):
            lacking[name] = type(kind).__name__
    if lacking:
        one = len(lacking) == 1
        kinds_of, whose = ("a kind", "the kind's") if one else ("kinds", "the kinds'")
        raise ValueError(f"--predictions: {tasks_named(lacking, 'have')} {kinds_of} ({', '.join(lacking.values())}) "
                         f"that {agree('record', len(lacking))} no per-row predictions ({'its' if one else 'their'} "
                         f"_evaluate takes no records=); leave out --predictions, or give {whose} _evaluate the "
                         "records parameter of TaskKind._evaluate")


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


def _write_task(folder: Path, task: str, rows: Iterable[dict[str, Any]]) -> Path:
    """``folder/<task>.jsonl``: ``rows`` one JSON line each, written whole or not at all."""
    check_file_names([task])
    path = folder / f"{task}.jsonl"
    with atomic_file(path, overwrite=True, what=f"the predictions of task {task!r}") as tmp, tmp.open("w") as f:
        for row in rows:   # line by line: the whole file's text is not held beside the rows (a large split)
            f.write(json.dumps(_plain(row), allow_nan=False) + "\n")
    return path


def write_predictions(run_dir: str | Path, predictions: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """``run_dir/predictions/<task>.jsonl`` for each task of ``predictions`` (task -> rows of :func:`merge_passes`),
    each written whole or not at all, one line at a time; returns the files."""
    check_file_names(predictions)   # every name before any file
    folder = Path(run_dir) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    return [_write_task(folder, task, rows) for task, rows in predictions.items()]


class PredictionFiles:
    """The sink of an evaluation's rows (``evaluate_setup(predictions=...)``): called with a task's rows as soon as
    the task is scored, it writes ``folder/<task>.jsonl`` and keeps only the file's path, not the rows."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.written: dict[str, Path] = {}   # task -> its file: all the sink holds

    def check_tasks(self, tasks: Iterable[str]) -> None:
        """ValueError unless every task of ``tasks`` can name its file (:func:`check_file_names`), before scoring."""
        check_file_names(tasks)

    def __call__(self, task: str, rows: list[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written[task] = _write_task(self.folder, task, rows)

    def move_to(self, folder: Path) -> None:
        """Move the files written to ``folder`` (on the same filesystem), which is made; a file left in this sink's
        folder by an earlier run that was stopped is not taken."""
        folder.mkdir(parents=True, exist_ok=True)
        for task, path in self.written.items():
            os.replace(path, folder / path.name)
            self.written[task] = folder / path.name
        self.folder = folder


def _link(src: Path, dst: Path) -> None:
    """``dst`` made (or replaced, atomically) as a hard link to ``src``; a copy where links cannot be made."""
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StagedFiles(PredictionFiles):
    """``eval``'s sink for ``out``: each task's file is written to a folder of this evaluation's own beside ``out``
    (beside its target when ``out`` is a symbolic link; made at the first task), and linked into ``out/``:data:`PARTIAL`
    (which a stopped eval leaves, and which another eval of the same ``out`` may replace); :meth:`move_to` moves this
    evaluation's own files. :meth:`close` removes its folder (after a stop the files stay in
    ``out/predictions.partial``). The folder's ``.lock`` is held while the evaluation runs: the folders of killed
    evaluations of the same ``out`` (their locks let go) are removed when the next one starts
    writing, instead of piling up beside ``out``."""

    def __init__(self, out: Path) -> None:
        super().__init__(out / PARTIAL)
        self.out, self.stage, self.lock = out, None, None

    def __call__(self, task: str, rows: list[dict[str, Any]]) -> None:
        if self.stage is None:
            # beside OUT's link target, where atomic_dir writes OUT (maybe another file system): the files move there
            target = self.out.resolve() if self.out.is_symlink() else self.out.absolute()
            target.parent.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.predictions-", dir=target.parent))
            try:
                self.lock = take_lock(self.stage / ".lock")
            except OSError:   # a file system without flock: no folder can be told stale, none is removed
                self.lock = None
            if self.lock is not None:
                self._remove_stale(target)
        self.written[task] = _write_task(self.stage, task, rows)
        self.folder.mkdir(parents=True, exist_ok=True)
        _link(self.written[task], self.folder / f"{task}.jsonl")

    def move_to(self, folder: Path) -> None:
        super().move_to(folder)
        self.close()

    def _remove_stale(self, target: Path) -> None:
        """Remove the folders of this ``out``'s evaluations that were killed (their ``.lock`` written, not held; an
        empty one is an evaluation between making its lock file and taking it)."""
        for folder in target.parent.glob(f".{glob.escape(target.name)}.predictions-*"):   # (a name may hold [ ])
            lock = folder / ".lock"
            if folder != self.stage and lock.is_file() and lock.stat().st_size and lock_holder(lock) is None:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Remove this evaluation's own folder (its files moved, or linked into out/predictions.partial)."""
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def stopped_predictions(out: Path, overwrite: bool) -> bool:
    """Whether ``eval``'s ``out`` holds nothing but the :data:`PARTIAL` folder of an evaluation that was stopped,
    which ``--overwrite`` replaces (it has no eval.json to mark it an earlier output of eval)."""
    if not out.is_dir() or {p.name for p in out.iterdir()} != {PARTIAL}:
        return False
    if not overwrite:
        raise FileExistsError(f"--out {out}: holds only {PARTIAL}/, the per-row predictions of an evaluation that was "
                              "stopped; pass --overwrite to replace them with this evaluation's results, or choose "
                              "another --out")
    return True
