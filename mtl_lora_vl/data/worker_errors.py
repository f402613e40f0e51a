"""A data loader's batches with its workers' errors told as the user needs them: an error a worker raised with its own
message (PyTorch wraps it in the worker's traceback), a killed worker with what to do about it."""

from __future__ import annotations

import ast
import re
import signal
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from .images import ImageError

__all__ = ["WorkerTraceback", "worker_errors_unwrapped"]

#: An OSError's message as Python writes it: "[Errno 2] No such file or directory: 'a.png'".
_ERRNO = re.compile(r"\[Errno (\d+)\] (.*?)(?:: ('.*'|\".*\"))?", re.DOTALL)


class WorkerTraceback(Exception):
    """The traceback of an error raised in a data-loader worker: the cause of the error re-raised with its own message
    (shown where the command line shows tracebacks: ``--log-level debug``)."""


def worker_errors_unwrapped(loader: DataLoader) -> Iterator[Any]:
    """``loader``'s batches; an error a worker raised comes out with its own message, as with ``--workers 0`` (PyTorch
    re-raises it as "Caught ValueError in DataLoader worker process 0." plus the worker's traceback, which the command
    line then printed as its one-line error); the worker's traceback is its cause (an :class:`ImageError`'s message
    names the file and suffices: none)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            if str(e).startswith("DataLoader worker ("):
                codes = {w.exitcode for w in getattr(it, "_workers", []) if w.exitcode}
                raise RuntimeError(f"{e}: {_why_died(codes)}; a training run continues with --resume from its last "
                                   "saved checkpoint") from None
            _raise_own(e, it)
            raise
        except Exception as e:
            _raise_own(e, it)
            raise
        yield batch


def _raise_own(e: Exception, it: Any) -> None:
    """Raise the error a worker raised, with its own message, if ``e`` is PyTorch's wrapping of one; else return."""
    text, kind = str(e), type(e)   # (a subclass too: ImageShapeError)
    module = "" if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}."
    named = f"{module}{kind.__qualname__}"
    own = f"\n{named}: "   # the traceback's last line starts so
    if not text.startswith(f"Caught {kind.__name__} in DataLoader worker") or own not in text:
        return
    new = _rebuilt(kind, text.rpartition(own)[2].strip())
    if new is None:   # a type that is not made back from its message: PyTorch's wrapping stays
        return
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:   # now: the error's traceback keeps this iterator (and its workers) alive
        shutdown()
    raise new from (None if isinstance(e, ImageError) else WorkerTraceback(text))


def _rebuilt(kind: type[BaseException], message: str) -> BaseException | None:
    """An error of type ``kind`` whose text is ``message`` (the last line of the worker's traceback), as the worker
    raised it: a KeyError from its key (``KeyError('cat')``'s text is ``'cat'``: made from the text, it read
    ``"'cat'"``), an OSError with its errno and file name; None when no such error can be made."""
    args: tuple[Any, ...] = (message,)
    try:
        if issubclass(kind, KeyError):
            args = (ast.literal_eval(message),)
        elif issubclass(kind, OSError) and (m := _ERRNO.fullmatch(message)):
            args = (int(m[1]), m[2], *((ast.literal_eval(m[3]),) if m[3] else ()))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass   # not a literal: the message as it is
    try:
        new = kind(*args)
    except Exception:  # noqa: BLE001 - a constructor that needs more than a message
        return None
    return new if str(new) == message else None


def _why_died(codes: set[int]) -> str:
    """What a dead worker's exit codes say happened, and what to do (a signal N exits as -N)."""
    if -signal.SIGKILL in codes:   # the kernel's out-of-memory killer sends SIGKILL
        return ("a data-loader worker was killed by the system, most likely out of memory (fewer --workers, "
                "--workers 0, or a smaller --batch-size need less)")
    if -signal.SIGBUS in codes:
        return ("a data-loader worker ran out of shared memory (/dev/shm: give the container more, e.g. docker "
                "--shm-size, or use --workers 0)")
    return (f"a data-loader worker crashed (exit code {', '.join(map(str, sorted(codes))) or 'unknown'}); run with "
            "--workers 0 to see its error")
