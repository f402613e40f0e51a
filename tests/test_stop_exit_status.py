"""The exit status of a training run stopped by signals inside the loop names the signal that asked for the stop (the
first): a SIGTERM after it changes neither the clean stop nor the status, and only a Ctrl-C after it escalates (an
abort, 130). Each case runs in a child process with the two signals as from a terminal, through the commands'
``run_command`` (what turns ``RunStopped`` into the status); the child imports no torch. A SIGTERM in the clean-up
after such a stop (outside the loop) leaves its status too, and one in the clean-up after an error or a stop is
ignored: the clean-up runs whole, and the error (its message, its status) or the stop is what the command reports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_train import small_specs

from mtl_lora_vl import distributed as distributed_module
from mtl_lora_vl.cli import commands, train_main
from mtl_lora_vl.cli.commands import run_command
from mtl_lora_vl.distributed import StartupError
from mtl_lora_vl.rundir import RunDirError
from mtl_lora_vl.training import cleanup as cleanup_module
from mtl_lora_vl.training import train as train_module
from mtl_lora_vl.training.stopping import RunStopped, Terminated

# The loop's part: the signals come inside stop_at_step_boundary, then the loop raises RunStopped with what the
# request recorded (train.py, one process: max_over_ranks of one rank is its own signal).
_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # as from a terminal, however pytest was started
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from pathlib import Path
from mtl_lora_vl.cli.commands import run_command
from mtl_lora_vl.training.stopping import RunStopped, stop_at_step_boundary

def loop():
    with stop_at_step_boundary() as stop:
        for name in sys.argv[1:]:
            signal.raise_signal(getattr(signal, name))
    raise RunStopped(Path("run"), 3, stop.signum)

status = run_command("warning", loop)
print("torch" in sys.modules)
sys.exit(status)
"""


@pytest.mark.parametrize("signals, status, line", [
    (["SIGINT", "SIGTERM"], 130, "SIGINT"),    # was 143: the SIGTERM after the Ctrl-C was recorded over it
    (["SIGINT"], 130, "SIGINT"),
    (["SIGTERM", "SIGTERM"], 143, "SIGTERM"),
    (["SIGTERM", "SIGINT"], 130, "SIGTERM"),   # the Ctrl-C after it escalates: an abort, KeyboardInterrupt's 130
], ids=["INT-TERM", "INT", "TERM-TERM", "TERM-INT"])
def test_the_exit_status_names_the_signal_that_asked_for_the_stop(tmp_path, signals, status, line):
    """Helper 515: a Ctrl-C then a SIGTERM (a scheduler's, after the user's Ctrl-C) stopped cleanly at the step but
    exited 143, and RunStopped said "stopped by SIGTERM", where the stop line had said SIGINT and the Ctrl-C had asked
    for the stop (a wrapper that requeues on 143 requeued a run its user stopped). The first signal is now kept."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _CHILD, *signals], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == status, out.stdout + out.stderr
    stops = [x.split(": stopping")[0].split()[-1] for x in out.stderr.splitlines() if "stopping after this step" in x]
    assert stops == [line], out.stderr
    assert out.stdout.split() == ["False"], out.stdout + out.stderr   # (no torch: quick)


def _stopped_then_terminated(first: BaseException):
    """A ``_train`` stopped by ``first`` whose clean-up (``finally``: the loader, the run's lock, the process group)
    is cut into by a SIGTERM, as a scheduler's after the user's Ctrl-C."""
    def stopped(opts, given):  # noqa: ARG001
        try:
            raise first
        finally:   # (never SIGTERM's default here: it would end pytest)
            assert callable(signal.getsignal(signal.SIGTERM)), "train() no longer handles SIGTERM"
            signal.raise_signal(signal.SIGTERM)
    return stopped


@pytest.mark.parametrize("first, status", [
    (RunStopped(Path("run"), 3, signal.SIGINT), 130),   # was 143: a Ctrl-C's clean stop, the SIGTERM in its clean-up
    (KeyboardInterrupt(), 130),                          # was 143: a Ctrl-C in the final evaluation, then a SIGTERM
    (RunStopped(Path("run"), 3, signal.SIGTERM), 143),
    (ValueError("a failed set-up"), 143),                # an error is not a stop: the SIGTERM ends the run as before
], ids=["INT-stop-TERM", "INT-abort-TERM", "TERM-stop-TERM", "error-TERM"])
def test_a_sigterm_in_the_clean_up_of_a_stop_leaves_its_status(monkeypatch, first, status):
    """Helper 519: inside the loop a SIGTERM after a Ctrl-C changed nothing (exit 130), but outside it, in the run's
    clean-up after that stop (``_train``'s ``finally``, under ``terminate_raises``), the same SIGTERM raised
    Terminated over the RunStopped or KeyboardInterrupt and the command exited 143, a wrapper requeueing the run its
    user had stopped. Now the stop it cut into goes on, with its status."""
    monkeypatch.setattr(train_module, "_train", _stopped_then_terminated(first))
    before = signal.getsignal(signal.SIGTERM)
    assert run_command("warning", train_module.train, None) == status
    assert signal.getsignal(signal.SIGTERM) == before   # (the handler put back)


class _Lock:
    """The run's lock, whose close gets a SIGTERM (torchrun's to a rank when a peer failed, a scheduler's after a
    Ctrl-C): the clean-up after an error or a stop, under ``train``'s ``terminate_raises``."""

    def __init__(self, closed: list[str], signum: int = signal.SIGTERM):
        self.closed, self.signum = closed, signum

    def close(self) -> None:
        assert signal.getsignal(self.signum) is not signal.SIG_DFL   # (it would end pytest)
        signal.raise_signal(self.signum)
        self.closed.append("lock")


def _failing_run(monkeypatch, tmp_path, error: BaseException, signum: int = signal.SIGTERM) -> list[str]:
    """``_train`` as it is, on a run whose optimization fails with ``error`` (the set-up and the loader stubbed: no
    model), ``signum`` sent as its clean-up closes the lock; returns what its clean-up let go, in order."""
    closed: list[str] = []
    info = SimpleNamespace(is_main=True, enabled=False, device=None)
    run = SimpleNamespace(info=info, dir=tmp_path, opts=None, lock=_Lock(closed, signum),
                          setup=SimpleNamespace(model=None),
                          total_steps=1, amp_dtype=None)
    monkeypatch.setattr(train_module, "start", lambda opts, given: run)
    monkeypatch.setattr(train_module, "build_loader", lambda r: SimpleNamespace(close=lambda: closed.append("loader")))

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(train_module, "build_optimization", fails)
    monkeypatch.setattr(cleanup_module, "undo_overwrite", lambda *a: closed.append("undo"))
    monkeypatch.setattr(cleanup_module, "cleanup", lambda i: closed.append("process group"))
    return closed


def test_a_sigterm_in_an_errors_clean_up_leaves_the_error_and_its_message(monkeypatch, tmp_path, capfd):
    """Helper 523: a SIGTERM in the clean-up after an error (torchrun's to every rank once one failed: a rank that
    failed too was in its own clean-up) raised Terminated over it; the command exited 143 and printed nothing, the
    error (here a bad option's) nowhere, the process group and lock left. Now the error stays: its line, its status."""
    closed = _failing_run(monkeypatch, tmp_path, ValueError("--lr -1: give a positive learning rate"))
    before = signal.getsignal(signal.SIGTERM)
    assert run_command("warning", train_module.train, None) == 2
    assert "--lr -1: give a positive learning rate" in capfd.readouterr().err
    assert closed == ["loader", "undo", "loader", "lock", "process group"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_sigterm_in_a_bugs_clean_up_leaves_its_traceback(monkeypatch, tmp_path):
    """As above for an unexpected error (a bug, not one line): it propagates with its traceback (exit 1), not 143."""
    _failing_run(monkeypatch, tmp_path, TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        run_command("warning", train_module.train, None)


@pytest.mark.parametrize("first, status", [
    (RunStopped(Path("run"), 3, signal.SIGINT), 130),
    (KeyboardInterrupt(), 130),
    (RunStopped(Path("run"), 3, signal.SIGTERM), 143),
], ids=["INT-stop", "INT-abort", "TERM-stop"])
def test_a_sigterm_in_a_stops_clean_up_does_not_cut_it_short(monkeypatch, tmp_path, first, status):
    """Helper 523: 62e05fd kept the stop's status when a SIGTERM came in its clean-up, but the Terminated still cut
    the clean-up short: the lock's close and the process group's teardown were skipped. The SIGTERM is now ignored
    there (the run is stopping already; a scheduler sends SIGKILL after its grace period)."""
    closed = _failing_run(monkeypatch, tmp_path, first)
    assert run_command("warning", train_module.train, None) == status
    assert closed == ["loader", "undo", "loader", "lock", "process group"]


def _failed_set_up(monkeypatch, tmp_path, where: str, signum: int = signal.SIGTERM,
                   stopped_by: int | None = None) -> list[str]:
    """``start`` as it is, on a resumed run whose set-up (``prepare_rank``) fails with a bad option's error, ``signum``
    sent in its clean-up: as the run's lock closes (``where="lock"``) or in ``all_ready`` (``"all_ready"``: under
    torchrun a collective, where torchrun's SIGTERM to every rank once one failed finds the others waiting); any other
    ``where``: no signal there. ``stopped_by``: the set-up is stopped by that signal, sent in it, instead of failing."""
    closed: list[str] = []
    info = SimpleNamespace(rank=0, enabled=False, is_main=True, world_size=1, device=None)
    monkeypatch.setattr(train_module, "choose_run_dir", lambda opts: tmp_path)
    monkeypatch.setattr(train_module, "resumed_options", lambda run_dir, opts, given: opts)
    monkeypatch.setattr(train_module, "init_distributed", lambda device: info)
    monkeypatch.setattr(train_module, "check_workers", lambda workers, i: None)
    lock = _Lock(closed, signum) if where == "lock" else SimpleNamespace(close=lambda: closed.append("lock"))
    monkeypatch.setattr(train_module, "hold_run_dir", lambda run_dir, i: lock)

    def fails(*args):
        if stopped_by is not None:
            assert signal.getsignal(stopped_by) is not signal.SIG_DFL   # (it would end pytest)
            signal.raise_signal(stopped_by)
        raise ValueError("--resume: the run's checkpoint is unreadable; start a new run")

    monkeypatch.setattr(train_module, "prepare_rank", fails)
    real_all_ready = train_module.all_ready

    def all_ready(i, error=None):
        if where == "all_ready" and error is not None:
            assert signal.getsignal(signum) is not signal.SIG_DFL   # (it would end pytest)
            signal.raise_signal(signum)
        closed.append("all_ready")
        real_all_ready(i, error)

    monkeypatch.setattr(train_module, "all_ready", all_ready)
    return closed


@pytest.mark.parametrize("where", ["lock", "all_ready"])
def test_a_sigterm_after_a_failed_set_up_leaves_the_error_and_its_message(monkeypatch, tmp_path, capfd, where):
    """Helper 534: in ``start`` the clean-up after a failed set-up (the lock's close, ``all_ready``: under torchrun a
    collective, as torchrun SIGTERMs every rank once one failed) ran under ``train``'s ``terminate_raises`` alone: a
    SIGTERM there raised Terminated over the error, and the command exited 143 with "SIGTERM: stopped at once" and
    not the error's message. As in every other clean-up after an error, the SIGTERM is now ignored: the clean-up runs
    whole, and the error is what the command reports (its line, status 2)."""
    opts = SimpleNamespace(resume=True, validate=lambda: None, device="cpu", workers=0)
    closed = _failed_set_up(monkeypatch, tmp_path, where)
    before = signal.getsignal(signal.SIGTERM)
    assert run_command("warning", train_module.train, opts) == 2
    assert capfd.readouterr().err.splitlines() == [
        "[mtl-lora-vl] error: --resume: the run's checkpoint is unreadable; start a new run"]
    assert closed == ["lock", "all_ready"]
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("stopped_by, stop", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_set_up_stopped_by_a_signal_lets_the_resumed_run_s_lock_go(monkeypatch, tmp_path, stopped_by, stop):
    """Helper 543: ``start`` closed a resumed run's lock after a failed set-up only for an ``Exception``: a Ctrl-C or
    a SIGTERM (``Terminated``) in ``prepare_rank`` left it held -- the command line's process exits and the system
    lets go of it, but ``train()`` called from Python (a notebook) kept the run locked, and a second ``--resume`` of it
    in the same process was refused as "a run is training in it now". The stop now closes it (and ``all_ready`` tells
    the other ranks) before it goes on; the SIGTERM handler is back as it was."""
    opts = SimpleNamespace(resume=True, validate=lambda: None, device="cpu", workers=0)
    closed = _failed_set_up(monkeypatch, tmp_path, "nowhere", stopped_by=stopped_by)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(stop) as raised:
        train_module.train(opts)
    assert type(raised.value) is stop
    assert closed == ["lock", "all_ready"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_ctrl_c_after_a_failed_set_up_leaves_the_error(monkeypatch, tmp_path, capfd):
    """A Ctrl-C there cuts the clean-up short, and the error is still what the command reports (as in ``_train``'s)."""
    opts = SimpleNamespace(resume=True, validate=lambda: None, device="cpu", workers=0)
    closed = _failed_set_up(monkeypatch, tmp_path, "lock", signal.SIGINT)
    assert run_command("warning", train_module.train, opts) == 2
    assert capfd.readouterr().err.splitlines() == [
        "[mtl-lora-vl] warning: Ctrl-C: the clean-up after the error below is cut short",
        "[mtl-lora-vl] error: --resume: the run's checkpoint is unreadable; start a new run"]
    assert closed == []   # (cut at the lock: all_ready skipped)


def _signals_at_the_last_check(monkeypatch, tmp_path, before: list[int], during: int) -> int:
    """``train`` (the built-in backbone, 2 steps) with ``before`` sent as its last checkpoint is saved (the signals
    of its last step), and ``during`` as the last "was there a signal" check after the loop runs; its exit status."""
    real_save, real_max = train_module.save_training_checkpoint, train_module.max_over_ranks
    sent = []

    def save(*args, **kwargs):
        real_save(*args, **kwargs)
        for s in before:
            signal.raise_signal(s)
        sent.append("saved")

    def check(value, info):
        if sent:   # the check after the last step's checkpoint (the loop's own come before it)
            signal.raise_signal(during)
        return real_max(value, info)

    monkeypatch.setattr(train_module, "save_training_checkpoint", save)
    monkeypatch.setattr(train_module, "max_over_ranks", check)
    args = ["--tasks", small_specs(tmp_path), "--steps", "2", "--batch-size", "8", "--workers", "0", "--warmup", "0",
            "--save-every", "100", "--skip-zero-shot", "--out", str(tmp_path / "run"), "-q"]
    return train_main(args)


def test_a_sigterm_at_the_last_check_after_a_ctrl_c_leaves_its_status(monkeypatch, tmp_path):
    """Helper 523: the last check after the loop ran once the loop's handlers were put back: a Ctrl-C in the last
    step then a SIGTERM there (a scheduler's after it; under torchrun the check is a collective, waiting for every
    rank) raised Terminated before the check read the Ctrl-C, and the run exited 143. The check is now inside the
    loop's handlers, and the SIGTERM changes nothing, as anywhere in the loop."""
    assert _signals_at_the_last_check(monkeypatch, tmp_path, [signal.SIGINT], signal.SIGTERM) == 130


def test_a_first_sigterm_during_the_last_check_is_not_lost(monkeypatch, tmp_path):
    """A first SIGTERM that comes as the last check runs, too late for it, still stops the run before its final
    evaluation (the loop's handler noted it: it is sent again to the one outside, Terminated's 143)."""
    assert _signals_at_the_last_check(monkeypatch, tmp_path, [], signal.SIGTERM) == 143
    assert not (tmp_path / "run" / "eval.json").exists()


def test_a_signal_while_an_error_leaves_the_loop_does_not_say_stopping(monkeypatch, tmp_path, capfd):
    """Helper 534: a SIGTERM while an error left the loop (here as its progress bar closes) printed "SIGTERM: stopping
    after this step (...)" above the error, though no step and no checkpoint were coming. Now only the error is said
    (its line, status 2)."""
    def fails(*args, **kwargs):
        raise ValueError("a batch the model cannot take; fix the spec")

    real_bar = train_module.progress_bar

    def bar(*args):
        made = real_bar(*args)
        close = made.close

        def closing():   # (once: tqdm closes itself again when collected, where SIGTERM would end pytest)
            made.close = close
            signal.raise_signal(signal.SIGTERM)   # (the loop's handler: noted)
            close()
        made.close = closing
        return made

    monkeypatch.setattr(train_module, "forward_backward", fails)
    monkeypatch.setattr(train_module, "progress_bar", bar)
    args = ["--tasks", small_specs(tmp_path), "--steps", "2", "--batch-size", "8", "--workers", "0", "--warmup", "0",
            "--skip-zero-shot", "--out", str(tmp_path / "run"), "-q"]
    assert train_main(args) == 2
    err = capfd.readouterr().err
    assert "a batch the model cannot take; fix the spec" in err
    assert "stopping after this step" not in err, err


def test_a_sigterm_outside_the_loop_says_what_stopped_the_run(monkeypatch, capfd):
    """Helper 528: a SIGTERM in the set-up or the final evaluation (``terminate_raises``' Terminated) exited 143 and
    printed nothing at all: a scheduler's log did not say what ended the run. Now one line says it, as the loop's stop
    line does; a Ctrl-C there stays silent (the terminal shows it)."""
    def set_up(opts, given):  # noqa: ARG001
        signal.raise_signal(signal.SIGTERM)   # (train's handler: Terminated)
    monkeypatch.setattr(train_module, "_train", set_up)
    assert run_command("warning", train_module.train, None) == 143
    assert capfd.readouterr().err.splitlines() == ["[mtl-lora-vl] warning: SIGTERM: stopped at once (exit status 143)"]

    def interrupted(opts, given):  # noqa: ARG001
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "_train", interrupted)
    assert run_command("warning", train_module.train, None) == 130
    assert capfd.readouterr().err == ""


def test_a_ctrl_c_in_an_errors_clean_up_leaves_the_error_and_its_message(monkeypatch, tmp_path, capfd):
    """Helper 528: a Ctrl-C in the clean-up after an error (the user pressing it as a failing run is slow to close)
    replaced the error: the command exited 130 and the error's message was printed nowhere. The Ctrl-C still cuts the
    clean-up short, but the error is what the command reports: its line and status 2, a bug's traceback."""
    closed = _failing_run(monkeypatch, tmp_path, ValueError("--lr -1: give a positive learning rate"), signal.SIGINT)
    assert run_command("warning", train_module.train, None) == 2
    err = capfd.readouterr().err.splitlines()
    assert err == ["[mtl-lora-vl] warning: Ctrl-C: the clean-up after the error below is cut short",
                   "[mtl-lora-vl] error: --lr -1: give a positive learning rate"]
    assert closed == ["loader", "undo", "loader"]   # (cut at the lock)

    _failing_run(monkeypatch, tmp_path, TypeError("a bug"), signal.SIGINT)
    with pytest.raises(TypeError, match="a bug"):
        run_command("warning", train_module.train, None)


def test_a_ctrl_c_in_a_stops_clean_up_still_aborts(monkeypatch, tmp_path):
    """After a stop (not an error) a Ctrl-C in its clean-up escalates it, as in the loop: 130."""
    _failing_run(monkeypatch, tmp_path, RunStopped(Path("run"), 3, signal.SIGTERM), signal.SIGINT)
    assert run_command("warning", train_module.train, None) == 130


# eval and export, whose work (patched in: no torch) is cut by a signal as it writes its result through atomic_file
_COMMAND_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # as from a terminal, however pytest was started
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from pathlib import Path
from mtl_lora_vl.cli import commands, export
from mtl_lora_vl.io.atomic import atomic_file

command, signame = sys.argv[1:]

def work(*args, **kwargs):
    with atomic_file(Path("eval.json")) as tmp:
        tmp.write_text("{half")
        signal.raise_signal(getattr(signal, signame))

if command == "eval":
    commands.imported = lambda name: work
    sys.exit(commands.eval_main(["--backbone", "builtin", "--tasks", "color"]))
export.imported = lambda name: work
sys.exit(export.export_main(["--adapter", "adapter", "--task", "color", "--out", "merged"]))
"""


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("signame, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_eval_and_export_stopped_by_a_signal_leave_no_temporary(tmp_path, command, signame, status):
    """Helper 528: eval and export set no SIGTERM handler: a scheduler's SIGTERM killed them outright, leaving the
    temporary of what they were writing (``.eval.json.XXXXXXXX.tmp``; a merged export's as large as the model, until
    the next write of the same target) and no line. A SIGTERM now stops them as Ctrl-C does: the temporary is removed,
    one line says what stopped the command, and it exits 143."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _COMMAND_CHILD, command, signame], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == status, out.stdout + out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], out.stderr
    assert ("SIGTERM: stopped at once" in out.stderr) == (signame == "SIGTERM"), out.stderr


# a command's outcome reported with a SIGTERM arriving meanwhile (sent as the error's message or the stop's status is
# read), in a child process with the signals as from a terminal (SIGTERM's default would end pytest); no torch
_REPORT_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from pathlib import Path
from mtl_lora_vl.cli.commands import run_command
from mtl_lora_vl.training.stopping import RunStopped

class Failed(ValueError):
    def __str__(self):
        signal.raise_signal(signal.SIGTERM)
        return "--lr -1: give a positive learning rate"

class Stopped(RunStopped):
    @property
    def exit_code(self):
        signal.raise_signal(signal.SIGTERM)
        return 130

def work():
    raise Failed() if sys.argv[1] == "error" else Stopped(Path("run"), 3, signal.SIGINT)

status = run_command("warning", work)
print(status, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "torch" in sys.modules)
sys.exit(status)
"""


@pytest.mark.parametrize("outcome, status", [("error", 2), ("stop", 130)])
def test_a_sigterm_as_the_outcome_is_reported_leaves_it(tmp_path, outcome, status):
    """Helper 534: ``run_command`` put the default SIGTERM handler back as ``fn`` left (``terminate_raises``' exit),
    before the outcome was reported: a SIGTERM there (torchrun's or a scheduler's, as a run failed or stopped) killed
    the process, -15, without the error's line, over a Ctrl-C's 130. The outcome now stands: the SIGTERM is ignored
    until the command returns, and the default handler is back then."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _REPORT_CHILD, outcome], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == status, out.stdout + out.stderr
    assert out.stdout.split() == [str(status), "True", "False"], out.stdout + out.stderr
    assert ("--lr -1: give a positive learning rate" in out.stderr) == (outcome == "error"), out.stderr


class _Failed(ValueError):
    """A bad option's error; a SIGTERM comes as its message is read (as run_command reports it)."""

    def __str__(self) -> str:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL   # (it would end pytest)
        signal.raise_signal(signal.SIGTERM)
        return "--lr -1: give a positive learning rate"


def _fails() -> None:
    raise _Failed()


def test_a_sigterm_ignored_as_a_command_reports_reaches_the_outer_command(capfd):
    """Helper 543: ``run_command`` called inside another command's work (the outer one's ``terminate_raises`` stops it
    on SIGTERM) ignored a SIGTERM while its own outcome was reported, and nothing sent it on: the outer command went on
    and returned 0, the SIGTERM lost. It is now sent again once the outer handler is back: the inner error's line, then
    the outer command stops (143, its line)."""
    inner: list[int] = []
    assert run_command("warning", lambda: inner.append(run_command("warning", _fails))) == 143
    assert inner == []
    assert capfd.readouterr().err.splitlines() == [
        "[mtl-lora-vl] error: --lr -1: give a positive learning rate",
        "[mtl-lora-vl] warning: SIGTERM: stopped at once (exit status 143)"]


def test_a_sigterm_ignored_as_a_command_reports_reaches_the_caller_s_handler(capfd):
    """Helper 543: a Python caller's own SIGTERM handler (a script that stops its loop of commands on SIGTERM) never
    saw a SIGTERM that came as ``run_command`` reported the outcome: it was ignored and lost. The handler is put back
    and then given it; the command's outcome stands (its line, status 2)."""
    got: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        assert run_command("warning", _fails) == 2
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capfd.readouterr().err.splitlines() == ["[mtl-lora-vl] error: --lr -1: give a positive learning rate"]


def test_a_sigterm_before_the_command_s_work_begins_stops_it_with_its_line(monkeypatch, capfd):
    """Helper 548: ``run_command``'s SIGTERM handler raised ``Terminated`` from the moment it was set, before the
    ``try`` that reports it: a SIGTERM as the command's logging was set up escaped the command (a ``Terminated``
    traceback, exit 1 from a script). It now waits for the work to begin and stops it there: 143 and its line."""
    real = commands.cli_logging

    @contextlib.contextmanager
    def logging_with_a_sigterm(level):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL   # (it would end pytest)
        signal.raise_signal(signal.SIGTERM)
        with real(level) as log:
            yield log

    monkeypatch.setattr(commands, "cli_logging", logging_with_a_sigterm)
    ran: list[int] = []
    try:
        status = run_command("warning", lambda: ran.append(1))
    except KeyboardInterrupt as e:   # (Terminated: escaped the command)
        status = type(e).__name__
    assert (status, ran) == (143, [])
    assert capfd.readouterr().err.splitlines() == ["[mtl-lora-vl] warning: SIGTERM: stopped at once (exit status 143)"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _bug() -> None:
    raise TypeError("a bug's own message")


def _expected_error() -> None:
    raise ValueError("--lr -1: give a positive learning rate")


@pytest.mark.parametrize("work, error, debug", [(_bug, TypeError, "0"), (_expected_error, ValueError, "1")],
                         ids=["bug", "error-debug"])
def test_a_sigterm_as_a_nested_command_s_error_leaves_does_not_replace_it(monkeypatch, work, error, debug):
    """Helper 553: ``run_command`` inside another command's work whose error leaves it (a bug, or any error under
    ``MTL_LORA_VL_DEBUG=1``) with a SIGTERM ignored as it left: the SIGTERM sent on to the outer command's
    ``terminate_raises`` raised ``Terminated`` over the error, and the outer command returned 143 with the error's
    traceback lost. The error stands (as in every clean-up after an error): it leaves both commands whole."""
    monkeypatch.setenv("MTL_LORA_VL_DEBUG", debug)
    real = commands.cli_logging
    depth: list[int] = []

    @contextlib.contextmanager
    def logging_with_a_sigterm_as_it_leaves(level):
        depth.append(1)
        with real(level) as log:
            try:
                yield log
            finally:
                if len(depth) == 2:   # the inner command's (its work done, its SIGTERM handler ignoring)
                    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL   # (it would end pytest)
                    signal.raise_signal(signal.SIGTERM)
                depth.pop()

    monkeypatch.setattr(commands, "cli_logging", logging_with_a_sigterm_as_it_leaves)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(error) as raised:
        run_command("warning", lambda: run_command("warning", work))
    assert raised.traceback[-1].name == work.__name__
    assert signal.getsignal(signal.SIGTERM) == before


def _a_sigterm_as_the_command_leaves(monkeypatch) -> None:
    """``cli_logging`` as run_command sets it up, with a SIGTERM as the command leaves it (its outcome reported)."""
    real = commands.cli_logging

    @contextlib.contextmanager
    def logging_with_a_sigterm_as_it_leaves(level):
        with real(level) as log:
            try:
                yield log
            finally:
                signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(commands, "cli_logging", logging_with_a_sigterm_as_it_leaves)


def test_a_sigterm_as_a_command_s_bug_leaves_still_reaches_the_caller_s_handler(monkeypatch):
    """...and a caller's own SIGTERM handler (one that notes it) is still given the SIGTERM, the bug still raised."""
    _a_sigterm_as_the_command_leaves(monkeypatch)
    got: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with pytest.raises(TypeError, match="a bug's own message"):
            run_command("warning", _bug)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_script_s_own_sigterm_handler_raising_as_a_command_s_bug_leaves_is_not_dropped(monkeypatch):
    """...but a script's own handler that raises (``sys.exit`` on SIGTERM) asked to stop there: its ``SystemExit``
    goes on, the bug as its context -- only an outer command's ``Terminated`` is dropped (a debug line had swallowed
    the script's exit, and its loop of commands went on)."""
    def exits(signum, frame):
        raise SystemExit(3)

    _a_sigterm_as_the_command_leaves(monkeypatch)
    before = signal.signal(signal.SIGTERM, exits)
    try:
        with pytest.raises(SystemExit) as raised:
            run_command("warning", _bug)
        assert raised.value.code == 3
        assert isinstance(raised.value.__context__, TypeError)
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("where, stopped_by, stop", [
    ("all_ready", signal.SIGINT, KeyboardInterrupt), ("all_ready", signal.SIGTERM, Terminated),
    ("all_ready", None, StartupError), ("claim", signal.SIGTERM, Terminated),
], ids=["ctrl-c", "sigterm", "other-rank-failed", "sigterm-in-claim"])
def test_a_stop_as_every_rank_s_set_up_is_ready_lets_the_lock_and_process_group_go(monkeypatch, tmp_path, where,
                                                                                   stopped_by, stop):
    """Helper 553: in ``start`` the ``all_ready`` after a set-up that worked (under torchrun a collective, where a
    Ctrl-C or SIGTERM finds every rank waiting: raised as it returns) and ``claim_run_dir`` (a collective too) were
    outside both ``try`` blocks: a stop there, or another rank's failed start-up (``StartupError``), left a resumed
    run's lock held (``train()`` from Python: a second ``--resume`` in the same process refused as "a run is training
    in it now") and the process group up. Both are now let go (without a second ``all_ready``: the other ranks have
    left it), and the stop goes on."""
    opts = SimpleNamespace(resume=True, validate=lambda: None, device="cpu", workers=0, steps=1)
    closed = _failed_set_up(monkeypatch, tmp_path, "nowhere")
    monkeypatch.setattr(train_module, "prepare_rank", lambda *args: (opts, None, None, None))
    monkeypatch.setattr(cleanup_module, "cleanup", lambda i: closed.append("process group"))

    def signalled(name):
        closed.append(name)
        if where != name:
            return
        if stopped_by is None:
            raise StartupError("the start-up failed on rank 1 (that process's error says why); nothing was written")
        assert signal.getsignal(stopped_by) is not signal.SIG_DFL   # (it would end pytest)
        signal.raise_signal(stopped_by)
        closed.append("not stopped")

    monkeypatch.setattr(train_module, "all_ready", lambda i, error=None: signalled("all_ready"))
    monkeypatch.setattr(train_module, "claim_run_dir", lambda *args: signalled("claim"))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(stop) as raised:
        train_module.train(opts)
    assert type(raised.value) is stop
    assert closed == [*(["all_ready"] if where == "claim" else []), where, "lock", "process group"]
    assert signal.getsignal(signal.SIGTERM) == before


def _refuse(error: BaseException):
    def refuses(*args):
        raise error
    return refuses


def _ctrl_c_then_all_ready(real):
    def all_ready(i, error=None):
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_DFL   # (it would end pytest)
        signal.raise_signal(signal.SIGINT)   # (the user's Ctrl-C cuts the clean-up after the error short)
        real(i, error)
    return all_ready


@pytest.mark.parametrize("where, error", [
    ("check_workers", ValueError), ("hold_run_dir", RunDirError), ("set-up", ValueError),
    ("set-up, ctrl-c in all_ready", ValueError), ("claim_run_dir", Terminated), ("leftovers", PermissionError),
    ("held elsewhere", RunDirError),
])
def test_every_failure_of_start_once_the_process_group_is_up_lets_it_go_once(monkeypatch, tmp_path, where, error):
    """Helper 556: ``start``'s failures after ``init_distributed`` -- a refused ``--workers``, a resumed run's
    directory held by another run, the clean-up after a failed set-up cut short by a Ctrl-C before ``all_ready``
    tore the group down, and every failure once the run directory is claimed (``undo_start``) -- left the process
    group up: ``train()`` called from Python (a notebook under torchrun's variables) went on with it. Each now lets it
    go, once, after what the failing step lets go first (``all_ready``'s collective, which also lets it go)."""
    resume = where in ("check_workers", "hold_run_dir", "set-up", "set-up, ctrl-c in all_ready")
    opts = SimpleNamespace(resume=resume, validate=lambda: None, device="cpu", workers=0, steps=1, warmup=0,
                           overwrite=False)
    closed = _failed_set_up(monkeypatch, tmp_path, "nowhere")
    group = {"up": True}

    def destroy(info):   # (cleanup: a no-op once the group is down)
        if group["up"]:
            group["up"] = False
            closed.append("process group")

    monkeypatch.setattr(cleanup_module, "cleanup", destroy)
    monkeypatch.setattr(distributed_module, "cleanup", destroy)   # (all_ready's, after a failed set-up)
    if not where.startswith("set-up"):
        monkeypatch.setattr(train_module, "prepare_rank", lambda *args: (opts, None, None, None))
    if where == "set-up, ctrl-c in all_ready":
        monkeypatch.setattr(train_module, "all_ready", _ctrl_c_then_all_ready(train_module.all_ready))
    if where == "check_workers":
        monkeypatch.setattr(train_module, "check_workers", _refuse(ValueError("--workers 99: this machine has 2 "
                                                                              "cores; lower --workers")))
    if where == "hold_run_dir" or where == "held elsewhere":
        monkeypatch.setattr(train_module, "hold_run_dir", _refuse(RunDirError(f"{tmp_path}: a run is training in "
                                                                              "it now")))
    monkeypatch.setattr(train_module, "claim_run_dir", lambda run_dir, o, i: tmp_path)
    if where == "claim_run_dir":
        monkeypatch.setattr(train_module, "claim_run_dir", _refuse(Terminated()))
    if where == "leftovers":
        monkeypatch.setattr(train_module, "remove_overwrite_leftovers",
                            _refuse(PermissionError(f"{tmp_path}/.RUN.deleting: permission denied")))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(error):
        train_module.train(opts)
    assert not group["up"]
    assert closed.count("process group") == 1
    assert closed[-1] == "process group"   # (last: after the lock and all_ready)
    assert signal.getsignal(signal.SIGTERM) == before


def _logging_with_a_sigterm(then_fail: bool):
    """``cli_logging`` as run_command sets it up, with a SIGTERM as it begins (and then a failure, where asked)."""
    real = commands.cli_logging

    @contextlib.contextmanager
    def logging(level):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL   # (it would end pytest)
        signal.raise_signal(signal.SIGTERM)
        if then_fail:
            raise OSError("the log could not be set up")
        with real(level) as log:
            yield log

    return logging


def test_a_sigterm_that_stopped_the_work_as_it_began_is_not_sent_on(monkeypatch, capfd):
    """A SIGTERM before the work begins stops it (143, its line) and is thereby acted on, as one during the work is:
    a caller's own Python handler is put back and not given it again (the caller would stop twice for one SIGTERM)."""
    monkeypatch.setattr(commands, "cli_logging", _logging_with_a_sigterm(then_fail=False))
    got: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        assert run_command("warning", lambda: None) == 143
        assert got == []
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capfd.readouterr().err.splitlines() == ["[mtl-lora-vl] warning: SIGTERM: stopped at once (exit status 143)"]


def test_a_sigterm_before_a_set_up_that_fails_reaches_the_caller_s_handler(monkeypatch):
    """A SIGTERM that waited for the work, which never began (the command's logging failed to set up: its error
    leaves run_command), is given to the caller's own Python handler once it is back, not lost."""
    monkeypatch.setattr(commands, "cli_logging", _logging_with_a_sigterm(then_fail=True))
    got: list[int] = []
    ran: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with pytest.raises(OSError, match="the log could not be set up"):
            run_command("warning", lambda: ran.append(1))
        assert (got, ran) == ([signal.SIGTERM], [])
    finally:
        signal.signal(signal.SIGTERM, before)
