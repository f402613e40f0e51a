"""A data loader's batches with its workers' errors told as the user needs them: an image error with its own one-line
message (PyTorch wraps it in the worker's traceback), a killed worker with what to do about it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from .images import ImageError

__all__ = ["worker_errors_unwrapped"]


def worker_errors_unwrapped(loader: DataLoader) -> Iterator[Any]:
    """``loader``'s batches; an :class:`ImageError` a worker raised comes out with its own message (PyTorch
    re-raises it as "Caught ImageError in DataLoader worker process 0." plus the worker's traceback, which the
    command line then printed as its one-line error)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ImageError as e:
            text, kind = str(e), type(e)   # (a subclass too: ImageShapeError)
            if not text.startswith(f"Caught {kind.__name__} in DataLoader worker"):
                raise
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:   # now: the error's traceback keeps this iterator (and its workers) alive
                shutdown()
            own = f"\n{kind.__module__}.{kind.__qualname__}: "   # the traceback's last line starts so
            raise kind(text.rpartition(own)[2].strip() if own in text else text) from None
        except RuntimeError as e:
            if not str(e).startswith("DataLoader worker ("):
                raise
            codes = {w.exitcode for w in getattr(it, "_workers", []) if w.exitcode}
            raise RuntimeError(f"{e}: {_why_died(codes)}; a training run continues with --resume from its last "
                               "saved checkpoint") from None
        yield batch


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
