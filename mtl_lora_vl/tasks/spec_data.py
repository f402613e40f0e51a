"""The ``[data]`` table of a task spec (:mod:`.spec`), parsed and checked into a :class:`DataSpec`: either the
built-in world (``source = "builtin"``, its seed, world kind and split sizes) or files in a standard format
(``format = ...``, reader options shared by every split and each split's own, checked against the reader's options
before any data is read), with a warning where ``[data.val]`` or ``[data.test]`` reads rows ``[data.train]`` reads."""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl_lora_vl.data.common import ReaderOptionError
from mtl_lora_vl.data.readers import READERS, check_reader_options, reader_option_names
from mtl_lora_vl.data.split_overlap import NOT_ROW_CHOICE, length_decides, shared_on, shared_parts, split_parts
from mtl_lora_vl.data.world import KINDS as WORLD_KINDS
from mtl_lora_vl.tasks.spec_error import SpecError
from mtl_lora_vl.tasks.spec_error import field_error as _fail

logger = logging.getLogger(__name__)

#: Standard dataset formats a spec may name (the readers of :func:`mtl_lora_vl.data.readers.read_split`).
DATA_FORMATS = tuple(READERS)
#: Other accepted spellings of a format.
FORMAT_ALIASES = {"coco": "coco_captions"}
#: Split tables a ``[data]`` section may hold.
SPLITS = ("train", "val", "test")

_BUILTIN_DATA_KEYS = ("source", "seed", "world_kind", *SPLITS)
_BUILTIN_SPLIT_KEYS = ("n",)
#: The most examples a built-in world split may be given: scenes are drawn in memory (10**13 drew for ever).
MAX_WORLD_SPLIT = 1_000_000


@dataclass(frozen=True)
class DataSpec:
    """Where a task's examples come from.

    ``source`` is ``"builtin"`` (the built-in world) or ``"files"`` (``format`` names the reader).
    ``options`` are shared by every split (builtin: ``seed``, ``world_kind``; files: reader options),
    ``splits`` maps a split name to its own options (builtin: ``n``; files: reader options, paths
    relative to the data root).
    """

    source: str
    format: str | None
    options: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    #: A split's warning of rows shared with train told once its read succeeds (:meth:`.TaskSpec.load_split`): a
    #: table with no ``split`` (the one split its files hold) beside one naming a split shares rows only where the
    #: files hold that split, which the read finds; a warning at load came before the reader refused a split the
    #: files do not hold.
    read_warnings: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: A split whose rows shared with train its split's length decides (:class:`LengthPair`), told once it is read.
    length_pairs: dict[str, LengthPair] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LengthPair:
    """Split table ``split`` (its ``split`` option ``own``) beside ``[data.train]`` (``train``) on the same files, where
    only the length of a split they slice tells whether they share rows (``train[:90%]`` beside ``train[-10%:]``):
    decided once ``split`` is read (:meth:`.TaskSpec.load_split`), on the lengths its read counted its slices on."""

    path: Path
    split: str
    own: str
    train: str

    def warning(self, lengths: dict[str, int]) -> str | None:
        """The warning of rows shared with train on splits of these ``lengths`` (:func:`~mtl_lora_vl.data.split_overlap
        .shared_on`), or None where they share none."""
        both = shared_on(self.own, self.train, lengths)
        return overlap_warning(self.path, self.split, both) if both else None


def overlap_warning(path: Path, split: str, both: list[str]) -> str:
    """The warning that split table ``split`` of spec ``path`` reads rows ``[data.train]`` reads: ``both`` its parts
    that do (``[]``: it reads the same rows)."""
    return (f"{path}: [data.{split}] reads " + ("the same rows as [data.train] (the same files and split names)"
            if not both else f"rows that [data.train] reads too (the same files; the split(s) {both}, whole or in "
            "overlapping slices)") + f", so the {split} scores are training scores; give it a file, folder or split "
            "name of its own")


def parse_data(path: Path, raw: Any, need_train: bool = True) -> DataSpec:
    """The ``[data]`` table ``raw`` of spec file ``path``, checked: the built-in world's keys and split sizes, or a
    format's reader options (a misspelt option named now); a split that reads the training rows warned of.
    ``need_train=False``: ``[data.train]`` may be left out (a spec that only scores)."""
    if not isinstance(raw, dict):
        raise _fail(path, "data", "a [data] table with source = \"builtin\" or a format", raw)
    has_source, has_format = "source" in raw, "format" in raw
    if has_source and has_format:
        raise _fail(path, "data", "either source = \"builtin\" or format = ..., not both", show_got=False)
    if not has_source and not has_format:
        raise _fail(path, "data", f"source = \"builtin\" or format = one of {list(DATA_FORMATS)}",
                    show_got=False)
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        if split in raw:
            if not isinstance(raw[split], dict):
                raise _fail(path, f"data.{split}", "a table of this split's options", raw[split])
            splits[split] = dict(raw[split])
    if has_source:
        if raw["source"] != "builtin":
            raise _fail(path, "data.source", "\"builtin\" (or use format = ... for files)", raw["source"])
        for key in raw:
            if key not in _BUILTIN_DATA_KEYS:
                raise _fail(path, f"data.{key}", f"one of the built-in data keys {list(_BUILTIN_DATA_KEYS)}",
                            key)
        seed = raw.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _fail(path, "data.seed", "an integer", seed)
        options: dict[str, Any] = {"seed": seed}
        if "world_kind" in raw:
            if not isinstance(raw["world_kind"], str):
                raise _fail(path, "data.world_kind", "a string", raw["world_kind"])
            task_kinds = [k for k in WORLD_KINDS if k != "pretrain"]  # pretrain has no val or test split
            if raw["world_kind"] not in task_kinds:
                raise _fail(path, "data.world_kind",
                            f"one of the built-in world's task kinds ({', '.join(task_kinds)}), or leave it out to "
                            "use the task's kind", raw["world_kind"])
            options["world_kind"] = raw["world_kind"]
        for split in SPLITS:  # the built-in world always has all three splits
            opts = splits.setdefault(split, {})
            for key, value in opts.items():
                if key not in _BUILTIN_SPLIT_KEYS:
                    raise _fail(path, f"data.{split}.{key}", f"one of {list(_BUILTIN_SPLIT_KEYS)}", key)
                if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_WORLD_SPLIT:
                    raise _fail(path, f"data.{split}.{key}", f"a positive integer up to {MAX_WORLD_SPLIT:,}", value)
        return DataSpec(source="builtin", format=None, options=options, splits=splits)
    fmt = FORMAT_ALIASES.get(raw["format"], raw["format"]) if isinstance(raw["format"], str) else raw["format"]
    if fmt not in DATA_FORMATS:
        raise _fail(path, "data.format", f"one of {list(DATA_FORMATS)}", raw["format"])
    options = {k: v for k, v in raw.items() if k not in ("format", *SPLITS)}
    taken = reader_option_names(fmt)
    for key, value in options.items():
        if isinstance(value, dict) and key not in taken:   # e.g. [data.validation]: a split under another name
            close = difflib.get_close_matches(key, SPLITS, n=1, cutoff=0.3)
            raise _fail(path, f"data.{key}", f"a split table named {', '.join(SPLITS)}"
                        + (f" (did you mean [data.{close[0]}]?)" if close else ""), show_got=False)
    if "train" not in splits and need_train:
        raise _fail(path, "data.train", "a [data.train] table with the reader options of the training split",
                    show_got=False)
    if "val" not in splits and "test" not in splits:
        raise _fail(path, "data.val", "a [data.val] or [data.test] table for evaluation", show_got=False)
    read_warnings, length_pairs = {}, {}
    for split in ("val", "test"):
        both = _shared_parts(options, splits[split], splits["train"]) if {split, "train"} <= set(splits) else None
        if isinstance(both, tuple):   # (the split's length decides: once read)
            length_pairs[split] = LengthPair(path, split, *both)
        elif both is not None:
            warning = overlap_warning(path, split, both)
            if _one_without_split(splits[split], splits["train"]):
                read_warnings[split] = warning
            else:
                logger.warning("%s", warning)
    for split, opts in splits.items():  # a misspelt option is named now, not after a model has loaded
        try:
            check_reader_options(fmt, {**options, **opts})
        except ReaderOptionError as err:
            # an option of the shared [data] table that the split does not override is that table's
            shared = [k for k in options if k not in opts and f"'{k}'" in str(err)]
            raise SpecError(f"{path}: field 'data{'' if shared else '.' + split}': {err}") from None
    return DataSpec(source="files", format=fmt, options=options, splits=splits, read_warnings=read_warnings,
                    length_pairs=length_pairs)


def _one_without_split(one: dict[str, Any], train: dict[str, Any]) -> bool:
    """Whether exactly one of two split tables gives a ``split`` (the other reads the one split its files hold)."""
    return sum(bool(str(t.get("split", "")).strip()) for t in (one, train)) == 1


def _rows_chosen(shared: dict[str, Any], split: dict[str, Any]) -> dict[str, Any]:
    """The options of a split that choose its rows, paths normalised (``./a.csv`` is ``a.csv``)."""
    merged = {**shared, **split}
    return {k: os.path.normpath(v) if isinstance(v, str) and k != "split" else v
            for k, v in merged.items() if k not in NOT_ROW_CHOICE}


def _shared_parts(shared: dict[str, Any], one: dict[str, Any],
                  train: dict[str, Any]) -> list[str] | tuple[str, str] | None:
    """Whether split table ``one`` reads rows ``train`` reads (``shared``: the [data] table's options): ``[]`` where
    they choose the same rows; ``one``'s parts that read rows of ``train``'s where their ``split`` options join or
    slice splits as ``datasets`` does (:func:`~mtl_lora_vl.data.split_overlap.shared_parts`); their two ``split``
    options where only the length of a split they slice tells (:class:`LengthPair`); else None."""
    mine, theirs = _rows_chosen(shared, one), _rows_chosen(shared, train)
    a, b = (str(d.pop("split", "")) for d in (mine, theirs))
    if mine != theirs:
        return None
    both = shared_parts(a, b)
    if not both:
        return (a, b) if length_decides(a, b) else None
    return [] if set(split_parts(a)) == set(split_parts(b)) else both
