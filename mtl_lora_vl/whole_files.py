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
import stat
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
    the file is larger than :data:`MAX_WHOLE_FILE` (or grows past it while read). Only a regular file is read: a
    FIFO, socket or device is refused by name without waiting (an ``open`` of a FIFO for reading waited for a
    writer, for ever); a folder raises :class:`IsADirectoryError`, as ``open`` does."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{path}: a folder, not a file; give the file itself")
        if not stat.S_ISREG(mode):
            raise OSError(f"{path}: {_kind(mode)}, not a regular file, so it is not read (a read could wait for ever "
                          "or never end); give a file")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, encoding=encoding) as f:   # (O_NONBLOCK does nothing to a regular file's reads)
        size = os.fstat(f.fileno()).st_size
        if size > MAX_WHOLE_FILE:
            raise FileTooLarge(path, size)
        text = f.read(MAX_WHOLE_FILE + 1)   # a file whose size stat does not tell (or that grew): read to the cap
    if len(text) > MAX_WHOLE_FILE:
        raise FileTooLarge(path, max(size, len(text)))
    return text


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")
