"""A data loader's batches with its workers' errors told as the user needs them: an error a worker raised as
``--workers 0`` raises it (PyTorch sends only its type and traceback text), a killed worker with what to do about it.

A loader built with :func:`carry_errors` sends an error raised in a worker's dataset or collate function to the main
process in its batch's place, pickled (:class:`WorkerError`): it comes out as the same object, its type, arguments and
attributes kept. An error that does not pickle is raised in the worker as before and made back from PyTorch's text.
``SystemExit``, ``GeneratorExit`` and a ``KeyboardInterrupt`` the dataset's code raised are carried too (PyTorch's
worker died of them and the main process got "worker exited unexpectedly", ConnectionResetError or
FileNotFoundError), so that the command exits as with ``--workers 0`` (a KeyboardInterrupt: 130, the trainer saying
the step was not saved). A KeyboardInterrupt only where the worker ignores SIGINT (the package's loaders do:
``ignore_stop_signals``): there it cannot be the terminal's Ctrl-C, which such workers ignore and the main process
handles itself (the trainer: stop at the step's end, saving); a worker that takes SIGINT leaves its KeyboardInterrupt
to PyTorch (the worker exits quietly), as the main process got the signal too.

A ``StopIteration`` raised while reading rows or collating them is refused (:class:`RefuseStopIteration`): PyTorch's
loader takes it for the end of the data, so ``--workers 0`` ended the pass early, its rows lost without a word, and
with workers it came out as "generator raised StopIteration"."""

from __future__ import annotations

import ast
import pickle
import re
import signal
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, get_worker_info

__all__ = ["RefuseStopIteration", "WorkerError", "WorkerTraceback", "carry_errors", "worker_errors_unwrapped"]

#: An OSError's message as Python writes it: "[Errno 2] No such file or directory: 'a.png'".
_ERRNO = re.compile(r"\[Errno (\d+)\] (.*?)(?:: ('.*'|\".*\"))?", re.DOTALL)


class WorkerTraceback(Exception):
    """The traceback of an error raised in a data-loader worker: the cause of the error re-raised with its own message
    (shown where the command line shows tracebacks: ``--log-level debug``)."""


class RefuseStopIteration:
    """A context in which a ``StopIteration`` (raised by a dataset's code: a task kind, an image source, a collate
    function) becomes a RuntimeError naming ``what`` was being read (a callable: made only then), in the main process
    and in a worker alike."""

    def __init__(self, what: str | Callable[[], str]) -> None:
        self.what = what

    def __enter__(self) -> RefuseStopIteration:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, StopIteration):
            what = self.what if isinstance(self.what, str) else self.what()
            raise RuntimeError(f"{what} raised StopIteration, which a dataset or collate function must not raise: the "
                               "data loader takes it for the end of the data and ends the pass early, losing rows; "
                               "raise another error (e.g. ValueError) naming what is wrong") from error


class WorkerError:
    """An error raised in a data-loader worker, sent in its batch's place: the error pickled and the worker's
    traceback text. Made by :meth:`of` only in a worker and for an error that comes back from its pickle as itself."""

    def __init__(self, payload: bytes, text: str) -> None:
        self.payload = payload
        self.text = text

    @classmethod
    def of(cls, error: BaseException) -> WorkerError | None:
        """``error`` carried, or None: not in a worker (``--workers 0`` raises it), or it does not pickle."""
        info = get_worker_info()
        if info is None:
            return None
        payload = _pickled(error)
        if payload is None and not _pickles(type(error)):   # PyTorch's own sending pickles the type: a hang
            payload = _pickled(RuntimeError(
                f"{type(error).__qualname__}: {error} (an error of a type that cannot be pickled, e.g. a class "
                "defined inside a function, so a data-loader worker cannot send it as it is; --workers 0 raises it "
                "itself; the worker's traceback is this error's cause)"))
        if payload is None:
            return None
        return cls(payload, f"in DataLoader worker process {info.id}:\n" + "".join(traceback.format_exception(error)))

    def error(self) -> BaseException:
        """The error the worker raised (its traceback and cause stay in :attr:`text`)."""
        return _unpickled(self.payload)


class _ByState:
    """An error as its type, arguments and attributes, for a type whose own pickle fails (an ``__init__`` with
    other parameters than its ``args``): made back without calling ``__init__``."""

    def __init__(self, error: BaseException) -> None:
        self.kind, self.args, self.state = type(error), error.args, dict(vars(error))

    def error(self) -> BaseException:
        new = self.kind.__new__(self.kind, *self.args)
        new.args = self.args
        vars(new).update(self.state)
        return new


def _unpickled(payload: bytes) -> BaseException:
    back = pickle.loads(payload)
    return back.error() if isinstance(back, _ByState) else back


def _pickles(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - any failure to pickle
        return False
    return True


def _pickled(error: BaseException) -> bytes | None:
    """``error`` pickled (as itself, else as :class:`_ByState`) if it comes back of its type with its message."""
    for form in (error, _ByState(error)):
        try:
            payload = pickle.dumps(form)
            back = _unpickled(payload)
            if type(back) is type(error) and str(back) == str(error):
                return payload
        except Exception:  # noqa: BLE001, S110 - any failure to pickle or rebuild: the next form, or none
            pass
    return None


def _carrying(fn: Callable[[Any], Any], arg: Any, what: str | Callable[[], str]) -> Any:
    """``fn(arg)``; in a worker, an error it raises that pickles is returned as a :class:`WorkerError` (a
    ``StopIteration``: a RuntimeError naming ``what``), and so is a SystemExit, GeneratorExit or (the worker
    ignoring SIGINT: not the terminal's Ctrl-C) KeyboardInterrupt."""
    try:
        with RefuseStopIteration(what):
            return fn(arg)
    except BaseException as e:
        if not _carries(e) or (carried := WorkerError.of(e)) is None:
            raise
        return carried


def _carries(error: BaseException) -> bool:
    """Whether ``error`` is sent to the main process: a KeyboardInterrupt only where SIGINT is ignored (in a worker
    that takes SIGINT it may be a Ctrl-C, which the main process received too and handles itself)."""
    return not isinstance(error, KeyboardInterrupt) or signal.getsignal(signal.SIGINT) is signal.SIG_IGN


class _CarryingDataset(Dataset):
    """``dataset`` whose error in a worker becomes a :class:`WorkerError` in place of the batch's rows."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, keys: list[Any]) -> Any:
        return _carrying(self._rows, keys, lambda: f"the dataset, reading rows {keys}")

    def _rows(self, keys: list[Any]) -> list[Any]:
        many = getattr(self.dataset, "__getitems__", None)
        return many(keys) if many else [self.dataset[k] for k in keys]

    def __getitem__(self, key: Any) -> Any:
        return _carrying(self.dataset.__getitem__, key, lambda: f"the dataset, reading row {key!r}")


class _CarryingCollate:
    """``collate`` passing a :class:`WorkerError` on, and whose own error in a worker becomes one."""

    def __init__(self, collate: Callable[[Any], Any]) -> None:
        self.collate = collate

    def __call__(self, rows: Any) -> Any:
        return rows if isinstance(rows, WorkerError) else _carrying(self.collate, rows, "the collate function")


def carry_errors(dataset: Dataset, collate: Callable[[Any], Any]) -> tuple[Dataset, Callable[[Any], Any]]:
    """``(dataset, collate_fn)`` for a ``DataLoader`` (with a batch size or batch sampler) whose workers send their
    errors as :class:`WorkerError` batches, which :func:`worker_errors_unwrapped` raises as the worker raised them."""
    return _CarryingDataset(dataset), _CarryingCollate(collate)


def worker_errors_unwrapped(loader: DataLoader) -> Iterator[Any]:
    """``loader``'s batches; an error a worker raised comes out as with ``--workers 0``: a :class:`WorkerError` batch
    (:func:`carry_errors`) as the error itself, else made back from its message (PyTorch re-raises it as "Caught
    ValueError in DataLoader worker process 0." plus the worker's traceback, which the command line then printed as
    its one-line error); the worker's traceback is its cause either way (the command line's ``error:`` line is the
    message alone; ``--log-level debug`` adds the traceback and its causes)."""
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
            _raise_own(e, it, loader)
            raise
        except Exception as e:
            _raise_own(e, it, loader)
            raise
        if isinstance(batch, WorkerError):
            _shut_down(it, loader)
            raise batch.error() from WorkerTraceback(batch.text)
        yield batch


def _shut_down(it: Any, loader: DataLoader) -> None:
    """Stop ``it``'s workers now: the error's traceback keeps the iterator (and its workers) alive. A loader with
    persistent workers forgets it, so that its next epoch starts new workers (it reused the closed queues)."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if getattr(loader, "_iterator", None) is it:
        loader._iterator = None


def _raise_own(e: Exception, it: Any, loader: DataLoader) -> None:
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
    _shut_down(it, loader)
    raise new from WorkerTraceback(text)   # as a carried one (--log-level debug shows the traceback)


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
