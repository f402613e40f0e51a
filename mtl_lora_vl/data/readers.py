"""Readers for standard dataset formats; each returns a :class:`~mtl_lora_vl.data.records.Split`.

Formats (names for :func:`read_split`):

* ``vqav2``         — official VQAv2 question JSON (+ annotation JSON, absent for test-dev/test) and an
                      image folder; file names from ``image_pattern`` (COCO style by default).
* ``coco_captions`` — COCO captions JSON (``images`` + ``annotations``).
* ``karpathy``      — Karpathy-split JSON (``images[].split/filepath/filename/sentences[].raw``).
* ``imagefolder``   — one subfolder per class; class names sorted.
* ``jsonl`` / ``csv`` — one row per example: ``image`` plus ``text``/``caption`` (captions),
                      ``question`` + ``answers`` (VQA; a list, or '|'-separated in CSV), or ``label``
                      (a class name or index).

Image paths come from the data files, so they are untrusted: each is resolved under ``data_root`` and
refused with :class:`PathEscapeError` (in every mode) when it is absolute, climbs out with ``..`` or is
a symlink pointing outside. Annotation files are named by the user and may be relative to
``data_root`` or absolute.

Missing, empty, corrupt or oversized images are checked cheaply at load (header + format verify, no
pixel decode; ``verify=False`` only checks that the file exists). By default they are skipped with one
summary warning and counted in ``Split.skipped``; ``strict=True`` raises on the first one.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..log import progress
from .images import IMAGE_EXTENSIONS, ImageError, verify_image
from .records import Example, Split

logger = logging.getLogger(__name__)

_SKIP_EXAMPLES_SHOWN = 5


class PathEscapeError(ValueError):
    """An image path in a data file that points outside the data root."""


class DataFormatError(ValueError):
    """A data file that does not have the expected structure."""


# ----------------------------------------------------------------------------------------------
# Paths and image checks
# ----------------------------------------------------------------------------------------------

def _root(data_root: str | os.PathLike) -> Path:
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory; pass --data-root pointing at your data")
    return root.resolve()


def resolve_under(root: Path, relative: str | os.PathLike, what: str = "image path") -> Path:
    """Resolve ``relative`` inside ``root``; refuse absolute paths, '..' escapes and symlinks out."""
    rel = str(relative)
    if not rel:
        raise PathEscapeError(f"empty {what} in a data file under {root}")
    if os.path.isabs(rel) or Path(rel).is_absolute() or (len(rel) > 1 and rel[0].isalpha() and rel[1] == ":"):
        raise PathEscapeError(f"{what} {rel!r} is absolute; paths in data files must be relative to the data "
                              f"root {root}")
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root):
        raise PathEscapeError(f"{what} {rel!r} resolves to {resolved}, outside the data root {root}; move the "
                              "data under the root (symlinks that point outside it are refused too)")
    return resolved


def _annotation_file(root: Path, path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} not found (relative paths are taken under the data root {root})")
    return p


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def _require(obj: Any, key: str, where: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataFormatError(f"{path}: {where} has no {key!r} field; is this the right file and format?")
    return obj[key]


class _ImageChecker:
    """Checks each distinct image once and collects the failures for a single summary."""

    def __init__(self, verify: bool, strict: bool) -> None:
        self.verify, self.strict = verify, strict
        self._ok: dict[Path, bool] = {}
        self.failures: list[tuple[Path, str]] = []
        self._bar = progress(desc="checking images", unit="img") if verify else None

    def __call__(self, path: Path) -> bool:
        if path in self._ok:
            return self._ok[path]
        try:
            if self.verify:
                verify_image(path)
            elif not path.is_file():
                raise ImageError(f"image {path}: file not found")
            ok = True
        except ImageError as e:
            if self.strict:
                if self._bar is not None:
                    self._bar.close()
                raise
            self.failures.append((path, str(e)))
            ok = False
        self._ok[path] = ok
        if self._bar is not None:
            self._bar.update(1)
        return ok

    def finish(self, examples: list[Example], source: str, class_names: list[str] | None = None) -> Split:
        if self._bar is not None:
            self._bar.close()
        skipped = len(self.failures)
        if skipped:
            shown = "; ".join(msg for _, msg in self.failures[:_SKIP_EXAMPLES_SHOWN])
            more = f" (and {skipped - _SKIP_EXAMPLES_SHOWN} more)" if skipped > _SKIP_EXAMPLES_SHOWN else ""
            logger.warning("%s: skipped %d unreadable image(s): %s%s. Pass strict=True to fail instead.",
                           source, skipped, shown, more)
        logger.info("%s: %d examples, %d image(s) skipped", source, len(examples), skipped)
        if not examples:
            raise DataFormatError(f"{source}: no usable examples (skipped {skipped} unreadable image(s))")
        return Split(examples, class_names=class_names, skipped=skipped)


# ----------------------------------------------------------------------------------------------
# VQAv2
# ----------------------------------------------------------------------------------------------

def read_vqav2(
    data_root: str | os.PathLike,
    questions: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    images: str = "",
    image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg",
    data_subtype: str | None = None,
    question_type_field: str = "answer_type",
    strict: bool = False,
    verify: bool = True,
) -> Split:
    """Official VQAv2 JSON: ``questions`` (``{"questions": [...]}``) and optional ``annotations``.

    Image files are ``images/image_pattern`` formatted with ``image_id`` and ``data_subtype`` (read
    from the question file, e.g. "val2014", unless given). ``question_type`` of each example is the
    annotation's ``answer_type`` ("yes/no", "number", "other") by default, the usual VQAv2 breakdown;
    ``question_type_field="question_type"`` gives the finer official types ("what color is the").
    """
    root = _root(data_root)
    qpath = _annotation_file(root, questions, "VQAv2 questions")
    qdata = _load_json(qpath)
    qs = _require(qdata, "questions", "the top level", qpath)
    subtype = data_subtype or (qdata.get("data_subtype") if isinstance(qdata, dict) else None) or ""
    if "{data_subtype" in image_pattern and not subtype:
        raise DataFormatError(f"{qpath}: no 'data_subtype' field to build image names from {image_pattern!r}; "
                              "pass data_subtype='val2014' (or the right subset) or another image_pattern")
    ann_by_qid: dict[Any, dict] = {}
    if annotations is not None:
        apath = _annotation_file(root, annotations, "VQAv2 annotations")
        anns = _require(_load_json(apath), "annotations", "the top level", apath)
        for a in anns:
            ann_by_qid[_require(a, "question_id", "an annotation", apath)] = a
    if images:
        resolve_under(root, images, "image folder")
    check = _ImageChecker(verify, strict)
    examples = []
    for q in qs:
        qid = _require(q, "question_id", "a question", qpath)
        image_id = _require(q, "image_id", f"question {qid}", qpath)
        text = _require(q, "question", f"question {qid}", qpath)
        try:
            name = image_pattern.format(image_id=image_id, data_subtype=subtype)
        except (KeyError, ValueError, IndexError) as e:
            raise DataFormatError(f"image_pattern {image_pattern!r} cannot be filled for image_id {image_id!r} "
                                  f"({e}); it may use {{image_id}} and {{data_subtype}}") from e
        path = resolve_under(root, Path(images) / name)
        if not check(path):
            continue
        answers: tuple[str, ...] = ()
        qtype = None
        meta: dict[str, Any] = {"question_id": qid}
        if annotations is not None:
            ann = ann_by_qid.get(qid)
            if ann is None:
                raise DataFormatError(f"question {qid} of {qpath} has no annotation in {annotations}; are the two "
                                      "files of the same subset?")
            answers = tuple(str(a["answer"]) for a in _require(ann, "answers", f"annotation {qid}", qpath))
            qtype = ann.get(question_type_field)
            meta.update({k: ann[k] for k in ("question_type", "answer_type", "multiple_choice_answer") if k in ann})
        examples.append(Example(str(path), str(image_id), text=str(text), answers=answers,
                                question_type=qtype, meta=meta))
    return check.finish(examples, f"VQAv2 {qpath.name}")


# ----------------------------------------------------------------------------------------------
# Captions: COCO and Karpathy
# ----------------------------------------------------------------------------------------------

def _caption_examples(groups: Iterable[tuple[Path, str, list[str]]], one_per_image: bool) -> list[Example]:
    out = []
    for path, image_id, caps in groups:
        caps_t = tuple(caps)
        if one_per_image:
            out.append(Example(str(path), image_id, text=caps_t[0], captions=caps_t))
        else:
            out.extend(Example(str(path), image_id, text=c, captions=caps_t) for c in caps_t)
    return out


def read_coco_captions(
    data_root: str | os.PathLike,
    annotations: str | os.PathLike,
    images: str = "",
    one_per_image: bool = False,
    strict: bool = False,
    verify: bool = True,
) -> Split:
    """COCO captions JSON. ``one_per_image=False``: one example per (image, caption) (training);
    ``True``: one per image with ``text`` its first caption (retrieval/captioning evaluation).
    ``captions`` always holds all of the image's captions."""
    root = _root(data_root)
    apath = _annotation_file(root, annotations, "COCO captions")
    data = _load_json(apath)
    imgs = _require(data, "images", "the top level", apath)
    anns = _require(data, "annotations", "the top level", apath)
    caps: dict[Any, list[str]] = {}
    for a in anns:
        caps.setdefault(_require(a, "image_id", "an annotation", apath), []).append(
            str(_require(a, "caption", "an annotation", apath)).strip())
    check = _ImageChecker(verify, strict)
    groups = []
    for im in imgs:
        iid = _require(im, "id", "an image entry", apath)
        if iid not in caps:
            continue
        path = resolve_under(root, Path(images) / str(_require(im, "file_name", f"image {iid}", apath)))
        if check(path):
            groups.append((path, str(iid), caps[iid]))
    return check.finish(_caption_examples(groups, one_per_image), f"COCO captions {apath.name}")


def read_karpathy(
    data_root: str | os.PathLike,
    annotations: str | os.PathLike,
    split: str,
    images: str = "",
    include_restval: bool = True,
    one_per_image: bool | None = None,
    strict: bool = False,
    verify: bool = True,
) -> Split:
    """Karpathy-split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``) for one ``split``.

    Images are ``images/filepath/filename``. ``restval`` joins ``train`` unless ``include_restval=False``.
    ``one_per_image`` defaults to False for train and True for val/test.
    """
    if split not in ("train", "val", "test", "restval"):
        raise ValueError(f"read_karpathy: split must be 'train', 'val', 'test' or 'restval', got {split!r}")
    root = _root(data_root)
    apath = _annotation_file(root, annotations, "Karpathy split")
    imgs = _require(_load_json(apath), "images", "the top level", apath)
    wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
    if one_per_image is None:
        one_per_image = split in ("val", "test")
    check = _ImageChecker(verify, strict)
    groups = []
    for im in imgs:
        if _require(im, "split", "an image entry", apath) not in wanted:
            continue
        fname = _require(im, "filename", "an image entry", apath)
        rel = Path(images) / str(im.get("filepath", "")) / str(fname)
        sents = [str(_require(s, "raw", f"a sentence of {fname}", apath)).strip()
                 for s in _require(im, "sentences", f"image {fname}", apath)]
        if not sents:
            continue
        path = resolve_under(root, rel)
        if check(path):
            iid = im.get("cocoid", im.get("imgid", fname))
            groups.append((path, str(iid), sents))
    return check.finish(_caption_examples(groups, one_per_image), f"Karpathy {apath.name} [{split}]")


# ----------------------------------------------------------------------------------------------
# ImageFolder
# ----------------------------------------------------------------------------------------------

def read_imagefolder(
    data_root: str | os.PathLike,
    folder: str = "",
    strict: bool = False,
    verify: bool = True,
) -> Split:
    """``folder/<class>/<image>``: label = index of the class in the sorted subfolder names."""
    root = _root(data_root)
    base = resolve_under(root, folder, "image folder") if folder else root
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} not found under the data root {root}")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataFormatError(f"image folder {base} has no class subfolders; expected {base}/<class>/<image>")
    check = _ImageChecker(verify, strict)
    examples = []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(base / cls):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.startswith(".") or not fn.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                rel = (Path(dirpath) / fn).relative_to(root)
                path = resolve_under(root, rel)
                if check(path):
                    examples.append(Example(str(path), str(rel.as_posix()), label=label, meta={"class_name": cls}))
    return check.finish(examples, f"ImageFolder {base}", class_names=classes)


# ----------------------------------------------------------------------------------------------
# Generic JSONL / CSV
# ----------------------------------------------------------------------------------------------

def _rows_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def _rows_csv(path: Path) -> list[tuple[int, dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DataFormatError(f"{path}: empty CSV file; expected a header row with an 'image' column")
        rows = [(i + 2, row) for i, row in enumerate(reader)]  # line 1 is the header
    for lineno, row in rows:
        if None in row:
            raise DataFormatError(f"{path}:{lineno}: more fields than header columns; quote fields with commas")
    return rows


def _row_kind(row: dict) -> str:
    if row.get("question") not in (None, ""):
        return "vqa"
    if row.get("label") not in (None, ""):
        return "classification"
    if row.get("text") not in (None, "") or row.get("caption") not in (None, ""):
        return "caption"
    return "unknown"


def _answers(value: Any, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(a.strip() for a in value.split("|") if a.strip())
    if isinstance(value, list) and all(isinstance(a, (str, int, float)) for a in value):
        return tuple(str(a) for a in value)
    if isinstance(value, list) and all(isinstance(a, dict) and "answer" in a for a in value):
        return tuple(str(a["answer"]) for a in value)   # VQAv2-style answer objects
    raise DataFormatError(f"{where}: 'answers' must be a list of strings or a '|'-separated string, got {value!r}")


def _read_rows(
    fmt: str, rows: list[tuple[int, dict]], path: Path, root: Path, images: str,
    class_names: list[str] | None, one_per_image: bool, strict: bool, verify: bool,
) -> Split:
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    kinds = {}
    for lineno, row in rows:
        if "image" not in row or row["image"] in (None, ""):
            raise DataFormatError(f"{path}:{lineno}: no 'image' field; every row needs an image path")
        kinds.setdefault(_row_kind(row), lineno)
    if "unknown" in kinds:
        raise DataFormatError(f"{path}:{kinds['unknown']}: a row needs 'text' or 'caption', 'question' (+ 'answers') "
                              "or 'label' besides 'image'")
    if len(kinds) > 1:
        first = ", ".join(f"{k} (line {n})" for k, n in kinds.items())
        raise DataFormatError(f"{path}: rows mix task kinds: {first}; use one file per task")
    kind = next(iter(kinds))
    check = _ImageChecker(verify, strict)
    source = f"{fmt.upper()} {path.name}"

    def image_of(row: dict) -> Path:
        return resolve_under(root, Path(images) / str(row["image"]))

    if kind == "caption":
        groups: dict[Path, tuple[str, list[str]]] = {}
        for _, row in rows:
            p = image_of(row)
            text = str(row.get("text") if row.get("text") not in (None, "") else row["caption"]).strip()
            if check(p):
                groups.setdefault(p, (str(row.get("image_id") or row["image"]), []))[1].append(text)
        examples = _caption_examples(((p, iid, caps) for p, (iid, caps) in groups.items()), one_per_image)
        return check.finish(examples, source)

    if kind == "vqa":
        examples = []
        for lineno, row in rows:
            p = image_of(row)
            answers = _answers(row.get("answers"), f"{path}:{lineno}")
            if check(p):
                meta = {k: row[k] for k in ("question_id",) if k in row}
                examples.append(Example(str(p), str(row.get("image_id") or row["image"]), text=str(row["question"]),
                                        answers=answers, question_type=row.get("question_type") or None, meta=meta))
        return check.finish(examples, source)

    # classification
    labels_raw = [(lineno, row["label"]) for lineno, row in rows]

    def is_index(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, str) and v.strip().isdigit())

    names = list(class_names) if class_names is not None else None
    if names is None:
        if all(is_index(v) for _, v in labels_raw):
            names = [str(i) for i in range(max(int(v) for _, v in labels_raw) + 1)]
        else:
            names = sorted({str(v) for _, v in labels_raw})
    index = {n: i for i, n in enumerate(names)}
    examples = []
    for lineno, row in rows:
        v = row["label"]
        if isinstance(v, str) and v in index:
            label = index[v]
        elif is_index(v):
            label = int(v)
            if not 0 <= label < len(names):
                raise DataFormatError(f"{path}:{lineno}: label index {label} out of range for {len(names)} classes")
        else:
            raise DataFormatError(f"{path}:{lineno}: label {v!r} is not one of the class names {names[:10]}"
                                  f"{'...' if len(names) > 10 else ''}")
        p = image_of(row)
        if check(p):
            examples.append(Example(str(p), str(row.get("image_id") or row["image"]), label=label,
                                    meta={"class_name": names[label]}))
    return check.finish(examples, source, class_names=names)


def read_jsonl(
    data_root: str | os.PathLike,
    file: str | os.PathLike,
    images: str = "",
    class_names: list[str] | None = None,
    one_per_image: bool = False,
    strict: bool = False,
    verify: bool = True,
) -> Split:
    """One JSON object per line with ``image`` and ``text``/``caption``, ``question``+``answers`` or ``label``.

    Caption rows of the same image are grouped into ``captions``. ``label`` is a class name or an index;
    ``class_names`` fixes the class order (default: sorted names, or "0".."K-1" for indices).
    """
    root = _root(data_root)
    path = _annotation_file(root, file, "JSONL")
    return _read_rows("jsonl", _rows_jsonl(path), path, root, images, class_names, one_per_image, strict, verify)


def read_csv(
    data_root: str | os.PathLike,
    file: str | os.PathLike,
    images: str = "",
    class_names: list[str] | None = None,
    one_per_image: bool = False,
    strict: bool = False,
    verify: bool = True,
) -> Split:
    """CSV with a header: ``image`` plus ``text``/``caption``, ``question``+``answers`` ('|'-separated) or
    ``label``. Same rules as :func:`read_jsonl`."""
    root = _root(data_root)
    path = _annotation_file(root, file, "CSV")
    return _read_rows("csv", _rows_csv(path), path, root, images, class_names, one_per_image, strict, verify)


# ----------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------

READERS: dict[str, Callable[..., Split]] = {
    "vqav2": read_vqav2,
    "coco_captions": read_coco_captions,
    "karpathy": read_karpathy,
    "imagefolder": read_imagefolder,
    "jsonl": read_jsonl,
    "csv": read_csv,
}


def read_split(format: str, data_root: str | os.PathLike, **paths_and_options: Any) -> Split:
    """Read a dataset in one of the :data:`READERS` formats; options are the reader's keyword arguments."""
    reader = READERS.get(str(format).lower())
    if reader is None:
        raise ValueError(f"unknown data format {format!r}; known formats: {', '.join(READERS)}")
    params = inspect.signature(reader).parameters
    unknown = [k for k in paths_and_options if k not in params or k == "data_root"]
    if unknown:
        allowed = [p for p in params if p != "data_root"]
        raise TypeError(f"format {format!r} does not take option(s) {', '.join(map(repr, unknown))}; its options "
                        f"are: {', '.join(allowed)}")
    missing = [p.name for p in params.values()
               if p.default is inspect.Parameter.empty and p.name != "data_root" and p.name not in paths_and_options]
    if missing:
        raise TypeError(f"format {format!r} needs option(s) {', '.join(map(repr, missing))}")
    return reader(data_root, **paths_and_options)
