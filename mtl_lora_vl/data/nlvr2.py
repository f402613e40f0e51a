"""The ``nlvr2`` format: NLVR2's official JSON-lines files and image folders (a statement about a pair of images).

Each line is one example of two images, ``(left, right)``, with a 1 / 0 label; the ``nlvr`` task kind reads them.
Registered in :data:`mtl_lora_vl.data.readers.READERS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .common import (
    DataFormatError,
    ImageChecker,
    ReaderOptionError,
    annotation_file,
    data_root_dir,
    open_text,
    resolve_under,
)
from .records import Example, Split

_NLVR2_FIELDS = ("identifier", "split", "set_id", "pair_id", "sentence_id", "pair", "side", "directory")
_NLVR2_LABELS = {"true": 1, "false": 0}


def read_nlvr2(
    data_root: str | os.PathLike,
    annotations: str | os.PathLike,
    images: str = "",
    image_pattern: str = "{directory}/{pair}-img{side}.png",
    question_type_field: str | None = None,
    strict: bool = False,
    verify: bool | str = True,
) -> Split:
    """Official NLVR2 JSON lines (``train.json``, ``dev.json``, ``test1.json``): one object per line with
    ``identifier`` ("dev-850-0-0": split-set_id-pair_id-sentence_id), ``sentence``, ``label`` ("True"/"False"),
    ``left_url``, ``right_url``, ``synset``, ``query`` and, in ``train.json``, ``directory`` (the numbered
    subfolder of ``images/train`` that holds the pair).

    Each line is one example: ``image`` = (left, right) image paths, ``text`` the sentence, ``label`` 1 (True) or 0
    (False), ``image_id`` the identifier, ``meta["group"]`` the sentence's group, ``split-set_id--sentence_id``
    (the rows of one sentence written about several pairs, as NLVR2's own evaluation groups them for consistency).
    The images of identifier ``split-set-pair-sentence`` are ``split-set-pair-img0.png`` (left) and
    ``...-img1.png`` (right) in ``images``: ``images/train/<directory>/`` for train, ``dev/`` and ``test1/`` for
    the others as NLVR2's zips unpack. ``image_pattern`` may use
    ``{identifier}``, ``{split}``, ``{set_id}``, ``{pair_id}``, ``{sentence_id}``, ``{pair}`` (split-set-pair),
    ``{side}`` (0 left, 1 right) and ``{directory}`` (the line's ``directory``, "" without one: empty path parts
    are dropped, so the default reads the dev and test folders too). An example whose left or right image is
    unreadable is skipped (``strict=True``: raises). ``question_type_field`` names a field of the line
    (``"synset"``, ``"query"``) to group the scores by; none by default.
    """
    root = data_root_dir(data_root)
    apath = annotation_file(root, annotations, "NLVR2")
    _check_nlvr2_pattern(image_pattern)
    if images:
        resolve_under(root, images, "image folder")
    check = ImageChecker(verify, strict)
    examples = []
    seen: dict[str, int] = {}
    with open_text(apath) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{apath}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{where}: not valid JSON ({e.msg}); NLVR2 files hold one JSON object per "
                                      "line") from e
            if not isinstance(row, dict):
                raise DataFormatError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            ident = row.get("identifier")
            if not isinstance(ident, str) or not ident.strip():
                raise DataFormatError(f"{where}: needs an 'identifier' (text such as 'dev-850-0-0'), got "
                                      f"{ident!r}; is this an NLVR2 train/dev/test1.json file?")
            if ident in seen:
                raise DataFormatError(f"{where}: identifier {ident!r} is given twice (lines {seen[ident]} and "
                                      f"{lineno}); each example has its own (are two files concatenated?)")
            seen[ident] = lineno
            parts = ident.rsplit("-", 3)
            if len(parts) != 4 or not all(parts) or any(c in ident for c in "/\\ \t"):
                raise DataFormatError(f"{where}: identifier {ident!r} is not split-set_id-pair_id-sentence_id "
                                      "(e.g. 'dev-850-0-0'), which names the example's images")
            text = row.get("sentence")
            if not isinstance(text, str) or not text.strip():
                raise DataFormatError(f"{where}: example {ident}'s 'sentence' must be non-blank text, got "
                                      f"{text!r}")
            if "label" not in row:
                raise DataFormatError(f"{where}: example {ident} has no 'label' (\"True\" or \"False\")")
            raw = row["label"]
            label = (int(raw) if isinstance(raw, bool) else
                     _NLVR2_LABELS.get(raw.strip().lower()) if isinstance(raw, str) else None)
            if label is None:
                raise DataFormatError(f"{where}: example {ident}'s 'label' must be \"True\" or \"False\" (or a JSON "
                                      f"boolean), got {raw!r}")
            directory = row.get("directory", "")
            if isinstance(directory, bool) or not isinstance(directory, (str, int)) or (
                    isinstance(directory, str) and any(c in directory for c in "/\\")):
                raise DataFormatError(f"{where}: example {ident}'s 'directory' must be the name of a subfolder "
                                      f"(a number in train.json), got {directory!r}")
            qtype = None
            if question_type_field:
                if question_type_field not in row:
                    raise DataFormatError(f"{where}: example {ident} has no {question_type_field!r} field (the "
                                          "question_type_field option); NLVR2 lines have 'synset' and 'query'")
                value = row[question_type_field]
                if isinstance(value, (list, dict)):
                    raise DataFormatError(f"{where}: example {ident}'s {question_type_field!r} must be text, got "
                                          f"{value!r}")
                qtype = None if value is None else str(value)
            split, set_id, pair_id, sentence_id = parts
            values = {"identifier": ident, "split": split, "set_id": set_id, "pair_id": pair_id,
                      "sentence_id": sentence_id, "pair": f"{split}-{set_id}-{pair_id}", "directory": str(directory)}
            paths = []
            for side in (0, 1):
                name = "/".join(p for p in image_pattern.format(side=side, **values).split("/") if p)
                paths.append(resolve_under(root, Path(images) / name))
            if not all([check(p) for p in paths]):   # both checked: each unreadable image is counted and named
                continue
            examples.append(Example(tuple(str(p) for p in paths), ident, text=text, label=label, question_type=qtype,
                                    meta={"identifier": ident, "label_name": "True" if label else "False",
                                          "group": f"{split}-{set_id}--{sentence_id}"}))
    return check.finish(examples, f"NLVR2 {apath.name}")


def _check_nlvr2_pattern(pattern: str) -> None:
    """Refuse an ``image_pattern`` that cannot name the two images of a pair, before any line is read."""
    values = dict.fromkeys(_NLVR2_FIELDS, "x")
    try:
        left, right = (pattern.format(**dict(values, side=side)) for side in (0, 1))
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        raise ReaderOptionError(f"NLVR2 image_pattern {pattern!r} cannot be filled ({e!r}); it may use "
                                f"{', '.join('{' + k + '}' for k in _NLVR2_FIELDS)}") from e
    if left == right:
        raise ReaderOptionError(f"NLVR2 image_pattern {pattern!r} does not use {{side}}: the left and right images "
                                "would be one file (the official names end in -img0.png and -img1.png)")
