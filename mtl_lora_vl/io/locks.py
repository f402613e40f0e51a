"""Advisory file locks that name their holder: one process at a time trains a run directory (:mod:`..rundir`) or
runs a benchmark grid in a folder (:mod:`..benchmark.bench`). A ``flock`` is let go however its process ends; the
holder writes its process id into the file, so a refusal can name it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:   # not POSIX: no locks (one process per folder is then the user's to keep)
    fcntl = None

__all__ = ["LockHeld", "NotALockFile", "lock_holder", "take_lock"]


class LockHeld(RuntimeError):
    """Another process holds the lock; ``holder`` is the process id it wrote ("?" when none)."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by process {holder}")
        self.holder = holder


class NotALockFile(RuntimeError):
    """The lock's path is a symbolic link or not a regular file; the message names it and the fix."""


def take_lock(path: Path) -> IO | None:
    """Hold ``path`` (an exclusive ``flock``, not waited for) for as long as the returned file stays open, with this
    process's id written in it; None where there is no ``flock``. :class:`LockHeld` when another process holds it;
    :class:`NotALockFile` when ``path`` is a symbolic link or not a regular file (the id was written through a link,
    over the file it led to: a run folder from an archive with ``.lock -> ~/thesis.tex``); another ``OSError`` where
    the file system cannot lock (some network and FUSE mounts)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if path.is_symlink():   # (ELOOP; EMLINK on FreeBSD)
            raise NotALockFile(f"{path}: a symbolic link (to {os.readlink(path)}), where this process writes its "
                               "lock (its process id), which would write over what the link leads to; remove the "
                               "link (a lock file of its own is made there)") from None
        if e.errno == errno.EISDIR:
            raise NotALockFile(f"{path}: a folder, where this process makes its lock file; move it away") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotALockFile(f"{path}: not a regular file (a FIFO, socket or device), where this process makes its lock "
                           "file; remove it")
    os.set_blocking(fd, True)
    fh = open(fd, "r+")   # noqa: SIM115 - held open by the caller
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
