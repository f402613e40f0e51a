"""Signal handlers set for a while (``stop_at_step_boundary``, ``terminate_raises``, atomic_dir's held signals) are
put back whole, whenever a signal comes: Python runs a handler between any two bytecodes of the main thread, the
lines that set or put back the handlers included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mtl_lora_vl.io import atomic as atomic_mod
from mtl_lora_vl.io.atomic import atomic_dir
from mtl_lora_vl.training.stopping import stop_at_step_boundary

_REAL_SIGNAL = signal.signal


class _Interrupt(KeyboardInterrupt):
    """What the test's handlers raise (a KeyboardInterrupt, as Ctrl-C's and SIGTERM's ``Terminated`` are)."""


@pytest.fixture
def handlers():
    """The test's own SIGINT and SIGTERM handlers (they note the signal and raise :class:`_Interrupt`), put back after
    with the real ``signal.signal`` (the tests patch it); yields (handlers by signal, the signals they saw)."""
    seen = []

    def handler(signum, frame):
        seen.append(signum)
        raise _Interrupt(signal.Signals(signum).name)

    before = {s: _REAL_SIGNAL(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield dict.fromkeys(before, handler), seen
    finally:
        for s, h in before.items():
            _REAL_SIGNAL(s, h)


def _a_signal_when(monkeypatch, set_to, sent):
    """Patch ``signal.signal``: once a handler that ``set_to(signum, handler)`` picks is set, ``sent`` comes (once)."""
    came = []

    def signal_then(signum, handler):
        previous = _REAL_SIGNAL(signum, handler)
        if not came and set_to(signum, handler):
            came.append(sent)
            signal.raise_signal(sent)
        return previous

    monkeypatch.setattr(signal, "signal", signal_then)
    return came


def test_a_ctrl_c_as_the_held_signals_handlers_are_put_back_leaves_no_holder_and_loses_no_signal(
        tmp_path, monkeypatch, handlers):
    """Helper 473: a SIGTERM held over atomic_dir's renames, then a Ctrl-C just after SIGINT's handler was put back
    (before SIGTERM's): the Ctrl-C's KeyboardInterrupt cut the put-back, so SIGTERM's holder stayed set for good (every
    later SIGTERM noted in a list no one reads: the process could no longer be terminated) and the held SIGTERM was
    never delivered. Now the held one is delivered first, then the Ctrl-C, and both handlers are back."""
    mine, seen = handlers
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(src) == target:   # the old one moved aside: a SIGTERM, held
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(atomic_mod.os, "replace", replace)
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)
    came = _a_signal_when(monkeypatch, lambda s, h: s == signal.SIGINT and h is mine[s], signal.SIGINT)
    with pytest.raises(_Interrupt):
        with atomic_dir(target, overwrite=True) as d:
            (d / "new").write_text("new")
    assert came == [signal.SIGINT]
    assert {s: signal.getsignal(s) for s in mine} == mine
    assert seen == [signal.SIGTERM, signal.SIGINT]
    assert [p.name for p in target.iterdir()] == ["new"]


def test_a_ctrl_c_as_the_loops_handlers_are_put_back_leaves_sigterms_back_too(monkeypatch, handlers):
    """Helper 473: a Ctrl-C just after ``stop_at_step_boundary`` put SIGINT's handler back cut the put-back of
    SIGTERM's: the loop's StopRequest stayed SIGTERM's handler after the loop (a SIGTERM then only noted, the final
    evaluation and the clean-up not ended by it)."""
    mine, seen = handlers
    came = _a_signal_when(monkeypatch, lambda s, h: s == signal.SIGINT and h is mine[s], signal.SIGINT)
    with pytest.raises(_Interrupt):
        with stop_at_step_boundary():
            pass
    assert came == [signal.SIGINT] and seen == [signal.SIGINT]
    assert {s: signal.getsignal(s) for s in mine} == mine


def test_a_sigterm_as_the_loops_handlers_are_set_leaves_sigints_as_it_was(monkeypatch, handlers):
    """Helper 473: a SIGTERM just after ``stop_at_step_boundary`` set SIGINT's handler (before SIGTERM's) raised
    before its ``try``: the StopRequest stayed SIGINT's handler for good, so every later Ctrl-C in the process (a
    notebook's, the caller's) only logged "stopping after this step"."""
    mine, seen = handlers
    came = _a_signal_when(monkeypatch, lambda s, h: s == signal.SIGINT and h is not mine[s], signal.SIGTERM)
    with pytest.raises(_Interrupt):
        with stop_at_step_boundary():
            pytest.fail("the SIGTERM came before the block")
    assert came == [signal.SIGTERM] and seen == [signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in mine} == mine


@pytest.mark.parametrize("ignored", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_the_process_ignores_stays_ignored_in_and_out_of_the_loop(ignored, handlers):
    """Helper 473: a stop signal the process ignores (SIG_IGN: a shell starts a background job ``cmd &`` with SIGINT
    ignored, so that the script's Ctrl-C does not reach it; a caller's own ``signal.signal(SIGTERM, SIG_IGN)``) was
    replaced by ``stop_at_step_boundary``'s StopRequest and ``terminate_raises``' handler: that Ctrl-C stopped a
    background training run, a SIGTERM raised Terminated. Python itself leaves an ignored SIGINT ignored; so do they
    now. The other signal is still theirs."""
    from mtl_lora_vl.training.stopping import StopRequest, Terminated, terminate_raises

    mine, seen = handlers
    _REAL_SIGNAL(ignored, signal.SIG_IGN)
    other = ({signal.SIGINT, signal.SIGTERM} - {ignored}).pop()
    with stop_at_step_boundary() as request:
        assert signal.getsignal(ignored) is signal.SIG_IGN and isinstance(signal.getsignal(other), StopRequest)
        signal.raise_signal(ignored)
    assert request.signum == 0
    with terminate_raises():
        if ignored == signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)   # ignored: nothing raised
        else:
            with pytest.raises(Terminated):
                signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(ignored) is signal.SIG_IGN and signal.getsignal(other) is mine[other] and seen == []


def test_a_handler_not_set_from_python_is_left_as_it_is(monkeypatch, handlers):
    """Helper 473: where ``signal.getsignal`` says None (a handler a C program that embeds Python set before it
    started: Python cannot put it back), ``terminate_raises`` replaced it and then raised TypeError on exit
    (``signal.signal(SIGTERM, None)``), over whatever the block raised. It is now left as it is, as atomic_dir's
    held signals already left it."""
    from mtl_lora_vl.training.stopping import terminate_raises

    mine, seen = handlers
    real_getsignal = signal.getsignal
    monkeypatch.setattr(signal, "getsignal", lambda s: None if s == signal.SIGTERM else real_getsignal(s))
    with terminate_raises():
        assert real_getsignal(signal.SIGTERM) is mine[signal.SIGTERM]
    assert real_getsignal(signal.SIGTERM) is mine[signal.SIGTERM] and seen == []


def test_many_signals_held_are_each_delivered_without_deep_recursion(tmp_path, monkeypatch, handlers):
    """Helper 473: once a repeated held signal was delivered each time, the delivery recursed once per signal: 1500
    Ctrl-Cs held over the renames (a key held down over a long delete of the old directory) raised RecursionError
    in place of the handlers' own outcome. The delivery is a loop."""
    seen = []
    for s in (signal.SIGINT, signal.SIGTERM):
        _REAL_SIGNAL(s, lambda signum, frame: seen.append(signum))
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(src) == target:
            for _ in range(1500):
                signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(atomic_mod.os, "replace", replace)
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)
    with atomic_dir(target, overwrite=True) as d:
        (d / "new").write_text("new")
    assert seen == [signal.SIGINT] * 1500 + [signal.SIGTERM]
    assert [p.name for p in target.iterdir()] == ["new"]


def test_off_the_main_thread_nothing_is_set_or_held(tmp_path, handlers):
    """The package used from a worker thread (a notebook's executor, a thread pool): ``signal.signal`` raises
    ValueError there, so the stop contexts and atomic_dir's held signals set nothing; the writes are done and the
    main thread's handlers are untouched."""
    from mtl_lora_vl.training.stopping import stop_signals_ignored, terminate_raises

    mine, seen = handlers
    done, raised = [], []

    def work():
        try:
            with terminate_raises(), stop_at_step_boundary() as request, stop_signals_ignored():
                for i in range(2):
                    with atomic_dir(tmp_path / "t", overwrite=True) as d:
                        (d / "x").write_text(str(i))
            done.append(request.signum)
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert raised == [] and done == [0]
    assert (tmp_path / "t" / "x").read_text() == "1"
    assert {s: signal.getsignal(s) for s in mine} == mine and seen == []


def _signals_pending_when(monkeypatch, set_to, sent, times):
    """Patch ``signal.signal``: the first ``times`` calls that set a handler ``set_to(signum, handler)`` picks find
    ``sent`` pending, as CPython's ``signal.signal`` does: it runs the handlers of the signals pending before it sets,
    and sets nothing when one raises."""
    came = []

    def pending_then_set(signum, handler):
        if len(came) < times and set_to(signum, handler):
            came.append(sent)
            signal.raise_signal(sent)   # the handler now set runs; what it raises leaves ``handler`` unset
        return _REAL_SIGNAL(signum, handler)

    monkeypatch.setattr(signal, "signal", pending_then_set)
    return came


def test_three_sigterms_as_terminate_raises_puts_sigterms_handler_back_do_not_leave_it_set(monkeypatch, handlers):
    """Helper 479: the put-back gave a handler up after three tries, and a try that a signal cut before it set (one
    pending as ``signal.signal`` is called) counted as one: three SIGTERMs there (each raising ``Terminated``) left
    ``terminate_raises``' handler SIGTERM's for good, with nothing said. What a signal's handler raises to stop the
    program (KeyboardInterrupt, Terminated, SystemExit) is not counted: the handler is set again until it is."""
    from mtl_lora_vl.training.stopping import Terminated, terminate_raises

    mine, seen = handlers
    came = _signals_pending_when(monkeypatch, lambda s, h: s == signal.SIGTERM and h is mine[s], signal.SIGTERM, 3)
    with pytest.raises(Terminated) as raised:
        with terminate_raises():
            pass
    assert came == [signal.SIGTERM] * 3 and seen == []
    assert type(raised.value.__context__) is Terminated   # the three chained, the last one raised
    assert {s: signal.getsignal(s) for s in mine} == mine


def test_three_ctrl_cs_as_the_held_signals_handlers_are_put_back_leave_no_holder(tmp_path, monkeypatch, handlers):
    """Helper 479: the same give-up in atomic_dir's put-back: SIGINT's handler back, then three Ctrl-Cs pending as
    SIGTERM's is put back (each raising from SIGINT's handler) left SIGTERM's holder set for good: every later SIGTERM
    noted in a list no one reads, the process no longer terminated by it."""
    mine, seen = handlers
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)
    came = _signals_pending_when(monkeypatch, lambda s, h: s == signal.SIGTERM and h is mine[s], signal.SIGINT, 3)
    with pytest.raises(_Interrupt):
        with atomic_dir(target, overwrite=True) as d:
            (d / "new").write_text("new")
    assert came == [signal.SIGINT] * 3 and seen == [signal.SIGINT] * 3
    assert {s: signal.getsignal(s) for s in mine} == mine
    assert [p.name for p in target.iterdir()] == ["new"]


def test_an_error_of_signal_signals_own_is_raised_after_three_tries_not_retried_for_ever(monkeypatch, handlers):
    """The put-back's bound on errors that are not a signal's (``signal.signal``'s ValueError in a sub-interpreter):
    three, then that error is raised (the tries counted here; a tenth ends the test rather than loop)."""
    from mtl_lora_vl.training.stopping import terminate_raises

    mine, seen = handlers
    tries = []

    def refusing(signum, handler):
        if handler is mine[signum]:
            tries.append(signum)
            if len(tries) == 10:
                raise _Interrupt("retried for ever")
            raise ValueError("signal only works in main thread of the main interpreter")
        return _REAL_SIGNAL(signum, handler)

    monkeypatch.setattr(signal, "signal", refusing)
    with pytest.raises(ValueError, match="main interpreter"):
        with terminate_raises():
            pass
    assert tries == [signal.SIGTERM] * 3 and seen == []
    _REAL_SIGNAL(signal.SIGTERM, mine[signal.SIGTERM])   # (left by the give-up; the fixture puts it back too)


def test_the_suite_and_its_runs_see_stop_signals_as_from_a_terminal():
    """conftest's ``pytest_configure``: pytest started with SIGINT / SIGTERM ignored (a background job of a script)
    would make every test that sends them to a run see nothing happen; a child process started from here gets them
    as from a terminal too (an ignored signal stays ignored across exec)."""
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    probe = ("import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
             "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


_EMBEDDING = """
import signal, sys

import pytest

def mine(signum, frame):
    pass

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, mine)
rc = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "stop_signals", "--rootdir", sys.argv[1], sys.argv[2]])
print("after:", rc, signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is mine,
      "torch" in sys.modules)
"""


def test_a_program_running_pytest_gets_its_signal_handlers_back(tmp_path):
    """Helper 498: ``pytest_configure`` set an ignored SIGINT / SIGTERM to the default for the suite and left it so:
    a Python program that ran ``pytest.main`` with SIGINT ignored (or its own SIGTERM handler) lost it for the rest of
    its life. ``pytest_unconfigure`` now puts back what it found; during the session both are as from a terminal,
    whatever they were (so the tests that send them need no fixture setting them). The child takes the two hooks
    from ``stop_signals`` (what conftest takes them from), not conftest itself, which imports torch (~7-20 s)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_during.py").write_text(
        "import signal\n\n\ndef test_during():\n"
        "    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    out = subprocess.run([sys.executable, "-c", _EMBEDDING, str(tmp_path), str(tmp_path / "test_during.py")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert "1 passed" in out.stdout, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "after: 0 True True False", out.stdout + out.stderr   # (no torch: quick)
