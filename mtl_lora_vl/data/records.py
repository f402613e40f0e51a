"""The common record every reader and the built-in world produce.

Readers turn a dataset's own format into a list of :class:`Example`; loaders, task kinds and
metrics only ever see these. One example is one (image, text) pair of one task, or, for a task that reads
several images at once (NLVR2's statement about a pair), one (images, text) row: ``image`` is then a tuple.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Example:
    """One sample of one task.

    ``image`` is what the loader decodes in a worker (anything
    :func:`mtl_lora_vl.data.images.load_image` takes): an absolute file path (already resolved and
    checked against the data root by the reader); a reference to a row of a ``datasets`` table with a
    ``fetch()`` method returning encoded bytes or such a path (small and picklable: workers read the
    bytes themselves); encoded image bytes or a PIL image (held in memory: fine for small splits; a PIL image is
    taken as it is, not turned upright by its EXIF orientation as a file or bytes are);
    or a built-in-world scene object with a ``render(size) -> PIL.Image`` method. An example of several images
    (NLVR2's left and right) holds a tuple of such sources, in order.
    """

    image: Any
    image_id: str
    text: str | None = None            # caption (retrieval, captioning) or question (vqa)
    captions: tuple[str, ...] = ()     # every reference caption of this image (retrieval eval, captioning refs)
    answers: tuple[str, ...] = ()      # vqa: the (usually ten) human answers
    question_type: str | None = None   # vqa: e.g. "color", "count"
    label: int | None = None           # classification: class index
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        # a list given for a sequence field is kept as a tuple: a list left the frozen example unhashable and its
        # answers open to change in place; a list of images was read as one image (image_count 1)
        for name in ("image", "captions", "answers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))


@dataclass
class Split:
    """The examples of one task and split, plus what the task needs to interpret them."""

    examples: list[Example]
    class_names: list[str] | None = None   # classification
    skipped: int = 0                        # images that could not be read (missing, corrupt, too large)
    strict: bool = False                    # an image that fails to decode later stops the run (no replacement)
    #: Each split's whole length where the reader read slices of it (``train[-50:]``: ``{"train": 1000}``), what its
    #: slices were counted on (the spec's check of rows shared with train asks it); empty where not told.
    split_lengths: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rows_sha256(self) -> str:
        """SHA-256 of the rows in order -- image ids and file names, texts, answers, question types (and VQA's
        ``filter_type``, which picks a question's candidate answers), labels, class names -- not of the image bytes
        nor of the folder they are in (data may move): what a checkpoint records, so that a resume can tell that
        the data changed."""
        h = hashlib.sha256(json.dumps(self.class_names).encode())
        for ex in self.examples:
            h.update(row_key(ex).encode())
        return h.hexdigest()


def row_key(ex: Example) -> str:
    """One row as :attr:`Split.rows_sha256` reads it (image id and file name, texts, answers, question type, label), as
    JSON: two splits holding the same row hold the same key."""
    row = [str(ex.image_id), _file_names(ex.image), ex.text, list(ex.captions), list(ex.answers), ex.question_type,
           ex.label]
    if "filter_type" in ex.meta:   # only where a reader keeps it: other rows' digests stay as they were
        row.append(ex.meta["filter_type"])
    return json.dumps(row, default=str)


def _file_names(image: Any) -> str | list[str | None] | None:
    """The file name of an image path (None for other sources); a list of them for an example of several images."""
    if isinstance(image, tuple):
        # a table's image (DatasetImage: no file) by its column, so that a swapped pair is other data
        return [_file_names(part) if isinstance(part, str | Path) else getattr(part, "column", None)
                for part in image]   # type: ignore[misc]
    return Path(image).name if isinstance(image, str | Path) else None


def image_count(ex: Example) -> int:
    """How many images ``ex`` holds (a tuple ``image``: several; anything else: one)."""
    return len(ex.image) if isinstance(ex.image, tuple) else 1


def image_parts(ex: Example) -> list[Example]:
    """One example per image of ``ex``: ``[ex]`` itself for one image; for several, the j-th image as an example
    whose ``image_id`` is ``"<image_id>#<j>"`` (what an evaluation embeds image by image, and how a failed image is
    named)."""
    if not isinstance(ex.image, tuple):
        return [ex]
    return [Example(part, f"{ex.image_id}#{j}") for j, part in enumerate(ex.image)]


def refuse_rows_of_another_kind(task: str, kind: str, split: Split, needs: str,
                                data_format: str | None = None) -> None:
    """Refuse a training ``split`` whose rows a reader took for another kind's than ``task``'s (``needs``: ``"label"``
    for classification, ``"caption"`` for retrieval and captioning): a JSONL / CSV / table row holding a ``question``
    is a VQA row whatever else it holds, so a classification task on rows with ``question`` and ``label`` was told to
    list ``options.class_names``, and retrieval trained on the questions as its captions. ``data_format`` (the spec's
    ``[data] format``) picks the fix the message gives: a table's ``columns`` mapping (one table can serve a VQA task
    and this one), a file of the task's own rows, or another format for a reader whose rows are all of another kind."""
    bad = next(((i, ex) for i, ex in enumerate(split.examples)
                if (ex.label is None if needs == "label" else is_question_row(ex))), None)
    if bad is None:
        return
    i, ex = bad
    read_as = (f"a VQA row (question {ex.text!r} {'with' if ex.answers else 'and no'} answers; a row that gives "
               "'question' is read as VQA, whatever else it holds)" if is_question_row(ex)
               else "a caption row" if ex.text or ex.captions else "a row with no label")
    fields = "'label'" if needs == "label" else "'text', 'caption' or 'captions'"
    if data_format == "hf_datasets":   # (columns given map only those fields: the table's 'question' is not read)
        fix = (f"map only the task's own columns in its [data] section, e.g. columns = {{image = \"...\", {needs} = "
               "\"...\"}, leaving 'question' out (one table can serve both tasks)")
    elif data_format in (None, "jsonl", "csv"):
        fix = "give the task a file of its own rows (or leave the other kind's column out of its file)"
    else:
        fix = (f"the {data_format} reader reads rows of another kind; give the task data of its own kind (e.g. jsonl "
               f"rows giving 'image' and {fields})")
    raise ValueError(f"task {task!r}: training example {i} (image {ex.image_id!r}) was read as {read_as}, not a "
                     f"{kind} row; a {kind} task's rows give {fields} and no 'question': {fix}")


#: ``Example.meta`` key a row reader sets on a row it read as VQA (its ``text`` the question) that gives no answers,
#: which would otherwise look like a caption row (a caption row with an unrelated 'question' field is such a row).
QUESTION_ROW = "question_row"


def is_question_row(ex: Example) -> bool:
    """Whether ``ex`` is a VQA row: it has answers, or a reader marked it one (:data:`QUESTION_ROW`)."""
    return bool(ex.answers) or bool(ex.meta.get(QUESTION_ROW))
