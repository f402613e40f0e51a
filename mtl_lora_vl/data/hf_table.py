"""The Arrow side of the ``hf_datasets`` format (:mod:`.hf_datasets`, :mod:`.hf_images`): a dataset table that a
loader worker opens again by itself, lazy references to the images stored in it, and what a column's feature says
about the images it holds."""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .common import TRUTH_VALUES, DataFormatError, ReaderOptionError, class_name_order
from .hf_loading import held_logs, load_datasets, load_saved, quiet_progress, refuse_mixed_columns
from .hf_slices import row_name, take_rows
from .images import ImageError

__all__ = ["DatasetImage", "DatasetTable", "byte_lengths", "byte_tails", "check_path_parts", "class_label_names",
           "files_stamp", "held_logs", "image_cells", "image_kind", "is_image_feature", "list_element", "load_datasets",
           "load_saved", "path_cells", "quiet_progress", "refuse_list_column", "refuse_mixed_columns",
           "refuse_unlabelled", "truth_names"]

_LIST_TYPES = ("Sequence", "List", "LargeList")
#: The logger of ``datasets``' parquet builder (2.x to 5.x), which logs an ERROR line for a file it fails to read.
_PARQUET_LOGGER = "datasets.packaged_modules.parquet.parquet"


def files_stamp(files: Iterable[Path]) -> str:
    """A short hash of each file's name, size and time: what tells a rewritten dataset from the one read before
    (the images of a table stay open per process, see DatasetImage.fetch)."""
    return _stamp_of(_listing(files))


def _listing(files: Iterable[Path]) -> list[tuple[str, int, int]]:
    return [(str(f), st.st_size, st.st_mtime_ns) for f in files if f.is_file() for st in (f.stat(),)]


def _stamp_of(listing: list[tuple[str, int, int]]) -> str:
    return hashlib.sha1(repr(listing).encode()).hexdigest()[:16]


def row_shards(ds: Any) -> list[tuple[int, list[str]]] | None:
    """Per Arrow file of the opened ``datasets.Dataset`` ``ds``, in row order: (the row after its last, its path);
    each row is read from its file's memory map alone. None where that does not hold: rows held in memory, or
    numbered through an indices mapping (a ``select``ed or filtered dataset)."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    if getattr(ds, "_indices", None) is not None:
        return None
    table = ds.data
    out: list[tuple[int, list[str]]] = []
    end = 0
    for block in table.blocks if isinstance(table, ConcatenationTable) else [[table]]:   # rows of blocks, in order
        if not block or not all(isinstance(t, MemoryMappedTable) for t in block):
            return None
        end += block[0].num_rows
        out.append((end, [t.path for t in block]))
    return out if out and end == len(ds) else None


@dataclass(frozen=True)
class DatasetTable:
    """Where a dataset lives: how to open it again in a loader worker."""

    kind: str                       # "disk" (save_to_disk) or "parquet"
    location: tuple[str, ...]       # the saved folder, or the parquet files
    split: str | None
    cache_dir: str | None = None
    stamp: str = ""                 # of the files' sizes and times when read: a rewritten dataset is another table
    rows: tuple[tuple[int, int], ...] = ()   # the rows read, ranges of the split's (its slices, hf_slices); (): all
    spec: str = ""                  # the split as the task spec slices it (train[:10%]), shown; "": as split
    lengths: tuple[tuple[str, int], ...] = ()   # where sliced: each split's rows, what rows are numbered in
    # column -> that column opened, once per process (a worker opens its own: not pickled); freed with the table
    opened: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # per Arrow file in row order, as checked first in this process: (row after its last, ((file, size, time), ...)),
    # what check_read stats again for a row (one entry of every file where the rows' files are not known)
    shards: list[tuple[int, tuple[tuple[str, int, int], ...]]] = field(default_factory=list, compare=False,
                                                                       repr=False)
    # column -> its cells as one Arrow array of the memory map, kept (its lookup of a row's chunk is built once);
    # None where the column is seen through an indices mapping
    arrays: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "opened": {}, "shards": [], "arrays": {}}

    def column(self, name: str) -> Any:
        """Column ``name`` of the table as Arrow rows, opened on first use."""
        if name not in self.opened:
            self.opened[name] = self.open().select_columns([name]).with_format("arrow")
        return self.opened[name]

    def cells(self, name: str) -> Any | None:
        """Column ``name`` as one Arrow chunked array of the memory map (``Dataset.__getitem__`` costs ten times as
        much a row), kept once built; None where the table is seen through an indices mapping."""
        if name not in self.arrays:
            opened = self.column(name)
            self.arrays[name] = opened.data.column(name) if getattr(opened, "_indices", None) is None else None
        return self.arrays[name]

    def files(self) -> list[Path]:
        """The files the table is read from, which its stamp covers: the parquet files, else the split's own folder
        of a saved ``DatasetDict`` (a split saved again alone leaves the others' stamps), else the whole folder."""
        if self.kind == "parquet":
            return [Path(f) for f in self.location]
        return sorted(self._split_folder().rglob("*"))

    def _split_folder(self) -> Path:
        """The saved folder :meth:`open` loads: the split's own folder of a saved ``DatasetDict`` (a dict with a split
        saved empty cannot be loaded whole), else the whole folder."""
        base = Path(self.location[0])
        return base / self.split if self.split is not None and (base / self.split / "state.json").is_file() else base

    def open(self) -> Any:
        """The table as a ``datasets.Dataset`` (its split of a saved ``DatasetDict``; its :attr:`rows`)."""
        return take_rows(self._open_whole(), self.rows)

    def _open_whole(self) -> Any:
        datasets = load_datasets()
        self.check(self.files())   # (a worker would read other rows at those numbers)
        if self.kind == "parquet":
            from datasets.exceptions import DatasetsError

            with held_logs(_PARQUET_LOGGER):   # (its "Failed to read file ..." ERROR line, before our refusal)
                try:
                    with quiet_progress():
                        return datasets.Dataset.from_parquet(list(self.location), cache_dir=self.cache_dir)
                except (DatasetsError, ValueError) as e:   # (datasets' CastError, bare or in a DatasetGenerationError)
                    refuse_mixed_columns(list(self.location), e)
                    raise
        folder = self._split_folder()
        if folder != Path(self.location[0]):
            return load_saved(folder, f"{self.location[0]}: split {self.split!r}")
        ds = load_saved(folder, str(folder))
        if isinstance(ds, datasets.DatasetDict):
            return ds[self.split]
        return ds

    def check(self, files: list[Path]) -> None:
        """Refuse the table where ``files`` (its files) changed since it was read at the start."""
        if self.stamp and files_stamp(files) != self.stamp:
            self._refuse()

    def _refuse(self) -> NoReturn:
        raise DataFormatError(f"hf_datasets {self}: the dataset's files changed since it was read (saved again, "
                              "or replaced); its rows are numbered as read then, so start again to read it anew")

    def check_read(self, row: int, column: str) -> None:
        """:meth:`check` around a read of row ``row`` of ``column`` from the open table: ``save_to_disk`` into the
        same folder rewrites its files in place, under the memory map a process holds (workers=0, or a persistent
        worker), which then reads the new rows' images beside the start's captions. (Parquet tables are read from
        ``datasets``' Arrow copy, which is never rewritten.) Every file is checked once per process; then one
        ``stat`` per read: of the Arrow file that holds the row, whose memory map alone the row is read from. A
        change to another file (another shard, ``state.json``) is not refused here: its rows are refused when read,
        and the metadata is read only when the table is opened, which checks every file."""
        if self.kind != "disk" or not self.stamp:
            return
        if not self.shards:
            self._map_shards(column)
        i = bisect.bisect_right(self.shards, row, key=lambda s: s[0])
        for name, size, mtime in self.shards[min(i, len(self.shards) - 1)][1]:
            try:
                st = os.stat(name)
            except OSError:
                st = None
            if st is None or (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._refuse()

    def _map_shards(self, column: str) -> None:
        """Fill :attr:`shards` (once per process) from the table opened, its files then checked against the stamp:
        the stat taken here must be that of the files as mapped."""
        shards = row_shards(self.column(column))
        listing = _listing(self.files())
        if _stamp_of(listing) != self.stamp:
            self._refuse()
        if shards is None:   # the rows' files are not known: every file for every row
            self.shards[:] = [(2 ** 63, tuple(listing))]
            return
        seen = {os.path.realpath(name): (name, size, mtime) for name, size, mtime in listing}
        # (a file not in the folder, which the stamp does not cover, is stat'ed as it is now)
        self.shards[:] = [(end, tuple(seen.get(os.path.realpath(p)) or _listing([Path(p)])[0] for p in paths))
                          for end, paths in shards]

    def __str__(self) -> str:
        where = self.location[0] if len(self.location) == 1 else f"{Path(self.location[0]).parent} (parquet)"
        split = self.spec or self.split
        return f"{where} [{split}]" if split else where


@dataclass(frozen=True)
class DatasetImage:
    """An image stored in row ``row`` of column ``column`` of a dataset table (read lazily by ``fetch``)."""

    table: DatasetTable
    column: str
    row: int

    def fetch(self) -> bytes:
        """The encoded image bytes (what :func:`mtl_lora_vl.data.images.load_image` decodes)."""
        self.table.check_read(self.row, self.column)   # before: a file cut short under the map is not read (bus error)
        value = self.stored().as_py()
        self.table.check_read(self.row, self.column)   # after: nor bytes that a save in place changed while read
        if isinstance(value, dict):
            value = value.get("bytes")
        if not value:
            raise ImageError(f"image {self}: the dataset holds no image bytes there")
        return value

    def stored(self) -> Any:
        """The image's cell, as an Arrow scalar (encoded bytes, or a ``{bytes, path}`` struct)."""
        cells = self.table.cells(self.column)
        if cells is None:
            return self.table.column(self.column)[self.row].column(0)[0]
        return cells[self.row]

    def __str__(self) -> str:
        return f"{self.table} {row_name(self.table, self.row)} column {self.column!r}"


def list_element(feature: Any) -> Any | None:
    """The element feature of a list column (``Sequence``/``List``/``LargeList`` or ``[feature]``), else None."""
    if isinstance(feature, list) and len(feature) == 1:
        return feature[0]
    if type(feature).__name__ in _LIST_TYPES:
        return getattr(feature, "feature", None)
    return None


def refuse_list_column(feature: Any, where: str, column: str) -> None:
    """Refuse column ``column`` as ONE image (or one of a list of image columns) where it holds lists of images."""
    if list_element(feature) is not None:
        raise ValueError(f"{where}: column {column!r} holds a list of images in each row ({feature}), not one image; "
                         f"map it alone as images = {column!r}, a row of several images (the nlvr kind: columns = "
                         f'{{images = "{column}", statement = "...", label = "..."}})')


def is_image_feature(feature: Any) -> bool:
    """Whether ``feature`` holds images as structs: ``datasets.Image``, or a ``{bytes, path}`` struct."""
    datasets = load_datasets()
    return isinstance(feature, datasets.Image) or (isinstance(feature, dict) and set(feature) >= {"bytes", "path"})


def image_kind(feature: Any, where: str, column: str) -> str:
    """How image column ``column`` stores its images: "struct", "path" (file paths) or "bytes" (encoded images)."""
    refuse_list_column(feature, where, column)
    if is_image_feature(feature):
        return "struct"
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "path"
    if dtype in ("binary", "large_binary"):
        return "bytes"
    raise ValueError(f"{where}: image column {column!r} has type {feature}; expected images (datasets.Image), "
                     "encoded bytes or file paths")


def image_cells(column: Any, kind: str) -> list[tuple[bool, str | None]]:
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


_PARTS_EXAMPLE = 'image = ["filepath", "filename"]'


def check_path_parts(parts: Any) -> None:
    """Refuse a ``columns`` mapping's ``image`` given as a list (a path made of several columns, joined as path parts
    in order: Karpathy's ``filepath`` + ``filename``) that is not a list of two or more distinct column names."""
    if not isinstance(parts, list) or not all(isinstance(c, str) and c.strip() for c in parts):
        raise ReaderOptionError(f"option 'columns': image must be one column (image = \"img\"), or a list of the "
                                f"columns whose cells join into its path, folders first ({_PARTS_EXAMPLE}); got "
                                f"image = {parts!r}")
    if len(parts) < 2:
        raise ReaderOptionError(f"option 'columns': image = {parts!r} names {len(parts)} column(s); a path made of "
                                f"several columns names two or more, folders first ({_PARTS_EXAMPLE}); for one "
                                "column give its name alone (image = \"img\")")
    twice = sorted({c for c in parts if parts.count(c) > 1})
    if twice:
        raise ReaderOptionError(f"option 'columns': image = {parts!r} names the column(s) {twice} more than once; "
                                f"give each part of the path once, folders first ({_PARTS_EXAMPLE})")


def path_cells(ds: Any, parts: list[str], source: str, table: DatasetTable) -> list[tuple[bool, str | None]]:
    """Per row of ``ds``: (False, the path its cells of the text columns ``parts`` make, joined with "/" in order),
    as :func:`image_cells` gives a column of paths. A blank folder part is left out (Flickr30k's Karpathy rows have
    no ``filepath``), a blank file name (the last part) refused naming its row."""
    for c in parts:
        feature = ds.features[c]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            held = "images" if is_image_feature(feature) or list_element(feature) is not None else f"{feature}"
            raise ValueError(f"{source}: columns: image = {parts} joins the text of those columns into a path, and "
                             f"column {c!r} holds {held}, not text; map a column of images alone (image = {c!r}), "
                             "several images of a row as images = [...], or give the columns of the path's folder "
                             "and file names")
    cells = ds.select_columns(parts).with_format("arrow")[:].to_pydict()
    out: list[tuple[bool, str | None]] = []
    for i, values in enumerate(zip(*(cells[c] for c in parts))):
        if values[-1] is None or not values[-1].strip():
            raise DataFormatError(f"{source} {row_name(table, i)}: no file name in column {parts[-1]!r} (image = "
                                  f"{parts} joins the path from those columns, the file name last); fix or remove "
                                  "the row")
        out.append((False, _joined_path(v for v in values if v is not None and v.strip())))
    return out


def _joined_path(parts: Iterable[str]) -> str:
    """``parts`` joined with "/", doubled separators and ``.`` folders left out (``val2014/`` + ``a.png`` and
    ``val2014//a.png``: ``val2014/a.png``), so one image spelled two ways is one path, one default image id; nothing
    is resolved (``..`` and a leading "/" stay, for the reader to refuse; no symlink is followed)."""
    text = "/".join(parts)
    return ("/" if text.startswith("/") else "") + "/".join(p for p in text.split("/") if p not in ("", "."))


def byte_lengths(column: Any, kind: str) -> list[int | None]:
    """Per row of the image ``column`` (an Arrow chunked array of kind "bytes" or "struct"): the length of its encoded
    image (None without one), from the Arrow offsets: no byte of an image is read."""
    import pyarrow.compute as pc

    out: list[int | None] = []
    for chunk in column.chunks:
        out.extend(pc.binary_length(chunk if kind == "bytes" else chunk.field("bytes")).to_pylist())
    return out


def byte_tails(column: Any, kind: str) -> list[bytes | None]:
    """Per row of the image ``column`` (as :func:`byte_lengths`): 240 bytes near the end of its encoded image (None
    without one), sliced in Arrow: what tells most images of one length apart without reading each whole. The last
    16 are left out: a PNG's or JPEG's end marker is the same in every image, the compressed data before it is not."""
    import pyarrow.compute as pc

    out: list[bytes | None] = []
    for chunk in column.chunks:
        out.extend(pc.binary_slice(chunk if kind == "bytes" else chunk.field("bytes"), -256, -16).to_pylist())
    return out


def truth_names(names: list[str], column: str, source: str) -> list[str]:
    """The names of a ``ClassLabel`` label column of statements, checked to be truth values (read by name)."""
    bad = [n for n in names if str(n).strip().lower() not in TRUTH_VALUES]
    if bad:
        raise DataFormatError(f"{source}: label column {column!r} is a ClassLabel of names {names}; a statement about "
                              f"several images has a truth value, read by its class's name: true/false (or yes/no, "
                              f"1/0), and {bad} is none of those")
    return names


def refuse_unlabelled(labels: list[Any], column: str, source: str, table: DatasetTable) -> None:
    """Refuse the rows of a ``ClassLabel`` label column ``column`` that hold -1: ``datasets``' value for a row with
    no label (a hub test split's rows often have none). Such a row can neither train nor be scored, and a blank
    label is refused by every other reader, so it is named here rather than as an index out of range."""
    rows = [i for i, v in enumerate(labels) if v == -1 and not isinstance(v, bool)]
    if rows:
        raise DataFormatError(f"{source} {row_name(table, rows[0])}: label -1 in ClassLabel column {column!r} "
                              f"({len(rows)} of {len(labels)} rows); -1 means unlabelled (the datasets convention for "
                              "a row without a label, as in many hub test splits), and a row needs its label to train "
                              "or be scored: give a split with labels, or remove those rows "
                              f"(ds.filter(lambda r: r[{column!r}] != -1) and save it again)")


def class_label_names(names: list[str], class_names: list[str], source: str, column: str,
                      used: Collection[int] | None = None) -> list[str | None] | None:
    """How a ``ClassLabel`` label column of ``names`` is read beside the reader's ``class_names``, by the rule of
    :func:`.common.class_name_order`: by name (per ClassLabel index, its name as ``class_names`` spells it, to look up
    there) where ``class_names`` holds them all, or some, in any order (None for a class it leaves out, which no
    row may use); by index (None) where ``class_names`` renames the classes; refused where a name of both stands
    at another index in each beside renamed ones. ``used``: the labels of the rows, None: all classes."""
    order = class_name_order(class_names, names, where=source, given_as="class_names", used=used,
                             data_as=f"the ClassLabel of label column {column!r}", leave_out="leave class_names out")
    return None if order is None else [None if j is None else class_names[j] for j in order]
