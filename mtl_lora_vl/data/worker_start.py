"""How the package's loader workers start: the stop signals they ignore, and the evaluation loaders' workers
started from Python's fork server, never forked from a process in a process group (:func:`in_process_group`).

A training process holds threads: the training loader's persistent workers' queue feeder threads and its
pin-memory thread, gloo's, torch's intra-op pool. ``fork`` copies such a process with the locks those threads held
at that instant held for good, and the child can wait on one forever: a DDP run's validation once hung so (the
evaluation loader's child stopped inside ``os.fork``, the other rank waited in ``all_gather`` until the test's
time ran out). Every validation and evaluation pass starts new workers, task by task, so each pass took that risk
again. In a process group :func:`evaluation_workers` starts them from the fork server instead (elsewhere they are
forked, as PyTorch's default: see :func:`in_process_group` for why not everywhere): one single-threaded process, itself
started by fork + exec (which holds no such risk) the first time a process needs it, having imported the loader's
modules (torch among them; ``set_forkserver_preload``), so a worker is forked from it about as fast as from the
main process (measured with two workers: 0.14-0.22 s a pass against fork's 0.33-0.48 s; without the preload each
worker imports torch and the package itself: 9-15 s a pass on the loaded two-core test machine, as ``spawn``).

What such a worker reads comes to it pickled (the dataset with its examples, the collate function, the worker's
start, :class:`WorkerStart`); the shared record of failed images (:class:`~mtl_lora_vl.data.fallback.ImageFallback`)
goes with it. A forked worker had the command line's logging; this one is given it (:class:`WorkerStart`), so that
a bad image's warning, said in the worker, prints as in the main process. It ends with the process that started it
(:func:`end_with_starter`): PyTorch's own watchdog watches the fork server, which outlived a killed rank. An example
that does not pickle stops the pass naming itself and the fix (:func:`sent_or_named`): Python's own error named
neither.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from multiprocessing import reduction
from multiprocessing.connection import wait
from multiprocessing.context import get_spawning_popen
from typing import Any

import torch.distributed as dist

from ..log import PACKAGE_LOGGER, cli_logging

__all__ = ["PRELOAD", "WorkerStart", "end_with_starter", "evaluation_workers", "in_process_group",
           "ignore_stop_signals", "not_sent", "sent_or_named"]

#: What the fork server imports before it forks a worker: the evaluation loader's modules (torch, the image sources).
PRELOAD = ["mtl_lora_vl.data.loader"]


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore SIGINT and SIGTERM. A signal sent to the whole process group (Ctrl-C in a
    terminal, ``timeout``, ``kill -- -PGID``, a batch scheduler) then stops only the main process, which
    finishes its step and saves a checkpoint; before, the workers died with it and the step failed ("DataLoader
    worker is killed by signal"). The workers still end with the loader, or when the main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class WorkerStart:
    """A worker's ``worker_init_fn`` (picklable): :func:`ignore_stop_signals`, and the command line's logging (its
    handler's level on the package logger, as :func:`~mtl_lora_vl.log.cli_logging` installs it) where the process
    that made the loader had it: a worker that is not forked from it does not inherit it. Sent to a worker it
    carries that process's stderr (file descriptor 2) as it is then, which the worker writes to: the fork server's
    own is the one the process had when the server started (once a process), and a bad image's warning printed
    there (a program that redirected its stderr since: the old file; under pytest an earlier test's capture)."""

    def __init__(self) -> None:
        package = logging.getLogger(PACKAGE_LOGGER)
        # cli_logging's handler: the package logger's last, which then does not propagate (its level, not the
        # logger's: a rank muted by main_rank_logging keeps its own, at which rank_warning prints)
        self.cli_level = package.handlers[-1].level if package.handlers and not package.propagate else None

    def __getstate__(self) -> dict[str, Any]:
        state = {"cli_level": self.cli_level}
        if get_spawning_popen() is not None and _is_open(2):   # a worker's start: sent along with it
            state["stderr"] = reduction.DupFd(2)
        return state

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals(worker_id)
        end_with_starter()
        stderr = self.__dict__.pop("stderr", None)
        if stderr is not None:   # the worker's stderr: its loader's process's
            sys.stderr.flush()
            fd = stderr.detach()
            os.dup2(fd, 2)
            os.close(fd)
        if self.cli_level is not None:   # open for the worker's life (held here: a dropped one would close)
            self._logging = cli_logging(self.cli_level)
            self._logging.__enter__()


def end_with_starter() -> None:
    """This process (a loader's worker) ends as soon as the process that started it ends. PyTorch's worker watchdog
    watches the worker's parent (``os.getppid()``): the fork server, for a worker started from it, not the rank that
    asked for the worker. A rank killed mid-pass (SIGKILL, a crash) left its workers and its fork server running for
    good: the server ends at EOF of its "alive" pipe, whose write end each of its workers holds (measured: a rank
    SIGKILLed mid-pass left its 2 workers, its fork server and its resource tracker running 30 s on; now the workers
    end within 0.2 s, the server and the tracker with them in 1.5-2.6 s, or once the rank's forked training-loader
    workers, which hold the pipe too, have seen it gone). A daemon thread waits on the starter's sentinel
    (:func:`multiprocessing.parent_process`: a pipe whose write end the starter holds while it keeps the worker)
    and ends the process at its EOF. Nothing where this process was not started by :mod:`multiprocessing`."""
    parent = mp.parent_process()
    if parent is None or parent.sentinel is None:
        return
    threading.Thread(target=_exit_at_eof, args=(parent.sentinel,), name="mtl-lora-vl: ends with the loader's process",
                     daemon=True).start()


def _exit_at_eof(sentinel: int) -> None:
    wait([sentinel])
    os._exit(1)   # (no one is left to read it: the worker's loop, its queues' feeder threads are cut short)


def evaluation_workers(num_workers: int) -> dict[str, Any]:
    """The ``DataLoader`` arguments that start an evaluation loader's ``num_workers`` workers (none: ``{}``, rows are
    read in this process): from the fork server, with :class:`WorkerStart`, where a process group is up
    (:func:`in_process_group`); else forked, as before."""
    if num_workers <= 0:
        return {}
    if not in_process_group():
        return {"worker_init_fn": ignore_stop_signals}
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)   # (read when the server starts: once a process)
    return {"multiprocessing_context": context, "worker_init_fn": WorkerStart()}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def in_process_group() -> bool:
    """Whether a process group is up (torchrun): gloo's / NCCL's threads, beside the training loader's queue feeders,
    make a fork of this process risky -- a DDP run's validation hung so once, its worker stopped inside ``os.fork``.
    Elsewhere workers are forked, as PyTorch forks them by default: the fork server re-runs a script without an
    ``if __name__ == "__main__":`` guard in every worker, costs ~10 s to start, and a notebook always holds threads."""
    return dist.is_available() and dist.is_initialized()


def sent_or_named(batches: Iterator[Any], examples: Sequence[Any], task: str) -> Iterator[Any]:
    """``batches`` of a loader whose workers start from the fork server; where they could not start because an
    example does not pickle, the :func:`not_sent` error naming it (Python's own, e.g. "cannot pickle '_thread.lock'
    object", named neither the task, the example nor the fix) instead."""
    try:
        first = next(batches)
    except StopIteration:
        return
    except (pickle.PicklingError, TypeError, AttributeError) as e:   # what pickling raises
        named = not_sent(examples, task)
        if named is None:
            raise
        raise named from e
    yield first
    yield from batches


def not_sent(examples: Sequence[Any], task: str) -> ValueError | None:
    """The error for the first of ``examples`` (:class:`~mtl_lora_vl.data.records.Example`) that does not pickle,
    naming it and the fix (``--workers 0``); None where each pickles. Checked only after a start failed."""
    for ex in examples:
        if (why := _pickle_error(ex)) is None:
            continue
        parts = ex.image if isinstance(ex.image, tuple) else (ex.image,)
        bad = [(p, w) for p in parts if (w := _pickle_error(p)) is not None]
        what = f"its image source ({type(bad[0][0]).__qualname__})" if bad else "its fields"
        return ValueError(
            f"task {task!r}: example {ex.image_id!r}: {what} cannot be pickled ({bad[0][1] if bad else why}), which "
            "the evaluation loader's workers need: in a process group (torchrun) they start from Python's fork "
            "server and are sent the examples pickled; make it picklable "
            "(a class defined at module level, holding no lock, open file or generator), or use --workers 0 "
            "(num_workers=0: rows read in this process)")
    return None


def _pickle_error(obj: Any) -> str | None:
    """Why ``obj`` does not pickle (``"TypeError: ..."``), or None."""
    try:
        pickle.dumps(obj)
    except Exception as e:  # noqa: BLE001 - any failure to pickle
        return f"{type(e).__name__}: {e}"
    return None
