"""Which parquet files of a folder are one split of an ``hf_datasets`` table (:mod:`.hf_datasets`).

A split is read from the files' names and folders as ``datasets`` reads it: ``train-0.parquet``,
``mydata_train.parquet``, ``train2017/``, a hub shard ``test_hard-00000-of-00001.parquet`` (the split "test_hard",
whole), the parquet branch's ``<config>/<split>/0000.parquet`` (a folder named the split whole, ``test/``, is read
alone beside ``test_hard/``; a folder naming it only in part, ``val2014/``, is read as the split where it is the
only one, and refused beside another, ``val2017/``, as MNLI's ``test_matched/`` beside ``test_mismatched/`` is; a
file's own name likewise: ``test_matched.parquet`` beside ``test_mismatched.parquet`` is refused for "test", and
``test_hard.parquet`` is left out beside ``test-0.parquet``, as ``test_hard/`` is beside
``test.parquet``; digits joined on are a shard number, ``train0.parquet`` + ``train1.parquet`` the split "train", as
are ``train_0.parquet`` + ``train_1.parquet`` and the folders ``train0/`` + ``train1/`` or ``train_0/`` + ``train_1/``,
but a year, joined on or after a separator, names a split, ``val2014.parquet`` beside ``val2017.parquet`` (or
``val_2014.parquet`` beside ``val_2017.parquet``) refused as ``val2014/`` beside ``val_2017/``; a folder gives
the split a file of its name gives, ``train_hard_0/`` and ``train_hard_0.parquet`` both "train_hard"). A
split whose files lie in several config folders (``en/train-...`` beside ``de/train-...``; GQA's on the hub, whose
names hold the split's, ``testdev_balanced_images/testdev-00000-of-00001.parquet`` beside
``testdev_balanced_instructions/...``, or the parquet branch's ``.../testdev/0000.parquet``) is refused, naming them
(and the ``image_table`` join where one config holds the images), rather than read as one split of mixed rows.

Where a plain file or folder name holds the split's name and a word after it (``train_extra.parquet``,
``test_hard/``), ``datasets`` 5.2 (its ``data_files`` patterns: the split's word followed by ``-._``, a space or a
digit) reads it into the split; here it is a split of its own, as ``datasets`` itself reads a hub shard so named,
since read into ``test`` a ``test_hard``'s rows change the scores and MNLI's two test splits mix. The note or
refusal says so and names the joined split that reads them as ``datasets`` does: ``split = "train+train_extra"``
(``datasets``' own ``+`` syntax for joined splits: spaces around a ``+`` dropped; a split named twice, which
``datasets`` reads twice over, refused; a ``+`` in a file's own name is no part of a split's).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

__all__ = ["joined_splits", "parquet_files", "refuse_joined_saved"]

logger = logging.getLogger(__name__)

_SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test")


def _in_split(f: Path, base: Path, split: str) -> bool:
    """Whether parquet file ``f`` under ``base`` belongs to ``split``: the split's name stands alone (between
    ``-._`` , spaces, digits or the ends) in the file's name or a folder's, as ``datasets`` reads it
    (``train-0.parquet``, ``mydata_train.parquet``, ``train2017/``; not ``constrain.parquet``)."""
    alone = re.compile(rf"(?:^|[-._ 0-9]){re.escape(split)}(?:[-._ 0-9]|$)")
    return any(alone.search(part) for part in f.relative_to(base).parts)


#: A hub shard's name, ``<split>-00000-of-00003.parquet``: ``datasets`` reads ``<split>`` as the file's split, whole
#: (``test_hard-...`` is the split "test_hard", not "test").
_SHARD = re.compile(r"^(.+)-[0-9]{5}-of-[0-9]{5}")


def _shard_split(f: Path) -> str | None:
    """The split a hub shard's file name spells, whole; None for another name."""
    m = _SHARD.match(f.name)
    return m.group(1) if m else None


def _split_folder(f: Path, base: Path, split: str) -> str | None:
    """The split the first folder of parquet file ``f`` under ``base`` that names ``split`` gives (whole, ``test/``,
    or in part, ``test_matched/``, ``val2014/``; ``train0/``, ``train_1/``: "train", :func:`_folder_name_split`);
    None where none does."""
    alone = re.compile(rf"(?:^|[-._ 0-9]){re.escape(split)}(?:[-._ 0-9]|$)")
    return next((_folder_name_split(part, split) for part in f.relative_to(base).parent.parts if alone.search(part)),
                None)


def _folder_name_split(part: str, split: str) -> str:
    """The split a folder named ``part`` (naming ``split``) gives: its name up to where :func:`_name_end` ends a file's
    split, the words before the split's kept (``test/``, ``test_matched/``, ``val2014/``, ``val_2017/``,
    ``captions_val2014/``; ``train0/``, ``train_1/``, ``train_data/``, ``train-00000-of-00002/``: "train";
    ``train_hard_0/``: "train_hard"), so a folder gives the split a file of its name does; its whole name where a
    ``.`` follows (``train.old/``: no compression suffix, as ``train.snappy.parquet``'s, is a folder's)."""
    span = _name_span(part, split)
    if span is None or part[span[1]:].startswith("."):
        return part
    return part[:span[1]]


def _whole_folder(f: Path, base: Path, split: str) -> bool:
    """Whether a folder of parquet file ``f`` under ``base`` is named ``split`` whole (``test/``; ``train0/``, a
    shard of "train"), not in part (``test_hard/``)."""
    return any(_folder_name_split(part, split) == split for part in f.relative_to(base).parent.parts)


def _folder_split(f: Path, base: Path) -> str | None:
    """The split a folder of parquet file ``f`` under ``base`` gives: the folder's whole name where it names a usual
    split (``train/``, ``train2017/``; MNLI's ``test_matched/`` and ``test_mismatched/`` are two splits, as the
    hub shards ``test_matched-00000-of-00001`` are)."""
    return next((d for d in (_split_folder(f, base, s) for s in _SPLIT_NAMES) if d is not None), None)


def _split_of(f: Path, base: Path) -> str | None:
    """The split a parquet file's folder or name gives, if any: the split a config folder holds (:func:`_in_config`),
    else a usual split name of a folder, else a hub shard's own name, else the split the file's name spells holding a
    usual split name (``test_matched.parquet``: "test_matched", as the folder ``test_matched/`` is;
    ``train-0.parquet``: "train")."""
    inner = _in_config(f, base)
    return (inner[0] if inner else None) or (
        _folder_split(f, base) or _shard_split(f)
        or next((n for n in (_file_split(f, s) for s in _SPLIT_NAMES) if n is not None), None))


def _in_config(f: Path, base: Path) -> tuple[str, int] | None:
    """Where parquet file ``f`` under ``base`` lies in a config folder whose name holds its split's: a hub shard
    ``<split>-00000-of-00001.parquet`` or the parquet branch's ``<split>/0000.parquet`` below a folder naming the
    split in part, as GQA's configs on the hub (``lmms-lab/GQA``) are named: ``testdev_balanced_images/testdev-...``
    beside ``testdev_balanced_instructions/testdev-...``. Returns (the split, the index of the part naming it whole:
    the folders before it are the config's); None for another file."""
    parts = f.relative_to(base).parts
    named = [(_shard_split(f), len(parts) - 1), *((p, i) for i, p in enumerate(parts[:-1]))]
    for split, i in named:
        if split and i > 0 and any(_name_span(p, split) is not None and _folder_name_split(p, split) != split
                                   for p in parts[:i]):
            return split, i
    return None


def _config_folder(f: Path, base: Path, split: str) -> tuple[str, ...] | None:
    """The folders of parquet file ``f`` under ``base`` above the part that names ``split``: ``("en",)`` for
    ``en/train-00000-of-00001.parquet`` or ``en/train/0000.parquet``, ``()`` for ``train/0.parquet``,
    ``("testdev_balanced_images",)`` for GQA's ``testdev_balanced_images/testdev-00000-of-00001.parquet`` (a config
    folder whose name holds the split's, :func:`_in_config`); None where no part names it."""
    inner = _in_config(f, base)
    alone = re.compile(rf"(?:^|[-._ 0-9]){re.escape(split)}(?:[-._ 0-9]|$)")
    parts = f.relative_to(base).parts
    if inner is not None and inner[0] == split:
        return parts[:inner[1]]
    return next((parts[:i] for i, part in enumerate(parts) if alone.search(part)), None)


def _refuse_configs(base: Path, files: list[Path], split: str | None, shown: Path) -> None:
    """Refuse a split (``split``, or each one the files' names give) whose files lie in several folders above the
    split's name: the configs of a dataset as ``datasets`` writes them (``en/train-00000-of-00001.parquet`` beside
    ``de/train-...``; GQA's ``testdev_balanced_images/testdev-...`` beside ``testdev_balanced_instructions/...``),
    which read together would mix each config's rows into one split. ``shown``: ``base`` as the spec names it."""
    by_split: dict[str, dict[tuple[str, ...], Path]] = {}   # split -> config folder -> its first file
    for f in files:
        name = split if split is not None else _split_of(f, base)
        folder = None if name is None else _config_folder(f, base, name)
        if folder is not None:
            by_split.setdefault(name, {}).setdefault(folder, f)
    several = sorted(name for name, found in by_split.items() if len(found) > 1)
    if not several:
        return
    name, found = several[0], by_split[several[0]]   # (its folders and hints; each other such split named)
    folders = sorted(found)
    listed = [str(Path(*c)) if c else "." for c in folders]
    # GQA on the hub: one config holds the images (..._images: id, image) of the other's rows (imageId)
    images = next((c for c in folders if c and "image" in c[-1].lower()), None)
    rows = [c for c in folders if c and c != images] or folders   # (the rows', where one is images)
    first = max(rows, key=lambda c: len(os.path.commonprefix([str(Path(*c)), str(Path(*images or c))])))
    join = "" if images is None else (
        f"; where config {str(Path(*images))!r} holds the images of another's rows, read the rows' config as "
        f"path and join it by image id: path = \"{shown / Path(*first)}\", image_table = {{path = "
        f"\"{shown / Path(*images)}\", {_join_columns(found[images], found[first])} (key: the image table's "
        "column of the ids that the rows' image_id column holds)")
    under = "" if not shown.is_absolute() else " (or that folder under the data root)"
    others = "; ".join(f"{n!r}: {[str(Path(*c)) if c else '.' for c in sorted(by_split[n])]}" for n in several[1:4])
    more = "" if not others else (f" (and so do the files of split(s) {others}"
                                  f"{f'; and {len(several) - 4} more split(s)' if len(several) > 4 else ''})")
    raise ValueError(f"hf_datasets {base}: the parquet files of split {name!r} lie in the folders {listed}{more}, "
                     "as the configs of a dataset do (each config's files in a folder of its own: read together, "
                     "their rows would mix in one split); pick one config by giving its folder as path, e.g. "
                     f"path = \"{shown / Path(*first)}\"{under}{join}")


def _join_columns(images: Path, rows: Path) -> str:
    """``key = "id"} and columns = {image_id = "imageId", ...}`` for a refusal's ``image_table`` hint: the columns of
    the image table's parquet file ``images`` and the rows' file ``rows`` that look like the key and the image id
    (``"..."`` where none does, or a file's schema cannot be read)."""
    try:
        import pyarrow.parquet as pq

        keys, ids = pq.read_schema(images).names, pq.read_schema(rows).names
    except (ImportError, OSError, ValueError):   # (pyarrow's ArrowInvalid is a ValueError: the hint stays generic,
        #   and reading the files says what is wrong)
        keys, ids = [], []
    key = "id" if "id" in keys else next((c for c in keys if "id" in c.lower()), "...")
    image_id = next((c for c in ids if re.fullmatch(r"image_?id", c, re.IGNORECASE)), "...")
    return f'key = "{key}"}} and columns = {{image_id = "{image_id}", ...}}'


#: Words after a split's name in a file's name that name no split of their own (``train_data.parquet``,
#: ``train_part_1.parquet``, ``train_0_of_2.parquet``: the split "train").
_NO_SPLIT_WORDS = ("data", "set", "split", "part", "shard", "chunk", "file", "of")


def _shard_number(digits: str) -> bool:
    """Whether ``digits``, joined on to a split's name in a file's name (``train0``, ``train01``), number a shard of the
    split, as ``datasets`` reads them: digits other than a year (19xx / 20xx: COCO's ``val2014`` and ``val2017`` are
    splits of their own)."""
    return digits.isdigit() and digits.isascii() and not re.fullmatch(r"(?:19|20)[0-9]{2}", digits)


def _joined_word(stem: str, end: int) -> bool:
    """Whether a word of letters naming a split (not one of :data:`_NO_SPLIT_WORDS`) is joined on at ``stem[end]``
    by ``-``, ``_`` or a space (``train0_hard``)."""
    word = re.match(r"[-_ ]([A-Za-z]+)(?=[-._ ]|$)", stem[end:])
    return word is not None and word.group(1).lower() not in _NO_SPLIT_WORDS


def _file_split(f: Path, split: str) -> str | None:
    """The split parquet file ``f``'s own name spells where it names ``split``: the name's word holding it, and the
    words of letters joined on to it by ``-``, ``_`` or a space (``test_matched.parquet``, ``captions_val2014.parquet``:
    "test_matched", "val2014"; ``train-0.parquet``, ``mydata_train_part_1.parquet``: "train", :data:`_NO_SPLIT_WORDS`
    ending it; ``train0.parquet``, ``train_0.parquet``: "train", a shard number joined on or after a separator,
    :func:`_shard_number`, unless a word follows it, ``train0_hard.parquet``, ``train_0_hard.parquet``:
    "train0_hard", "train_0_hard"; after a word too, ``train_hard_0.parquet``: "train_hard"; digits joined on to a
    word are the word's, ``train_hard0.parquet``: "train_hard0" (it was "train", read into that split); a year
    names a split wherever it stands, ``val2014.parquet``, ``val_2014.parquet``, ``train_hard_2014.parquet``:
    "val2014", "val_2014", "train_hard_2014"); None where the name does not name it. A folder of that name gives
    the same split (:func:`_folder_name_split`)."""
    stem = f.name[: -len(".parquet")] if f.name.endswith(".parquet") else f.stem
    span = _name_span(stem, split)
    return None if span is None else stem[span[0]:span[1]]


def _name_span(stem: str, split: str) -> tuple[int, int] | None:
    """Where in ``stem`` (a file's name less ``.parquet``, or a folder's) the split naming ``split`` lies, as
    :func:`_file_split` reads it: ``(start, end)``; None where ``stem`` does not name ``split``."""
    m = re.search(rf"(?<![^-._ 0-9]){re.escape(split)}(?![^-._ 0-9])", stem)
    if m is None:
        return None
    start, end = m.start(), m.end()
    while start > 0 and stem[start - 1] not in "-._ ":
        start -= 1
    while end < len(stem) and stem[end] not in "-._ ":
        end += 1
    if _shard_number(stem[m.end():end]) and not _joined_word(stem, end):
        return start, m.end()   # train0, train1: shards of "train" (not val2014: a year names a split)
    at = end
    while at < len(stem) and stem[at] in "-_ ":   # (not "."; train.snappy.parquet is of "train")
        word = re.match(r"(?:[A-Za-z][A-Za-z0-9]*|[0-9]+)(?=[-._ ]|$)", stem[at + 1:])
        if word is None or re.sub(r"[0-9]+$", "", word.group()).lower() in _NO_SPLIT_WORDS:   # (part0: a shard)
            break
        at += 1 + word.end()
        if not _shard_number(word.group()):   # (a shard number counts only before a word: train_0_hard, not train_0;
            end = at                          #   a year names a split: val_2014, train_hard_2014)
    return start, end


def _longer_names(base: Path, mine: list[Path], by_name: list[Path],
                  split: str) -> tuple[list[Path], dict[Path, str]]:
    """``mine`` (the parquet files under ``base`` matching ``split``; ``by_name``: those matching it by their own
    name) without the files whose name spells a longer split (``test_hard.parquet``) where a file or folder names
    ``split`` whole (``test-0.parquet``, ``test/``): that one is the split, as ``datasets`` reads a hub shard. Where
    none does, the folders and files naming it in part: one name (``val2014/``, ``captions_val2014.parquet``) is the
    split, as ``datasets`` reads it (noted); several (MNLI's ``test_matched`` beside ``test_mismatched``, ``val2014``
    beside ``val2017``) are as many splits, refused naming them, as several hub shard names are. A hub shard's name
    is its split (``test-00000-of-00001``: "test" whole, read with ``test_0.parquet``; ``test_hard-00000-of-00001``
    beside it: "test_hard", left out). Returns the files read and those left out, each with its longer split."""
    plain = {f: _shard_split(f) or _file_split(f, split) for f in by_name}   # (a hub shard's name: its split, whole)
    folders = {f: _split_folder(f, base, split) for f in mine if f not in by_name}
    whole = split in plain.values() or any(_whole_folder(f, base, split) for f in folders)
    longer = {f: n for f, n in plain.items() if n is not None and n != split}
    if whole:   # (test.parquet beside test_hard/0.parquet too: the folder's files are test_hard's)
        longer.update({f: d for f, d in folders.items()
                       if d is not None and not _whole_folder(f, base, split)})
        return [f for f in mine if f not in longer], longer
    names = sorted({n for n in [*longer.values(), *folders.values()] if n is not None})
    if len(names) > 1:
        named = {**longer, **{f: d for f, d in folders.items() if d is not None}}
        raise ValueError(f"hf_datasets {base}: no file or folder is named split {split!r} whole, and the parquet files "
                         f"it matches are named for the splits {names} (in their folders' or their own names: "
                         f"{_files_by_split(base, named)}), each a split of its own (read together, their rows would "
                         f"mix in one split); set split to one of them, e.g. split = \"{names[0]}\"; or, where "
                         f"they are parts of one split{_as_datasets(split, 'all as')}, join them: split = "
                         f"\"{'+'.join(names)}\"")
    if names:
        where = "folder" if names[0] in folders.values() else "file(s) named for the split"
        logger.info("hf_datasets %s: split %r is read from the %s %r (the one name holding it)", base, split, where,
                    names[0])
    return mine, {}


#: The split each of ``datasets``' split words in a file or folder name gives (its ``data_files.SPLIT_KEYWORDS``).
_DATASETS_SPLITS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                    "dev": "validation", "val": "validation", "test": "test", "testing": "test", "eval": "test",
                    "evaluation": "test"}


def _as_datasets(split: str, how: str) -> str:
    """`` (datasets' load_dataset reads them <how> 'train')`` where ``split`` is one of ``datasets``' split words: it
    reads every file or folder name holding the word followed by ``-._``, a space or a digit as that split."""
    name = _DATASETS_SPLITS.get(split)
    return f" (datasets' load_dataset reads them {how} {name!r})" if name else ""


def _note_left_out(base: Path, split: str, part: str, left: dict[Path, str]) -> None:
    """Note the files ``left`` out of ``part`` of ``split`` (a split, or one of the splits it joins with ``+``; each
    file named for a longer split: ``train_extra.parquet``), saying where ``datasets`` reads them into the split (a
    plain file or folder name; a hub shard's name it keeps apart too) and the joined split that reads them with it."""
    if not left:
        return
    plain = sorted({n for f, n in left.items() if _shard_split(f) is None})
    why = ""
    if plain:
        reader = (f"datasets' load_dataset reads a plain file or folder so named into {_DATASETS_SPLITS[part]!r}"
                  if part in _DATASETS_SPLITS else f"they may be parts of {part!r}")
        why = (f"; each such name is a split of its own here, as it is to datasets in a hub shard's name "
               f"('{plain[0]}-00000-of-00001'), so that a split such as test_hard is not scored as part of test, but "
               f"{reader}: to read them with it, set split = \"{'+'.join([split, *plain])}\"")
    of = f"split {split!r}" if part == split else f"split {part!r} of {split!r}"
    logger.info("hf_datasets %s: %s is read without the file(s) %s, named for the longer split(s) %s%s", base,
                of, sorted(str(f.relative_to(base)) for f in left), sorted(set(left.values())), why)


def _files_by_split(base: Path, named: dict[Path, str]) -> str:
    """The files of each split ``named`` gives them (a few each, relative to ``base``), for a refusal:
    ``'val2014': val2014.parquet; 'val2017': val2017.parquet``."""
    by_split: dict[str, list[str]] = {}
    for f, name in sorted(named.items()):
        by_split.setdefault(name, []).append(str(f.relative_to(base)))
    return "; ".join(f"{name!r}: {', '.join(fs[:2])}{f' (+{len(fs) - 2} more)' if len(fs) > 2 else ''}"
                     for name, fs in sorted(by_split.items()))


#: What reads a file of another format than parquet, by its suffix (a file given as an ``hf_datasets`` path).
_OTHER_FORMATS = {
    ".jsonl": 'format = "jsonl" (JSON lines), with file = "{file}"',
    ".json": 'the reader of its dataset (format = "coco_captions", "vqav2", "gqa", "karpathy", "nlvr2"), or format = '
             '"jsonl" with file = "{file}" where it holds one JSON object per line',
    ".csv": 'format = "csv", with file = "{file}"',
    ".arrow": "its saved dataset: give the folder that holds its state.json as path{saved}; an Arrow file of "
              "datasets' cache (no state.json) is read from the dataset's parquet files, or after save_to_disk",
}


def _other_format(base: Path) -> str:
    """What reads ``base``, a file that is no parquet file, as :data:`_OTHER_FORMATS` says."""
    saved = next((d for d in (base.parent, base.parent.parent) if (d / "state.json").is_file()
                  or (d / "dataset_dict.json").is_file()), None)
    how = _OTHER_FORMATS.get(base.suffix.lower(), "a .parquet file, a folder of them or a save_to_disk folder as path")
    return how.format(file=base, saved=f', e.g. path = "{saved}"' if saved else "")


def parquet_files(base: Path, split: str | None, shown: str | os.PathLike | None = None,
                  written: str | None = None, note: bool = True) -> list[str]:
    """The parquet files under ``base`` (a file, or a folder of them) that hold split ``split`` (None: every file, one
    split), as ``datasets`` reads a split from file and folder names; refused, saying what to set, where the split
    selects nothing, would mix several splits or configs, or ``base`` holds no parquet file. A split joined with
    ``+`` (``train+train_extra``, as ``datasets``' ``load_dataset(split=...)`` joins splits) is each part's files, in
    order, each file once. ``shown``: ``base`` as the spec names it (a refusal's hints name paths so); ``written``:
    the split as the spec writes it, where it slices ``split`` (``train[:10]``, :mod:`.hf_slices`); ``note``: say
    which files named for a longer split are left out (False where the caller reads one part of a join)."""
    parts = _joined_parts(base, split)
    shown = base if shown is None else Path(shown)
    if base.is_file():
        with open(base, "rb") as f:   # (read as parquet: pyarrow's bare "Parquet magic bytes not found")
            magic = f.read(4)
        if magic != b"PAR1":   # every parquet file starts so, whatever its name (.pq, .parquet)
            raise ValueError(f"hf_datasets {base} is a {base.suffix or 'suffix-less'} file, not parquet: the "
                             "hf_datasets format reads parquet files or a save_to_disk folder; read this one with "
                             f"{_other_format(base)}")
        if split is not None and not all(_in_split(base, base.parent, part) for part in parts):
            split = next(part for part in parts if not _in_split(base, base.parent, part))
            if written is not None:   # (leaving split out, as below, would read every row: the slice dropped)
                raise ValueError(f"hf_datasets {base}: one parquet file is one table, and its name does not say split "
                                 f"{split!r} ('{split}-*.parquet', '*_{split}.parquet'), so split = {written!r} slices "
                                 f"nothing here, as split = {split!r} selects nothing (every split would read the same "
                                 "rows; datasets' load_dataset calls a lone file 'train' whatever its name): to slice "
                                 f"its rows, name the file for its split, e.g. "
                                 f"{base.with_name(f'{base.stem}_{split}{base.suffix}')}, and keep split = "
                                 f"{written!r}; or leave split out to read all of it")
            raise ValueError(f"hf_datasets {base}: one parquet file is one table, and its name does not say split "
                             f"{split!r} ('{split}-*.parquet', '*_{split}.parquet'), so split = {split!r} selects "
                             "nothing (every split would read the same rows); leave split out where the file is that "
                             "split's data, or give the folder that holds every split's files")
        return [str(base)]
    files = sorted(base.rglob("*.parquet"))
    if not files:
        saved = sorted(d.name for d in base.iterdir()
                       if d.is_dir() and ((d / "dataset_dict.json").is_file() or (d / "state.json").is_file()))
        inside = (f"; its folders {saved} are saved datasets (a dataset's configs, or splits saved one by one): give "
                  f"one of them as path, e.g. path = \"{base / saved[0]}\"" if saved else "")
        other = sorted(f for f in base.rglob("*") if f.suffix.lower() in _OTHER_FORMATS and f.is_file())
        kinds = sorted({f.suffix.lower() for f in other})
        order = list(_OTHER_FORMATS)   # the hint's file: the split's, of the first format listed (JSON lines)
        first = min(other, key=lambda f: (split is not None and not _in_split(f, base, split),
                                          order.index(f.suffix.lower())), default=None)
        held = (f"; it holds {', '.join(kinds)} files ({', '.join(str(f.relative_to(base)) for f in other[:3])}"
                f"{' ...' if len(other) > 3 else ''}): read them with {_other_format(first)}" if other else "")
        raise FileNotFoundError(f"{base} is neither a save_to_disk folder (no dataset_dict.json or state.json) "
                                f"nor a folder of .parquet files{inside or held}")
    if split is None:
        _refuse_configs(base, files, None, shown)
        named = {f: s for f, s in ((f, _split_of(f, base)) for f in files) if s is not None}
        found = sorted(set(named.values()))
        if len(found) > 1:
            raise ValueError(f"hf_datasets {base}: the parquet files hold the splits {found}; set split = ... in the "
                             "[data.<split>] table (every file was read as one split; by their names: "
                             f"{_files_by_split(base, named)})")
        return [str(f) for f in files]
    chosen: list[Path] = []
    left: dict[str, dict[Path, str]] = {}   # part -> the files it left out, each with its longer split
    for part in parts:
        try:
            mine, left[part] = _split_files(base, files, part, shown)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}{_plus_named(base, files, split, parts)}") from None
        chosen += [f for f in mine if f not in chosen]
    for part, out in left.items() if note else ():   # (a file left out by one part and read by another is read)
        _note_left_out(base, split, part, {f: n for f, n in out.items() if f not in chosen})
    return [str(f) for f in chosen]


def joined_splits(split: str) -> list[str]:
    """The splits ``split`` joins with ``+`` (``train+train_extra``, as ``datasets``' ``load_dataset(split=...)``
    joins them; spaces around a ``+`` dropped, as its ``ReadInstruction`` drops them), ``[split]`` for one."""
    return re.split(r"\s*\+\s*", split)


def _joined_parts(base: Path, split: str | None) -> list[str | None]:
    """:func:`joined_splits` of ``split`` (``[None]`` for none), refused where one is empty or named twice."""
    if split is None:
        return [None]
    parts = joined_splits(split)
    if not all(parts):
        raise ValueError(f"hf_datasets {base}: split {split!r} joins splits with '+', and one of them is empty; write "
                         "the splits' names between the '+' signs, e.g. split = \"train+test\"")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:   # (datasets' load_dataset reads train+train's rows twice over; a repeat was read once, unsaid)
        raise ValueError(f"hf_datasets {base}: split {split!r} names the split(s) {twice} more than once; "
                         "datasets' load_dataset reads a split joined to itself twice over (each row twice), and "
                         "here each file is read once: name each split once, e.g. split = "
                         f"\"{'+'.join(dict.fromkeys(parts))}\"")
    return parts


def _plus_named(base: Path, files: list[Path], split: str, parts: list[str | None]) -> str:
    """What a refusal of a part of ``split`` that selects no file adds where ``split`` joins splits with ``+`` (each
    part a split of its own) or a file or folder's name holds a ``+`` (no part of a split's name here)."""
    plus = [str(f.relative_to(base)) for f in files if "+" in str(f.relative_to(base))]
    joined = f"; split {split!r} joins the splits {parts} with '+' (datasets' syntax)" if len(parts) > 1 else ""
    if not plus:
        return joined
    return (f"{joined or f'; split {split!r}'}: a '+' in a file or folder's own name ({', '.join(plus[:3])}) is "
            f"no part of a split's name; rename it ({Path(plus[0]).name.replace('+', '_')}), or give that file as path "
            "with no split")


def _split_files(base: Path, files: list[Path], split: str, shown: Path) -> tuple[list[Path], dict[Path, str]]:
    """The parquet ``files`` under ``base`` of split ``split`` (:func:`parquet_files`), and those it leaves out, each
    named for a longer split (``test_hard.parquet`` beside ``test.parquet``)."""
    mine = [f for f in files if _in_split(f, base, split)]
    # a file in a folder of the split (test/data-00000-of-00001) is the split's whatever its shard name
    by_name = [f for f in mine if not _in_split(f.parent, base, split)]
    if any(_whole_folder(f, base, split) for f in mine):   # test/ beside test_hard/: test/ alone, as
        mine = [f for f in mine if f in by_name or _whole_folder(f, base, split)]   # the shards below
    shards = sorted({n for n in map(_shard_split, by_name) if n is not None})
    if split not in shards and len(shards) > 1:   # (test-00000-of-00001 beside test_hard-00000-of-00001: the first
        #   alone, as datasets reads it, test_hard's left out with a note (_note_left_out); train_0.parquet beside
        #   train-00000-of-00001: both 'train', read)
        raise ValueError(f"hf_datasets {base}: split {split!r} names no split of its own here, and the parquet files "
                         f"it matches are the shards of the splits {shards} (named '<split>-00000-of-000NN'); set "
                         "split to one of them")
    # configs whose folders' names hold the split's (GQA's testdev_balanced_images/testdev-00000-of-00001.parquet
    # beside testdev_balanced_instructions/...): refused as configs, not as splits named by the folders
    _refuse_configs(base, [f for f in mine if (_in_config(f, base) or ("",))[0] == split], split, shown)
    mine, left = _longer_names(base, mine, [f for f in by_name if f in mine], split)
    if not mine:
        listed = ", ".join(str(f.relative_to(base)) for f in files[:6])
        raise FileNotFoundError(f"{base}: no parquet file of split {split!r} (named '{split}-*.parquet', "
                                f"'*_{split}.parquet' or under '{split}/'); found {listed}"
                                f"{' ...' if len(files) > 6 else ''}")
    _refuse_configs(base, mine, split, shown)
    return mine, left


def refuse_joined_saved(base: Path, split: str | None, shown: str | None = None) -> None:
    """Refuse a split joined with ``+`` (:func:`parquet_files`) of ``base``, a ``save_to_disk`` folder: its splits are
    each read from a folder of its own, one at a time, and the refusal said only "split 'train+extra' not found"
    beside a list holding both. ``shown``: the split as the task spec writes it, sliced (``train[:2]+test[:2]``;
    ``split`` is it without its slices), named in the refusal."""
    if split is None or "+" not in split:
        return
    parts, split = joined_splits(split), shown or split
    raise ValueError(f"hf_datasets {base}: split {split!r} joins the splits {parts} with '+', which reads a folder of "
                     "parquet files (or a parquet file); a save_to_disk folder's splits are read one at a time. Write "
                     "them as parquet files and give that folder as path, e.g. dd[name].to_parquet(f\"my_data/"
                     f"{{name}}.parquet\") for each of {parts}, with split = {split!r}; or save the joined rows as "
                     "one split (datasets.concatenate_datasets([...]).save_to_disk(...))")
