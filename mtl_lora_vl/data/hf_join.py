"""Images kept in another table, joined to the rows by their image id, for the ``hf_datasets`` format.

GQA on the hub (``lmms-lab/GQA``) keeps a split's images and its questions in two configs, each a folder of its own:
``testdev_balanced_images/`` (columns ``id``, ``image``) and ``testdev_balanced_instructions/`` (``id``,
``imageId``, ``question``, ``answer``, ...). A spec reads the questions' config as ``path`` and names the images'
as ``image_table``::

    path = "GQA/testdev_balanced_instructions"
    columns = {image_id = "imageId", question = "question", answers = "answer", question_id = "id"}
    image_table = {path = "GQA/testdev_balanced_images", key = "id"}

Each row's ``image_id`` is looked up in the image table's ``key`` column, and the row's image is a lazy reference to
that row of the image table (loader workers read it from its memory map, as a row's own image is read). The image
table is read at the rows' split, their slices left out (``split`` in ``image_table`` where it is named otherwise,
unsliced; one parquet file or one saved ``Dataset`` is read whole), from the same data root and ``cache_dir``;
``image`` names its image column where it has several. Used by :func:`mtl_lora_vl.data.hf_datasets.read_hf_datasets`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .common import DataFormatError, ReaderOptionError
from .hf_slices import is_sliced, unsliced
from .hf_table import is_image_feature
from .row_keys import no_id

__all__ = ["IMAGE_TABLE_KEYS", "check_image_table", "join_rows"]

#: The keys of the ``image_table`` option: where the image table is, its key column (both needed), its image column
#: (where it has several) and its split (where the rows' split is named otherwise there).
IMAGE_TABLE_KEYS = ("path", "key", "image", "split")
EXAMPLE = ('image_table = {path = "GQA/testdev_balanced_images", key = "id"} with columns = {image_id = "imageId", '
           'question = "question", answers = "answer"}')


def check_image_table(image_table: Any, columns: Any) -> None:
    """Refuse an ``image_table`` option of the wrong shape, or beside a ``columns`` mapping that maps an image or no
    image id: what can be checked without the dataset, when the task spec loads."""
    if image_table is None:
        return
    if not isinstance(image_table, dict) or not all(isinstance(v, str) for v in image_table.values()):
        raise ReaderOptionError(f"option 'image_table' must be a table of strings, e.g. {EXAMPLE}; got "
                                f"{image_table!r}")
    unknown = [k for k in image_table if k not in IMAGE_TABLE_KEYS]
    if unknown:
        close = {k: difflib.get_close_matches(k, IMAGE_TABLE_KEYS, n=1, cutoff=0.6) for k in unknown}
        hint = "".join(f"; {k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ReaderOptionError(f"option 'image_table': unknown key(s) {unknown}{hint}; its keys are "
                                f"{list(IMAGE_TABLE_KEYS)} (path and key needed), e.g. {EXAMPLE}")
    missing = [k for k in ("path", "key") if not image_table.get(k, "").strip()]
    if missing:
        raise ReaderOptionError(f"option 'image_table' needs {' and '.join(missing)} (the image table's path under "
                                f"the data root, and its column of the ids the rows' image_id gives), e.g. {EXAMPLE}; "
                                f"got {image_table!r}")
    blank = [k for k in ("image", "split") if k in image_table and not image_table[k].strip()]
    if blank:
        raise ReaderOptionError(f"option 'image_table': {blank} blank; leave {' and '.join(blank)} out for the "
                                "default (the table's one image column; the rows' split)")
    if is_sliced(image_table.get("split")):   # (a slice of it: the rows' images outside it read as "missing")
        whole = unsliced(image_table["split"])
        raise ReaderOptionError(f"option 'image_table': split {image_table['split']!r} slices the image table's rows; "
                                "each row's image is looked up by id in the whole image table, so a slice would "
                                "leave the images of rows outside it missing: give its split unsliced (split = "
                                f"\"{whole}\"), and slice the rows' split instead ([data.<split>] split = "
                                "\"train[:10%]\")")
    if isinstance(columns, dict):
        mapped = [f for f in ("image", "images") if f in columns]
        if mapped:
            raise ReaderOptionError(f"option 'columns' maps {mapped} beside image_table, which gives each row its "
                                    "image from the image table; leave them out of columns (image_table = {..., "
                                    "image = \"...\"} names the image table's column where it has several)")
        if "image_id" not in columns:
            raise ReaderOptionError("option 'image_table' looks each row's image up by its image_id, and columns maps "
                                    f"no image_id; map the column that holds the image table's {image_table['key']!r} "
                                    f"values, e.g. {EXAMPLE}")


def _key(value: Any) -> str | None:
    """An id as the join compares it, a key's or a row's: None where there is none (null, blank, NaN: a pandas
    table's blank cell); a whole float as its integer (a pandas column of ints with a blank cell is written as
    floats, so a row's 2.0 is the image table's key 2); else its text (the rows' "1" is the key 1)."""
    if no_id(value) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _column(wanted: str, names: list[str], what: str, where: str) -> str:
    """``wanted``, refused with a did-you-mean where the image table has no such column."""
    if wanted not in names:
        close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: image_table's {what} column {wanted!r} not found{hint}; the image table has "
                         f"columns {names}")
    return wanted


def _image_column(images_ds: Any, image_table: dict[str, str], where: str) -> str:
    """The image table's image column: ``image_table["image"]``, else its one column of images."""
    names = list(images_ds.column_names)
    if image_table.get("image"):
        return _column(image_table["image"], names, "image", where)
    found = [c for c in names if is_image_feature(images_ds.features[c])]
    if len(found) != 1:
        has = f"columns of images {found}" if found else "no column of images (datasets.Image)"
        raise ValueError(f"{where}: the image table has {has}; name its image column: image_table = {{path = ..., "
                         f"key = ..., image = \"...\"}} (its columns: {names})")
    return found[0]


def _image(cell: Any) -> Any:
    """What tells an image cell's image from another's: its encoded bytes (a ``{bytes, path}`` struct's path is only
    its name), else its path."""
    if isinstance(cell, dict):
        return cell.get("bytes") if cell.get("bytes") is not None else cell.get("path")
    return cell


def _held(image: Any) -> str:
    """What an image cell holds (:func:`_image`), as a refusal names it: "no image" for an empty cell, not ``None``."""
    if image is None:
        return "holds no image"
    return (f"holds an encoded image of {len(image)} bytes" if isinstance(image, bytes) else
            f"holds the path {image!r}" if isinstance(image, str) else f"holds {image!r:.40}")


def _refuse_two_images(a: Any, b: Any, rows: tuple[str, str], k: Any, key: str, where: str) -> None:
    """Refuse the rows of the image table named ``rows`` (``row 0``, or ``row 2 of split 'test'``: :func:`join_rows`'s
    ``image_row``), whose key ``k`` (column ``key``) is one, where their image cells ``a`` and ``b`` hold two images
    (:func:`_image`); the same image twice under its key (a table written with a repeat) is that image."""
    a, b = _image(a), _image(b)
    if a == b:
        return
    how = (f"paths {a!r} and {b!r}" if isinstance(a, str) and isinstance(b, str) else
           f"encoded images of {len(a)} and {len(b)} bytes" if isinstance(a, bytes) and isinstance(b, bytes) else
           f"{rows[0]} {_held(a)}, {rows[1]} {_held(b)}")
    plain = all(r.startswith("row ") and r[4:].isdigit() for r in rows)   # (one split read whole: "rows 0 and 2")
    both = f"rows {rows[0][4:]} and {rows[1][4:]}" if plain else f"{rows[0]} and {rows[1]}"
    raise DataFormatError(f"{where} {both}: key {k!r} of column {key!r} names two different "
                          f"images ({how}); an id must name one image of the image table: give it a column of unique "
                          "ids as key, or remove one of the rows")


def join_rows(images_ds: Any, image_table: dict[str, str], ds: Any, mapping: dict[str, Any], source: str,
              where: str, at_row: Callable[[int], str] = "row {}".format,
              image_row: Callable[[int], str] = "row {}".format) -> tuple[str, list[int]]:
    """The image table's image column, and per row of ``ds`` (the rows, read as ``source``) the row of ``images_ds``
    (the image table, read as ``where``) whose ``image_table["key"]`` is the row's image id (its first row where
    the key repeats on rows of one image); refused where the key names two images, or a row's image id is blank or
    not in the image table. ``at_row(i)``: how a message names row ``i`` of ``ds`` (:func:`.hf_slices.row_name`);
    ``image_row(j)``: row ``j`` of ``images_ds`` (read at splits joined whole, ``train+test``: by its split)."""
    check_image_table(image_table, mapping)
    image_col = _image_column(images_ds, image_table, where)
    key = _column(image_table["key"], list(images_ds.column_names), "key", where)
    at: dict[str, int] = {}
    cells: list[Any] = []   # the image column, read where a key repeats
    for j, k in enumerate(images_ds.select_columns([key]).with_format("arrow")[:].column(0).to_pylist()):
        name = _key(k)
        if name is not None:   # (an image without a key is no row's)
            first = at.setdefault(name, j)
            if first != j:   # one image twice under its key is that image; two images under one key are refused
                cells = cells or [images_ds.select_columns([image_col]).with_format("arrow")[:].column(0)]
                _refuse_two_images(cells[0][first].as_py(), cells[0][j].as_py(),
                                   (image_row(first), image_row(j)), k, key, where)
    col = mapping["image_id"]
    ids = ds.select_columns([col]).with_format("arrow")[:].column(0).to_pylist()
    keys = [_key(v) for v in ids]
    blank = [i for i, k in enumerate(keys) if k is None]
    if blank:
        raise DataFormatError(f"{source} {at_row(blank[0])}: no image id in column {col!r} ({len(blank)} of {len(ids)} "
                              "rows), which image_table looks the row's image up by; fix or remove those rows")
    missing = [i for i, k in enumerate(keys) if k not in at]
    if missing:
        i = missing[0]
        # no row's id a key at all: more likely the wrong key column (or image_id column) than rows to remove
        none = (f"; no row's id is a key there (its keys read e.g. {list(at)[:3]}, the rows' ids e.g. "
                f"{list(dict.fromkeys(ids))[:3]}): is {key!r} the column of the ids that {col!r} gives (image_table's "
                "key), and the image table the rows' own" if len(missing) == len(ids) and at else "")
        raise DataFormatError(f"{source} {at_row(i)}: image id {ids[i]!r} (column {col!r}) is not in column {key!r} of "
                              f"the image table {where} ({len(missing)} of {len(ids)} rows' images missing){none}; "
                              "give the image table of the rows' split (image_table = {..., split = \"...\"} where "
                              "its split is named otherwise), or remove those rows")
    return image_col, [at[k] for k in keys]
