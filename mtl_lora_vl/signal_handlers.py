"""Signal handlers set for a while and put back whole (:func:`handlers_set`), and SIGINT / SIGTERM held over a few
renames (:func:`signals_held`).

Python runs a signal's handler in the main thread between any two bytecodes, so a handler that raises (Ctrl-C's
KeyboardInterrupt, ``terminate_raises``' ``Terminated``) can cut the lines that set or put back several handlers:
one left set is set for good (a SIGTERM only noted where it should end the process, a Ctrl-C only logged). Here a
handler is noted before it is replaced, and the put-back goes on past such an exception, which is raised after it.
Only the main thread can set handlers (``signal.signal`` raises ValueError elsewhere): in any other thread (a
notebook's executor, a worker thread) nothing is set or held, and the code runs as it would unguarded.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["HELD", "handlers_set", "signals_held"]

#: The signals :func:`signals_held` holds.
HELD = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handlers_set(handlers: Mapping[int, Any]) -> Iterator[None]:
    """While open (main thread), ``handlers`` (signal -> handler) replace the process's, put back on exit (all of
    them, even where a signal comes meanwhile). A signal the process ignores (SIG_IGN: a shell's background job
    ``cmd &`` ignores SIGINT, so that the script's Ctrl-C does not reach it) stays ignored, as Python itself leaves
    it, and a handler not set from Python (``getsignal``'s None, which ``signal.signal`` cannot put back) is left as
    it is. Off the main thread nothing is set."""
    if not _main_thread():
        yield
        return
    old: dict[int, Any] = {}
    try:
        for s, handler in handlers.items():
            current = signal.getsignal(s)
            if current is None or current is signal.SIG_IGN:
                continue
            old[s] = current   # noted first: a signal right after the next line still finds it put back
            signal.signal(s, handler)
        yield
    finally:
        _put_back(old)


def _put_back(old: Mapping[int, Any]) -> None:
    """Set ``old`` (signal -> handler) again, every one of them, whatever signals come meanwhile: a handler put back
    already that raises (its signal came) does not stop the rest, and a set that a signal cut (CPython's
    ``signal.signal`` runs the handlers of the signals pending before it sets, and sets nothing when one raises) is
    tried again until the handler is set; what they raised is raised once all are back, the last one, the earlier
    chained in it. Only an ``Exception`` can be ``signal.signal``'s own error (ValueError in a sub-interpreter, where
    no handler can be set): three of those and the rest is left, that error raised, not retried for ever. What a
    handler raises to stop the program (KeyboardInterrupt: Ctrl-C's, ``Terminated``; SystemExit: ``sys.exit`` in a
    SIGTERM handler) is a signal's, and never counted: a few of them must not leave a holder or the loop's handler set
    for good."""
    left, error, own_errors = dict(old), None, 0
    while left:
        try:
            while left:
                s, handler = next(iter(left.items()))
                if signal.getsignal(s) is not handler:   # (not set yet, or a signal cut the set)
                    signal.signal(s, handler)
                del left[s]
        except BaseException as e:
            error = _after(e, error)
            if isinstance(e, Exception):
                own_errors += 1
                if own_errors >= 3:
                    break
    if error is not None:
        raise error


def _after(e: BaseException, earlier: BaseException | None) -> BaseException:
    """``e``, chained after ``earlier`` (as Python chains one raised in an ``except``): the last raised is the one
    that propagates, the earlier ones in its ``__context__``."""
    if earlier is not None and e is not earlier:
        e.__context__ = earlier
    return e


@contextmanager
def signals_held() -> Iterator[None]:
    """While open (main thread), SIGINT and SIGTERM wait: each is delivered to its own handler as the block ends
    (what that handler raises comes from there), so the block's renames are never cut between two of them. They come
    in the order they arrived, each as often as it came, as unheld they would have: inside the training loop a Ctrl-C
    then a SIGTERM stop it cleanly at the next step (a SIGTERM then a Ctrl-C abort it, and so do two Ctrl-Cs), and
    each later one is delivered even where an earlier one's handler raises: with the default handlers a Ctrl-C then a
    SIGTERM end the process as the SIGTERM does (exit 143). One that comes while they are delivered waits its turn
    (the holder stays set until none is left), and the handlers are put back whole. A signal ignored (SIG_IGN) stays
    ignored, and one whose handler was not set from Python (``getsignal``'s None: it could not be put back) is left
    as it is. Off the main thread nothing is held: Python runs a signal's handler in the main thread, so what it
    raises does not cut this thread's renames, but a SIGTERM with the default handler (the process killed) between
    them leaves what a SIGKILL there would."""
    if not _main_thread():
        yield
        return
    got: list[int] = []   # the signals as they arrived
    old: dict[int, Any] = {}
    try:
        for s in HELD:
            handler = signal.getsignal(s)
            if handler is None or handler is signal.SIG_IGN:
                continue
            old[s] = handler
            signal.signal(s, lambda signum, frame: got.append(signum))
        yield
    finally:
        try:
            _deliver(got, old)   # (the holders still set: one that comes meanwhile joins ``got``)
        finally:
            try:
                _put_back(old)
            finally:
                _deliver(got, old)   # one that came between the last delivery and the put-back


def _deliver(got: list[int], handlers: Mapping[int, Any]) -> None:
    """Run each signal's handler in ``got``, first come first, until none is left (``got`` may grow meanwhile): an
    exception from one handler (a Ctrl-C's KeyboardInterrupt) does not lose the next signal (a SIGTERM whose default
    handler kills the process); the last one raised propagates, the earlier ones chained in it."""
    error = None
    while got:
        try:
            while got:
                _run(got.pop(0), handlers)
        except BaseException as e:
            error = _after(e, error)
    if error is not None:
        raise error


def _run(signum: int, handlers: Mapping[int, Any]) -> None:
    """Deliver ``signum`` to its handler in ``handlers``: called as Python calls it, or, the default one (SIG_DFL),
    the signal raised again with it set: the process ends as the signal ends it."""
    handler = handlers[signum]
    if handler is signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    elif callable(handler):
        handler(signum, sys._getframe(1))
