"""A row's cells as the row checks compare them: an ``image_id`` that is missing, a NaN cell, and the key of a
row repeated whole (a file joined twice), equal for equal rows whatever objects a table's read gave their cells."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


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


#: The float64 range that int64 holds: -2**63 up to, not including, 2**63 (both exact floats).
_INT64_RANGE = (-2.0 ** 63, 2.0 ** 63)


def _whole(wide: np.ndarray) -> np.ndarray | None:
    """The float64 array ``wide`` as int64 where each value is a whole number int64 holds (-0.0 as 0); else None."""
    if wide.size:
        low, high = _INT64_RANGE
        if not (low <= wide.min() and wide.max() < high):   # (a NaN fails both: NaN is the min and the max)
            return None
    whole = wide.astype(np.int64)   # (exact in int64's range; 1.5 as 1, found below)
    return whole if (whole == wide).all() else None


def _canonical(value: np.ndarray) -> tuple[str, np.ndarray]:
    """A numpy array of numbers as ``(kind, array)`` whose bytes are equal where the values are equal under Python's
    exact ``==``, as the scalars' keys are (1 == 1.0 == 1 + 0j): integers and booleans as int64 (uint64 too where
    int64 holds its values), floats holding whole numbers only (int64's) as those integers, other floats as float64
    (a float32 0.5 is a float64 0.5; -0.0 as 0.0, each NaN as numpy's one NaN: x86 computes NaN with the sign bit
    set, inf - inf is not np.nan's bytes), complex numbers with no imaginary part as their real parts, others as
    complex128 (likewise). An int64 past 2**53 stays itself, not its nearest float64 (2**53 + 1 is no float64)."""
    kind = value.dtype.kind
    if kind == "c":
        wide = np.array(value, dtype=np.complex128, order="C")   # (a copy)
        if not wide.imag.any():   # (a NaN imaginary part is "any": stays complex)
            value, kind = wide.real, "f"
    if kind in "fc":
        wide = np.array(value, dtype=np.complex128 if kind == "c" else np.float64, order="C")   # (a copy)
        # (an embedding's first value is no whole number: answered without a pass over the array)
        whole = _whole(wide) if kind == "f" and (not wide.size or wide.item(0).is_integer()) else None
        if whole is not None:
            return "i", whole
        parts = wide.view(np.float64)
        parts += 0.0   # -0.0 + 0.0 is 0.0
        parts[np.isnan(parts)] = np.nan
        return kind, wide
    if kind in "biu" and (value.dtype != np.uint64 or not value.size or value.max() < 2 ** 63):
        return "i", np.ascontiguousarray(value, dtype=np.int64)
    return value.dtype.str, value


def _numbers_array(value: list) -> np.ndarray | None:
    """The list ``value`` (of numbers, or of such lists or arrays, rectangular) as the numpy array of numbers it
    equals under ``==`` value by value, so that it is keyed as that array is (:func:`_canonical`); None for other
    lists: of strings, ragged, of numbers numpy holds as objects (2**70), or whose numbers numpy's common type would
    change (``[2**53 + 1, 0.5]``: the int is no float64)."""
    if value and isinstance(value[0], (str, bytes, dict, type(None))):   # (answers: no try of numpy for strings)
        return None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RuntimeError):   # (ragged; what numpy cannot make: a tensor
        # needing grad, which torch refuses to give as an array)
        return None
    if array.dtype.kind not in "biufc":
        return None
    if array.dtype.kind in "fc":   # (each value as given, exactly: NaN as NaN)
        exact = (np.asarray(value, dtype=object) == array) | (array != array)
        if not exact.all():
            return None
    return array


def row_key(value: Any) -> Any:
    """``value`` (a row, or a value in it) as a hashable key equal to another's where the values are equal under
    ``==``, NaN equal to NaN (a table's float cell: each read is another float object, and NaN != NaN; a repeated
    row is the same row whatever its NaNs' bits); an array's cell (numpy's, a tensor, unhashable) as its values, so
    two equal arrays are equal, not two objects, and a list equal to an array value by value (``[1, 2]``, one
    read's cell, and ``np.array([1, 2])``, another's) is keyed as that array; an array of strings as the list of them.
    A numpy array is keyed by its bytes at once (an embedding's 768
    floats keyed one by one cost 23x the check's time), made equal for equal values (:func:`_canonical`); a numpy
    scalar (a float32 NaN is no float: never equal to itself) as its Python value; others by the list of their
    values."""
    if isinstance(value, (str, bytes)):
        return value
    dtype = getattr(value, "dtype", None)
    if getattr(dtype, "hasobject", True) is False and callable(getattr(value, "tobytes", None)):
        if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):   # a numpy scalar
            return row_key(value.item())
        if isinstance(value, np.ndarray) and value.dtype.kind in "US":   # strings: as a list of them is
            return row_key(value.tolist())
        if isinstance(value, np.ndarray):
            kind, value = _canonical(value)
            return "array", kind, value.shape, value.tobytes()
        return "array", dtype.str, getattr(value, "shape", None), value.tobytes()   # (an object array: its pointers)
    if callable(getattr(value, "tolist", None)):
        value = value.tolist()   # (a tensor; an array of Python objects)
    if isinstance(value, dict):
        return "dict", frozenset((k, row_key(v)) for k, v in value.items())
    if isinstance(value, list) and (array := _numbers_array(value)) is not None:
        return row_key(array)   # (a JSON file's [1, 2] is a parquet table's array [1, 2]: one row)
    if isinstance(value, (list, tuple)):
        return type(value) is list, tuple(row_key(v) for v in value)
    if isinstance(value, float) and value != value:
        return "nan", None
    if isinstance(value, complex) and value != value:   # complex("nan+1j"): each part NaN-equal alone
        return "complex", row_key(value.real), row_key(value.imag)
    try:
        hash(value)
    except TypeError:   # (an unknown unhashable value: equal to itself alone)
        return "object", id(value)
    return value
