"""The ``hf_datasets`` format: a Hugging Face dataset saved with ``save_to_disk``, or parquet files.

A task spec points at it and maps its columns to the fields of :mod:`mtl_lora_vl.data.rows`::

    [data]
    format = "hf_datasets"
    path = "my_vqa"                   # under --data-root (or absolute): a save_to_disk folder, a
                                      # .parquet file, or a folder of parquet files
    columns = {image = "img", question = "q", answers = "answers"}
    [data.train]
    split = "train"                   # a split of a saved DatasetDict, or of a parquet folder
    [data.val]                        #   (files named "<split>-*.parquet", "*_<split>.parquet" or under "<split>/";
    split = "validation"              #   a hub shard "<split>-00000-of-00002.parquet" is of "<split>", whole)

A folder of several configs, each in a folder of its own (``en/train-00000-of-00001.parquet`` beside ``de/...``, as
``push_to_hub(config_name=...)`` writes them), is refused naming them: ``path = "my_vqa/en"`` reads one config.

Fields: ``image``, ``text``/``caption``/``captions``, ``question``, ``answers``, ``label``, ``image_id``,
``question_type``, ``question_id``, ``filter_type``. A key that is no field (a typo) is refused when the task spec
loads, with a did-you-mean; a column name the dataset lacks, when the split is read. Without ``columns`` every
column named like a field is used. An image column may hold images (the ``datasets.Image`` feature: encoded bytes,
or a path), raw bytes, or file paths; paths are resolved under the data root (``images`` is a folder prefix) and
refused when they leave it; a path kept in several columns (Karpathy-style parquet: ``filepath`` "val2014",
``filename`` "COCO_val2014_...jpg") maps ``image`` to those columns, folders first, their text joined with "/"
(``image = ["filepath", "filename"]``; a blank folder part is left out). A ``ClassLabel`` label column gives the
class names; beside the reader's ``class_names`` its rows are read by name, in any order of those (see
:func:`.hf_table.class_label_names`). A ClassLabel's -1 (``datasets``' "no label") is refused naming its rows, as a
blank label is by the other readers (not in a row with a question, which reads no label).

A row of several images (the ``nlvr`` kind; NLVR2 copies on the hub keep a pair as two image columns) maps
``images`` to a list of two or more image columns, in order, with ``statement`` (or ``text``) and ``label``::

    columns = {images = ["left_image", "right_image"], statement = "sentence", label = "label"}

``Example.image`` is then a tuple with one reference per column (a failed image is named by its row and column),
and ``label`` is a truth value read as JSONL rows' are (true/false, yes/no, 1/0, booleans); a ``ClassLabel``
label column is read by its names (true/false, yes/no), never by index order, and refused with other names. Such
a mapping is never guessed from column names: a table of several image columns and no ``image`` needs ``columns``.
``group = "<column>"`` (mapped by name only) names the rows of one statement, for NLVR2's ``consistency``.
A table that keeps a row's images in ONE column of lists (``Sequence(Image())``, lists of bytes or paths, or
parquet lists of ``{bytes, path}``: Mantis, MMMU-style sets) maps it by name, ``images = "images"``: one lazy
reference per element (:mod:`mtl_lora_vl.data.hf_images`; a failed one named by row and position), two or more
per row (the ``nlvr`` kind then wants training's count in every row); such a column mapped as ``image`` is refused.

Images kept in another table, joined to the rows by image id (GQA on the hub: ``testdev_balanced_images`` beside
``testdev_balanced_instructions``), are named by ``image_table = {path = ..., key = "id"}`` with ``columns =
{image_id = "imageId", ...}`` (:mod:`mtl_lora_vl.data.hf_join`): each row's image a lazy reference to its row there.

Images stored in the dataset stay there: each example holds a small :class:`DatasetImage` reference
(table + row) and loader workers read the bytes themselves from the memory-mapped table, so nothing is
copied into the example list. Parquet files are converted once into ``datasets``' Arrow cache
(``cache_dir``, default ``~/.cache/huggingface/datasets``; a relative one is under the data root, as ``path`` is), as
``datasets.load_dataset`` would.

Needs the optional ``datasets`` package (``pip install "mtl-lora-vl[datasets]"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..whole_files import read_whole
from .common import (
    DataFormatError,
    ImageChecker,
    PathEscapeError,
    ReaderOptionError,
    data_root_dir,
    resolve_under,
)
from .hf_images import column_image_rows, list_image_rows
from .hf_join import EXAMPLE as JOIN_EXAMPLE
from .hf_join import check_image_table, join_rows
from .hf_parquet import parquet_files, refuse_joined_saved
from .hf_slices import is_sliced, joined_lengths, parquet_slices, row_name, slice_rows, split_row, take_rows, unsliced
from .hf_table import (
    DatasetImage,
    DatasetTable,
    byte_lengths,
    byte_tails,
    check_path_parts,
    class_label_names,
    files_stamp,
    image_cells,
    image_kind,
    is_image_feature,
    list_element,
    load_datasets,
    load_saved,
    path_cells,
    refuse_unlabelled,
)
from .records import Split
from .row_keys import no_id
from .rows import NO_ROWS, examples_from_rows

FIELDS = ("image", "images", "text", "caption", "captions", "statement", "question", "answers", "label", "image_id",
          "question_type", "question_id", "filter_type", "group")
#: Fields a column of the same name is taken for without ``columns`` (several images are never guessed).
_AUTO_FIELDS = tuple(f for f in FIELDS if f not in ("images", "statement", "group"))
_PAIR_EXAMPLE = 'columns = {images = ["left_image", "right_image"], statement = "sentence", label = "label"}'


def _find(root: Path, path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise FileNotFoundError(f"hf_datasets path {p} not found (relative paths are taken under the data root "
                                f"{root}); give a save_to_disk folder, a .parquet file or a folder of them")
    return p


def _open_table(root: Path, path: str | os.PathLike, split: str | None,
                cache_dir: str | None) -> tuple[DatasetTable, Any]:
    datasets = load_datasets()
    base = _find(root, path)
    spec, split = split, unsliced(split)   # (datasets' slices, train[:10%]: rows of the split, hf_slices)
    lengths: dict[str, int] = {}   # each split's rows, where spec slices them (a saved split's: when opened)
    if base.is_dir() and ((base / "dataset_dict.json").is_file() or (base / "state.json").is_file()):
        refuse_joined_saved(base, split, spec)   # ('+' joins a parquet folder's splits)
        # a DatasetDict by its split names, each split loaded alone (a dict with a split saved empty cannot be loaded)
        ds = _saved_splits(base)
        ds = load_saved(base, str(base)) if ds is None else ds
        if isinstance(ds, (list, datasets.DatasetDict)):
            if split is None and len(ds) == 1:
                split = next(iter(ds))
            if split not in ds:
                what = "no split is given" if split is None else f"split {split!r} not found"
                raise ValueError(f"hf_datasets {base}: {what}; the saved dataset has splits {list(ds)} "
                                 f"({_SPLIT_HINT})")
            if isinstance(ds, list):
                _check_split_folder(base, split, ds)
        elif split is not None and ds.split is None:
            raise ValueError(f"hf_datasets {base}: this saved dataset has no split name, so split = {split!r} "
                             "selects nothing (every split would read the same rows); leave split out where the "
                             "folder is that split's data, or save the splits together (DatasetDict.save_to_disk)")
        elif split is not None and str(ds.split) != split:
            raise ValueError(f"hf_datasets {base}: this saved dataset is the {str(ds.split)!r} split, not {split!r}")
        table = DatasetTable("disk", (str(base),), split if isinstance(ds, (list, datasets.DatasetDict)) else None)
    else:
        files, lengths = (parquet_slices(base, spec, path) if is_sliced(spec) else
                          (parquet_files(base, split, path), joined_lengths(base, split, path)))
        files = _with_rows(files, f"{path}" + (f": split {spec!r}" if spec else ""))
        table = DatasetTable("parquet", tuple(files), split, cache_dir)
    table = dataclasses.replace(table, stamp=files_stamp(table.files()))
    ds = _open_whole(table, base)
    if not is_sliced(spec):   # (splits joined whole: each one's rows, which messages name a row by)
        return dataclasses.replace(table, lengths=tuple(lengths.items())), ds
    rows = slice_rows(spec, lengths or {split: len(ds)}, f"hf_datasets {base}")   # (a saved split: its rows)
    table = dataclasses.replace(table, spec=spec, rows=rows, lengths=tuple((lengths or {split: len(ds)}).items()))
    return table, take_rows(ds, table.rows)


def _with_rows(files: list[str], what: str) -> list[str]:
    """The parquet ``files`` that hold rows (their footers say): ``datasets``' ``from_parquet`` fails on a file of no
    rows with a bare DatasetGenerationError (pyarrow's "BatchSize must be greater than 0"), even beside files that
    have rows; refused, naming ``what``, where none has."""
    import pyarrow.parquet as pq

    kept = [f for f in files if pq.read_metadata(f).num_rows]
    if not kept:
        raise DataFormatError(f"hf_datasets {what}: its parquet file(s) hold {NO_ROWS}")
    return kept


def _open_whole(table: DatasetTable, base: Path) -> Any:
    """``table`` opened, all its rows; a saved split that ``datasets`` cannot load refused, naming it."""
    if table.kind != "disk" or table.split is None:
        return table.open()
    try:
        return table.open()
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:   # datasets' own, naming a file at most
        raise DataFormatError(f"hf_datasets {base}: split {table.split!r} cannot be loaded from {base / table.split} "
                              f"({type(e).__name__}: {e}); its files are damaged or incomplete: save the DatasetDict "
                              "again (save_to_disk), or leave that split out (the other splits load alone)") from e


_SPLIT_HINT = "set split = ... in the [data.<split>] table"


def _open_images(root: Path, image_table: dict[str, str], split: str | None,
                 cache_dir: str | None) -> tuple[DatasetTable, Any]:
    """The table of option ``image_table`` (:mod:`.hf_join`), opened at its ``split``, else at the rows' ``split``:
    one parquet file or one saved ``Dataset`` is one table, read whole (no split of the rows' names a part of it,
    and a blank ``split`` is refused, so such a table beside rows of a split could not be read at all)."""
    base = _find(root, image_table["path"])
    whole = base.is_file() or ((base / "state.json").is_file() and not (base / "dataset_dict.json").is_file())
    at = image_table.get("split", None if whole else split)
    try:
        return _open_table(root, base, at, cache_dir)
    except (ValueError, FileNotFoundError) as e:
        if at is None or isinstance(e, DataFormatError):   # (no split chosen; damaged files)
            raise
        fix = 'name its split as image_table = {..., split = "..."}, or give one of its files as path (read whole)'
        said = str(e).replace(_SPLIT_HINT, fix)
        which = "given there" if "split" in image_table else "the rows' split"
        raise type(e)(f"image_table {image_table['path']!r}, read at split {at!r} ({which}): {said}"
                      + ("" if said != str(e) else f"; {fix}")) from e


def _plain(name: Any) -> bool:
    """Whether a split name of ``dataset_dict.json`` is a folder of the dataset's own folder."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _check_split_folder(base: Path, split: str, listed: list[Any]) -> None:
    """Refuse split ``split`` of a saved ``DatasetDict`` (``listed`` in its ``dataset_dict.json``) where its folder
    is not a plain folder of the dataset's, or holds no saved dataset; the other splits stay readable."""
    # each split is read from the folder of its name: a hand-edited "../x" or "/x" would read a dataset elsewhere
    if not _plain(split):
        raise DataFormatError(f"hf_datasets {base / 'dataset_dict.json'}: split name(s) {[split]} are not plain folder "
                              "names in the dataset's folder (a split is read from the folder of its name, and these "
                              "leave it); fix the file's \"splits\" list, or save the DatasetDict again (save_to_disk)")
    if not (base / split / "state.json").is_file():
        present = [n for n in listed if _plain(n) and (base / n / "state.json").is_file()]
        raise DataFormatError(
            f"hf_datasets {base}: split {split!r} is listed in dataset_dict.json ({listed}) but its folder "
            f"{base / split} holds no saved dataset (present: {present}); save the DatasetDict again "
            "(save_to_disk), or give a present split")


def _saved_splits(base: Path) -> list[Any] | None:
    """The split names a ``DatasetDict.save_to_disk`` folder's ``dataset_dict.json`` lists, as listed (each saved in
    the folder of its name; a missing or bad one is refused when asked for, the others stay readable); None where the
    folder has no such file (one saved ``Dataset``)."""
    file = base / "dataset_dict.json"
    if not file.is_file():
        return None
    try:
        names = json.loads(read_whole(file, encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        names = e
    if not isinstance(names, list):
        why = f"{type(names).__name__}: {names}" if isinstance(names, Exception) else f"splits = {names!r}"
        raise DataFormatError(f"hf_datasets {file}: not a DatasetDict's list of splits ({why}); it should read "
                              "{\"splits\": [\"train\", ...]}: save the DatasetDict again (save_to_disk), or fix the "
                              "file to list the split folders")
    return names


def check_columns(columns: Any) -> None:
    """Refuse a ``columns`` option whose field names (its keys) or shape are wrong: what can be checked without the
    dataset, so a task spec's typo is named when the spec loads, not after a model has loaded. The column names
    (its values) are checked against the dataset when the split is read."""
    if columns is None:
        return
    if not isinstance(columns, dict) or not all(isinstance(v, str) for k, v in columns.items()
                                                if k not in ("images", "image")):
        raise ReaderOptionError("option 'columns' must map fields to column names, e.g. {image = \"img\", question "
                                f"= \"q\"}}, got {columns!r}")
    if "image" in columns and not isinstance(columns["image"], str):
        check_path_parts(columns["image"])
    unknown = [k for k in columns if k not in FIELDS]
    if unknown:
        close = {k: difflib.get_close_matches(k, list(FIELDS), n=1, cutoff=0.6) for k in unknown}
        hint = "".join(f"; {k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ReaderOptionError(f"option 'columns': unknown field(s) {unknown}{hint}; the fields are {list(FIELDS)} "
                                "(each key is a field, each value a column of the dataset)")
    if "images" in columns:
        cols = columns["images"]
        one = isinstance(cols, str)   # one column whose rows are lists of images (data/hf_images.py)
        if not one and (not isinstance(cols, list) or not all(isinstance(c, str) for c in cols)):
            raise ReaderOptionError(f"option 'columns': images must be a list of the image columns of a row, in order, "
                                    f"e.g. {_PAIR_EXAMPLE}, or one column of lists of images; got images = {cols!r}")
        if "image" in columns:
            raise ReaderOptionError(f"option 'columns': both image ({columns['image']!r}) and images ({cols}) are "
                                    "mapped; a row of one image maps image, a row of several maps images (a list of "
                                    "columns) and no image")
        if not one and len(cols) < 2:
            raise ReaderOptionError(f"option 'columns': images names {len(cols)} column(s) ({cols}); a row of several "
                                    "images needs two or more image columns, in order (for one image per row, map it "
                                    "as image)")
        twice = [] if one else sorted({c for c in cols if cols.count(c) > 1})
        if twice:
            raise ReaderOptionError(f"option 'columns': images names the column(s) {twice} more than once ({cols}); "
                                    "give each image of a row its own column")
    elif "statement" in columns:
        raise ReaderOptionError(f"option 'columns': statement is the text of a row of several images; map those with "
                                f"images = [...] too ({_PAIR_EXAMPLE}), or map a row of one image's text as text or "
                                "caption")


def check_hf_options(options: dict[str, Any]) -> None:
    """The checks of :func:`read_hf_datasets`' options that need no file: run when a task spec loads."""
    check_columns(options.get("columns"))
    check_image_table(options.get("image_table"), options.get("columns"))
    if isinstance(options.get("cache_dir"), str) and not options["cache_dir"].strip():
        raise ReaderOptionError("option 'cache_dir' is blank; give the folder of the parquet files' Arrow cache "
                                "(relative: under the data root), or leave it out for datasets' default")


def _cache_under(root: Path, cache_dir: str | None) -> str | None:
    """``cache_dir`` as a full path: a relative one under the data root, as the spec's other paths are (it was taken
    from the process's working directory, so one spec wrote its cache wherever it was run from)."""
    if cache_dir is None:
        return None
    if not cache_dir.strip():
        check_hf_options({"cache_dir": cache_dir})
    p = Path(cache_dir).expanduser()
    return str(p if p.is_absolute() else root / p)


def _column_map(columns: dict | None, names: list[str], where: str,
                image_columns: list[str] = (), list_columns: list[str] = (), joined: bool = False) -> dict[str, Any]:
    """Field -> column (``images``: a list of columns, or one column of lists); ``image_columns`` / ``list_columns``:
    the table's columns of images / of lists of images, named when no image column is mapped; ``joined``: the images
    come from ``image_table`` (:mod:`.hf_join`), no column of this table is taken for them."""
    check_columns(columns)
    auto = [f for f in _AUTO_FIELDS if not (joined and f == "image")]
    mapping: dict[str, Any] = {f: f for f in auto if f in names} if columns is None else dict(columns)
    wanted = [(f, c) for f, cs in mapping.items() for c in (cs if isinstance(cs, list) else [cs])]
    missing = [(f, c) for f, c in wanted if c not in names]
    if missing:
        close = {c: difflib.get_close_matches(c, names, n=1, cutoff=0.6) for _, c in missing}
        hint = "".join(f"; {c!r}: did you mean {m[0]!r}?" for c, m in close.items() if m)
        raise ValueError(f"{where}: column(s) {[c for _, c in missing]} not found (mapped from "
                         f"{list(dict.fromkeys(f for f, _ in missing))}){hint}; the dataset has columns {names}")
    if "image" not in mapping and "images" not in mapping and not joined:
        if list_columns:
            raise ValueError(f"{where}: no image column, and column(s) {list(list_columns)} hold lists of images; a "
                             "row of several images is not guessed from column names: map it, e.g. columns = "
                             f'{{images = "{list_columns[0]}", statement = "...", label = "..."}}')
        if len(image_columns) >= 2:
            raise ValueError(f"{where}: no image column, and the dataset has {len(image_columns)} columns of images "
                             f"{list(image_columns)}; a row of several images is not guessed from column names: map "
                             f"them in order, e.g. {_PAIR_EXAMPLE} (or map one as image = \"...\")")
        raise ValueError(f"{where}: no image column; map one with columns = {{image = \"...\"}} (the dataset has "
                         f"columns {names}), or, where the images are kept in another table (GQA on the hub: the "
                         f"config ..._images beside ..._instructions), join them by image id: {JOIN_EXAMPLE}")
    return mapping


def read_hf_datasets(
    data_root: str | os.PathLike,
    path: str | os.PathLike,
    split: str | None = None,
    columns: dict[str, str | list[str]] | None = None,
    image_table: dict[str, str] | None = None,
    images: str = "",
    class_names: list[str] | None = None,
    one_per_image: bool = False,
    cache_dir: str | None = None,
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """A Hugging Face dataset (``save_to_disk`` folder or parquet files) as a split; see the module doc."""
    root = data_root_dir(data_root)
    check_image_table(image_table, columns)
    table, ds = _open_table(root, path, split, _cache_under(root, cache_dir))
    source = f"datasets {table}"
    names = list(ds.column_names)

    def name(i: int) -> str:   # row i as messages name it: its split's row number (row_name), where it is sliced
        return f"{source} {row_name(table, i)}"

    mapping = _column_map(columns, names, source, [c for c in names if is_image_feature(ds.features[c])],
                          [c for c in names if is_image_feature(list_element(ds.features[c]))],
                          joined=image_table is not None)
    if "images" in mapping:
        several = list_image_rows if isinstance(mapping["images"], str) else column_image_rows
        read = examples_from_rows(several(root, table, ds, mapping, images, source),
                                  at=name, source=source, image_of=lambda r: r["image"],
                                  check=ImageChecker(verify, strict), class_names=class_names,
                                  one_per_image=one_per_image)
        return dataclasses.replace(read, split_lengths=dict(table.lengths))
    src, src_ds, image_col, at = table, ds, mapping.get("image"), None   # at: per row, its image's row of src
    if image_table is not None:   # the images kept in another table, joined by image id (GQA's hub configs)
        src, src_ds = _open_images(root, image_table, unsliced(split), _cache_under(root, cache_dir))
        image_col, at = join_rows(src_ds, image_table, ds, mapping, source, f"datasets {src}",
                                  lambda i: row_name(table, i), lambda j: row_name(src, j))
    row_of = (lambda i: i) if at is None else at.__getitem__
    image_where = repr(image_col) if at is None else f"{image_col!r} of the image table {src}"
    if isinstance(image_col, list):   # a path of several columns' text (Karpathy's filepath + filename)
        kind, column, images_of = "path", None, path_cells(ds, image_col, source, table)
    else:
        kind = image_kind(src_ds.features[image_col], f"datasets {src}", image_col)
        column = src_ds.select_columns([image_col]).with_format("arrow")[:].column(0)
        images_of = image_cells(column, kind)
    others = {f: c for f, c in mapping.items() if f != "image"}
    meta = (ds.select_columns(list(dict.fromkeys(others.values()))).with_format("arrow")[:].to_pylist()
            if others else [{} for _ in range(len(ds))])
    label_feature = ds.features.get(mapping["label"]) if "label" in mapping else None
    by_name = None   # the ClassLabel's names, where its indices are read by name into the given class_names
    if isinstance(label_feature, load_datasets().ClassLabel):
        # a row with a question is a VQA row, which reads no label (rows.py): its -1 is no missing label
        question = mapping.get("question")
        labels = [None if question is not None and r[question] not in (None, "") else r[mapping["label"]]
                  for r in meta]
        refuse_unlabelled(labels, mapping["label"], source, table)
        if class_names is None:
            class_names = list(label_feature.names)
        else:   # (the classes its rows use: a subset's ClassLabel keeps every name of the whole set)
            used = {v for v in labels if isinstance(v, int) and not isinstance(v, bool)}
            by_name = class_label_names(list(label_feature.names), list(class_names), source, mapping["label"], used)
    by_id: dict[str, tuple[Any, int]] = {}   # image_id -> (the image reference its rows share, its first row)
    digests: dict[int, str] = {}
    by_bytes: dict[str, tuple[Any, int]] = {}   # digest of the bytes -> (reference, first row), rows without an id

    # per image row: its length and bytes near its end (byte_tails), read on first need: where no image_id repeats
    # on two rows, or the images are joined by id (each id one row of the image table), no digest is asked for
    lengths: list[int | None] = []
    keys: list[tuple[int | None, bytes | None]] = []
    sizes: Counter = Counter()

    def digest(row: int) -> str:   # an image row's encoded image, hashed once (rows whose image_id repeats or is blank)
        if not lengths:
            lengths.extend(byte_lengths(column, kind))
            keys.extend(zip(lengths, byte_tails(column, kind)))
            sizes.update(keys)
        if row not in digests and lengths[row] is not None and sizes[keys[row]] == 1:
            # no other row's image is as long and ends so, so none is this one: not read whole
            digests[row] = f"row {row}'s {lengths[row]} bytes"
        if row not in digests:
            value = column[row]
            data = (value["bytes"] if kind == "struct" else value).as_py()
            digests[row] = hashlib.sha256(data or b"").hexdigest()
        return digests[row]

    ids = [values.get(mapping["image_id"]) if "image_id" in mapping else None for values in meta]
    named: dict[str, str] = {}   # digest -> the image_id rows give those bytes, where other rows give none
    if any(no_id(v) for v in ids) and not all(no_id(v) for v in ids):
        for i, v in enumerate(ids):
            if images_of[row_of(i)][0] and not no_id(v):
                named.setdefault(digest(row_of(i)), str(v))

    rows = []
    for i, values in enumerate(meta):
        j = row_of(i)   # the row of the image's table that holds its image
        has_bytes, img_path = images_of[j]
        row = {f: values[c] for f, c in others.items()}
        if by_name is not None and isinstance(row["label"], int) and 0 <= row["label"] < len(by_name):
            row["label"] = by_name[row["label"]]
        given_id = not no_id(row.get("image_id"))   # (NaN: a pandas table's blank cell, no id)
        if not given_id:   # a made-up id must not collide with the column's real ones ("1"): it would share that image
            n = split_row(table.rows, i)   # (its split's row number: one id for a row whatever the slice)
            row["image_id"] = (img_path if img_path and not has_bytes
                               else f"row {n}" if "image_id" in mapping else str(n))
        if has_bytes:
            # Rows of one given image_id share one reference: checked once, grouped for captions.
            ref = DatasetImage(src, image_col, j)
            if given_id:
                first_ref, first = by_id.setdefault(str(row["image_id"]), (ref, i))
                if row_of(first) != j and digest(row_of(first)) != digest(j):   # (rows would share the first's image)
                    raise DataFormatError(f"{name(i)}: image_id {row['image_id']!r} was given to another image at "
                                          f"{row_name(table, first)}; image ids must name one image (fix the column, "
                                          "or map image_id to another one with columns=...)")
            elif digest(j) in named:   # no id, but another row names these bytes: that image
                row["image_id"] = named[digest(j)]
                first_ref, _ = by_id.setdefault(row["image_id"], (ref, i))
            else:   # no id: rows holding the same encoded image are one image (its captions grouped, one key)
                first_ref, first = by_bytes.setdefault(digest(j), (ref, i))
                if first != i:
                    n = split_row(table.rows, first)
                    row["image_id"] = f"row {n}" if "image_id" in mapping else str(n)
            ref = first_ref
            row["image"] = ref
        elif img_path:
            try:
                row["image"] = resolve_under(root, Path(images) / img_path)
            except PathEscapeError as e:   # a URL, an absolute path or '..': name the row
                raise PathEscapeError(f"{name(i)}: {e}") from None
        else:
            there = "" if at is None else f" (its row {j}, whose key is the row's image id)"
            raise DataFormatError(f"{name(i)}: no image in column {image_where}{there}")
        rows.append((i, row))
    read = examples_from_rows(rows, at=name, source=source, image_of=lambda r: r["image"],
                              check=ImageChecker(verify, strict), class_names=class_names,
                              one_per_image=one_per_image)
    return dataclasses.replace(read, split_lengths=dict(table.lengths))   # (what its slices were counted on)
