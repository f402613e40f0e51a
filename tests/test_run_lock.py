"""A run directory is trained by one process at a time: while a run trains, its rank 0 holds RUN/.lock, and a
``--resume`` or ``--overwrite`` of it is refused with nothing written (review 208: a resume of a run still
training ran beside it, and metrics.jsonl held 207 loss rows for 150 steps)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import rng_kind

import mtl_lora_vl.io.locks as locks
import mtl_lora_vl.run_overwrite as run_overwrite
import mtl_lora_vl.rundir as rundir
import mtl_lora_vl.training.checkpoint as checkpoint
import mtl_lora_vl.training.train as train_module
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.benchmark.bench import BenchDirError, grid_lock
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.distributed import DistInfo
from mtl_lora_vl.rundir import RunDirError, hold_run_dir

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


def _args(tmp: Path, out: Path) -> list[str]:
    return ["--tasks", str(rng_kind.small_spec(tmp, "vqa")), "--steps", "2", "--batch-size", "8", "--workers", "0",
            "--save-every", "1", "--eval-batch-size", "32", "--skip-zero-shot", "--out", str(out)]


def _contents(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[bool]]:
    """A finished two-step run; and, for each checkpoint it saved, whether its directory was locked meanwhile."""
    tmp = tmp_path_factory.mktemp("lock")
    locked: list[bool] = []
    save = checkpoint.save_checkpoint

    def save_and_probe(state, run_dir):
        try:
            hold_run_dir(Path(run_dir), DistInfo()).close()
            locked.append(False)
        except RunDirError:
            locked.append(True)
        return save(state, run_dir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save_checkpoint", save_and_probe)
        assert train_main(_args(tmp, tmp / "run")) == 0
    return tmp / "run", locked


def test_a_run_holds_its_directory_while_it_trains_and_lets_go_when_it_ends(finished):
    run, locked = finished
    assert locked and all(locked)
    hold_run_dir(run, DistInfo()).close()   # let go: a later --resume may take it
    assert (run / ".lock").read_text().strip().isdigit()


@pytest.mark.parametrize("how", ["resume", "overwrite"])
def test_a_run_training_now_is_neither_resumed_nor_replaced(finished, tmp_path, capsys, how):
    run, _ = finished
    before = _contents(run)
    lock = hold_run_dir(run, DistInfo())   # as a run training in it holds it
    try:
        args = ["--resume", str(run)] if how == "resume" else [*_args(tmp_path, run), "--overwrite"]
        assert train_main(args) == 2
    finally:
        lock.close()
    err = capsys.readouterr().err
    assert f"a run is training in it now (process {os.getpid()})" in err
    assert _contents(run) == before   # nothing written, moved or trimmed
    assert not (run.parent / f".{run.name}.replaced").exists()


class _NoFlock:
    """fcntl on a file system without flock (some network and FUSE mounts): every flock fails with ENOLCK."""

    LOCK_EX, LOCK_SH, LOCK_NB = 2, 1, 4

    @staticmethod
    def flock(fh, how):
        raise OSError(errno.ENOLCK, "No locks available")


def test_a_file_system_without_flock_trains_resumes_and_overwrites_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(locks, "fcntl", _NoFlock)
    run = tmp_path / "run"
    for args in (_args(tmp_path, run), ["--resume", str(run)], [*_args(tmp_path, run), "--overwrite"]):
        assert train_main(args) == 0   # (the CLI prints the package's warnings as lines)
        assert "[mtl-lora-vl] warning: " in (err := capsys.readouterr().err) and "cannot lock" in err, err
        assert (run / "eval.json").is_file()
    assert not (run.parent / f".{run.name}.replaced").exists()


def test_an_overwrite_that_fails_at_its_first_step_lets_go_of_its_lock_before_putting_the_old_run_back(
        finished, tmp_path, monkeypatch, capsys):
    """The old run is put back by deleting the new folder, .lock included: on NFS a file still open (by this process
    or a forked loader worker) is renamed to .nfsXXXX instead, the folder is not empty and the old run stays aside."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    before = _contents(run)
    held: list[bool] = []
    rmtree = shutil.rmtree

    def probing_rmtree(path, *args, **kwargs):
        if Path(path) == run:   # undo_overwrite deleting the new run
            try:
                hold_run_dir(run, DistInfo()).close()
                held.append(False)
            except RunDirError:
                held.append(True)
        return rmtree(path, *args, **kwargs)

    def first_step_fails(net, batches, *args, **kwargs):
        next(batches)   # the loader's workers start
        raise RuntimeError("out of memory (test)")

    monkeypatch.setattr(run_overwrite.shutil, "rmtree", probing_rmtree)
    monkeypatch.setattr(train_module, "forward_backward", first_step_fails)
    args = [*("2" if a == "0" else a for a in _args(tmp_path, run)), "--overwrite"]   # --workers 2: forked workers
    assert train_main(args) != 0
    assert "out of memory (test)" in capsys.readouterr().err
    assert held == [False]
    assert _contents(run) == before and not (tmp_path / ".run.replaced").exists()


def test_a_resume_takes_the_lock_before_it_reads_the_checkpoint(finished, monkeypatch, capsys):
    """Two resumes started together both pass choose_run_dir's look at the lock; the second must not read the
    checkpoint (and set up a whole run from it) while the first trains: it took the lock only after its set-up."""
    run, _ = finished
    read: list[Path] = []
    load = train_module.load_checkpoint
    monkeypatch.setattr(rundir, "_refuse_training", lambda *a: None)   # (the first resume took it since)
    monkeypatch.setattr(train_module, "load_checkpoint", lambda d: read.append(d) or load(d))
    lock = hold_run_dir(run, DistInfo())
    try:
        assert train_main(["--resume", str(run)]) == 2
    finally:
        lock.close()
    assert "a run is training in it now" in capsys.readouterr().err
    assert read == []


def test_an_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(finished, tmp_path, monkeypatch,
                                                                                  capsys):
    """Review 263: the replaced run was deleted after the new run's first step, though the new one had no checkpoint
    until --save-every steps: a failure in between (step 2 of 3 here) left neither run, nor anything to resume."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    before = _contents(run)
    steps: list[int] = []
    real = train_module.forward_backward

    def second_step_fails(*args, **kwargs):
        steps.append(1)
        if len(steps) == 2:
            raise RuntimeError("out of memory (test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "forward_backward", second_step_fails)
    args = [*("3" if a == "2" else "5" if a == "1" else a for a in _args(tmp_path, run)), "--overwrite"]
    assert args[args.index("--steps") + 1] == "3" and args[args.index("--save-every") + 1] == "5"
    assert train_main(args) != 0
    assert "out of memory (test)" in capsys.readouterr().err
    assert _contents(run) == before and not (tmp_path / ".run.replaced").exists()


@pytest.mark.parametrize("how", ["new run", "resume"])
def test_a_stale_replaced_folder_is_not_put_back_over_a_run_that_did_not_set_it_aside(finished, tmp_path, monkeypatch,
                                                                                      capsys, how):
    """Review 269: an --overwrite SIGKILLed before its first checkpoint leaves .run.replaced (hidden). A later run in
    run/ that set nothing aside (a new one without --overwrite once the half-made run/ was removed, or a resume of
    a run started with --overwrite) that failed -- here in its final evaluation / its restore -- deleted run/, its
    checkpoints included, and renamed the stale .run.replaced to run/."""
    run, aside = tmp_path / "run", tmp_path / ".run.replaced"
    aside.mkdir()
    (aside / "old.txt").write_text("the run a killed --overwrite replaced")

    def fails(*args, **kwargs):
        raise RuntimeError("failed (test)")

    if how == "new run":
        monkeypatch.setattr(train_module, "evaluate_setup", fails)
        assert train_main(_args(tmp_path, run)) != 0
    else:
        shutil.copytree(finished[0], run)
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "overwrite": True}))   # as an --overwrite run records
        monkeypatch.setattr(train_module, "restore_training_state", fails)
        assert train_main(["--resume", str(run)]) != 0
    assert "failed (test)" in capsys.readouterr().err
    assert (run / "checkpoint.pt").is_file() and not (run / "old.txt").exists()
    assert (aside / "old.txt").is_file()


def test_an_overwrite_is_refused_before_its_set_up_while_an_earlier_ones_replaced_folder_is_there(tmp_path,
                                                                                                 monkeypatch, capsys):
    """Review 269: with run/ gone (or empty), an --overwrite did not look for .run.replaced: it trained, and its first
    checkpoint deleted the run an earlier (killed) --overwrite had kept there. A non-empty run/ was refused only once
    the backbone and data were loaded."""
    run, aside = tmp_path / "run", tmp_path / ".run.replaced"
    aside.mkdir()
    (aside / "old.txt").write_text("the run a killed --overwrite replaced")
    built: list[int] = []
    monkeypatch.setattr(train_module, "build_setup", lambda *a, **k: built.append(1))
    for present in (False, True):
        if present:
            run.mkdir()
            (run / "config.json").write_text(json.dumps({"tasks": "vqa", "method": "mtl_lora", "out": str(run)}))
        assert train_main([*_args(tmp_path, run), "--overwrite"]) != 0
        assert f"an earlier --overwrite of it did not finish, and {aside} holds" in capsys.readouterr().err
        assert not built and (aside / "old.txt").is_file() and run.exists() == present


def test_the_replaced_folder_of_the_current_directory_has_a_name(tmp_path, monkeypatch):
    """--out . --overwrite: replaced_dir(Path('.')) raised "PosixPath('.') has an empty name" (the check of an
    unfinished --overwrite, now made before the set-up, reached it before the current-directory refusal)."""
    from mtl_lora_vl.rundir import replaced_dir

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert replaced_dir(Path(".")) == tmp_path / ".here.replaced"
    assert replaced_dir(Path("sub")) == tmp_path / "here" / ".sub.replaced"


def test_a_lock_file_that_is_a_link_or_no_file_is_refused_with_nothing_written_through_it(tmp_path):
    # (a run folder from an archive with .lock -> ~/thesis.tex: --resume truncated the thesis to its process id)
    thesis = tmp_path / "thesis.tex"
    thesis.write_text("years of work")
    for folder in (tmp_path / "run", tmp_path / "grid"):
        folder.mkdir()
        (folder / ".lock").symlink_to(thesis)
    with pytest.raises(RunDirError, match=r"run/.lock: a symbolic link \(to .*thesis.tex\), where this process "
                                          r"writes its lock .*remove the link"):
        hold_run_dir(tmp_path / "run", DistInfo())
    with pytest.raises(BenchDirError, match=r"--out .*grid: .*grid/.lock: a symbolic link"):
        grid_lock(tmp_path / "grid").__enter__()
    assert thesis.read_text() == "years of work"
    (tmp_path / "run" / ".lock").unlink()
    (tmp_path / "run" / ".lock").symlink_to(tmp_path / "gone")   # dangling: nothing made where it leads
    with pytest.raises(RunDirError, match="a symbolic link"):
        hold_run_dir(tmp_path / "run", DistInfo())
    assert not (tmp_path / "gone").exists()
    (tmp_path / "run" / ".lock").unlink()
    os.mkfifo(tmp_path / "run" / ".lock")
    with pytest.raises(RunDirError, match=r"run/.lock: not a regular file \(a FIFO"):
        hold_run_dir(tmp_path / "run", DistInfo())
    (tmp_path / "run" / ".lock").unlink()
    hold_run_dir(tmp_path / "run", DistInfo()).close()   # a plain lock file: taken
    assert (tmp_path / "run" / ".lock").read_text() == f"{os.getpid()}\n"
