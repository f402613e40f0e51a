"""What every reader shares: data-root and path checks, JSON helpers, and the image checker.

Image paths come from the data files, so they are untrusted: each is resolved under ``data_root`` and
refused with :class:`PathEscapeError` (in every mode) when it is absolute, climbs out with ``..`` or is
a symlink pointing outside. Annotation files are named by the user and may be relative to
``data_root`` or absolute.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..log import progress
from .images import ImageError, verify_image
from .records import Example, Split

logger = logging.getLogger(__name__)

_SKIP_EXAMPLES_SHOWN = 5
#: A URL's scheme as a path part ("https:" of "https://x.org/a.jpg", whose "//" a Path folds to "/"); two letters or
#: more, so a Windows drive ("C:") is not one.
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


class ReaderOptionError(TypeError, ValueError):
    """The options given to a reader do not fit its signature: unknown or missing ones (a TypeError, as Python
    says of a call), or a value of the wrong type or not among the allowed ones (also a ValueError)."""


class DataFormatError(ValueError):
    """A data file that does not have the expected structure."""


class PathEscapeError(DataFormatError):
    """An image path (in a data file, or a reader's folder option) that points outside the data root."""


# ----------------------------------------------------------------------------------------------
# Paths and image checks
# ----------------------------------------------------------------------------------------------

def class_name_problems(names: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """(the names that are not text or blank, the names given more than once once stripped): repeated names tie
    in a zero-shot classifier and ties count against the true class, so both would score 0."""
    blank = [x for x in names if not isinstance(x, str) or not x.strip()]
    counts = Counter(x.strip() for x in names if isinstance(x, str) and x.strip())
    return blank, sorted(x for x, c in counts.items() if c > 1)


def class_name_key(name: Any) -> str:
    """A class name as names are compared across lists: case and runs of spaces aside (CLIP tokenizers lowercase),
    and Unicode's canonical forms (its canonical caseless match): a folder name read on macOS is decomposed
    ('cafe' + U+0301) where the name typed in a spec is composed ('café')."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", " ".join(str(name).split())).casefold())


def class_name_order(given: Sequence[str], data: Sequence[str], *, where: str, given_as: str, data_as: str,
                     leave_out: str, error: type[Exception] = DataFormatError, used: Collection[int] | None = None
                     ) -> list[int | None] | None:
    """The one rule for class names ``given`` beside the data's own ``data`` (in label order): per data class, the
    position in ``given`` of its name where ``given`` names every data class, in any order (read by name); None
    where no given name is a data class's at another position (``given`` renames the classes: read by position).
    ``given`` naming some data classes, each its own name, is read by name too (None for a class it leaves out),
    in any order. A name matches its exact twin, else the one name of the same :func:`class_name_key` in both
    lists. Refused: a data class's name at another position beside names that are not the data's (read by
    position, that class's rows would be read as another class), and a class the rows use (``used``: their labels;
    None: all of ``data``) that has no name."""
    exact = {n: j for j, n in reversed(list(enumerate(given)))}   # a repeated name: its first position
    keys = Counter(class_name_key(n) for n in given)
    data_keys = Counter(class_name_key(n) for n in data)
    by_key = {class_name_key(n): j for j, n in enumerate(given) if keys[class_name_key(n)] == 1}
    pos = [exact[n] if n in exact else by_key.get(class_name_key(n)) if data_keys[class_name_key(n)] == 1 else None
           for n in data]
    if None not in pos:
        return pos
    moved = [(i, j) for i, j in enumerate(pos) if j is not None and j != i]
    lacks = [n for n, k in zip(data, pos) if k is None]
    shown = f"{list(data[:10])}{' ...' if len(data) > 10 else ''}"
    used = range(len(data)) if used is None else used
    if moved and sorted(j for j in pos if j is not None) == list(range(len(given))):   # data names only: by name
        unnamed = sorted({data[i] for i in used if 0 <= i < len(data) and pos[i] is None})
        if unnamed:
            raise error(f"{where}: {given_as} names {len(given)} of the {len(data)} classes of {data_as} {shown} "
                        f"(read by name), but rows are of {unnamed[:5]}{' ...' if len(unnamed) > 5 else ''} too, "
                        f"which it does not name; add those names to {given_as} (in any order), or {leave_out}")
        return pos
    if not moved and len(given) < max(used, default=-1) + 1:   # read by position, a row had no name
        raise error(f"{where}: {given_as} has {len(given)} names but {data_as} has {len(data)} classes {shown}, and "
                    f"{given_as} lacks {lacks[:5]}{' ...' if len(lacks) > 5 else ''}: read by position, rows of "
                    f"classes {len(given)} and above have no name; give all {len(data)} names (in the order of "
                    f"{data_as} to rename them, or its own names in any order), or {leave_out}")
    if not moved:
        return None
    i, j = moved[0]
    raise error(f"{where}: {given_as} puts {given[j]!r} at {j}, but {data[i]!r} is class {i} of {data_as} "
                f"({len(moved)} name(s) so moved), and {given_as} lacks {lacks[:5]}{' ...' if len(lacks) > 5 else ''}"
                " of its classes: a list that does not name them all is read by position, so those classes' rows "
                f"would be read as others; give {given_as} in the order of {data_as} {shown}, give every one of its "
                f"names (read by name, in any order), or {leave_out}")


def label_type_hint(value: Any) -> str:
    """The fix for a classification label that is neither a class name nor an integer index, as " (...)"."""
    if isinstance(value, bool):
        return f" (write {int(value)} or the class name, not {value!r})"
    if isinstance(value, float):   # 0.0: pandas writes an int column holding NaN as floats
        return f" (write {int(value)}, not {value!r})" if value.is_integer() else " (an index is a whole number)"
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], (str, int)) and not isinstance(value[0], bool):
            return f" (one label per row, not a list: write {json.dumps(value[0])}, not {json.dumps(value)})"
        return " (one class per row, not a list: rows with several labels are not read)"
    return ""


def data_root_dir(data_root: str | os.PathLike) -> Path:
    """The data root, resolved; refused unless it is a directory."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory; pass --data-root pointing at your data")
    return root.resolve()


def same_folder(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    """Whether two data-root paths name one folder: the same folder through a symlink or ``..`` too (recorded
    paths are compared with the one given now, which may be spelt another way); by resolved path when either
    is gone."""
    if a is None or b is None:
        return a is b
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def resolve_under(root: Path, relative: str | os.PathLike, what: str = "image path") -> Path:
    """Resolve ``relative`` inside ``root``; refuse absolute paths, '..' escapes, symlinks out and URLs. A Windows path
    (``img\\0.jpg``) names the file it names on Windows unless a file of that very name exists; a name found only in
    its other Unicode normal form (NFC / NFD) names that file."""
    rel = str(relative)
    if not rel:
        raise PathEscapeError(f"empty {what} in a data file under {root}")
    if "\x00" in rel:
        raise PathEscapeError(f"{what} {rel!r} holds a NUL character; fix the path in the data file")
    if "\\" in rel and os.sep == "/" and not _exists(root / rel):
        rel = rel.replace("\\", "/")   # a file written on Windows ("img\\0.jpg"), read as it is there
    parts = Path(rel).parts
    scheme = next((p for p in parts[:-1] if _URL_SCHEME.fullmatch(p)), None)
    if scheme is not None:   # was looked for as the file <root>/https:/x.org/a.jpg and skipped as "not found"
        url = rel[rel.index(scheme):].replace(f"{scheme}/", f"{scheme}//", 1)
        raise PathEscapeError(f"{what} {url!r} is a URL; images are read from files, not downloaded: download them "
                              f"under the data root {root} and give their paths relative to it")
    if os.path.isabs(rel) or Path(rel).is_absolute() or (len(rel) > 1 and rel[0].isalpha() and rel[1] == ":"):
        raise PathEscapeError(f"{what} {rel!r} is absolute; paths in data files must be relative to the data "
                              f"root {root}")
    if not rel.isascii():   # a name that may be there in its other Unicode normal form only
        try:   # there as named (every image of a readable data set): resolved with no more asked of the disk
            return _inside(root, rel, (root / rel).resolve(strict=True), what)
        except (RuntimeError, OSError):
            rel = _other_normal_form(root, rel)
    try:
        resolved = (root / rel).resolve()
    except (RuntimeError, OSError):   # a symlink loop: no file to read, inside the root; the image check skips it
        return root / rel
    return _inside(root, rel, resolved, what)


def _inside(root: Path, rel: str, resolved: Path, what: str) -> Path:
    """``resolved`` (``rel`` resolved), refused where it is outside ``root``."""
    if not resolved.is_relative_to(root):
        raise PathEscapeError(f"{what} {rel!r} resolves to {resolved}, outside the data root {root}; move the "
                              "data under the root (symlinks that point outside it are refused too)")
    return resolved


def _other_normal_form(root: Path, rel: str) -> str:
    """``rel`` as the file under ``root`` is named where only its other Unicode normal form exists: a zip made on
    macOS names 'café.jpg' decomposed (NFD, 'e' + U+0301) where a JSONL written elsewhere names it composed (NFC),
    and Linux takes the two for different names (the image was skipped as not found). Where neither whole form is
    there, each part is taken in the form it is there (a folder made in one form, files copied into it in the other:
    'crème/' NFD holding 'café.jpg' NFC). ``rel`` itself where a part is there in neither form, or the path or a part
    in both (two files or folders: which one is meant cannot be told)."""
    found = [f for f in _other_forms(rel) if _exists(root / f)]
    if found:
        return found[0] if len(found) == 1 else rel
    here, named = root, []
    for part in Path(rel).parts:
        there = [part] if _exists(here / part) else [f for f in _other_forms(part) if _exists(here / f)]
        if len(there) != 1:
            return rel
        here = here / there[0]
        named.append(there[0])
    return str(Path(*named))


def _other_forms(name: str) -> set[str]:
    """``name``'s NFC and NFD forms that differ from it."""
    return {unicodedata.normalize(form, name) for form in ("NFC", "NFD")} - {name}


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; False where it cannot be asked (a name too long: no such file, as for any other)."""
    try:
        return path.exists()
    except OSError:
        return False


def file_relative_hint(root: Path, images: str, annotations: Path, image: Any) -> str:
    """Where ``image`` (a row's path) is not under ``root/images`` but is beside the annotation file: what to give
    (paths in a data file are taken under the data root, not the file's folder); else ""."""
    if not isinstance(image, str) or not image.strip() or (root / images / image).exists():
        return ""
    folder = annotations.resolve().parent
    if folder == root or not (folder / images / image).is_file():
        return ""
    fix = (f"images = {(folder.relative_to(root) / images).as_posix()!r} in the split's options"
           if folder.is_relative_to(root) else f"--data-root {folder}")
    return (f"; image paths in a data file are taken under the data root {root} (and the reader's images folder), "
            f"not the file's folder: {image!r} is beside {annotations.name}, so give {fix}")


def annotation_file(root: Path, path: str | os.PathLike, what: str) -> Path:
    """The annotation file ``path`` (relative: under ``root``); refused, naming ``what``, unless it is a file."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if p.is_dir():   # (a folder of files, or the images' folder given for the annotations)
        raise IsADirectoryError(f"{what} file {p} is a folder, not a file; give the path of the {what} file in it "
                                f"(relative paths are taken under the data root {root})")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} not found (relative paths are taken under the data root {root})")
    return p


@contextlib.contextmanager
def open_text(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """An annotation file opened as UTF-8 text; a leading byte-order mark (Excel's "CSV UTF-8", Notepad) is
    skipped, and bytes that are not UTF-8 are named as a DataFormatError rather than a bare decode error."""
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as f:
            yield f
    except UnicodeDecodeError as e:   # e.start counts in the chunk being decoded, not in the file
        line, offset, reason = _first_non_utf8(path)
        utf16 = "; it looks like UTF-16" if _head(path).startswith((b"\xff\xfe", b"\xfe\xff")) else ""
        raise DataFormatError(f"{path}:{line}: not UTF-8 text (byte {offset} of the file: {reason or e.reason}"
                              f"{utf16}); save the file as UTF-8") from e


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(2)


def _first_non_utf8(path: Path) -> tuple[int, int, str]:
    """(line, byte offset in the file, why) of the first bytes of ``path`` that are not UTF-8 (a line ends with an
    ASCII newline, so no UTF-8 character spans two lines)."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return lineno, offset + e.start, e.reason
            offset += len(line)
    return 1, 0, ""


def load_json(path: Path, object_hook: Callable[[dict], Any] | None = None) -> Any:
    """``path`` parsed as JSON; ``object_hook`` (as ``json.load``'s) may slim each object as it is read."""
    try:
        with open_text(path) as f:
            return json.load(f, object_hook=object_hook)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def require(obj: Any, key: str, where: str, path: Path) -> Any:
    """``obj[key]``; refused, naming ``path`` and ``where``, when ``obj`` is not a dict holding ``key``."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataFormatError(f"{path}: {where} has no {key!r} field; is this the right file and format?")
    return obj[key]


def require_name(obj: Any, key: str, where: str, path: Path) -> str:
    """``obj[key]``, a file or folder name, which must be text (a null or a number would be looked for as the file
    "None" or "7" and reported as not found)."""
    value = require(obj, key, where, path)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{path}: {where}'s {key!r} must be a file name (non-blank text), got {value!r}")
    return value


def require_list(obj: Any, key: str, where: str, path: Path) -> list:
    """``obj[key]``, which must be a JSON list (of questions, annotations, images, answers...)."""
    value = require(obj, key, where, path)
    if not isinstance(value, list):
        raise DataFormatError(f"{path}: {where}'s {key!r} field must be a list, got {type(value).__name__}; is this "
                              "the right file and format?")
    return value


class ImageChecker:
    """Checks each distinct image once and collects the failures for a single summary."""

    def __init__(self, verify: bool | str, strict: bool) -> None:
        if verify not in (True, False, "decode"):
            raise ValueError(f"verify must be true (header and end-marker checks), \"decode\" (decode every "
                             f"image) or false (existence only), got {verify!r}")
        if not isinstance(strict, bool):  # a spec's strict = "false" is a string, and would be true
            raise ValueError(f"strict must be true or false, got {strict!r}")
        self.verify, self.strict = verify, strict
        self._ok: dict[Any, bool] = {}
        self.failures: list[tuple[Any, str]] = []
        self._bar = progress(desc="checking images", unit="img") if verify else None

    def __call__(self, path: Any, where: str | None = None) -> bool:
        """Whether the image is usable; ``path`` is a file path, or another source with ``verify=False``
        meaning "do not look at it" (in-memory images have no file to test for existence). ``where``: the row
        (``file:line``) that names the image, put before a strict stop's message."""
        if path in self._ok:
            return self._ok[path]
        try:
            if self.verify:
                verify_image(path, decode=self.verify == "decode")
            elif isinstance(path, Path) and not path.is_file():   # (as verify_image says it)
                raise ImageError(f"image {path}: {'is not a regular file' if path.exists() else 'file not found'}")
            ok = True
        except ImageError as e:
            if self.strict:
                if self._bar is not None:
                    self._bar.close()
                fix = "; fix or remove the image, or set strict = false to skip unreadable images with a warning"
                raise type(e)(f"{where + ': ' if where else ''}{e}{fix}") from e
            self.failures.append((path, str(e)))
            ok = False
        self._ok[path] = ok
        if self._bar is not None:
            self._bar.update(1)
        return ok

    def finish(self, examples: list[Example], source: str, class_names: list[str] | None = None) -> Split:
        """The split of ``examples``, after logging the images skipped; refused when no example is left."""
        if self._bar is not None:
            self._bar.close()
        skipped = len(self.failures)
        if skipped:
            shown = "; ".join(msg for _, msg in self.failures[:_SKIP_EXAMPLES_SHOWN])
            more = f" (and {skipped - _SKIP_EXAMPLES_SHOWN} more)" if skipped > _SKIP_EXAMPLES_SHOWN else ""
            logger.warning("%s: skipped %d unreadable image(s): %s%s. Set strict = true in the task spec's [data] "
                           "(strict=True to read_split) to fail instead.",
                           source, skipped, shown, more)
        logger.info("%s: %d examples, %d image(s) skipped", source, len(examples), skipped)
        if not examples:
            why = (f"skipped {skipped} unreadable image(s), e.g. {self.failures[0][1]}" if skipped else
                   "its options select no entries: check the split name or the file")
            raise DataFormatError(f"{source}: no usable examples ({why})")
        return Split(examples, class_names=class_names, skipped=skipped, strict=self.strict)


def caption_examples(groups: Iterable[tuple[Any, str, list[str]]], one_per_image: bool) -> list[Example]:
    """Examples from ``(image, image_id, captions)`` groups: one per caption, or one per image with
    ``text`` its first caption (``one_per_image``); ``captions`` always holds all of them. ``image`` is a
    path (stored as a string) or another image source (stored as it is)."""
    out = []
    for image, image_id, caps in groups:
        img = str(image) if isinstance(image, Path) else image
        caps_t = tuple(caps)
        if one_per_image:
            out.append(Example(img, image_id, text=caps_t[0], captions=caps_t))
        else:
            out.extend(Example(img, image_id, text=c, captions=caps_t) for c in caps_t)
    return out


def fill_image_pattern(pattern: str, id_name: str, **values: Any) -> str:
    """An image file name from ``pattern`` and the question's ``values``; a pattern that cannot be filled (an unknown
    field, a bad format spec, an attribute the id lacks) is a :class:`DataFormatError` naming the id and the fields."""
    try:
        return pattern.format(**values)
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        fields = " and ".join("{" + k + "}" for k in values)
        raise DataFormatError(f"image_pattern {pattern!r} cannot be filled for {id_name} {values['image_id']!r} "
                              f"({e!r}); it may use {fields}") from e


#: A statement row's label as text (any case): its truth value.
TRUTH_VALUES = {"true": 1, "yes": 1, "1": 1, "false": 0, "no": 0, "0": 0}


def truth_label(value: Any, where: str) -> int:
    """The label of a statement row: 1 (true) or 0 (false), from ``true``/``false``, ``yes``/``no`` or ``1``/``0``
    (text in any case, a JSON boolean, an integer 0 or 1) -- a truth value, not a class name."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUTH_VALUES:
        return TRUTH_VALUES[value.strip().lower()]
    whole = value if isinstance(value, float) else _float(value) if isinstance(value, str) else None
    hint = (f"; write {int(whole)}, not {value!r} (pandas writes an integer column holding a blank as floats)"
            if whole in (0.0, 1.0) else "")
    raise DataFormatError(f"{where}: label {value!r} of a statement about several images must be a truth value: "
                          f"true/false, yes/no or 1/0 (1: the statement is true){hint}")


def _float(text: str) -> float | None:
    """``text`` as a float, or None where it spells none."""
    try:
        return float(text)
    except ValueError:
        return None
