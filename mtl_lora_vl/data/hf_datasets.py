"""The ``hf_datasets`` format: a Hugging Face dataset saved with ``save_to_disk``, or parquet files.

A task spec points at it and maps its columns to the fields of :mod:`mtl_lora_vl.data.rows`::

    [data]
    format = "hf_datasets"
    path = "my_vqa"                   # under --data-root (or absolute): a save_to_disk folder, a
                                      # .parquet file, or a folder of parquet files
    columns = {image = "img", question = "q", answers = "answers"}
    [data.train]
    split = "train"                   # a split of a saved DatasetDict, or of a parquet folder
    [data.val]                        #   (files named "<split>-*.parquet", "*_<split>.parquet" or under "<split>/")
    split = "validation"

Fields: ``image``, ``text``/``caption``/``captions``, ``question``, ``answers``, ``label``, ``image_id``,
``question_type``, ``question_id``, ``filter_type``. Without ``columns`` every column named like a field is used. An
image column may hold images (the ``datasets.Image`` feature: encoded bytes, or a path), raw bytes, or
file paths; paths are resolved under the data root (``images`` is a folder prefix) and refused when
they leave it. A ``ClassLabel`` label column gives the class names.

Images stored in the dataset stay there: each example holds a small :class:`DatasetImage` reference
(table + row) and loader workers read the bytes themselves from the memory-mapped table, so nothing is
copied into the example list. Parquet files are converted once into ``datasets``' Arrow cache
(``cache_dir``, default ``~/.cache/huggingface/datasets``), as ``datasets.load_dataset`` would.

Needs the optional ``datasets`` package (``pip install "mtl-lora-vl[datasets]"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import DataFormatError, ImageChecker, ReaderOptionError, data_root_dir, resolve_under
from .images import ImageError
from .records import Split
from .rows import examples_from_rows

FIELDS = ("image", "text", "caption", "captions", "question", "answers", "label", "image_id", "question_type",
          "question_id", "filter_type")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError("data format 'hf_datasets' needs the optional package `datasets` (and pyarrow): "
                          "pip install \"mtl-lora-vl[datasets]\" (or pip install datasets)") from e
    return datasets


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars while opening (the names below exist from datasets 2.x to 5.x)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    was = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        yield
    finally:
        if was:
            enable_progress_bar()


@dataclass(frozen=True)
class _Table:
    """Where a dataset lives: how to open it again in a loader worker."""

    kind: str                       # "disk" (save_to_disk) or "parquet"
    location: tuple[str, ...]       # the saved folder, or the parquet files
    split: str | None
    cache_dir: str | None = None
    stamp: str = ""                 # of the files' sizes and times when read: a rewritten dataset is another table
    # column -> that column opened, once per process (a worker opens its own: not pickled); freed with the table
    opened: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "opened": {}}

    def column(self, name: str) -> Any:
        """Column ``name`` of the table as Arrow rows, opened on first use."""
        if name not in self.opened:
            self.opened[name] = self.open().select_columns([name]).with_format("arrow")
        return self.opened[name]

    def open(self) -> Any:
        datasets = _datasets()
        with _quiet(datasets):
            if self.kind == "parquet":
                return datasets.Dataset.from_parquet(list(self.location), cache_dir=self.cache_dir)
            ds = datasets.load_from_disk(self.location[0])
        if isinstance(ds, datasets.DatasetDict):
            return ds[self.split]
        return ds

    def __str__(self) -> str:
        where = self.location[0] if len(self.location) == 1 else f"{Path(self.location[0]).parent} (parquet)"
        return f"{where} [{self.split}]" if self.split else where


@dataclass(frozen=True)
class DatasetImage:
    """An image stored in row ``row`` of column ``column`` of a dataset table (read lazily by ``fetch``)."""

    table: _Table
    column: str
    row: int

    def fetch(self) -> bytes:
        """The encoded image bytes (what :func:`mtl_lora_vl.data.images.load_image` decodes)."""
        value = self.table.column(self.column)[self.row].column(0)[0].as_py()
        if isinstance(value, dict):
            value = value.get("bytes")
        if not value:
            raise ImageError(f"image {self}: the dataset holds no image bytes in this row")
        return value

    def __str__(self) -> str:
        return f"{self.table} row {self.row} column {self.column!r}"


def _find(root: Path, path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise FileNotFoundError(f"hf_datasets path {p} not found (relative paths are taken under the data root "
                                f"{root}); give a save_to_disk folder, a .parquet file or a folder of them")
    return p


_SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test")


def _in_split(f: Path, base: Path, split: str) -> bool:
    """Whether parquet file ``f`` under ``base`` belongs to ``split``: the split's name stands alone (between
    ``-._`` , spaces, digits or the ends) in the file's name or a folder's, as ``datasets`` reads it
    (``train-0.parquet``, ``mydata_train.parquet``, ``train2017/``; not ``constrain.parquet``)."""
    alone = re.compile(rf"(?:^|[-._ 0-9]){re.escape(split)}(?:[-._ 0-9]|$)")
    return any(alone.search(part) for part in f.relative_to(base).parts)


def _split_of(f: Path, base: Path) -> str | None:
    """The usual split name a parquet file's name or folder gives, if any."""
    return next((s for s in _SPLIT_NAMES if _in_split(f, base, s)), None)


def _parquet_files(base: Path, split: str | None) -> list[str]:
    if base.is_file():
        if split is not None and not _in_split(base, base.parent, split):
            raise ValueError(f"hf_datasets {base}: one parquet file is one table, and its name does not say split "
                             f"{split!r} ('{split}-*.parquet', '*_{split}.parquet'), so split = {split!r} selects "
                             "nothing (every split would read the same rows); leave split out where the file is that split's data, or give the "
                             "folder that holds every split's files")
        return [str(base)]
    files = sorted(base.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{base} is neither a save_to_disk folder (no dataset_dict.json or state.json) "
                                "nor a folder of .parquet files")
    if split is None:
        found = sorted({s for s in (_split_of(f, base) for f in files) if s is not None})
        if len(found) > 1:
            raise ValueError(f"hf_datasets {base}: the parquet files hold the splits {found}; set split = ... in the "
                             "[data.<split>] table (every file was read as one split)")
        return [str(f) for f in files]
    mine = [f for f in files if _in_split(f, base, split)]
    if not mine:
        shown = ", ".join(str(f.relative_to(base)) for f in files[:6])
        raise FileNotFoundError(f"{base}: no parquet file of split {split!r} (named '{split}-*.parquet', "
                                f"'*_{split}.parquet' or under '{split}/'); found {shown}"
                                f"{' ...' if len(files) > 6 else ''}")
    return [str(f) for f in mine]


def _open_table(root: Path, path: str | os.PathLike, split: str | None, cache_dir: str | None) -> tuple[_Table, Any]:
    datasets = _datasets()
    base = _find(root, path)
    if base.is_dir() and ((base / "dataset_dict.json").is_file() or (base / "state.json").is_file()):
        with _quiet(datasets):
            ds = datasets.load_from_disk(str(base))
        if isinstance(ds, datasets.DatasetDict):
            if split is None and len(ds) == 1:
                split = next(iter(ds))
            if split not in ds:
                what = "no split is given" if split is None else f"split {split!r} not found"
                raise ValueError(f"hf_datasets {base}: {what}; the saved dataset has splits {list(ds)} (set "
                                 "split = ... in the [data.<split>] table)")
        elif split is not None and ds.split is None:
            raise ValueError(f"hf_datasets {base}: this saved dataset has no split name, so split = {split!r} "
                             "selects nothing (every split would read the same rows); leave split out where the "
                             "folder is that split's data, or save the splits together (DatasetDict.save_to_disk)")
        elif split is not None and str(ds.split) != split:
            raise ValueError(f"hf_datasets {base}: this saved dataset is the {str(ds.split)!r} split, not {split!r}")
        table = _Table("disk", (str(base),), split if isinstance(ds, datasets.DatasetDict) else None,
                       stamp=_stamp(sorted(base.rglob("*"))))
    else:
        files = _parquet_files(base, split)
        table = _Table("parquet", tuple(files), split, cache_dir, stamp=_stamp(map(Path, files)))
    return table, table.open()


def _stamp(files: Iterable[Path]) -> str:
    """A short hash of each file's name, size and time: what tells a rewritten dataset from the one read before
    (the images of a table stay open per process, see DatasetImage.fetch)."""
    seen = [(str(f), st.st_size, st.st_mtime_ns) for f in files if f.is_file() for st in (f.stat(),)]
    return hashlib.sha1(repr(seen).encode()).hexdigest()[:16]


def _column_map(columns: dict | None, names: list[str], where: str) -> dict[str, str]:
    if columns is None:
        mapping = {f: f for f in FIELDS if f in names}
    else:
        if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
            raise ReaderOptionError(f"columns must map fields to column names, e.g. {{image = \"img\", question = \"q\"}}, "
                            f"got {columns!r}")
        unknown = [k for k in columns if k not in FIELDS]
        if unknown:
            raise ValueError(f"columns: unknown field(s) {unknown}; the fields are {list(FIELDS)}")
        mapping = dict(columns)
    missing = {f: c for f, c in mapping.items() if c not in names}
    if missing:
        raise ValueError(f"{where}: column(s) {list(missing.values())} not found (mapped from {list(missing)}); "
                         f"the dataset has columns {names}")
    if "image" not in mapping:
        raise ValueError(f"{where}: no image column; map one with columns = {{image = \"...\"}} (the dataset has "
                         f"columns {names})")
    return mapping


def _image_kind(feature: Any, where: str, column: str) -> str:
    datasets = _datasets()
    if isinstance(feature, datasets.Image):
        return "struct"
    if isinstance(feature, dict) and set(feature) >= {"bytes", "path"}:
        return "struct"
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "path"
    if dtype in ("binary", "large_binary"):
        return "bytes"
    raise ValueError(f"{where}: image column {column!r} has type {feature}; expected images (datasets.Image), "
                     "encoded bytes or file paths")


def _images(column: Any, kind: str) -> list[tuple[bool, str | None]]:
    """Per row of the image ``column`` (an Arrow chunked array): (has bytes in the table, path or None), without
    copying the bytes."""
    out: list[tuple[bool, str | None]] = []
    for chunk in column.chunks:
        if kind == "path":
            out.extend((False, p) for p in chunk.to_pylist())
        elif kind == "bytes":
            out.extend((v, None) for v in chunk.is_valid().to_pylist())
        else:
            valid = chunk.is_valid().to_pylist()
            has = chunk.field("bytes").is_valid().to_pylist()
            paths = chunk.field("path").to_pylist()
            out.extend((v and h, p if v else None) for v, h, p in zip(valid, has, paths))
    return out


def read_hf_datasets(
    data_root: str | os.PathLike,
    path: str | os.PathLike,
    split: str | None = None,
    columns: dict[str, str] | None = None,
    images: str = "",
    class_names: list[str] | None = None,
    one_per_image: bool = False,
    cache_dir: str | None = None,
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """A Hugging Face dataset (``save_to_disk`` folder or parquet files) as a split; see the module doc."""
    root = data_root_dir(data_root)
    table, ds = _open_table(root, path, split, cache_dir)
    source = f"datasets {table}"
    mapping = _column_map(columns, list(ds.column_names), source)
    image_col = mapping["image"]
    kind = _image_kind(ds.features[image_col], source, image_col)
    label_feature = ds.features.get(mapping["label"]) if "label" in mapping else None
    if class_names is None and isinstance(label_feature, _datasets().ClassLabel):
        class_names = list(label_feature.names)

    column = ds.select_columns([image_col]).with_format("arrow")[:].column(0)
    others = {f: c for f, c in mapping.items() if f != "image"}
    meta = (ds.select_columns(list(dict.fromkeys(others.values()))).with_format("arrow")[:].to_pylist()
            if others else [{} for _ in range(len(ds))])
    by_id: dict[str, tuple[Any, int]] = {}   # image_id -> (the image reference its rows share, its first row)
    digests: dict[int, str] = {}
    by_bytes: dict[str, tuple[Any, int]] = {}   # digest of the bytes -> (reference, first row), rows without an id

    def digest(row: int) -> str:   # the row's encoded image, hashed once (rows whose image_id repeats or is blank)
        if row not in digests:
            value = column[row]
            data = (value["bytes"] if kind == "struct" else value).as_py()
            digests[row] = hashlib.sha256(data or b"").hexdigest()
        return digests[row]

    images_of = list(_images(column, kind))
    ids = [values.get(mapping["image_id"]) if "image_id" in mapping else None for values in meta]
    named: dict[str, str] = {}   # digest -> the image_id rows give those bytes, where other rows give none
    if any(v in (None, "") for v in ids) and any(v not in (None, "") for v in ids):
        for i, ((has_bytes, _), v) in enumerate(zip(images_of, ids)):
            if has_bytes and v not in (None, ""):
                named.setdefault(digest(i), str(v))

    rows = []
    for i, ((has_bytes, img_path), values) in enumerate(zip(images_of, meta)):
        row = {f: values[c] for f, c in others.items()}
        given_id = row.get("image_id") not in (None, "")
        if not given_id:   # a made-up id must not collide with the column's real ones ("1"): it would share that image
            row["image_id"] = img_path if img_path and not has_bytes else f"row {i}" if "image_id" in mapping else str(i)
        if has_bytes:
            # Rows of one given image_id share one reference: checked once, grouped for captions.
            ref = DatasetImage(table, image_col, i)
            if given_id:
                first_ref, first = by_id.setdefault(str(row["image_id"]), (ref, i))
                if first != i and digest(first) != digest(i):   # (rows would silently share the first one's image)
                    raise DataFormatError(f"{source} row {i}: image_id {row['image_id']!r} was given to another image "
                                          f"at row {first}; image ids must name one image (fix the column, or map "
                                          "image_id to another one with columns=...)")
            elif digest(i) in named:   # no id, but another row names these bytes: that image
                row["image_id"] = named[digest(i)]
                first_ref, _ = by_id.setdefault(row["image_id"], (ref, i))
            else:   # no id: rows holding the same encoded image are one image (its captions grouped, one key)
                first_ref, first = by_bytes.setdefault(digest(i), (ref, i))
                if first != i:
                    row["image_id"] = f"row {first}" if "image_id" in mapping else str(first)
            ref = first_ref
            row["image"] = ref
        elif img_path:
            row["image"] = resolve_under(root, Path(images) / img_path)
        else:
            raise DataFormatError(f"{source} row {i}: no image in column {image_col!r}")
        rows.append((i, row))
    return examples_from_rows(rows, at=lambda n: f"{source} row {n}", source=source, image_of=lambda r: r["image"],
                              check=ImageChecker(verify, strict), class_names=class_names,
                              one_per_image=one_per_image)
