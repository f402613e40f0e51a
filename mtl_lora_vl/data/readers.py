"""Readers for standard dataset formats; each returns a :class:`~mtl_lora_vl.data.records.Split`.

Formats (names for :func:`read_split`):

* ``vqav2``         — official VQAv2 question JSON (+ annotation JSON, absent for test-dev/test) and an
                      image folder; file names from ``image_pattern`` (COCO style by default).
* ``gqa``           — official GQA question JSON (``{split}_balanced_questions.json``: question id ->
                      question; test/challenge files have no answers; or a folder of them, as GQA's
                      "all" questions come) and its image folder
                      (``{imageId}.jpg``); one answer per question.
* ``nlvr2``         — official NLVR2 JSON-lines file (``train.json``, ``dev.json``, ``test1.json``) and its
                      image folder; each example holds its two images, ``(left, right)``, and a 1/0 label.
* ``coco_captions`` — COCO captions JSON (``images`` + ``annotations``).
* ``karpathy``      — Karpathy-split JSON (``images[].split/filepath/filename/sentences[].raw``).
* ``imagefolder``   — one subfolder per class; class names sorted.
* ``jsonl`` / ``csv`` — one row per example: ``image`` plus ``text``/``caption``/``captions`` (captions),
                      ``question`` + ``answers`` (VQA; a list, or '|'-separated in CSV), or ``label``
                      (a class name or index); see :mod:`mtl_lora_vl.data.rows`.
* ``hf_datasets``   — a Hugging Face dataset saved with ``save_to_disk``, or parquet files, with its
                      columns mapped to those fields (images as bytes or paths); needs the optional
                      ``datasets`` package; see :mod:`mtl_lora_vl.data.hf_datasets`.

Image paths come from the data files, so they are untrusted: each is resolved under ``data_root`` and
refused with :class:`PathEscapeError` (in every mode) when it is absolute, climbs out with ``..`` or is
a symlink pointing outside. Annotation files are named by the user and may be relative to
``data_root`` or absolute.

Missing, empty, truncated, corrupt or oversized images are checked at load (``verify=True``: header,
format verify and the file's end marker, decoding only files that look incomplete -- about 0.2 ms per
JPEG; ``verify="decode"``: every image decoded, about 3 ms per 640x480 JPEG, which also catches damage
inside the file; ``verify=False``: only that the file exists; see :mod:`mtl_lora_vl.data.images`). By
default they are skipped with one summary warning and counted in ``Split.skipped``; ``strict=True``
raises on the first one, and ``Split.strict`` makes the loaders stop on an image that still fails to
decode in a worker (otherwise its row is replaced by another row of the task; see
:mod:`mtl_lora_vl.data.fallback`).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import logging
import os
import types
import typing
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    DataFormatError,
    ImageChecker,
    PathEscapeError,
    ReaderOptionError,
    annotation_file,
    caption_examples,
    data_root_dir,
    fill_image_pattern,
    load_json,
    require,
    require_list,
    require_name,
    resolve_under,
)
from .gqa import read_gqa
from .hf_datasets import check_hf_options, read_hf_datasets
from .images import IMAGE_EXTENSIONS
from .nlvr2 import read_nlvr2
from .records import Example, Split
from .rows import read_csv, read_jsonl

logger = logging.getLogger(__name__)

#: The splits of a Karpathy file (``restval`` joins ``train`` by default); a spec's misspelt split is named when
#: the spec loads (:func:`check_reader_options` reads this annotation).
KarpathySplit = typing.Literal["train", "val", "test", "restval"]

#: Image formats ImageFolder does not read, named when a class folder holds them; other files beside the images
#: (Thumbs.db, desktop.ini, README.txt, labels.json) are not images and are passed over without a word.
_UNREAD_IMAGE_EXTENSIONS = (".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg", ".ico",
                            ".psd", ".tga", ".exr", ".hdr", ".dng", ".raw", ".cr2", ".cr3", ".nef",
                            ".arw", ".orf", ".rw2")

#: The folder of resource forks ("._x.jpg") and ".DS_Store" files a zip made on macOS holds beside its files: no class.
_MACOS_ZIP_FOLDER = "__MACOSX"

#: The subset whose images a VQAv2 question file's ``data_subtype`` names (test-dev's are among test2015's, named so).
_IMAGE_SUBTYPES = {"test-dev2015": "test2015"}

__all__ = ["READERS", "DataFormatError", "PathEscapeError", "read_coco_captions", "read_csv", "read_hf_datasets",
           "read_gqa", "read_imagefolder", "read_jsonl", "read_karpathy", "read_nlvr2", "read_split", "read_vqav2",
           "resolve_under"]

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
    verify: bool | str = True,
) -> Split:
    """Official VQAv2 JSON: ``questions`` (``{"questions": [...]}``) and optional ``annotations``.

    Image files are ``images/image_pattern`` formatted with ``image_id`` and ``data_subtype`` (read
    from the question file, e.g. "val2014", unless given; the test-dev file's "test-dev2015" reads its images
    as "test2015", where COCO keeps them). ``question_type`` of each example is the
    annotation's ``answer_type`` ("yes/no", "number", "other") by default, the usual VQAv2 breakdown;
    ``question_type_field="question_type"`` gives the finer official types ("what color is the").
    ``answer_type`` is derived from the human answers, so it only groups the scores: the answers a question
    may get (the VQA kind's ``filter_by_type``) go by ``meta["filter_type"]``, the annotation's
    ``question_type`` -- the question's opening words -- or "" (no annotations: see ``VQAKind.filter_type``).
    """
    root = data_root_dir(data_root)
    qpath = annotation_file(root, questions, "VQAv2 questions")
    qdata = load_json(qpath)
    qs = require_list(qdata, "questions", "the top level", qpath)
    subtype = data_subtype or (qdata.get("data_subtype") if isinstance(qdata, dict) else None) or ""
    if not data_subtype:   # test-dev is a subset of test2015: its images are test2015/COCO_test2015_*.jpg
        subtype = _IMAGE_SUBTYPES.get(subtype, subtype)
    if "{data_subtype" in image_pattern and not subtype:
        raise DataFormatError(f"{qpath}: no 'data_subtype' field to build image names from {image_pattern!r}; "
                              "pass data_subtype='val2014' (or the right subset) or another image_pattern")
    ann_by_qid: dict[Any, dict] = {}
    if annotations is not None:
        apath = annotation_file(root, annotations, "VQAv2 annotations")
        anns = require_list(load_json(apath), "annotations", "the top level", apath)
        for a in anns:
            qid_a = require(a, "question_id", "an annotation", apath)
            if qid_a in ann_by_qid and ann_by_qid[qid_a] != a:
                raise DataFormatError(f"{apath}: question_id {qid_a!r} has two different annotations; each "
                                      "question has one (are two files concatenated?)")
            ann_by_qid[qid_a] = a
    if images:
        resolve_under(root, images, "image folder")
    check = ImageChecker(verify, strict)
    examples = []
    seen: set[Any] = set()
    for q in qs:
        qid = require(q, "question_id", "a question", qpath)
        if qid in seen:   # the annotation of one question would be given to both
            raise DataFormatError(f"{qpath}: question_id {qid!r} is given to two questions; each question has its own "
                                  "id (are two files concatenated?)")
        seen.add(qid)
        image_id = require(q, "image_id", f"question {qid}", qpath)
        text = require(q, "question", f"question {qid}", qpath)
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{qpath}: question {qid}'s 'question' must be non-blank text, got {text!r}")
        ann = ann_by_qid.get(qid)
        if annotations is not None and ann is None:   # before the image: a missing annotation is the file's fault
            raise DataFormatError(f"question {qid} of {qpath} has no annotation in {annotations}; are the two "
                                  "files of the same subset?")
        name = fill_image_pattern(image_pattern, "image_id", image_id=image_id, data_subtype=subtype)
        path = resolve_under(root, Path(images) / name)
        if not check(path):
            continue
        answers: tuple[str, ...] = ()
        qtype = None
        meta: dict[str, Any] = {"question_id": qid, "filter_type": ""}
        if ann is not None:
            raw = [require(a, "answer", f"an answer of annotation {qid}", apath)
                   for a in require_list(ann, "answers", f"annotation {qid}", apath)]
            if any(a is None or isinstance(a, (list, dict)) for a in raw):
                raise DataFormatError(f"{apath}: annotation {qid} has an answer that is not text ({raw!r}); "
                                      "each answer's 'answer' is a string")
            answers = tuple(str(a) for a in raw)
            qtype = ann.get(question_type_field)
            meta.update({k: ann[k] for k in ("question_type", "answer_type", "multiple_choice_answer") if k in ann})
            meta["filter_type"] = str(ann.get("question_type") or "")
        examples.append(Example(str(path), str(image_id), text=str(text), answers=answers,
                                question_type=qtype, meta=meta))
    return check.finish(examples, f"VQAv2 {qpath.name}")


# ----------------------------------------------------------------------------------------------
# Captions: COCO and Karpathy
# ----------------------------------------------------------------------------------------------

def read_coco_captions(
    data_root: str | os.PathLike,
    annotations: str | os.PathLike,
    images: str = "",
    one_per_image: bool = False,
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """COCO captions JSON. ``one_per_image=False``: one example per (image, caption) (training);
    ``True``: one per image with ``text`` its first caption (retrieval/captioning evaluation).
    ``captions`` always holds all of the image's captions."""
    root = data_root_dir(data_root)
    apath = annotation_file(root, annotations, "COCO captions")
    data = load_json(apath)
    imgs = require_list(data, "images", "the top level", apath)
    anns = require_list(data, "annotations", "the top level", apath)
    caps: dict[str, list[str]] = {}   # ids as text: an annotation's "1" is image 1
    blank = 0
    for a in anns:
        text = _text(require(a, "caption", "an annotation", apath), f"caption of image {a.get('image_id')!r}", apath)
        blank += not text
        texts = caps.setdefault(str(require(a, "image_id", "an annotation", apath)), [])
        if text:
            texts.append(text)
    _warn_blank(apath, blank)
    check = ImageChecker(verify, strict)
    groups = []
    files: dict[str, str] = {}
    for im in imgs:
        iid = str(require(im, "id", "an image entry", apath))
        name = require_name(im, "file_name", f"image {iid}", apath)
        if iid in files:   # the same entry twice would give each caption twice
            if files[iid] != name:
                raise DataFormatError(f"{apath}: image id {iid} is given to two files, {files[iid]!r} and {name!r}; "
                                      "give each image its own id")
            continue
        files[iid] = name
        if not caps.get(iid):
            continue
        path = resolve_under(root, Path(images) / name)
        if check(path):
            groups.append((path, iid, caps[iid]))
    orphans = [i for i in caps if i not in files]
    if orphans:
        logger.warning("%s: %d annotation image id(s) have no image entry (e.g. %s); their captions are left out",
                       apath, len(orphans), orphans[0])
    return check.finish(caption_examples(groups, one_per_image), f"COCO captions {apath.name}")


def _text(value: Any, what: str, path: Path) -> str:
    """A caption as text: null is a blank caption (counted and left out), not the caption "None"; a number reads as
    its text; a list or an object is refused (``str`` would make "['a', 'b']" a caption)."""
    if isinstance(value, (list, dict)):
        raise DataFormatError(f"{path}: the {what} must be text, got {value!r}; give one caption per entry")
    return "" if value is None else str(value).strip()


def _warn_blank(apath: Path, blank: int) -> None:
    if blank:
        logger.warning("%s: %d caption(s) are blank (empty or only spaces) and are left out", apath, blank)


def read_karpathy(
    data_root: str | os.PathLike,
    annotations: str | os.PathLike,
    split: KarpathySplit,
    images: str = "",
    include_restval: bool = True,
    one_per_image: bool | None = None,
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """Karpathy-split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``) for one ``split``.

    Images are ``images/filepath/filename``. ``restval`` joins ``train`` unless ``include_restval=False``.
    ``one_per_image`` defaults to False for train and True for val/test.
    """
    if split not in typing.get_args(KarpathySplit):
        raise ReaderOptionError(f"read_karpathy: split must be 'train', 'val', 'test' or 'restval', got {split!r}")
    root = data_root_dir(data_root)
    apath = annotation_file(root, annotations, "Karpathy split")
    imgs = require_list(load_json(apath), "images", "the top level", apath)
    wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
    if one_per_image is None:
        one_per_image = split in ("val", "test")
    check = ImageChecker(verify, strict)
    groups = []
    blank = 0
    # an entry without cocoid/imgid is its filename (as before), or filepath/filename where filenames collide
    names = Counter(str(im.get("filename")) for im in imgs if isinstance(im, dict) and im.get("split") in wanted)
    files: dict[str, Path] = {}   # image id -> its file: one id for two files would merge their captions
    for im in imgs:
        if require(im, "split", "an image entry", apath) not in wanted:
            continue
        fname = require_name(im, "filename", "an image entry", apath)
        folder = im.get("filepath", "")   # absent in Flickr30k's file
        if not isinstance(folder, str):
            raise DataFormatError(f"{apath}: image {fname}'s 'filepath' must be a folder name (text), got {folder!r}")
        rel = Path(images) / folder / fname
        own = fname if names[fname] < 2 else (Path(folder) / fname).as_posix()
        iid = str(im.get("cocoid", im.get("imgid", own)))
        if iid in files:   # the same entry twice would give each caption twice
            if files[iid] != rel:
                raise DataFormatError(f"{apath}: image id {iid} (cocoid/imgid) is given to two files, {files[iid]} and "
                                      f"{rel}; give each image its own id (two merged Karpathy files?)")
            continue
        files[iid] = rel
        raw = [_text(require(s, "raw", f"a sentence of {fname}", apath), f"sentence of {fname}", apath)
               for s in require_list(im, "sentences", f"image {fname}", apath)]
        sents = [s for s in raw if s]
        blank += len(raw) - len(sents)
        if not sents:
            continue
        path = resolve_under(root, rel)
        if check(path):
            groups.append((path, iid, sents))
    _warn_blank(apath, blank)
    return check.finish(caption_examples(groups, one_per_image), f"Karpathy {apath.name} [{split}]")


# ----------------------------------------------------------------------------------------------
# ImageFolder
# ----------------------------------------------------------------------------------------------

def read_imagefolder(
    data_root: str | os.PathLike,
    folder: str = "",
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """``folder/<class>/<image>``: label = index of the class in the sorted subfolder names; images in a class's
    subfolders (linked ones too, each folder once) are the class's. Hidden files and folders, and the ``__MACOSX/``
    a zip made on macOS holds, are passed over.

    Examples come interleaved across classes (the first image of every class, then the second, ...), not
    class by class, so that the first N of a split -- what ``[generative] eval_limit`` scores -- span the
    classes."""
    root = data_root_dir(data_root)
    base = resolve_under(root, folder, "image folder") if folder else root
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} not found under the data root {root}")
    folders = [d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")]
    classes = sorted(d for d in folders if d != _MACOS_ZIP_FOLDER)
    if len(classes) < len(folders):   # (its AppleDouble copies "._x.jpg" made it a class of no image, label 0)
        logger.info("ImageFolder %s: %s/ (what a zip made on macOS adds) is passed over, not read as a class",
                    base, _MACOS_ZIP_FOLDER)
    if not classes:
        raise DataFormatError(f"image folder {base} has no class subfolders; expected {base}/<class>/<image>")
    check = ImageChecker(verify, strict)
    per_class: list[list[Example]] = []
    other: list[Path] = []   # images of formats the reader does not read (.heic, .avif, ...), said once
    owner: dict[str, tuple[str, Path]] = {}   # real folder -> the class that reads it, and the path it was read as

    def claim(folder: Path, cls: str) -> bool:
        """Whether ``folder`` is still to be walked for ``cls``; refused where another class reads it."""
        first_cls, first = owner.setdefault(os.path.realpath(folder), (cls, folder))
        if first_cls != cls:   # (its images would be examples of both classes)
            raise DataFormatError(f"image folder {base}: {first.relative_to(root)} and {folder.relative_to(root)} are "
                                  f"one folder (a symlink), read under the classes {first_cls!r} and {cls!r}; an image "
                                  "is of one class: remove the link")
        return first == folder

    for label, cls in enumerate(classes):
        found = []
        claim(base / cls, cls)
        for dirpath, dirnames, filenames in os.walk(base / cls, followlinks=True):
            # a linked subfolder is read (as torchvision's ImageFolder reads it), once: a loop or a second link is not
            for d in sorted(dirnames):
                if not Path(os.path.realpath(os.path.join(dirpath, d))).is_relative_to(root):   # before its tree
                    resolve_under(root, (Path(dirpath) / d).relative_to(root), "image folder")
            dirnames[:] = [d for d in sorted(dirnames) if d != _MACOS_ZIP_FOLDER and claim(Path(dirpath) / d, cls)]
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                if not fn.lower().endswith(IMAGE_EXTENSIONS):
                    if fn.lower().endswith(_UNREAD_IMAGE_EXTENSIONS):
                        other.append(Path(dirpath) / fn)
                    continue
                rel = (Path(dirpath) / fn).relative_to(root)
                path = resolve_under(root, rel)
                if check(path):
                    found.append(Example(str(path), str(rel.as_posix()), label=label, meta={"class_name": cls}))
        per_class.append(found)
    if other:
        logger.warning("ImageFolder %s: %d image(s) of other formats are not read (e.g. %s; read: %s); convert "
                       "them to read them", base, len(other), other[0], " ".join(IMAGE_EXTENSIONS))
    empty = [cls for cls, found in zip(classes, per_class) if not found]
    if empty:
        logger.warning("ImageFolder %s: class folder(s) %s hold no image that was read; such a class is never "
                       "trained on", base, empty)
    examples = [ex for row in itertools.zip_longest(*per_class) for ex in row if ex is not None]
    return check.finish(examples, f"ImageFolder {base}", class_names=classes)


# ----------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------

READERS: dict[str, Callable[..., Split]] = {
    "vqav2": read_vqav2,
    "gqa": read_gqa,
    "nlvr2": read_nlvr2,
    "coco_captions": read_coco_captions,
    "karpathy": read_karpathy,
    "imagefolder": read_imagefolder,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "hf_datasets": read_hf_datasets,
}
#: Per format, the checks of its options' values that need no file (beyond their types), run with the others.
_OPTION_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"hf_datasets": check_hf_options}


def read_split(format: str, data_root: str | os.PathLike, **paths_and_options: Any) -> Split:
    """Read a dataset in one of the :data:`READERS` formats; options are the reader's keyword arguments."""
    check_reader_options(format, paths_and_options)
    return READERS[str(format).lower()](data_root, **paths_and_options)


def reader_option_names(format: str) -> frozenset[str]:
    """The options the reader of ``format`` takes (none for an unknown format)."""
    reader = READERS.get(str(format).lower())
    return frozenset(inspect.signature(reader).parameters) - {"data_root"} if reader else frozenset()


def check_reader_options(format: str, options: dict[str, Any]) -> None:
    """Raise :class:`ReaderOptionError` unless the reader of ``format`` takes exactly these options (its
    required ones included); task specs are checked this way when they load, before any file is read."""
    reader = READERS.get(str(format).lower())
    if reader is None:
        raise ValueError(f"unknown data format {format!r}; known formats: {', '.join(READERS)}")
    params = inspect.signature(reader).parameters
    unknown = [k for k in options if k not in params or k == "data_root"]
    if unknown:
        allowed = [p for p in params if p != "data_root"]
        close = {k: difflib.get_close_matches(k, allowed, n=1, cutoff=0.6) for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ReaderOptionError(f"format {format!r} does not take option(s) {', '.join(map(repr, unknown))}"
                                f"{' (' + hint + ')' if hint else ''}; its options are: {', '.join(allowed)}")
    missing = [p.name for p in params.values()
               if p.default is inspect.Parameter.empty and p.name != "data_root" and p.name not in options]
    if missing:
        raise ReaderOptionError(f"format {format!r} needs option(s) {', '.join(map(repr, missing))}")
    hints = typing.get_type_hints(reader)
    for key, value in options.items():   # "false" for a bool, "cat,dog" for a list: named now, not at read time
        expected = hints.get(key)
        if expected is not None and not _matches(value, expected):
            raise ReaderOptionError(f"option {key!r} of format {format!r} must be {_describe(expected)}, got {value!r}")
        if key == "verify" and value not in (True, False, "decode"):
            raise ReaderOptionError(f"option 'verify' must be true, false or \"decode\", got {value!r}")
    more = _OPTION_CHECKS.get(str(format).lower())
    if more is not None:
        more(options)


def _matches(value: Any, tp: Any) -> bool:
    """Whether a spec value fits a reader parameter's annotation (the types TOML gives; others pass)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return True


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = dict.fromkeys(_describe(a) for a in args if a is not type(None) and a is not os.PathLike)
        return " or ".join(parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return f"a table of {_plural(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    """What several values of ``tp`` are called ("strings", "strings or lists of strings")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_plural(a) for a in args if a is not type(None)))
    if origin is list:
        return f"lists of {_plural(args[0])}"
    one = _describe(tp)
    return one.removeprefix("a ").removeprefix("an ") + "s" if one.startswith(("a ", "an ")) else one
