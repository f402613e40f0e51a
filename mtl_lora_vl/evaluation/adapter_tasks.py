"""Which task spec and data folder score each task ``eval --adapter`` is asked for: a task of the adapter on its saved
spec, or a spec file naming one of its tasks for other data (``--tasks``); and the folder each file-based task is read
from (the one the adapter records for the task, for its saved spec or a spec file, unless ``--data-root`` moves it); the
warning where a spec file's split reads rows the adapter trained its task on (where only the length of a split they
slice tells, once the split is read)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data.common import same_folder
from ..data.readers import READERS
from ..data.split_overlap import NOT_ROW_CHOICE, length_decides, shared_on, shared_parts, split_parts
from ..io import Pretrained
from ..tasks.registry import get_kind
from ..tasks.spec import TaskSpec, load_spec
from ..wording import name_hint, tasks_named

logger = logging.getLogger(__name__)


def check_task_item(item: str, known: list[str], adapter: Path) -> None:
    """Refuse an ``eval --tasks`` entry that is neither a task of the adapter nor a spec file (by its name)."""
    path = Path(item).expanduser()
    if item not in known and not (path.suffix == ".toml" or path.is_file()):
        raise ValueError(f"--tasks: {item!r} is not a task of the adapter {adapter} (it has {list(known)}) nor a "
                         f"spec file{name_hint(item, '--tasks', known)}; name its tasks, or give a spec file (.toml) "
                         "whose name is one of them to score that task on the spec's data")


def scoring_spec(item: str, lp: Pretrained, adapter: Path) -> TaskSpec:
    """An ``eval --tasks`` entry: a task of the adapter, scored on its saved spec's data; or a spec file whose
    ``name`` is a task of the adapter, for its ``[data]`` (and ``metrics``): the adapter's task, on other data.
    The adapter's own settings (head, options, templates, ``[generative]``) still score it."""
    if item in lp.config.tasks:
        if item not in lp.specs or item not in lp.heads:
            raise ValueError(f"{adapter}: no saved task spec or head for {item!r}; save the adapter with "
                             "task_specs= and heads= to evaluate it")
        return lp.specs[item]
    check_task_item(item, lp.config.tasks, adapter)
    path = Path(item).expanduser()
    if not path.is_file():
        raise ValueError(f"--tasks: {item}: spec file not found; give an existing spec file, or one of the adapter's "
                         f"tasks {list(lp.config.tasks)}")
    spec = load_spec(path, need_train=False)   # scored only: no training split needed
    if spec.name not in lp.config.tasks:
        raise ValueError(f"--tasks {item}: the spec's task {spec.name!r} is not a task of the adapter {adapter} (it "
                         f"has {list(lp.config.tasks)}); set `name = ...` in the spec to the task whose adapter should "
                         "score its data")
    saved = lp.specs.get(spec.name)
    if saved is not None and saved.kind != spec.kind:
        raise ValueError(f"--tasks {item}: the spec's task {spec.name!r} is of kind {spec.kind!r}, but the adapter "
                         f"trained it as {saved.kind!r}; give a {saved.kind} spec")
    if saved is not None:
        computed = get_kind(saved.kind).metrics_for(saved.options)
        extra = [m for m in spec.metrics if m not in computed]
        if extra and spec.metrics == tuple(get_kind(spec.kind).metrics_for(spec.options)):
            spec, extra = dataclasses.replace(spec, metrics=saved.metrics), []   # (no `metrics`: its own options')
        if extra:
            raise ValueError(f"--tasks {item}: `metrics` lists {extra}, which the adapter's task {spec.name!r} does "
                             f"not compute (its options, which score the task, give {list(computed)}); list some of "
                             "those")
        ignored = [f for f in ("head", "options", "templates", "generative") if getattr(spec, f) != getattr(saved, f)]
        if ignored:
            logger.warning("--tasks %s: scoring task %r on this spec's [data]; its %s differ from the adapter's, "
                           "which score the task (what it was trained with)", item, spec.name, ", ".join(ignored))
    return spec


def saved_task_roots(lp: Pretrained, specs: list[TaskSpec], data_root: str | None) -> dict[str, str]:
    """Where an evaluation reads each file-based task of the adapter: the folder it recorded for the task, unless
    ``--data-root`` is given (the data moved), which is said when it is not the recorded folder. A spec file naming
    one of its tasks (``--tasks other.toml``, other data) is read from that folder too when ``--data-root`` is left
    out, as the task's saved spec is (it was refused, asking for --data-root)."""
    recorded = lp.doc.get("data_roots") or {}
    files = [s for s in specs if s.data.source == "files" and recorded.get(s.name)]
    saved = [s for s in files if lp.specs.get(s.name) is s]
    gone = [s.name for s in saved if not Path(recorded[s.name]).is_dir()]
    if data_root is None:
        if gone:
            by_folder = {f: [t for t in gone if recorded[t] == f] for f in sorted({recorded[t] for t in gone})}
            runs = ", ".join(f"--tasks {','.join(ts)} --data-root DIR" for ts in by_folder.values())
            fix = (f"which is no longer a folder; put it back, or score {'them' if len(gone) > 1 else 'it'} on the "
                   f"folder it moved to with {runs}" if len(by_folder) == 1 else "which are no longer folders; put "
                   f"them back, or score each folder's tasks on the folder it moved to, one run each: {runs}")
            raise ValueError(f"{tasks_named(gone, 'were')} trained on files under {', '.join(by_folder)}, {fix} "
                             "(--data-root is read by every task scored)")
        for s in files:
            if s in saved:
                continue
            if not Path(recorded[s.name]).is_dir():
                raise ValueError(f"--tasks {s.source_file}: task {s.name!r} was trained on files under "
                                 f"{recorded[s.name]}, which is no longer a folder, and this spec's data paths are "
                                 "read there unless --data-root is given; give --data-root DIR, the folder they are "
                                 "relative to")
            saved_spec = lp.specs.get(s.name)
            same = saved_spec is not None and saved_spec.data == s.data   # (then the folder is surely right)
            logger.log(logging.INFO if same else logging.WARNING,
                       "--tasks %s: its data paths are read under the folder the adapter records for task %r (%s)%s; "
                       "--data-root DIR reads them elsewhere", s.source_file, s.name, recorded[s.name],
                       "" if same else ", though its [data] is not the one the task was trained on")
        return {s.name: recorded[s.name] for s in files}
    for s in saved:
        if s.name in gone:
            logger.warning("task %r was trained on files under %s, which is no longer a folder; it is scored on "
                           "--data-root %s", s.name, recorded[s.name], data_root)
        elif not same_folder(recorded[s.name], data_root):
            logger.warning("task %r was trained on files under %s; it is scored on --data-root %s (leave --data-root "
                           "out to read each task from its own folder)", s.name, recorded[s.name], data_root)
    return {}


def _rows_read(spec: TaskSpec, split: str, root: str | None) -> dict[str, Any] | None:
    """The reader options of ``spec``'s split ``split`` that choose its rows (its reader's defaults filled in), each
    path resolved under ``root``, the folder it is read from; None where a relative path has no folder."""
    reader = READERS[str(spec.data.format)]
    hints = typing.get_type_hints(reader)
    paths = {k for k, h in hints.items() if os.PathLike in typing.get_args(h)} | {"images", "folder"}
    given = {p.name: p.default for p in inspect.signature(reader).parameters.values()
             if p.default is not inspect.Parameter.empty}
    rows: dict[str, Any] = {"format": spec.data.format}
    for key, value in {**given, **spec.data.options, **spec.data.splits[split]}.items():
        if key in NOT_ROW_CHOICE:
            continue
        if key in paths and isinstance(value, str):
            path = Path(value).expanduser()
            if not path.is_absolute():
                if root is None:
                    return None
                path = Path(root).expanduser() / path
            value = str(path.resolve())
        rows[key] = value
    return rows


def warn_trained_rows(lp: Pretrained, specs: list[TaskSpec], scored: Mapping[str, str | None],
                      roots: Mapping[str, str | None]) -> dict[str, tuple[str, str]]:
    """Warn, once per task, where a spec file scores rows the adapter trained its task on: split ``scored[task]``
    of the spec, read under ``roots[task]``, and the adapter's ``[data.train]`` read under the folder it records,
    name the same resolved files and options, and their ``split`` options share rows
    (:func:`~mtl_lora_vl.data.split_overlap.shared_parts`). A spec of the adapter's own ``[data]`` is left out: its
    own train / val check said so when it loaded. Returns the tasks whose two ``split`` options only the length of a
    split they slice decides (``train[:80%]`` beside ``train[-3:]``), as ``{task: (scored, trained)}``: warned of by
    :func:`warn_trained_rows_read` once the scored split is read."""
    recorded = lp.doc.get("data_roots") or {}
    left: dict[str, tuple[str, str]] = {}
    for spec in specs:
        saved, split = lp.specs.get(spec.name), scored.get(spec.name)
        if saved is None or split is None or spec.data == saved.data or "files" != spec.data.source \
                or "files" != saved.data.source or "train" not in saved.data.splits:
            continue
        mine, theirs = _rows_read(spec, split, roots.get(spec.name)), _rows_read(saved, "train",
                                                                                recorded.get(spec.name))
        if mine is None or theirs is None:
            continue
        a, b = (str(d.pop("split", None) or "") for d in (mine, theirs))
        if mine != theirs:
            continue
        both = shared_parts(a, b)
        if both:
            _warn_trained(spec, split, saved, a, b, both)
        elif length_decides(a, b):
            left[spec.name] = (a, b)
    return left


def warn_trained_rows_read(lp: Pretrained, specs: list[TaskSpec], scored: Mapping[str, str | None],
                           left: Mapping[str, tuple[str, str]], lengths: Mapping[str, Mapping[str, int]]) -> None:
    """Warn of the pairs :func:`warn_trained_rows` left to the length of a split they slice, now that the scored split
    of each task is read: ``lengths[task]``, the whole length of each split its read sliced
    (:attr:`~mtl_lora_vl.data.records.Split.split_lengths`; the same files as the adapter's training split), decides
    them as ``datasets`` counts the rows (:func:`~mtl_lora_vl.data.split_overlap.shared_on`). A split whose length the
    read does not tell is not claimed."""
    for spec in specs:
        if spec.name not in left or scored.get(spec.name) is None:
            continue
        a, b = left[spec.name]
        both = shared_on(a, b, lengths.get(spec.name, {}))
        if both:
            _warn_trained(spec, str(scored[spec.name]), lp.specs[spec.name], a, b, both)


def _warn_trained(spec: TaskSpec, split: str, saved: TaskSpec, a: str, b: str, both: list[str]) -> None:
    """The warning that ``spec``'s split table ``split`` (its ``split`` option ``a``) reads rows (its parts ``both``)
    that the adapter's task, ``saved``, trained on (``[data.train]``'s ``split`` option ``b``)."""
    same = set(split_parts(a)) == set(split_parts(b))
    logger.warning("--tasks %s: task %r is scored on its [data.%s] (%s), which reads %s the adapter trained the "
                   "task on (the [data.train] of %s: %s, of the same files), so its adapted scores are %s"
                   "training scores; score it on a split or files of its own", spec.source_file, spec.name, split,
                   f"split {a!r}" if a else "no split: the whole table",
                   "the same rows" if same else f"rows (the part(s) {both})", saved.source_file,
                   f"split {b!r}" if b else "no split: the whole table", "" if same else "partly ")
