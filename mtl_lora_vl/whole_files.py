"""The size cap on the JSON and TOML files the package reads whole into memory (adapter configs, task-state files,
``--config`` files): a larger file is refused by name before it is read, so a sparse or wrong multi-GB file under
such a name does not exhaust memory. A leaf.

The real records are far smaller: a LLaVA-1.5-7B adapter's ``mtl_lora_config.json`` is ~0.2 MB (a 72B-shaped
LLaVA's ~0.35 MB: a few sampled values and the shape of each of its ~1,100 base parameters), and a VQA task's
``tasks/<task>.state.json`` with 3,129 answers, 65 question types each allowing every answer and ~190,000
consensus answers is ~5.7 MB; an options file is a few KB.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The largest JSON or TOML file read whole, in bytes: over ten times the largest real record above.
MAX_WHOLE_FILE = 64 * 2**20


class FileTooLarge(OSError):
    """A file over :data:`MAX_WHOLE_FILE`; its message names the file and its size (callers add the fix)."""

    def __init__(self, path: Path, size: int):
        super().__init__(f"{path}: {size:,} bytes, more than the {MAX_WHOLE_FILE // 2**20} MiB this package reads "
                         "of a JSON or TOML file it reads whole")
        self.path, self.size = path, size


def read_whole(path: str | Path, encoding: str | None = None) -> str:
    """``path``'s text (as ``Path.read_text(encoding)``), refused with :class:`FileTooLarge` before it is read when
    the file is larger than :data:`MAX_WHOLE_FILE` (or grows past it while read)."""
    path = Path(path)
    with open(path, encoding=encoding) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_WHOLE_FILE:
            raise FileTooLarge(path, size)
        text = f.read(MAX_WHOLE_FILE + 1)   # a file whose size stat does not tell (or that grew): read to the cap
    if len(text) > MAX_WHOLE_FILE:
        raise FileTooLarge(path, max(size, len(text)))
    return text
