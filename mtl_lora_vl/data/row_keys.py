"""A row's cells as the row checks compare them: an ``image_id`` that is missing, a NaN cell, and the key of a
row repeated whole (a file joined twice), equal for equal rows whatever objects a table's read gave their cells."""

from __future__ import annotations

import numbers
from typing import Any


def no_id(value: Any) -> bool:
    """Whether a row's ``image_id`` (or ``question_id``) is missing: null, blank, NaN (a pandas table's blank cell),
    or pandas' NA (a nullable column's), which read as the id 'nan' made every row without an id one image's
    (refused: "given to another image"); ``pd.NA == ""`` is NA, whose truth raised a TypeError."""
    return value is None or is_nan(value) or (isinstance(value, str) and value == "")


def is_nan(value: Any) -> bool:
    """Whether ``value`` is a missing scalar: a NaN number, a float's or numpy's (np.float32 is no float), or a
    pandas nullable column's ``pd.NA`` / ``pd.NaT``: a scalar not equal to itself, or whose equality with itself is
    neither true nor false (NA's; found so, pandas, an optional package, is not imported)."""
    if isinstance(value, numbers.Real):
        return value != value
    if value is None or isinstance(value, (str, bytes, list, tuple, dict)):
        return False
    try:
        same = value == value
    except (TypeError, ValueError):   # (an object that compares with nothing)
        return False
    if getattr(same, "ndim", 0):   # an array's cell: equal value by value, not missing
        return False
    try:
        return not bool(same)
    except TypeError:   # pd.NA: "boolean value of NA is ambiguous"
        return True


def plain(value: Any) -> Any:
    """``value`` as a message shows it: a numpy scalar (a pandas row's cell: ``np.int64`` of an ``Int64`` column,
    whose repr reads ``np.int64(7)`` in numpy 2; ``np.str_``, ``np.float64``, subclasses of str and float, too) as its
    Python value; others as they are."""
    if type(value) not in (str, bytes, int, float, bool) and getattr(value, "shape", None) == () \
            and callable(getattr(value, "item", None)):
        try:
            return value.item()
        except (TypeError, ValueError):   # (an object that names item() for something else)
            return value
    return value


def row_key(value: Any) -> Any:
    """``value`` (a row, or a value in it) as a hashable key equal to another's where the values are equal, NaN
    equal to NaN (a table's float cell: each read is another float object, and NaN != NaN); an array's cell (numpy's,
    a tensor, unhashable) as its values, so two equal arrays are equal, not two objects. A numpy array or scalar (a
    float32 NaN is no float: never equal to itself) is keyed by its bytes at once (an embedding's 768 floats keyed
    one by one cost 23x the check's time); others by the list of their values."""
    if isinstance(value, (str, bytes)):
        return value
    dtype = getattr(value, "dtype", None)
    if getattr(dtype, "hasobject", True) is False and callable(getattr(value, "tobytes", None)):
        return "array", dtype.str, getattr(value, "shape", None), value.tobytes()   # (an object array: its pointers)
    if callable(getattr(value, "tolist", None)):
        value = value.tolist()   # (a tensor; an array of Python objects)
    if isinstance(value, dict):
        return "dict", frozenset((k, row_key(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value) is list, tuple(row_key(v) for v in value)
    if isinstance(value, float) and value != value:
        return "nan", None
    try:
        hash(value)
    except TypeError:   # (an unknown unhashable value: equal to itself alone)
        return "object", id(value)
    return value
