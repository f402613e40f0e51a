"""Rows of several images kept in ONE column of lists, for the ``hf_datasets`` format.

Hub tables such as Mantis-Instruct, MMMU-style sets and some NLVR2 copies hold a row's images as one
``Sequence(Image())`` column (or a list of encoded bytes, of paths, or -- in parquet files written without
``datasets`` -- of ``{bytes, path}`` structs). ``columns = {images = "images", ...}`` maps such a column: each
element becomes a :class:`DatasetListImage` (table, row, position), read lazily by loader workers from the
memory-mapped table as :class:`~mtl_lora_vl.data.hf_table.DatasetImage` is; a path element is resolved under the
data root. Used by :func:`mtl_lora_vl.data.hf_datasets.read_hf_datasets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import DataFormatError, PathEscapeError, resolve_under
from .hf_slices import row_name, split_row
from .hf_table import (
    DatasetImage,
    DatasetTable,
    image_cells,
    image_kind,
    list_element,
    load_datasets,
    refuse_unlabelled,
    truth_names,
)
from .rows import ImageSources


@dataclass(frozen=True)
class DatasetListImage(DatasetImage):
    """Element ``position`` (from 0) of the list of images in row ``row`` of column ``column`` (read by ``fetch``)."""

    position: int = 0

    def stored(self) -> Any:
        """That one element's cell (the rest of the row's list is not read)."""
        return super().stored()[self.position]

    def __str__(self) -> str:
        return f"{self.table} {row_name(self.table, self.row)} column {self.column!r} position {self.position}"


def _element_kind(ds: Any, column: str, source: str) -> str:
    """How column ``column``'s list elements hold images: "struct", "bytes" or "path" (refused otherwise)."""
    feature = ds.features[column]
    element = list_element(feature)
    if element is None:
        raise ValueError(f"{source}: columns: images = {column!r} names a column of {feature}, not of lists of "
                         "images; images must be a list of the image columns of a row, in order (e.g. images = "
                         '["left_image", "right_image"]), or one column whose rows are lists of images')
    import pyarrow as pa

    arrow = ds.data.schema.field(column).type
    if not any(f(arrow) for f in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)):
        raise ValueError(f"{source}: column {column!r} ({feature}) is stored as {arrow}, not as a list of images")
    return image_kind(element, source, f"{column}[]")


def _list_items(column: Any, kind: str) -> list[list[tuple[bool, str | None]] | None]:
    """Per row of the list ``column`` (an Arrow chunked array): its elements as :func:`~.hf_table.image_cells`
    gives them (None for a null list), without copying the bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: list[list[tuple[bool, str | None]] | None] = []
    for chunk in column.chunks:
        lengths = pc.list_value_length(chunk).to_pylist()   # None: a null list (its values are not flattened)
        flat = iter(image_cells(pa.chunked_array([pc.list_flatten(chunk)]), kind))
        out.extend(None if n is None else [next(flat) for _ in range(n)] for n in lengths)
    return out


def list_image_rows(root: Path, table: DatasetTable, ds: Any, mapping: dict[str, Any], images: str,
                    source: str) -> list[tuple[int, dict]]:
    """The rows of a table whose images are the lists of column ``mapping["images"]``, each with ``images`` the
    :class:`ImageSources` of its row: one :class:`DatasetListImage` per element (or a resolved path)."""
    col: str = mapping["images"]
    kind = _element_kind(ds, col, source)
    column = ds.select_columns([col]).with_format("arrow")[:].column(0)
    found = _list_items(column, kind)
    for i, items in enumerate(found):
        if not items or len(items) < 2:
            raise DataFormatError(f"{source} {row_name(table, i)}: column {col!r} holds {len(items or [])} image(s); "
                                  "a row of several images needs two or more (fix or remove the row; a table of one "
                                  "image per row maps a column of single images as image)")

    def stored(i: int, j: int) -> Any:   # an element's encoded image, as an Arrow scalar (not copied out)
        value = column[i][j]
        return value["bytes"] if kind == "struct" else value

    return _image_rows(root, table, ds, mapping, images, source, lambda i: found[i], stored,
                       lambda i, j: DatasetListImage(table, col, i, j), lambda j: f"column {col!r} position {j}")


def column_image_rows(root: Path, table: DatasetTable, ds: Any, mapping: dict[str, Any], images: str,
                      source: str) -> list[tuple[int, dict]]:
    """The rows of a table of several image columns (``mapping["images"]``, in order), each with ``images`` the
    :class:`ImageSources` of its row: one :class:`DatasetImage` per column (or a resolved path)."""
    cols: list[str] = mapping["images"]
    kinds = [image_kind(ds.features[c], source, c) for c in cols]
    arrays = ds.select_columns(cols).with_format("arrow")[:]
    found = [image_cells(arrays.column(c), k) for c, k in zip(cols, kinds)]

    def stored(i: int, j: int) -> Any:   # row i's image of column j, as an Arrow scalar (not copied out)
        value = arrays.column(cols[j])[i]
        return value["bytes"] if kinds[j] == "struct" else value

    return _image_rows(root, table, ds, mapping, images, source, lambda i: [f[i] for f in found], stored,
                       lambda i, j: DatasetImage(table, cols[j], i), lambda j: f"column {cols[j]!r}")


def _image_rows(root: Path, table: DatasetTable, ds: Any, mapping: dict[str, Any], images: str, source: str,
                cells: Callable[[int], list[tuple[bool, str | None]]], stored: Callable[[int, int], Any],
                ref: Callable[[int, int], DatasetImage], where: Callable[[int], str]) -> list[tuple[int, dict]]:
    """The rows of several images of either layout: ``cells(i)`` row i's images as (bytes in the table, path);
    ``stored(i, j)`` image j of row i as stored (to find rows sharing an image), ``ref(i, j)`` its reference,
    ``where(j)`` how a message names it. A ``ClassLabel`` label is read by its names, as truth values."""
    label_names = None
    if "label" in mapping and isinstance(ds.features[mapping["label"]], load_datasets().ClassLabel):
        label_names = truth_names(list(ds.features[mapping["label"]].names), mapping["label"], source)
    others = {f: c for f, c in mapping.items() if f != "images"}
    meta = (ds.select_columns(list(dict.fromkeys(others.values()))).with_format("arrow")[:].to_pylist()
            if others else [{} for _ in range(len(ds))])
    if label_names is not None:
        refuse_unlabelled([r[mapping["label"]] for r in meta], mapping["label"], source, table)

    def same(j: int, a: Any, b: Any) -> bool:   # two rows' images at position j: the same bytes, or the same path
        if isinstance(a, DatasetImage) and isinstance(b, DatasetImage):
            return stored(a.row, j).equals(stored(b.row, j))
        return a == b

    by_id: dict[str, tuple[ImageSources, int]] = {}   # image_id -> (the images its rows share, its first row)
    rows = []
    for i, values in enumerate(meta):
        row = {f: values[c] for f, c in others.items()}
        if label_names is not None and isinstance(row.get("label"), int):   # by name
            row["label"] = label_names[row["label"]] if 0 <= row["label"] < len(label_names) else None
        items = cells(i)
        parts = []
        for j, (has_bytes, img_path) in enumerate(items):
            if has_bytes:
                parts.append(ref(i, j))
            elif img_path:
                try:
                    parts.append(resolve_under(root, Path(images) / img_path))
                except PathEscapeError as e:
                    raise PathEscapeError(f"{source} {row_name(table, i)} {where(j)}: {e}") from None
            else:
                raise DataFormatError(f"{source} {row_name(table, i)} {where(j)}: no image (neither bytes nor a path; "
                                      "a row of several images needs each of them); fix or remove the row")
        sources = ImageSources(parts)
        if row.get("image_id") not in (None, ""):   # rows of one id and the same images share one reference each
            first, n = by_id.setdefault(str(row["image_id"]), (sources, i))
            if n != i and len(first) == len(sources) and all(same(j, *ab) for j, ab in enumerate(zip(first, sources))):
                sources = first
        elif not any(has for has, _ in items):   # paths: the default id is the paths, as in JSONL
            row["image_id"] = "|".join(str(p) for _, p in items)
        else:   # (a made-up id must not collide with the column's real ones)
            n = split_row(table.rows, i)   # (its split's row number: one id for a row whatever the slice)
            row["image_id"] = f"row {n}" if "image_id" in mapping else str(n)
        row["images"] = sources
        rows.append((i, row))
    return rows
