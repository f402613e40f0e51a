"""Stopping a training run cleanly: Ctrl-C or SIGTERM stops it at the next step boundary, after a
checkpoint, and the command exits as the signal would have made it (``--resume`` continues the run).

What each signal does where (exit status; the first event names it, a later SIGTERM never changes it, a later Ctrl-C
aborts). Set-up and final evaluation run under :func:`terminate_raises`; the loop (and its last check) under
:func:`stop_at_step_boundary`; the clean-up after an exception (``start``'s after a failed set-up included: the lock,
``all_ready``; and after a stop or an error in the ``all_ready`` that finds every set-up done or the run directory's
claim: the lock, no second ``all_ready``; then, on every way out of ``start`` once the process group is up, the
process group) under :func:`cleaning_up_after`:

=====================  ==================  =====================  =====================  =======================
case                   set-up              loop                   final evaluation       clean-up after it
=====================  ==================  =====================  =====================  =======================
Ctrl-C                 130                 stop at step, 130      130                    (see the rows below)
SIGTERM                143, one line       stop at step, 143      143, one line          ignored
Ctrl-C, SIGTERM        130                 stop at step, 130      130                    SIGTERM ignored: 130
SIGTERM, Ctrl-C        130 (abort)         abort, 130             130 (abort)            Ctrl-C cuts it: 130
SIGTERM, SIGTERM       143                 stop at step, 143      143                    ignored: 143
error, SIGTERM         (its clean-up)      noted: error           (its clean-up)         ignored: error (2 / 1)
error, Ctrl-C          (its clean-up)      noted: error           (its clean-up)         cut short: error (2/1)
=====================  ==================  =====================  =====================  =======================

("noted": the loop's handler takes it, without a line, as a first stop signal while the error leaves the loop; the
error is reported.)
Between those blocks (a handler being put back, an ``except`` clause's first bytecodes) :func:`first_stop` keeps a
stop's status where a SIGTERM's Terminated cut into it; an error cut there by a SIGTERM still exits 143 (one line).
``run_command`` reports the outcome (an error's line, a stop's status) with SIGTERM ignored
(:class:`TerminateUntilDone`); one ignored there goes on to the caller's Python handler once that is back (an outer
command's, a script's: :func:`terminate_until_done`), not to the default one (the process is exiting with the status);
where an error leaves the command (a bug; any error under ``MTL_LORA_VL_DEBUG=1``) that handler is called with it and
an outer command's ``Terminated`` it raises is dropped: the error stands (raised over it, it exited 143, the bug's
traceback lost); a script's own exception (its ``SystemExit``) goes on, the error its context.
``bench`` reports its outcome the same way.
Not covered: before ``run_command`` (or ``bench``) sets its handler and after it returns, SIGTERM's default (nothing
begun, or the process exiting); as the work ends, until its ``terminate_raises`` has put the handler back, a SIGTERM
is one "between those blocks" (above).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

from ..log import rank_prefix
from ..signal_handlers import handlers_set

__all__ = ["RunStopped", "StopRequest", "TerminateUntilDone", "Terminated", "cleaning_up_after", "first_stop",
           "stop_at_step_boundary", "stop_signals_ignored", "terminate_ignored", "terminate_raises",
           "terminate_until_done"]

logger = logging.getLogger(__name__)


class RunStopped(Exception):
    """Ctrl-C or SIGTERM stopped the run after a step and a checkpoint; ``--resume`` continues it.

    Raised by :func:`train` so that a stopped run is never mistaken for a finished one: the command exits
    ``128 + signal number`` (130 for Ctrl-C, 143 for SIGTERM), as a process the signal had killed would: the signal
    that asked for the stop (:class:`StopRequest`'s first), not a SIGTERM that came after it.
    """

    def __init__(self, run_dir: Path, step: int, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. "
                         f"Continue the run with --resume {run_dir}")
        self.run_dir, self.step, self.signum = run_dir, step, signum

    @property
    def exit_code(self) -> int:
        """The command's exit status: 128 + the signal number."""
        return 128 + self.signum


#: What stops the run at once after a first stop signal, said in that signal's words: a SIGINT (Ctrl-C) does, and
#: only that (a repeated SIGTERM stops at the step boundary too).
_AT_ONCE = {signal.SIGINT: "Ctrl-C again", signal.SIGTERM: "Ctrl-C or kill -INT"}


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop at the next step boundary (the first signal only).

    A signal that interrupted a step half-way (a batch drawn, the weights not yet updated) would leave a
    checkpoint whose loader is one batch ahead of its step; so the first signal only sets ``signum``
    and the loop saves once the step is complete (under DDP every rank stops at the first boundary where
    any rank has a signal). A second Ctrl-C raises ``KeyboardInterrupt`` at once.

    The first signal asked for the stop, and it is the one recorded (the exit status, 128 + its number, and
    :class:`RunStopped`'s message name it, as the stop line did): a SIGTERM after it changes nothing (a scheduler's
    SIGTERM after a Ctrl-C is still given its clean stop, and the run still exits 130), and only a Ctrl-C after it
    escalates, to an abort without saving (exit 130). Ranks that got different first signals stop with the highest
    (SIGTERM's 143): without a common clock it is the one every rank agrees on.
    """

    def __init__(self) -> None:
        self.signum = 0  # 0: no signal yet
        #: An exception (an error) is leaving the loop: a first signal now is noted without a word -- no step is
        #: coming, and the error is what the command reports (its clean-up ignores a SIGTERM, a Ctrl-C cuts it short)
        self.leaving = False

    def __call__(self, signum: int, frame: object) -> None:  # noqa: ARG002
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum:   # a SIGTERM after the first signal: the stop it asked for stands, and so does its name
            return        # (a rank whose torchrun agent died got two SIGTERMs; a scheduler's after a Ctrl-C)
        self.signum = signum
        if self.leaving:   # (it said "stopping after this step", then the error came instead of a stop)
            return
        # each rank says the signal it got (one rank alone may get it): "rank 1: SIGTERM: ..." under torchrun
        # what stops it at once, in the words of the signal that came: "Ctrl-C again" read wrong after a
        # SIGTERM (a scheduler's or kill's; a second SIGTERM only stops at the step too)
        logger.warning("%s%s: stopping after this step (%s to stop at once, without saving)",
                       rank_prefix(), signal.Signals(signum).name, _AT_ONCE.get(signum, "Ctrl-C"))


@contextlib.contextmanager
def stop_at_step_boundary() -> Iterator[StopRequest]:
    """While open, SIGINT and SIGTERM set the yielded request instead of interrupting (main thread only:
    Python delivers signals there, and only there can handlers be set; one the process ignores stays ignored)."""
    request = StopRequest()
    with handlers_set(dict.fromkeys((signal.SIGINT, signal.SIGTERM), request)):
        try:
            yield request
        except BaseException:   # an error leaving the block: a signal while the handlers are put back is only noted
            request.leaving = True
            raise


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the loop's step boundaries (set-up, final evaluation): it ends the run as Ctrl-C does, its
    clean-up included, and the command exits 143."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:  # noqa: ARG001
    raise Terminated


class TerminateUntilDone:
    """A command's SIGTERM handler (``run_command``'s, ``bench``'s; set by :func:`terminate_until_done`):
    :class:`Terminated` as its work runs, ignored once ``done`` is set -- as the work ends, however it ends -- so
    that its outcome (an error's line and status, a stop's status, 0) is reported whole; the default handler, put back
    as the command returns, had killed the process there (143, without the error's line, over a Ctrl-C's 130). One
    that comes before the work begins (the command's logging being set up) waits for it (``waiting``): the work is
    stopped as it begins, inside the ``try`` that reports it (raised where it came, it escaped the command: a
    traceback, exit 1). One ignored is noted (``ignored``), for the handler put back after it."""

    def __init__(self) -> None:
        self.done = False
        self.waiting = False
        self.ignored = False

    def __call__(self, signum: int, frame: object) -> None:  # noqa: ARG002
        if self.done:
            self.ignored = True
        else:   # (while the work runs its terminate_raises is the handler: here it has not begun, or is beginning)
            self.waiting = True

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """The command's work: under :func:`terminate_raises`, and ``done`` once it ends, however it ends; a SIGTERM
        that came before it (``waiting``) stops it at once (:class:`Terminated`)."""
        with terminate_raises():
            try:
                if self.waiting:   # (checked once terminate_raises is set: one that came as it was set is seen)
                    self.waiting = False
                    raise Terminated
                yield
            finally:
                self.done = True


@contextlib.contextmanager
def terminate_until_done() -> Iterator[TerminateUntilDone]:
    """While open (main thread), a :class:`TerminateUntilDone` is SIGTERM's handler (the command runs its work under
    its ``working()``, and reports the outcome after). A SIGTERM it ignored is sent again once the handler before it
    is back, where that is a Python handler: the caller's own (a script that stops its loop of commands on SIGTERM),
    an outer command's (``run_command`` called inside another's work, whose ``terminate_raises`` stops it: 143) --
    there the ignored SIGTERM was lost, and the caller went on as if none had come. With the default handler the
    process is about to exit with the command's status: not sent again (it would kill it, -15, over that status).

    Where an exception leaves the command (a bug, any error under ``MTL_LORA_VL_DEBUG=1``), it stands, as in every
    clean-up after an error: the handler is called with the SIGTERM (a script's that notes it still sees it), and an
    outer command's ``Terminated`` it raises is dropped. Sent again, that ``Terminated`` was raised over the error:
    the outer command exited 143 and the bug's traceback was lost. Anything else a script's own handler raises (its
    ``SystemExit``) goes on, the error as its context: the script asked to stop there."""
    sigterm = TerminateUntilDone()
    try:
        with handlers_set({signal.SIGTERM: sigterm}):
            yield sigterm
    except BaseException as leaving:
        if sigterm.ignored or sigterm.waiting:   # (``waiting``: the work never began, its set-up failed)
            _given_while_leaving(leaving)
        raise
    if (sigterm.ignored or sigterm.waiting) and callable(signal.getsignal(signal.SIGTERM)):
        signal.raise_signal(signal.SIGTERM)


def _given_while_leaving(leaving: BaseException) -> None:
    """The SIGTERM a command ignored, given to the Python handler put back (if any) while ``leaving`` leaves the
    command: an outer command's ``Terminated`` it raises does not replace it; a script's own exception goes on."""
    handler = signal.getsignal(signal.SIGTERM)
    if not callable(handler):
        return
    try:
        handler(signal.SIGTERM, None)
    except Terminated as e:   # (an outer command's terminate_raises; the error stands, see the table)
        logger.debug("%sSIGTERM as %s left the command: %r dropped (the error stands)", rank_prefix(),
                     type(leaving).__name__, e)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While open (main thread), SIGTERM raises :class:`Terminated` instead of killing the process at once: the
    run's clean-up runs. Under torchrun a rank that fails gets the others SIGTERMed; rank 0, killed outright, left
    the run ``--overwrite`` replaced set aside in ``.RUN.replaced``, the new run's directory in its place.

    A SIGTERM during the clean-up of a stop (:class:`RunStopped`, or a Ctrl-C's ``KeyboardInterrupt``: a scheduler's
    SIGTERM after the user's Ctrl-C) changes nothing, as in the loop: the stop goes on as the first signal asked, and
    the command exits with its status (130), not SIGTERM's."""
    with handlers_set({signal.SIGTERM: _raise_terminated}):
        try:
            yield
        except Terminated as e:
            first = first_stop(e)
            if first is e:
                raise
            raise first from None


def first_stop(error: BaseException) -> BaseException:
    """The stop ``error`` (a :class:`Terminated`) cut into: the oldest of the stops (:class:`RunStopped`,
    ``KeyboardInterrupt``) it was raised during the handling of, one after the other; ``error`` itself where it was
    raised during none (or during an error's clean-up: that error is not a stop)."""
    first, before = error, error.__context__
    while isinstance(before, (RunStopped, KeyboardInterrupt)):
        first, before = before, before.__context__
    return first


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """While open (main thread), SIGINT and SIGTERM are ignored: a clean-up that puts the run ``--overwrite``
    replaced back is not cut half-way (torchrun's SIGTERM to the other ranks races a failed rank's own clean-up)."""
    with handlers_set(dict.fromkeys((signal.SIGINT, signal.SIGTERM), signal.SIG_IGN)):
        yield


@contextlib.contextmanager
def terminate_ignored() -> Iterator[None]:
    """While open (main thread), SIGTERM is ignored: the clean-up after an error or a stop (the loader's workers, the
    run's lock, the process group) runs whole, and what ended the run stays what the command reports. There a SIGTERM
    (torchrun's to the other ranks when one failed, a scheduler's after a Ctrl-C) raised :class:`Terminated` over the
    error, whose message was lost (the command exited 143 without a word), or cut the stop's clean-up short; the run is
    ending already, and a scheduler or torchrun that sent it sends SIGKILL after its grace period. A Ctrl-C still
    raises (the user's own way to stop at once)."""
    with handlers_set({signal.SIGTERM: signal.SIG_IGN}):
        yield


@contextlib.contextmanager
def cleaning_up_after(cause: BaseException) -> Iterator[None]:
    """While open (main thread): the clean-up after ``cause``, an error or a stop, under :func:`terminate_ignored`. A
    Ctrl-C still cuts it short (the user's own way to stop at once), but after an error (an ``Exception`` other than
    :class:`RunStopped`) the error stays what the command reports -- its message and status (2), a bug's traceback --:
    the rest of the clean-up is skipped, one line says so, and ``cause`` goes on (the caller re-raises it). There the
    ``KeyboardInterrupt`` replaced the error, and the command exited 130 without its message. After a stop a Ctrl-C
    escalates it, as in the loop (130)."""
    try:
        with terminate_ignored():
            yield
    except KeyboardInterrupt as e:
        if not isinstance(cause, Exception) or isinstance(cause, RunStopped):
            raise
        logger.warning("%s%s: the clean-up after the error below is cut short", rank_prefix(),
                       "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C")
