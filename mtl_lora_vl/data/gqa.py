"""The ``gqa`` format: GQA's official question files (``{split}_balanced_questions.json``) and its image folder.

One answer per question, which the VQA metric scores by exact match after normalisation (as GQA's own evaluation
does), broken down by a question type of GQA's program (structural by default). Registered in
:data:`mtl_lora_vl.data.readers.READERS`.
"""

from __future__ import annotations

import os
import typing
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
    """
    root = data_root_dir(data_root)
    qpath = annotation_file(root, questions, "GQA questions")
    qs = load_json(qpath)
    if not isinstance(qs, dict):
        raise DataFormatError(f"{qpath}: GQA questions must be a JSON object mapping each question id to its "
                              f"question, got a {type(qs).__name__}; is this a GQA *_questions.json file?")
    if images:
        resolve_under(root, images, "image folder")
    check = ImageChecker(verify, strict)
    examples = []
    for qid, q in qs.items():
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
    return check.finish(examples, f"GQA {qpath.name}")


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
