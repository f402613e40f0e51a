"""Advisory file locks that name their holder: one process at a time trains a run directory (:mod:`..rundir`) or
runs a benchmark grid in a folder (:mod:`..benchmark.bench`). A ``flock`` is let go however its process ends; the
holder writes its process id into the file, so a refusal can name it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:   # not POSIX: no locks (one process per folder is then the user's to keep)
    fcntl = None

__all__ = ["LockHeld", "lock_holder", "take_lock"]


class LockHeld(RuntimeError):
    """Another process holds the lock; ``holder`` is the process id it wrote ("?" when none)."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by process {holder}")
        self.holder = holder


def take_lock(path: Path) -> IO | None:
    """Hold ``path`` (an exclusive ``flock``, not waited for) for as long as the returned file stays open, with this
    process's id written in it; None where there is no ``flock``. :class:`LockHeld` when another process holds it;
    another ``OSError`` where the file system cannot lock (some network and FUSE mounts)."""
    if fcntl is None:
        return None
    fh = open(path, "a+")   # noqa: SIM115 - held open by the caller
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
    except BlockingIOError:
        holder = _written(fh)
        fh.close()
        raise LockHeld(holder) from None
    except BaseException:
        fh.close()
        raise
    return fh


def lock_holder(path: Path) -> str | None:
    """The process id another process holding ``path`` wrote; None when it is free, missing, or cannot be told
    (unreadable, or a file system without ``flock``)."""
    if fcntl is None or not path.is_file():
        return None
    try:
        fh = open(path)   # noqa: SIM115 - closed below
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _written(fh)
        except OSError:
            return None
    return None


def _written(fh: IO) -> str:
    fh.seek(0)
    return fh.read().strip() or "?"
