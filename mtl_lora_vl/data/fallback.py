"""Images that fail to decode in a loader worker never stop a run: their rows are replaced.

The readers check every image when a split is read (:func:`mtl_lora_vl.data.images.verify_image`), but
some damage only shows when the pixels are decoded (a broken marker in the middle of a JPEG, a file
changed after it was read, or ``verify = false``). :class:`ImageFallback` decodes one task's images in
the loader workers; when an image fails, the row is replaced by another row of the same task (chosen
deterministically from the row index, so a resumed run sees the same data), the failure is counted,
and a warning is logged once per file -- across all workers, since the record of failed files lives
in shared memory (lock-free: each worker counts in its own slot, so it works with every start
method; two workers failing on the same file at the same instant may both warn). A file once failed
is not decoded again. With ``strict=True`` the first failure
raises an :class:`~mtl_lora_vl.data.images.ImageError` that names the example and the file.

In evaluation a replaced row is scored on the substitute image (the rows stay aligned with the split);
the count of replaced rows is logged when the pass ends. A task kind's ``evaluate`` opens
:func:`decode_policy` with its name and its split's ``strict``, so the evaluation loaders it runs
(:func:`mtl_lora_vl.data.loader.iter_image_batches`) name the task and honour ``strict = true``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import random
from array import array
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from multiprocessing.context import get_spawning_popen
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from ..log import rank_warning
from .anyres import carries_size
from .images import ImageError, ImageShapeError, image_key, note_depth, to_uint8_tensor
from .records import Example, image_parts
from .resize import ImageResize

logger = logging.getLogger(__name__)
_COUNT_SLOTS = 257
_POLICY: ContextVar[tuple[str, bool, set[str]] | None] = ContextVar("mtl_lora_vl_decode_policy", default=None)


@contextlib.contextmanager
def decode_policy(task: str, strict: bool) -> Iterator[set[str]]:
    """Inside the scope, evaluation loaders that are not told otherwise name ``task`` and use ``strict``; the
    set it yields collects the :func:`failure_key` of every row whose image failed to decode in the scope."""
    failed: set[str] = set()
    token = _POLICY.set((task, bool(strict), failed))
    try:
        yield failed
    finally:
        _POLICY.reset(token)


def current_policy() -> tuple[str, bool] | None:
    """``(task, strict)`` of the innermost :func:`decode_policy` scope, else None."""
    policy = _POLICY.get()
    return None if policy is None else policy[:2]


def failure_key(ex: Example) -> str:
    """How a row whose image failed is named (in warnings, and in the :func:`decode_policy` set): its file."""
    return image_key(ex.image) or f"example {ex.image_id!r}"


def failure_keys(ex: Example) -> set[str]:
    """The :func:`failure_key` of each image of ``ex`` (an evaluation decodes an example of several images image by
    image, :func:`~mtl_lora_vl.data.records.image_parts`; the example is out when any of them failed)."""
    return {failure_key(part) for part in image_parts(ex)}


class ImageFallback:
    """Decode the images of one task's examples, replacing rows whose image fails (see the module doc).

    ``task`` names the task in messages; ``examples`` are its rows; ``size`` how images become the square
    uint8 tensors (an :class:`~mtl_lora_vl.data.resize.ImageResize`, or the side: shorter side, crop). ``replaced``
    counts replaced rows and ``failed_files()`` lists the files that failed, both over every worker of every loader
    built on this object.
    """

    def __init__(self, task: str, examples: Sequence[Example], size: ImageResize | int, *,
                 strict: bool = False, several: bool = False) -> None:
        self.task = task
        self.several = several   # each example is one image of a row of several (scoring a pair image by image)
        # A shard of a sequence (distributed.Shard) serves its own rows but takes substitutes from the whole,
        # so every rank replaces a broken image as one process would.
        whole = getattr(examples, "whole", None)
        self.offset = examples.start if whole is not None else 0
        self.count = len(examples)          # rows served: decode(0 .. count - 1)
        self.examples = whole if whole is not None else examples
        self.size = ImageResize.of(size)
        self.strict = bool(strict)
        keys: dict[str, int] = {}
        ids = array("q")
        # A row of several images (NLVR2's pair) has a slot per image, so that a broken file is named, warned about
        # and skipped as a file: its images' slots are parts[first[i]:first[i] + k] (first[i] = -1: one image).
        first, parts, own = array("q"), array("q"), []
        for i, ex in enumerate(self.examples):
            for part in ex.image if isinstance(ex.image, tuple) else (ex.image,):
                note_depth(part)   # (a PIL image not read yet: pickled into a worker, it keeps no sign of its depth)
            if isinstance(ex.image, tuple):
                ids.append(-1 - i)
                first.append(len(parts))
                for part in ex.image:
                    key = image_key(part)
                    if key is None:
                        own.append(len(parts))
                    parts.append(keys.setdefault(key, len(keys)) if key is not None else -1)
                continue
            key = image_key(ex.image)
            ids.append(keys.setdefault(key, len(keys)) if key is not None else -1 - i)
            first.append(-1)
        self._file_of = ids                 # >= 0: index of a shared file; < 0: this row's own image
        self._n_files = len(keys)
        for n, at in enumerate(own):        # images of several-image rows without a file: slots after the rows'
            parts[at] = self._n_files + len(self.examples) + n
        self._first_part, self._part_slots, self._n_own_parts = first, parts, len(own)
        self._new_shared()

    def _new_shared(self) -> None:
        # One byte per shared file, one per row with its own image and one per image of a several-image row that
        # has no file: 1 = failed. Replaced rows are counted per process (slot 0: the main process, k + 1: worker
        # k), so no lock is needed.
        self._failed = mp.RawArray("b", self._n_files + len(self.examples) + self._n_own_parts)
        self._replaced = mp.RawArray("q", _COUNT_SLOTS)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if get_spawning_popen() is None:    # a plain pickle (not a worker start): shared state stays behind
            state.pop("_failed")
            state.pop("_replaced")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_failed" not in state:
            self._new_shared()

    def _slot(self, index: int) -> int:
        f = self._file_of[index]
        return f if f >= 0 else self._n_files + (-1 - f)

    def _slots(self, index: int) -> list[int]:
        """The failure slots of row ``index``: one per image."""
        at = self._first_part[index]
        if at < 0:
            return [self._slot(index)]
        return list(self._part_slots[at:at + len(self.examples[index].image)])

    @property
    def replaced(self) -> int:
        """Rows replaced so far (all workers)."""
        return int(sum(self._replaced))

    def failed_files(self) -> list[str]:
        """The files (or rows) whose image failed to decode, as named in the warnings."""
        flags = bytes(self._failed)
        seen, out = set(), []
        for i, ex in enumerate(self.examples):
            for s, part in zip(self._slots(i), image_parts(ex)):
                if flags[s] and s not in seen:
                    seen.add(s)
                    out.append(failure_key(part))
        return out

    def _decode(self, index: int) -> Tensor:
        ex = self.examples[index]
        slots = self._slots(index)
        pixels = []
        for part, slot in zip(image_parts(ex) if len(slots) > 1 else [ex], slots):
            try:
                pixels.append(to_uint8_tensor(part.image, self.size, several=self.several or len(slots) > 1))
            except ImageError as err:
                new = type(err)(f"example {ex.image_id!r}: {err}")   # (its kind kept: a shape refusal)
                new.slot = slot                                       # the image that failed, for _mark
                raise new from err
            except TypeError as err:   # a source of no image type (None, a number): the reader's bug, named
                raise TypeError(f"task {self.task!r}: example {ex.image_id!r}: {err}") from err
        if len(pixels) == 1:
            return pixels[0]
        # several images: one (k, 3, S, S) stack, or (a native resize: each at its own size) a tuple of them
        same = len({p.shape for p in pixels}) == 1 and not any(map(carries_size, pixels))
        return torch.stack(pixels) if same else tuple(pixels)

    def _mark(self, index: int, err: ImageError) -> None:
        """Record a failed file; warn if this is its first failure anywhere."""
        slot = getattr(err, "slot", None)
        slot = self._slot(index) if slot is None else slot
        first = not self._failed[slot]
        self._failed[slot] = 1
        if first:   # (a shape refusal's file decodes: checking it would find nothing)
            check = "" if isinstance(err, ImageShapeError) else ("; mtl_lora_vl.data.images.verify_image(path, "
                                                                 "decode=True) checks a file")
            rank_warning(logger, "task %r: %s; its rows are replaced by other rows of the task (set strict = true in "
                         "the task spec to stop instead%s)", self.task, err, check)   # this rank's: said on every rank

    def _known_bad(self, index: int) -> bool:
        return any(self._failed[s] for s in self._slots(index))

    def decode(self, index: int) -> tuple[int, Tensor]:
        """``(row, pixels)``: row ``index`` when its image decodes, else a replacement row of the task (rows
        count in the whole sequence when ``examples`` was a shard of it)."""
        index += self.offset
        last: ImageError | None = None   # the latest failure: the row's own, then its substitutes'
        if not self._known_bad(index):
            try:
                return index, self._decode(index)
            except ImageError as err:
                if self.strict:
                    raise type(err)(f"task {self.task!r}: {err} (strict = true in the task spec; set it to "
                                    "false to replace rows whose image cannot be used)") from err
                self._mark(index, err)
                last = err
        n = len(self.examples)
        start = random.Random(index).randrange(n)
        for k in range(n):
            j = (start + k) % n
            if j == index or self._known_bad(j):
                continue
            try:
                pixels = self._decode(j)
            except ImageError as err:
                self._mark(j, err)
                last = err
                continue
            info = get_worker_info()
            self._replaced[0 if info is None else 1 + info.id % (_COUNT_SLOTS - 1)] += 1
            return j, pixels
        ex = self.examples[index]
        raise ImageError(f"task {self.task!r}: no image of its {n} example(s) can be decoded (example "
                         f"{ex.image_id!r}: {image_key(ex.image) or 'in-memory image'}"
                         f"{f'; last error: {last}' if last else ''}); check the data files")

    def report(self, n: int | None = None) -> None:
        """Log how many rows were replaced, if any (the main process calls this after a pass). ``n``: the
        replaced rows of the batches the pass consumed (default: every row replaced so far, batches that
        workers made ahead and nobody took included)."""
        n = self.replaced if n is None else n
        if n:
            files = self.failed_files()
            policy = _POLICY.get()
            if policy is not None:
                policy[2].update(files)
            shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
            rank_warning(logger, "task %r: %d row(s) used a substitute image because %d image(s) cannot be used "
                         "(each warned about once, with why): %s", self.task, n, len(files), shown)
