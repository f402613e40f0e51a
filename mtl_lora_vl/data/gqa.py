"""The ``gqa`` format: GQA's official question files (``{split}_balanced_questions.json``) and its image folder.

One answer per question, which the VQA metric scores by exact match after normalisation (as GQA's own evaluation
does), broken down by a question type of GQA's program (structural by default). Registered in
:data:`mtl_lora_vl.data.readers.READERS`.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import (
    DataFormatError,
    ImageChecker,
    annotation_file,
    data_root_dir,
    fill_image_pattern,
    load_json,
    require,
    resolve_under,
)
from .records import Example, Split

#: The question types of a GQA question (its ``types`` object); "" for none.
GQATypeField = typing.Literal["structural", "semantic", "detailed", ""]


def read_gqa(
    data_root: str | os.PathLike,
    questions: str | os.PathLike,
    images: str = "",
    image_pattern: str = "{image_id}.jpg",
    question_type_field: GQATypeField = "structural",
    filter_type_field: GQATypeField = "structural",
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """Official GQA questions (``train_balanced_questions.json``, ``testdev_balanced_questions.json``, ...): one JSON
    object mapping each question id to ``{"imageId", "question", "answer", "fullAnswer", "types": {"structural",
    "semantic", "detailed"}, "isBalanced", ...}``; the test and challenge files have no ``answer``, ``fullAnswer``
    nor ``types``. Image files are ``images/image_pattern`` formatted with ``image_id`` (GQA's ``images.zip``
    unpacks to ``images/<imageId>.jpg``).

    Each question has one answer (``answers=(answer,)``, or ``()`` without one), which the VQA metric scores by
    exact match after normalisation, as GQA's own evaluation does. ``question_type`` is the question's
    ``types[question_type_field]`` ("structural" by default: verify, query, choose, logical, compare -- the usual
    breakdown); ``meta["filter_type"]``, the type that chooses the answers a question may get (the VQA kind's
    ``filter_by_type``), is ``types[filter_type_field]``: GQA's types come from the question's program, not from
    its answer, and the structural one keeps verify/logical questions to the yes/no answers and the others to
    their own answers. ``""`` for either field gives no type (no filtering). The balanced files hold only
    balanced questions; for the "all" files, ``meta["is_balanced"]`` says which ones GQA's accuracy counts.
    ``questions`` may be a folder of one set's question files (GQA's ``train_all_questions/``), read in numeric
    order; a folder of several sets' files (``train_`` beside ``val_balanced_questions.json``) is refused. Only
    the fields used are kept as each question is parsed, so memory goes with the questions' text.
    """
    root = data_root_dir(data_root)
    files = _question_files(root, questions)
    if images:
        resolve_under(root, images, "image folder")
    check = ImageChecker(verify, strict)
    examples = []
    for qpath, qid, q in _questions(files):
        if not isinstance(q, dict):
            raise DataFormatError(f"{qpath}: question {qid} must be a JSON object, got {q!r}; is this a GQA "
                                  "*_questions.json file?")
        image_id = require(q, "imageId", f"question {qid}", qpath)
        if isinstance(image_id, bool) or not isinstance(image_id, (str, int)) or not str(image_id).strip():
            raise DataFormatError(f"{qpath}: question {qid}'s 'imageId' must be an image id (text), got {image_id!r}")
        text = require(q, "question", f"question {qid}", qpath)
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{qpath}: question {qid}'s 'question' must be non-blank text, got {text!r}; "
                                  "fix or drop the question")
        answers: tuple[str, ...] = ()
        if "answer" in q:
            answer = q["answer"]
            if isinstance(answer, (bool, list, dict)) or answer is None or not str(answer).strip():
                raise DataFormatError(f"{qpath}: question {qid}'s 'answer' must be non-blank text, got {answer!r}; "
                                      "GQA gives each question one answer (leave the field out for a question "
                                      "without one)")
            answers = (str(answer),)
        qtypes = q.get("types")
        if qtypes is not None and not isinstance(qtypes, dict):
            raise DataFormatError(f"{qpath}: question {qid}'s 'types' must be an object (structural, semantic, "
                                  f"detailed), got {qtypes!r}")
        qtype = _gqa_type(qtypes, question_type_field, qid, qpath, "question_type_field")
        ftype = _gqa_type(qtypes, filter_type_field, qid, qpath, "filter_type_field")
        name = fill_image_pattern(image_pattern, "imageId", image_id=image_id)
        path = resolve_under(root, Path(images) / name)
        if not check(path):
            continue
        meta: dict[str, Any] = {"question_id": qid, "filter_type": ftype or ""}
        if "fullAnswer" in q:
            meta["full_answer"] = q["fullAnswer"]
        if "isBalanced" in q:
            meta["is_balanced"] = q["isBalanced"]
        examples.append(Example(str(path), str(image_id), text=text, answers=answers, question_type=qtype,
                                meta=meta))
    name = files[0].name if len(files) == 1 else f"{files[0].parent.name}/ ({len(files)} files)"
    return check.finish(examples, f"GQA {name}")


#: The fields of a question the reader uses; the rest (its program, ``annotations``, ``entailed``...) is dropped as
#: each question is parsed, so a large file costs the questions' text, not every field's objects.
_KEPT = ("imageId", "question", "answer", "fullAnswer", "types", "isBalanced")


def _slim(obj: dict) -> dict:
    return {k: obj[k] for k in _KEPT if k in obj} if "imageId" in obj and "question" in obj else obj


def _question_files(root: Path, questions: str | os.PathLike) -> list[Path]:
    """The question file, or the ``*.json`` files of a folder (GQA's "all" questions come as
    ``train_all_questions/train_all_questions_0.json`` ... ``_9.json``), in numeric order; hidden files (the
    AppleDouble "._train_all_questions_0.json" a tar made on macOS holds beside each file) are no question file."""
    p = Path(questions).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_dir():
        return [annotation_file(root, questions, "GQA questions")]
    files = sorted((f for f in p.glob("*.json") if not f.name.startswith(".")),   # ("._x.json": macOS's tar, copies)
                   key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)])
    if not files:
        raise FileNotFoundError(f"GQA questions folder {p} holds no *.json files; give a *_questions.json file or a "
                                "folder of them (GQA's train_all_questions/)")
    sets = sorted({re.sub(r"_\d+$", "", f.stem) for f in files})   # train_all_questions_0 ... _9: one set
    if len(sets) > 1:   # (train_ beside val_balanced_questions.json: both splits read as one)
        raise DataFormatError(f"GQA questions folder {p} holds the question files of several sets {sets}, which "
                              "would be read as one split; give one file (e.g. train_balanced_questions.json), or a "
                              "folder of one set's numbered files (GQA's train_all_questions/)")
    return files


def _questions(files: list[Path]) -> Iterator[tuple[Path, str, Any]]:
    """(file, question id, question) of each file in turn, one file in memory at a time; a question id given in two
    files is refused."""
    seen: dict[str, Path] = {}   # (several files) id -> the file that gave it
    for qpath in files:
        qs = load_json(qpath, object_hook=_slim)
        if not isinstance(qs, dict):
            raise DataFormatError(f"{qpath}: GQA questions must be a JSON object mapping each question id to its "
                                  f"question, got a {type(qs).__name__}; is this a GQA *_questions.json file?")
        for qid, q in qs.items():
            if len(files) > 1 and qid in seen:
                raise DataFormatError(f"{qpath}: question {qid} is also in {seen[qid].name}; each question id is "
                                      "given once (is a balanced file in the folder of \"all\" files?)")
            if len(files) > 1:
                seen[qid] = qpath
            yield qpath, qid, q
        del qs


def _gqa_type(qtypes: dict | None, field: str, qid: str, qpath: Path, option: str) -> str | None:
    """``qtypes[field]`` as text; None without ``types`` (test files) or for ``field=""``."""
    if not field or qtypes is None:
        return None
    if field not in qtypes:
        raise DataFormatError(f"{qpath}: question {qid}'s 'types' has no {field!r} type (it has "
                              f"{', '.join(map(repr, qtypes)) or 'none'}); set {option} to one of them, or \"\"")
    value = qtypes[field]
    if value is not None and (isinstance(value, (list, dict, bool)) or not str(value).strip()):
        raise DataFormatError(f"{qpath}: question {qid}'s {field} type must be text, got {value!r}")
    return None if value is None else str(value)
