"""One row per example: JSONL and CSV files, and the row-to-example logic the ``datasets`` reader shares.

A row has ``image`` plus the fields of one task kind:

* captions: ``text`` or ``caption`` (one caption), or ``captions`` (a list, or '|'-separated); rows of one image are
  grouped, so ``Example.captions`` holds all of an image's captions;
* VQA: ``question`` and ``answers`` (a list of strings, VQAv2-style ``{"answer": ...}`` objects, a
  ``{"answer": [...]}`` table of lists, or a '|'-separated string);
* classification: ``label`` (a class name, or an index into ``class_names``);
* a statement about several images (the ``nlvr`` kind, NLVR2-style): ``images`` instead of ``image`` (a list of
  two or more image paths, or a '|'-separated string as in a CSV cell), ``statement`` or ``text``, and ``label``, a
  truth value (``true``/``false``, ``yes``/``no``, ``1``/``0``; JSON booleans too) read as 1 / 0 -- never as a
  class name. ``Example.image`` is then the tuple of the paths, in order. An optional ``group`` names the rows of
  one statement written about several image sets (NLVR2's sentences), for the ``consistency`` metric.

``image_id``, ``question_type`` and ``question_id`` are optional (a row repeated whole with its question_id is
refused); so is ``filter_type`` (VQA), the type that chooses a question's candidate answers when ``question_type``
holds VQAv2's answer type, which comes from the human answers (see :meth:`mtl_lora_vl.tasks.vqa.VQAKind.filter_type`).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    DataFormatError,
    ImageChecker,
    annotation_file,
    caption_examples,
    class_name_key,
    class_name_problems,
    data_root_dir,
    file_relative_hint,
    label_type_hint,
    resolve_under,
    truth_label,
)
from .csv_header import refuse_repeated_header
from .images import ImageError
from .list_cells import refuse_list_cells
from .records import QUESTION_ROW, Example, Split
from .row_files import csv_rows, jsonl_rows
from .row_keys import is_nan, no_id, plain, row_key

logger = logging.getLogger(__name__)


_PLAIN = (str, int, float, bool, type(None), list, dict)
#: What a file or split of no rows is told (a CSV of its header only, an empty JSONL, a saved split of empty files).
NO_ROWS = "no rows; give a file or split that has rows, or leave that split out of the task spec"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, (str, list, tuple)) and len(value) == 0)


_KIND_FIELDS = {"vqa": ("question",), "classification": ("label",), "caption": ("text", "caption", "captions"),
                "nlvr": ("images",)}


def _row_kind(row: dict) -> str:
    if _present(row.get("images")):   # a row of several images: only such rows have the field (the kind is its own)
        return "nlvr"
    if _present(row.get("question")):
        return "vqa"
    if _present(row.get("label")):
        return "classification"
    if any(_present(row.get(k)) for k in ("text", "caption", "captions")):
        return "caption"
    return "unknown"


def _answers(value: Any, where: str) -> tuple[str, ...]:
    """The human answers, stripped. A blank one among others is kept, as the official VQA script and the VQAv2
    reader keep it (one of ten humans gave no answer: an answer that 9 of 10 gave scores 0.9 over ten, not 1 over
    nine); only blanks: no answers."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.split("|")
    if isinstance(value, dict) and isinstance(value.get("answer"), (list, tuple)):
        value = list(value["answer"])   # a Hugging Face Sequence of {"answer", ...}: a table of lists
    if isinstance(value, (list, tuple)) and all(isinstance(a, dict) and "answer" in a for a in value):
        value = [a["answer"] for a in value]   # VQAv2-style answer objects
    if isinstance(value, (list, tuple)) and all(isinstance(a, (str, int, float)) for a in value):
        answers = tuple((str(int(a)) if isinstance(a, float) and a.is_integer() else str(a)).strip() for a in value)
        return answers if any(answers) else ()
    raise DataFormatError(f"{where}: 'answers' must be a list of strings or a '|'-separated string, got {value!r}")


class ImageSources(tuple):
    """A row's ``images`` as a reader found them, each already an image source (a resolved path, or a reference
    such as :class:`~mtl_lora_vl.data.hf_table.DatasetImage`), in order: taken as they are, not as text paths."""


def _image_list(value: Any, where: str) -> list[Any]:
    """A row's ``images``: a list of paths, or a '|'-separated string (a CSV cell); two or more, none blank."""
    if isinstance(value, ImageSources):
        if len(value) < 2:
            raise DataFormatError(f"{where}: the row holds {len(value)} image(s); a row of several images needs two "
                                  "or more")
        return list(value)
    paths = value.split("|") if isinstance(value, str) else value
    if not isinstance(paths, (list, tuple)) or not all(isinstance(x, str) for x in paths):
        raise DataFormatError(f"{where}: 'images' must be a list of image paths (text), or a '|'-separated string, "
                              f"got {value!r}")
    paths = [x.strip() for x in paths]
    if any(not x for x in paths):
        raise DataFormatError(f"{where}: 'images' {value!r} holds a blank path; give every image's path")
    if len(paths) < 2:
        raise DataFormatError(f"{where}: 'images' holds {len(paths)} path(s) ({value!r}); a row of several images "
                              "needs two or more (for a row of one image, give it as 'image')")
    return paths


def _captions(row: dict, where: str) -> list[str]:
    """A row's captions: ``captions`` (a list, or '|'-separated as ``answers``: a CSV cell holds no list), else
    ``text``, else ``caption`` (a string, or a list: a ``datasets`` ``Sequence(string)`` such as Flickr30k's)."""
    key = next((k for k in ("captions", "text", "caption") if _present(row.get(k))), None)
    if key is None:
        return []
    caps = row[key]
    if isinstance(caps, str) or (key != "captions" and isinstance(caps, (int, float)) and not isinstance(caps, bool)):
        caps = caps.split("|") if key == "captions" and isinstance(caps, str) else [str(caps)]
    if not isinstance(caps, (list, tuple)) or not all(isinstance(c, str) for c in caps):
        raise DataFormatError(f"{where}: {key!r} must be a string or a list of strings, got {caps!r}")
    return [c.strip() for c in caps if c.strip()]   # a blank caption is no caption (as an empty list is)


def examples_from_rows(
    rows: list[tuple[int, dict]], *, at: Callable[[int], str], source: str, image_of: Callable[[dict], Any],
    check: ImageChecker, class_names: list[str] | None, one_per_image: bool,
) -> Split:
    """Examples of one task kind from rows ``(number, row)``; ``at(number)`` names a row in messages.

    ``image_of(row)`` gives the row's image (a resolved path, or another source ``load_image`` takes);
    ``check`` tests it; rows of the same image are grouped for captions.
    """
    if not rows:
        raise DataFormatError(f"{source}: {NO_ROWS}")
    # a pandas table's label cell is a numpy scalar (np.int64 of an Int64 column, np.bool_): read as its Python value
    rows = [(n, {**row, "label": plain(row["label"])}) if "label" in row and type(row["label"]) not in _PLAIN
            else (n, row) for n, row in rows]
    row_kinds = {}
    for n, row in rows:
        no_image = "image" not in row or row["image"] is None or (isinstance(row["image"], str) and not row["image"])
        if no_image and not _present(row.get("images")):
            if "images" in row:   # [] or a blank cell: the row's field is there, its paths are not
                raise DataFormatError(f"{at(n)}: 'images' is empty; give the row's image paths (two or more), or "
                                      "remove the row")
            raise DataFormatError(f"{at(n)}: no 'image' field; every row needs an image (the row's fields: "
                                  f"{sorted(row)[:8]}; in a CSV, check the delimiter and spaces in the header)")
        if not no_image and _present(row.get("images")):
            raise DataFormatError(f"{at(n)}: the row has both 'image' and 'images'; a row of one image gives "
                                  "'image', a row of several gives 'images' (a list of paths, or '|'-separated) "
                                  "and no 'image'")
        row_kinds[n] = _row_kind(row)
    known = set(row_kinds.values()) - {"unknown"}
    if len(known) == 1:   # a row whose field of the file's kind is there but blank (an empty CSV cell, "")
        only = next(iter(known))
        for n, row in rows:
            if row_kinds[n] == "unknown" and any(k in row for k in _KIND_FIELDS[only]):
                if only != "caption":   # blank captions are left out (counted below); a blank question or label is not
                    field = _KIND_FIELDS[only][0]
                    raise DataFormatError(f"{at(n)}: {field!r} is blank; give the row its {field}, or remove the row")
                row_kinds[n] = only
    if not known:   # a column is there, blank in every row
        there = [f for fs in _KIND_FIELDS.values() for f in fs if all(f in row for _, row in rows)]
        if there:
            raise DataFormatError(f"{source}: {' and '.join(map(repr, there))} "
                                  f"{'is' if len(there) == 1 else 'are'} blank in every row; fill the column of the "
                                  "file's task, or give another file")
    for k in ("vqa", "classification") if len(known) > 1 else ():   # a blank label beside a caption read as a caption
        field = _KIND_FIELDS[k][0]   # (where the rows of that kind carry a caption too: else the file mixes kinds)
        blank = next((n for n, row in rows if row_kinds[n] != k and field in row and not _present(row[field])), None)
        with_captions = any(row_kinds[n] == k and any(_present(row.get(f)) for f in _KIND_FIELDS["caption"])
                            for n, row in rows)
        if k in known and blank is not None and with_captions:
            raise DataFormatError(f"{at(blank)}: {field!r} is blank; give the row its {field}, or remove the row")
    kinds: dict[str, int] = {}
    for n, k in row_kinds.items():
        kinds.setdefault(k, n)
    if "unknown" in kinds:   # named with the row's fields, and the field a misspelt one ("lable") was meant to be
        row = dict(rows)[kinds["unknown"]]
        fields = ("text", "caption", "captions", "question", "label", "statement")
        meant = {k: difflib.get_close_matches(k, fields, n=1, cutoff=0.7) for k in row if k not in fields}
        raise DataFormatError(f"{at(kinds['unknown'])}: a row needs 'text', 'caption' or 'captions', 'question' "
                              "(+ 'answers') or 'label' besides 'image' (or 'images' + 'statement' + 'label' for a "
                              f"statement about several images); the row's fields: {sorted(row)[:8]}"
                              + "".join(f"; {k!r}: did you mean {c[0]!r}?" for k, c in meant.items() if c))
    if len(kinds) > 1:
        first = ", ".join(f"{'nlvr (images + statement)' if k == 'nlvr' else k} ({at(n)})" for k, n in kinds.items())
        raise DataFormatError(f"{source}: rows mix task kinds: {first}; use one file per task"
                              + ("; a row of one image gives 'image', a statement about several images gives "
                                 "'images' (and no 'image')" if "nlvr" in kinds else ""))
    kind = next(iter(kinds))
    # a row's whole key only where its question_id repeats: an embedding cell's key costs 2x the rest of the row's
    by_id: dict[Any, tuple[int, dict | None]] = {}   # a question_id, as compared -> its first row (None: keyed)
    seen: dict[Any, int] = {}   # a row whose question_id repeats, as compared -> its first row
    for n, row in rows:   # (a file joined twice: every question read, weighed and scored twice)
        qid = row.get("question_id")
        if no_id(qid):   # (NaN, pd.NA: a blank cell of a pandas table)
            continue
        n0, row0 = by_id.setdefault(row_key(qid), (n, row))
        if n0 == n:
            continue
        if row0 is not None:
            seen.setdefault(row_key(row0), n0)
            by_id[row_key(qid)] = (n0, None)
        # rows that share an id but differ are questions of their own (MME's id is the image's name, POPE's restart)
        first = seen.setdefault(row_key(row), n)
        if first != n:
            raise DataFormatError(f"{at(n)}: question_id {plain(qid)!r} is given to another row at {at(first)}, and "
                                  "the row repeats it whole (is a file joined twice?): remove the repeated rows, or "
                                  "leave question_id out where rows repeat on purpose (one per answer given)")

    def image_at(row: dict, n: int) -> Any:   # a path out of the root (PathEscapeError) names the file and line
        try:
            return image_of(row)
        except DataFormatError as e:   # PathEscapeError among them
            raise type(e)(f"{at(n)}: {e}") from None

    def stored(p: Any) -> Any:
        return tuple(map(stored, p)) if isinstance(p, tuple) else str(p) if isinstance(p, Path) else p

    first_of: dict[str, tuple[Any, int]] = {}
    named: dict[Any, str] = {}   # a resolved image, as compared -> the id of the first row naming it without one

    def image_id(row: dict, n: int, p: Any) -> str:
        """The row's image id (when none is given: the resolved image's, its first row's name for it, so one image
        named in NFC and NFD, or as ./a.jpg and a.jpg, has one id), refused if it names another image."""
        iid = row.get("image_id")
        iid = named.setdefault(row_key(p), str(row["image"])) if no_id(iid) else str(iid)
        seen = first_of.setdefault(iid, (p, n))
        if seen[0] != p:
            raise DataFormatError(f"{at(n)}: image_id {iid!r} was given to another image at {at(seen[1])} "
                                  f"({stored(seen[0])} there, {stored(p)} here); give each image its own id, or "
                                  "leave image_id out and the image's path is used")
        return iid

    if kind == "caption":
        groups: dict[Any, tuple[str, list[str]]] = {}
        blank = []
        for n, row in rows:
            p = image_at(row, n)
            texts = _captions(row, at(n))
            iid = image_id(row, n, p)
            if not texts:
                blank.append(n)
            elif check(p, at(n)):
                groups.setdefault(p, (iid, []))[1].extend(texts)
        if blank:
            logger.warning("%s: %d row(s) have no caption text (blank or only spaces) and are left out, e.g. %s",
                           source, len(blank), at(blank[0]))
        examples = caption_examples(((stored(p), iid, caps) for p, (iid, caps) in groups.items()), one_per_image)
        return check.finish(examples, source)

    if kind == "nlvr":
        if class_names is not None:
            raise DataFormatError(f"{source}: class_names is for classification rows; a statement about several "
                                  "images has a true/false label (1/0): leave class_names out")
        examples = []
        for n, row in rows:
            where = at(n)
            paths = _image_list(row["images"], where)
            texts = [k for k in ("statement", "text") if _present(row.get(k))]
            if not texts:
                field = next((k for k in ("statement", "text") if k in row), None)
                raise DataFormatError(f"{where}: {'the statement is blank' if field else 'no statement'}; a row of "
                                      "'images' needs 'statement' (or 'text'): what is said about the images")
            if len(texts) > 1 and str(row["statement"]).strip() != str(row["text"]).strip():
                raise DataFormatError(f"{where}: the row gives both 'statement' and 'text', and they differ; give one")
            text = row[texts[0]]
            if not isinstance(text, str):
                raise DataFormatError(f"{where}: {texts[0]!r} must be text, got {text!r}")
            if not _present(row.get("label")) or (isinstance(row["label"], str) and not row["label"].strip()):
                raise DataFormatError(f"{where}: {'label is blank' if 'label' in row else 'no label'}; a statement "
                                      "about several images needs 'label': true or false (yes/no, 1/0)")
            label = truth_label(row["label"], where)
            qtype = row.get("question_type")
            if qtype is not None and not isinstance(qtype, (str, int, float)) or isinstance(qtype, bool):
                raise DataFormatError(f"{where}: 'question_type' must be text, got {qtype!r}")
            qtype = None if qtype is None or (isinstance(qtype, str) and not qtype.strip()) else str(qtype).strip()
            ps = tuple(image_at({**row, "image": x}, n) for x in paths)
            ok = [check(p, where) for p in ps]   # every image checked: each unreadable one is named in the summary
            if no_id(row.get("image_id")):
                row = {**row, "image": "|".join(map(str, paths))}   # the default id: the row's paths
            if all(ok):
                meta = {k: row[k] for k in ("question_id",) if k in row}
                group = row.get("group")
                if is_nan(group):   # a JSON NaN (a blank cell to pandas): no group
                    group = None
                if isinstance(group, (list, dict, bool)):
                    raise DataFormatError(f"{where}: 'group' must be text or a number (the statement's id, shared "
                                          f"by its rows), got {group!r}")
                if _present(group) and str(group).strip():
                    meta["group"] = str(group).strip()
                examples.append(Example(stored(ps), image_id(row, n, ps), text=text.strip(),
                                        label=label, question_type=qtype, meta=meta))
        return check.finish(examples, source)

    if kind == "vqa":
        examples = []
        for n, row in rows:
            for f in ("question", "question_type", "filter_type"):
                v = row.get(f)
                if v is not None and not isinstance(v, (str, int, float)) or isinstance(v, bool):
                    raise DataFormatError(f"{at(n)}: {f!r} must be text, got {v!r}")
            qtype = row.get("question_type")
            qtype = None if qtype is None or (isinstance(qtype, str) and not qtype.strip()) else str(qtype).strip()
            p = image_at(row, n)
            answers = _answers(row.get("answers"), at(n))
            if check(p, at(n)):
                meta = {k: row[k] for k in ("question_id",) if k in row}
                if not answers:   # (its text, the question, then looked like a caption: answers tell the rest)
                    meta[QUESTION_ROW] = True
                if "filter_type" in row:
                    meta["filter_type"] = str(row["filter_type"] or "")
                examples.append(Example(stored(p), image_id(row, n, p), text=str(row["question"]), answers=answers,
                                        question_type=qtype, meta=meta))
        if examples and not any(e.answers for e in examples):
            n, row = rows[0]
            close = difflib.get_close_matches("answers", [k for k in row if k != "answers"], n=1, cutoff=0.7)
            if close:
                raise DataFormatError(f"{at(n)}: no row has 'answers', but rows have {close[0]!r}; the VQA reader "
                                      "reads 'answers' (a list of strings, or '|'-separated): rename the field")
        return check.finish(examples, source)

    # classification
    labels_raw = [(n, row["label"]) for n, row in rows]
    row_label = dict(labels_raw).get

    def is_index(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, str) and v.strip().isdecimal())

    names = list(class_names) if class_names is not None else None
    if names == []:   # every label was then "out of range for 0 classes"
        raise DataFormatError(f"{source}: the reader's class_names is empty; list the class names in the order of the "
                              "label indices, or leave class_names out to take the classes from the labels")
    if names is not None:
        blank, twice = class_name_problems(names)
        if blank or twice:
            raise DataFormatError(f"{source}: the reader's class_names must be distinct, non-blank names"
                                  + (f"; {', '.join(map(repr, twice))} repeated" if twice else "")
                                  + (f"; {blank[0]!r} is blank" if blank else "") + f" (class_names = {names})")
    if names is None:
        if all(is_index(v) for _, v in labels_raw):
            seen = {int(v) for _, v in labels_raw}
            names = [str(i) for i in range(max(seen) + 1)]
            empty = [i for i in range(len(names)) if i not in seen]
            if empty:
                logger.warning("%s: the labels are integers, read as class indices 0..%d, and %d of those classes "
                               "have no example here (%s%s): 1-based labels add a class 0, and numbers that are "
                               "names (years, codes) make a class per integer; give the class names in order "
                               "(the reader's class_names) if they are not indices", source, len(names) - 1,
                               len(empty), ", ".join(map(str, empty[:5])), " ..." if len(empty) > 5 else "")
        else:
            ints = [n for n, v in labels_raw if isinstance(v, int) and not isinstance(v, bool)]
            if ints:   # an int beside names: an index into which list? (it was read as one into the sorted names)
                raise DataFormatError(f"{at(ints[0])}: label {row_label(ints[0])!r} is an integer class index but "
                                      "other rows give class names; write every label as a name, or give class_names")
            names = sorted({str(v).strip() for _, v in labels_raw})
            folded = Counter(map(class_name_key, names))   # CLIP tokenizers lowercase; NFC and NFD print alike
            if any(c > 1 for c in folded.values()):
                same = [n for n in names if folded[class_name_key(n)] > 1]
                logger.warning("%s: the labels %s differ only in case, spaces or Unicode form and are read as %d "
                               "classes (whose prompts a lowercasing tokenizer reads alike); write each class one "
                               "way", source, same[:6], len(same))
    index = {n.strip(): i for i, n in enumerate(names)}   # a label is read stripped: so is a given name
    examples = []
    for n, row in rows:
        v = row["label"]
        if isinstance(v, str):   # "red circle " is the class "red circle", not a class of its own
            v = v.strip()
        if isinstance(v, str) and v in index:
            label = index[v]
        elif is_index(v):
            label = int(v)
            if not 0 <= label < len(names):
                raise DataFormatError(f"{at(n)}: label index {label} out of range for {len(names)} classes")
        elif not isinstance(v, str):   # 0.0 (pandas writes an int column holding NaN as floats), True, ...
            raise DataFormatError(f"{at(n)}: label {v!r} is a {type(v).__name__}; labels are class-name strings or "
                                  f"integer class indices{label_type_hint(v)}")
        else:
            raise DataFormatError(f"{at(n)}: label {v!r} is not one of the class names {names[:10]}"
                                  f"{'...' if len(names) > 10 else ''}")
        p = image_at(row, n)
        if check(p, at(n)):
            examples.append(Example(stored(p), image_id(row, n, p), label=label, meta={"class_name": names[label]}))
    return check.finish(examples, source, class_names=names)


def _read_file_rows(fmt: str, rows: list[tuple[int, dict]], path: Path, root: Path, images: str,
                    class_names: list[str] | None, one_per_image: bool, strict: bool, verify: bool | str) -> Split:
    if not rows:
        raise DataFormatError(f"{path}: {NO_ROWS}")

    def image_of(row: dict) -> Path:
        if not isinstance(row["image"], str):   # 7 would be looked for as the file "7"
            several = isinstance(row["image"], (list, tuple))
            raise DataFormatError(f"'image' must be a file path (text), got {row['image']!r}"
                                  + ("; a row of several images gives them as 'images'" if several else ""))
        return resolve_under(root, Path(images) / row["image"])

    try:
        return examples_from_rows(rows, at=lambda n: f"{path}:{n}", source=f"{fmt.upper()} {path.name}",
                                  image_of=image_of, check=ImageChecker(verify, strict), class_names=class_names,
                                  one_per_image=one_per_image)
    except (DataFormatError, ImageError) as e:   # every image missing (strict: the first): relative to the file?
        hint = file_relative_hint(root, images, path, rows[0][1].get("image")) if "file not found" in str(e) else ""
        if not hint:
            raise
        raise type(e)(f"{e}{hint}") from e


def read_jsonl(
    data_root: str | os.PathLike,
    file: str | os.PathLike,
    images: str = "",
    class_names: list[str] | None = None,
    one_per_image: bool = False,
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """One JSON object per line with ``image`` and ``text``/``caption``/``captions``, ``question``+``answers``
    or ``label``; or ``images`` (a list of two or more paths) + ``statement``/``text`` + ``label`` (true/false), a
    statement about several images (the ``nlvr`` kind).

    Caption rows of the same image are grouped into ``captions``. ``label`` is a class name or an index;
    ``class_names`` fixes the class order (default: sorted names, or "0".."K-1" for indices).
    """
    root = data_root_dir(data_root)
    path = annotation_file(root, file, "JSONL")
    return _read_file_rows("jsonl", refuse_list_cells(path, jsonl_rows(path), False), path, root, images, class_names,
                           one_per_image, strict, verify)


def read_csv(
    data_root: str | os.PathLike,
    file: str | os.PathLike,
    images: str = "",
    class_names: list[str] | None = None,
    one_per_image: bool = False,
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """CSV with a header: ``image`` plus ``text``/``caption``, ``question``+``answers`` ('|'-separated) or
    ``label``; or ``images`` ('|'-separated paths) + ``statement``/``text`` + ``label`` (true/false). Same rules as
    :func:`read_jsonl`."""
    root = data_root_dir(data_root)
    path = annotation_file(root, file, "CSV")
    rows = _refuse_float_labels(path, refuse_list_cells(path, refuse_repeated_header(path, csv_rows(path)), True),
                                class_names)
    return _read_file_rows("csv", rows, path, root, images, class_names, one_per_image, strict, verify)


#: A CSV cell holding a whole number written as a float: what pandas' ``to_csv`` writes for an integer column
#: holding a blank (NaN makes the column float).
_WHOLE_FLOAT = re.compile(r"[+-]?\d+\.0*")


def _refuse_float_labels(path: Path, rows: list[tuple[int, dict]], class_names: list[str] | None
                         ) -> list[tuple[int, dict]]:
    """``rows`` as they are; refused where every label of the classification rows is a whole number written as a
    float ("1.0", "0.0"), as JSON lines refuse the number 1.0: read as text they were class names sorted as text
    ("10.0" before "2.0"), not the indices they are. Labels among ``class_names`` are names; a statement's label
    (beside its ``images``) is a truth value (:func:`~mtl_lora_vl.data.common.truth_label` reads it), and a VQA row's
    ``label`` column is none of the reader's (a question's answers are its ``answers``)."""
    given = {str(n).strip() for n in class_names or ()}
    labels = [(n, row["label"]) for n, row in rows
              if _row_kind(row) == "classification" and isinstance(row["label"], str) and row["label"] not in given]
    if labels and all(_WHOLE_FLOAT.fullmatch(v) for _, v in labels):
        n, v = labels[0]
        raise DataFormatError(f"{path}:{n}: label {v!r} is a whole number written as a float, as every label of the "
                              "file is (pandas writes an integer column holding a blank so); labels are class names "
                              f"or integer class indices: write {int(float(v))}, not {v} (or give class_names to "
                              "read the labels as names)")
    return rows
