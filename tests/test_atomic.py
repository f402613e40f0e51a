"""The one atomic-write helper: complete or absent, never half-written; old content kept on failure."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from mtl_lora_vl.io import atomic as atomic_mod
from mtl_lora_vl.io.atomic import atomic_dir, atomic_file, check_target
from mtl_lora_vl.training.checkpoint import load_checkpoint, save_checkpoint


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_file_writes_refuses_and_replaces(tmp_path):
    out = tmp_path / "sub" / "f.bin"
    with atomic_file(out, what="test") as tmp:
        assert tmp.parent == out.parent and tmp != out and not out.exists()
        tmp.write_bytes(b"one")
    assert out.read_bytes() == b"one" and _mode(out) == 0o666 & ~_umask()
    with pytest.raises(FileExistsError, match=r"test: .*f.bin already exists; pass overwrite=True"):
        with atomic_file(out, what="test"):
            pass
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_bytes(b"two")
    assert out.read_bytes() == b"two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.bin"]


def test_atomic_file_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "f.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(out, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        with atomic_file(tmp_path / "d", overwrite=True):
            pass


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out, what="test") as tmp:
        (tmp / "a").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_text("2")
    assert (out / "sub" / "b").read_text() == "2"
    assert _mode(out) == 0o777 & ~_umask() and _mode(out / "a") == 0o666 & ~_umask()
    with pytest.raises(FileExistsError, match="already exists and is not empty; pass overwrite=True"):
        with atomic_dir(out, what="test"):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "c").write_text("3")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a", "sub"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary or old copy left behind
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty directory is not "existing content"
        (tmp / "x").write_text("x")
    assert (tmp_path / "empty" / "x").is_file()


def test_checkpoint_goes_through_the_helper(tmp_path, monkeypatch):
    doc = {"step": 1, "trainable": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "sampler": {}}
    save_checkpoint(doc, tmp_path)
    assert load_checkpoint(tmp_path)["step"] == 1
    assert _mode(tmp_path / "checkpoint.pt") == 0o666 & ~_umask()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_the_current_directory_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    """``--out .`` (or a folder holding the working directory): it cannot be renamed into place; it left a
    temporary and an .old folder inside the target that blocked every later write."""
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    for target in (".", str(here), str(tmp_path)):
        with pytest.raises(IsADirectoryError, match="is the current directory or holds it"):
            with atomic_dir(target, overwrite=True) as d:
                (d / "x").write_text("x")
    assert not any(here.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    with atomic_dir("out") as d:  # a new folder inside it is fine
        (d / "x").write_text("x")
    assert (here / "out" / "x").read_text() == "x"


def test_a_failed_move_of_the_old_directory_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    real = os.replace

    def refuse_first(src, dst):
        if Path(src) == target:
            raise OSError("busy")
        return real(src, dst)

    monkeypatch.setattr(atomic_mod.os, "replace", refuse_first)
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)
    with pytest.raises(OSError, match="busy"):
        with atomic_dir(target, overwrite=True) as d:
            (d / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"] and (target / "old").read_text() == "old"



def test_a_directory_is_replaced_without_a_moment_when_it_is_missing(tmp_path, monkeypatch):
    """Where the system swaps two directories atomically (Linux renameat2), the old target is exchanged with
    the new one, never moved aside first: a crash cannot leave the target missing."""
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir()
    probe_b.mkdir()
    if not atomic_mod._exchange(probe_a, probe_b):
        pytest.skip("no atomic directory exchange on this system")
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    moved = []
    real = os.replace
    monkeypatch.setattr(atomic_mod.os, "replace", lambda src, dst: moved.append(Path(src)) or real(src, dst))
    with atomic_dir(target, overwrite=True) as d:
        (d / "new").write_text("new")
    assert target not in moved and [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "t"]


def test_a_target_that_is_a_symlink_to_a_directory_leaves_nothing_behind(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "old").write_text("old")
    (tmp_path / "out").symlink_to(real)
    with atomic_dir(tmp_path / "out", overwrite=True) as d:
        (d / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]
    assert (tmp_path / "out").is_symlink() and [p.name for p in real.iterdir()] == ["new"]   # written through


def test_writes_go_through_links_to_empty_folders_and_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "d").symlink_to(tmp_path / "empty")   # rmdir of the link failed with NotADirectoryError
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("x")
    assert (tmp_path / "d").is_symlink() and (tmp_path / "empty" / "x").read_text() == "x"
    (tmp_path / "f.txt").write_text("old")
    (tmp_path / "f").symlink_to(tmp_path / "f.txt")
    with atomic_file(tmp_path / "f", overwrite=True) as f:
        f.write_text("new")
    assert (tmp_path / "f").is_symlink() and (tmp_path / "f.txt").read_text() == "new"


def test_a_dangling_link_or_a_file_on_the_way_is_refused_before_writing(tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for name in ("gone", "loop"):
        with pytest.raises(FileNotFoundError, match=rf"{name} is a symbolic link to .*which does not exist"):
            check_target(tmp_path / name, directory=True, overwrite=True, what="--out")
        with pytest.raises(FileNotFoundError, match="remove the link"):
            with atomic_file(tmp_path / name, overwrite=True):
                pass
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(NotADirectoryError, match=r"a\.txt is a file, so .*a\.txt/out/x cannot be made inside it"):
        check_target(tmp_path / "a.txt" / "out" / "x", directory=True, what="--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "gone", "loop"]


@pytest.mark.parametrize("after", ["old moved aside", "new moved in"])
def test_a_signal_right_after_a_rename_leaves_one_whole_directory_and_no_leftover(tmp_path, monkeypatch, after):
    """Review h304: on the two-rename path a SIGTERM (Terminated) just after ``os.replace(tmp, target)`` made the
    put-back fail with ENOTEMPTY (an OSError in place of the signal, the old one left in ``.t.*.old``); just after
    the old one was moved aside, the target vanished. Now: the new one in place is kept, else the old one is back."""
    from mtl_lora_vl.training.stopping import Terminated

    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    real, signalled = os.replace, []

    def then_a_signal(src, dst):
        real(src, dst)
        if not signalled and Path(src if after == "old moved aside" else dst) == target:
            signalled.append(1)
            raise Terminated

    monkeypatch.setattr(atomic_mod.os, "replace", then_a_signal)
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)
    with pytest.raises(Terminated):
        with atomic_dir(target, overwrite=True) as d:
            (d / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    assert [p.name for p in target.iterdir()] == ["new" if after == "new moved in" else "old"]


def test_a_second_ctrl_c_during_the_put_back_leaves_the_directory_whole(tmp_path, monkeypatch):
    """Review h429: on the two-rename path a Ctrl-C just after the old directory was moved aside started the put-back,
    and a second Ctrl-C as it began (before its rename) cut it: the target was gone and the old directory sat in
    ``.t.XXXXXXXX.old/dir``. Now both signals wait until the renames are done, then the first is delivered."""
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    real = os.replace

    def with_signals(src, dst):
        if Path(src).name == "dir":   # the put-back moving the old one back: a second Ctrl-C first
            signal.raise_signal(signal.SIGINT)
        real(src, dst)
        if Path(src) == target:   # the old one moved aside: the first Ctrl-C
            signal.raise_signal(signal.SIGINT)

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(atomic_mod.os, "replace", with_signals)
        monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)
        with pytest.raises(KeyboardInterrupt):
            with atomic_dir(target, overwrite=True) as d:
                (d / "new").write_text("new")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, handler)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    assert [p.name for p in target.iterdir()] == ["new"]


_TERMINATED_SWAP = """\
import importlib, os, signal, sys, types
from pathlib import Path
package = Path(sys.argv[2]).parents[1]   # the module and the leaves it imports alone: no torch to import
for name, folder in (("mtl_lora_vl", package), ("mtl_lora_vl.io", package / "io")):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [str(folder)]
atomic = importlib.import_module("mtl_lora_vl.io.atomic")
# as started from a terminal, however pytest was (an ignored signal is inherited, and the package leaves it ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
target, real = Path(sys.argv[1]), os.replace
def replace(src, dst):
    real(src, dst)
    if Path(src) == target:   # the old one moved aside: SIGTERM, whose handler is the default (it kills)
        signal.raise_signal(signal.SIGTERM)
atomic.os.replace, atomic._exchange = replace, lambda a, b: False   # the two-rename path (no atomic swap)
with atomic.atomic_dir(target, overwrite=True) as tmp:
    (tmp / "new").write_text("new")
"""


def test_a_sigterm_held_over_the_renames_leaves_no_old_directory_behind(tmp_path):
    """Review h436: on the two-rename path a SIGTERM whose handler is the default one (an eval or export command) was
    held until the renames were done and then killed the process before the old directory was deleted: a hidden
    .t.XXXXXXXX.old (as large as the old output) was left beside the target, which no later write deletes. The old
    one is now deleted before the held signal is delivered."""
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_bytes(b"x" * 4096)
    proc = subprocess.run([sys.executable, "-c", _TERMINATED_SWAP, str(target), atomic_mod.__file__],
                          capture_output=True)
    assert proc.returncode == -signal.SIGTERM, proc.stderr.decode()
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    assert [p.name for p in target.iterdir()] == ["new"]


_KILLED_WRITER = """\
import importlib, os, signal, sys, types
from pathlib import Path
package = Path(sys.argv[3]).parents[1]   # the module and the leaves it imports alone: no torch to import
for name, folder in (("mtl_lora_vl", package), ("mtl_lora_vl.io", package / "io")):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [str(folder)]
atomic = importlib.import_module("mtl_lora_vl.io.atomic")
assert "torch" not in sys.modules
write = atomic.atomic_dir if sys.argv[2] == "dir" else atomic.atomic_file
with write(sys.argv[1], overwrite=True) as tmp:
    (tmp / "weights.bin" if sys.argv[2] == "dir" else tmp).write_bytes(b"x" * 4096)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(find_spec("fcntl") is None, reason="no flock: no temporary is known to be stale")
@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_killed_writers_temporary_is_deleted_by_the_next_write_of_the_target(tmp_path, kind):
    """SIGKILL mid-write left a hidden .out.XXXXXXXX.tmp each time (a merged LLaVA's: gigabytes), never deleted."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out), kind, atomic_mod.__file__],
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".out.") and left.name.endswith(".tmp")
    write = atomic_dir if kind == "dir" else atomic_file
    with write(out, overwrite=True) as tmp:
        (tmp / "a" if kind == "dir" else tmp).write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(find_spec("fcntl") is None, reason="no flock: no temporary is known to be stale")
def test_only_this_targets_temporaries_of_gone_writers_are_deleted(tmp_path):
    import fcntl

    stale_dir, stale_file, live = (tmp_path / ".out.abcd_123.tmp", tmp_path / ".out.zz99zz99.tmp",
                                   tmp_path / ".out.live0000.tmp")
    stale_dir.mkdir()
    (stale_dir / "w").write_text("half")
    stale_file.write_text("half")
    live.mkdir()
    others = [tmp_path / ".other.abcdefgh.tmp", tmp_path / ".out.abcdefgh.old", tmp_path / ".out.notmine.tmp",
              tmp_path / ".out.x.abcdefgh.tmp", tmp_path / "out.abcdefgh.tmp"]
    for p in others:
        p.write_text("not a killed writer's")
    (tmp_path / ".out.link0000.tmp").symlink_to(tmp_path / "elsewhere")
    fd = os.open(live, os.O_RDONLY)   # a writer alive: it holds the lock on its temporary
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with atomic_dir(tmp_path / "out", what="test") as tmp:
            (tmp / "a").write_text("1")
    finally:
        os.close(fd)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["out", live.name, ".out.link0000.tmp", *(p.name for p in others)])


def test_a_temporary_that_a_clean_up_took_before_it_was_locked_is_not_used(tmp_path, monkeypatch):
    """Another writer's clean-up may find a temporary between its making and its locking: a fresh one is made."""
    made = []

    def make():
        made.append(Path(tempfile.mkdtemp(prefix=".out.", suffix=".tmp", dir=tmp_path)))
        if len(made) == 1:
            made[0].rmdir()   # deleted before the writer locked it
        return made[-1]

    tmp, fd = atomic_mod._claimed(make, os.rmdir)
    atomic_mod._release(fd)
    assert tmp == made[1] and tmp.is_dir() and len(made) == 2


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_cannot_be_read_is_refused_by_name(tmp_path, monkeypatch, overwrite):
    # (a folder of another user's, or chmod 0300: listing it raised a bare "[Errno 13] Permission denied: '.../out'"
    # naming neither the flag nor the fix; root reads any folder, so the error is simulated)
    out = tmp_path / "out"
    out.mkdir()
    listing = Path.iterdir

    def denied(self):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(PermissionError, match=rf"^--out: {re.escape(str(out))} is a folder that cannot be read "
                                              r"\(Permission denied.*make it readable \(chmod u\+rwx .*\) or choose "
                                              "another path"):
        check_target(out, directory=True, overwrite=overwrite, what="--out")


_BOTH_SIGNALS = _TERMINATED_SWAP.replace(
    "        signal.raise_signal(signal.SIGTERM)\n",
    "        signal.raise_signal(signal.SIGINT)   # Ctrl-C, then SIGTERM (default handlers: KeyboardInterrupt; kill)\n"
    "        signal.raise_signal(signal.SIGTERM)\n")


def test_a_ctrl_c_and_a_sigterm_held_together_end_the_process_as_the_sigterm_does(tmp_path):
    """Helper 455: both held over the two renames, the Ctrl-C was delivered first and its KeyboardInterrupt lost the
    SIGTERM: the process ended by SIGINT (exit 130) where the SIGTERM it was sent kills it (143). Now the SIGTERM is
    delivered from a ``finally`` after the Ctrl-C's handler (arrival order, review 460); the directory is whole
    either way."""
    assert _BOTH_SIGNALS != _TERMINATED_SWAP
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    proc = subprocess.run([sys.executable, "-c", _BOTH_SIGNALS, str(target), atomic_mod.__file__], capture_output=True)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr.decode())
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    assert [p.name for p in target.iterdir()] == ["new"]


def test_held_signals_reach_their_handlers_in_arrival_order_each_time_while_none_raises(tmp_path, monkeypatch):
    """Handlers that return all run, in the order their signals arrived (Ctrl-C, SIGTERM: review 460; 622ca43 ran
    SIGTERM's first); a signal sent twice while held reaches its handler twice, as unheld (helper 473: once)."""
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    real, seen = os.replace, []

    def with_signals(src, dst):
        real(src, dst)
        if Path(src) == target:
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
                signal.raise_signal(s)

    handlers = {s: signal.signal(s, lambda signum, frame: seen.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        monkeypatch.setattr(atomic_mod.os, "replace", with_signals)
        monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)
        with atomic_dir(target, overwrite=True) as d:
            (d / "new").write_text("new")
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert seen == [signal.SIGINT, signal.SIGTERM, signal.SIGINT]
    assert [p.name for p in target.iterdir()] == ["new"]


def _signals_during_the_renames(target, monkeypatch, signals):
    """On the two-rename path, raise ``signals`` (in that order) once the old directory is moved aside."""
    real = os.replace

    def with_signals(src, dst):
        real(src, dst)
        if Path(src) == target:
            for s in signals:
                signal.raise_signal(s)

    monkeypatch.setattr(atomic_mod.os, "replace", with_signals)
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # the two-rename path (no atomic swap)


_IN_THE_LOOP = {   # what the signals do unheld inside stop_at_step_boundary: the first a clean stop, a Ctrl-C after it
    (signal.SIGINT, signal.SIGTERM): ("stop at the step boundary", signal.SIGINT),   # an abort (KeyboardInterrupt)
    (signal.SIGTERM, signal.SIGINT): ("KeyboardInterrupt", signal.SIGTERM),            # (the first signal is kept)
    (signal.SIGINT, signal.SIGTERM, signal.SIGINT): ("KeyboardInterrupt", signal.SIGINT),
    (signal.SIGINT, signal.SIGINT): ("KeyboardInterrupt", signal.SIGINT),
    (signal.SIGTERM, signal.SIGTERM): ("stop at the step boundary", signal.SIGTERM),
}


@pytest.mark.parametrize("signals", list(_IN_THE_LOOP), ids=["INT-TERM", "TERM-INT", "INT-TERM-INT", "INT-INT",
                                                             "TERM-TERM"])
def test_signals_held_in_the_training_loop_stop_it_as_the_same_signals_unheld_would(
        tmp_path, monkeypatch, signals):
    """Review 460: inside ``stop_at_step_boundary`` (a Ctrl-C sets a flag for a clean stop at the next step, a second
    Ctrl-C after it aborts) a Ctrl-C then a SIGTERM held over the renames were delivered SIGTERM first, so the Ctrl-C
    came second and raised KeyboardInterrupt (an abort, no checkpoint) where the same signals unheld stop cleanly (exit
    130 since helper 515: the first signal is the one kept). Held signals now come in their arrival order. Helper
    473: a signal repeated while held was delivered once, so a double Ctrl-C during the renames stopped cleanly where
    unheld it aborts at once (and INT-TERM-INT stopped as INT-TERM); now each one is delivered."""
    from mtl_lora_vl.training.stopping import stop_at_step_boundary

    def outcome(held):
        with stop_at_step_boundary() as request:
            try:
                if held:
                    target = tmp_path / "t"
                    shutil.rmtree(target, ignore_errors=True)
                    target.mkdir()
                    (target / "old").write_text("old")
                    with monkeypatch.context() as m:
                        _signals_during_the_renames(target, m, signals)
                        with atomic_dir(target, overwrite=True) as d:
                            (d / "new").write_text("new")
                    assert [p.name for p in target.iterdir()] == ["new"]
                else:
                    for s in signals:
                        signal.raise_signal(s)
            except KeyboardInterrupt:
                return "KeyboardInterrupt", request.signum
            return "stop at the step boundary", request.signum

    assert outcome(held=False) == _IN_THE_LOOP[signals]
    assert outcome(held=True) == _IN_THE_LOOP[signals]
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_a_held_signal_whose_handler_raises_does_not_lose_the_next(tmp_path, monkeypatch):
    """Outside the loop with the default Ctrl-C handler and ``terminate_raises`` (SIGTERM raises ``Terminated``): a
    Ctrl-C then a SIGTERM held over the renames both reach their handlers, the SIGTERM from a ``finally`` after the
    first; the command ends as the Ctrl-C, the first stop, asked (its KeyboardInterrupt raised again over the
    ``Terminated``) (exit 130: helper 519, ``terminate_raises`` lets a SIGTERM change no stop under way; was 143)."""
    from mtl_lora_vl.training.stopping import Terminated, terminate_raises

    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    _signals_during_the_renames(target, monkeypatch, (signal.SIGINT, signal.SIGTERM))
    raised = None
    try:
        with terminate_raises(), atomic_dir(target, overwrite=True) as d:
            (d / "new").write_text("new")
    except KeyboardInterrupt as e:   # (Terminated is one: caught here, a plain one does not end the test session)
        raised = e
    assert type(raised) is KeyboardInterrupt and type(raised.__context__) is Terminated, repr(raised)   # (not lost)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    assert [p.name for p in target.iterdir()] == ["new"]
