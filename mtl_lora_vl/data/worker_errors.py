"""A data loader's batches with its workers' errors told as the user needs them: an image error with its own one-line
message (PyTorch wraps it in the worker's traceback), a killed worker with what to do about it."""

from __future__ import annotations

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
            raise RuntimeError(f"{e}: a data-loader worker died; killed by the system, it most likely ran out of "
                               "memory (fewer --workers, --workers 0, or a smaller --batch-size need less); a "
                               "training run continues with --resume from its last saved checkpoint") from None
        yield batch
