"""SIGTERM outside the training loop of an ``--overwrite`` run (torchrun sends it to the other ranks when one fails):
the replaced run is put back whole, even when a second SIGTERM arrives while it is being put back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtl_lora_vl import rundir
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.distributed import DistInfo
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.training.stopping import Terminated, terminate_raises

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")

# The run gets SIGTERM once its directory is claimed (the old run set aside), outside the loop's step boundaries,
# and again as the put-back starts deleting the new run's directory.
SCRIPT = textwrap.dedent("""
    import os, shutil, signal, sys
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as from a terminal, however pytest was started
    sys.path.insert(0, sys.argv[1])
    import rng_kind
    import mtl_lora_vl.training.train as train_module
    from mtl_lora_vl.cli import train_main

    real_optim, real_rmtree = train_module.build_optimization, shutil.rmtree

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_optim(*args, **kwargs)

    def rmtree(path, *args, **kwargs):
        if os.path.basename(str(path)) == "run":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_rmtree(path, *args, **kwargs)

    train_module.build_optimization, shutil.rmtree = terminated, rmtree
    sys.exit(train_main(sys.argv[2:]))
""")


def _run_or_stacks(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``cmd`` run to its end, or, past ``timeout``, failed with where it was: its Python stacks (dumped on SIGABRT,
    ``PYTHONFAULTHANDLER``) and its output. Once, in a full run on a loaded machine, the first test below passed its
    300 s (alone it takes 5-13 s; 25 tries of its script here ended in 5-20 s): the next one says where it waited."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1"))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{cmd[1]} still ran after {timeout} s; its stacks and output:\n{err[-6000:]}\n{out[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_sigterm_after_the_claim_puts_the_replaced_run_back(tmp_path):
    """It killed the process at once (exit -15): the old run stayed in .run.replaced, the new run's config.json and
    .lock in its place, and the next --overwrite was refused until the user moved it back by hand."""
    import rng_kind

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"tasks": "caption_cls", "method": "mtl_lora", "out": str(run)}))
    (run / "metrics.jsonl").write_text("old\n")
    spec = rng_kind.small_spec(tmp_path, "caption_cls")
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = _run_or_stacks([sys.executable, str(tmp_path / "script.py"), str(TESTS), "--tasks", str(spec), "--steps",
                           "2", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(run),
                           "--overwrite"])
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caption_cls.toml", "run", "script.py"]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]
    assert (run / "metrics.jsonl").read_text() == "old\n"


# SIGTERM once the new run's final checkpoint is written, while the replaced run is being deleted (a large old run
# takes seconds): part of it is gone when the signal lands.
DELETING = textwrap.dedent("""
    import os, shutil, signal, sys
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as from a terminal, however pytest was started
    sys.path.insert(0, sys.argv[1])
    import rng_kind
    from mtl_lora_vl.cli import train_main

    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if os.path.basename(str(path)).startswith(".run.replaced") or str(path).endswith(".old/dir"):
            shutil.rmtree = real_rmtree
            for p in sorted(os.listdir(path)):
                if p.startswith("part"):
                    os.remove(os.path.join(path, p))   # half-way through the old run
            os.kill(os.getpid(), signal.SIGTERM)
        return real_rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree
    sys.exit(train_main(sys.argv[2:]))
""")


def test_sigterm_while_the_replaced_run_is_deleted_keeps_the_new_run(tmp_path):
    """The put-back saw the half-deleted .run.replaced, deleted the new run (its checkpoint of 2 trained steps) and
    moved the old run's remains into its place: neither run was left, and --resume had nothing to continue."""
    import rng_kind

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"tasks": "caption_cls", "method": "mtl_lora", "out": str(run)}))
    for i in range(3):
        (run / f"part{i}.txt").write_text("old\n")
    spec = rng_kind.small_spec(tmp_path, "caption_cls")
    (tmp_path / "script.py").write_text(DELETING)
    args = ["--tasks", str(spec), "--steps", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    proc = _run_or_stacks([sys.executable, str(tmp_path / "script.py"), str(TESTS), *args, "--out", str(run),
                           "--overwrite"])
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert not (tmp_path / ".run.replaced").exists()
    # the save after the last step, and the delete of the replaced run it ends with, run inside the loop's signal
    # handling (67591f4): the SIGTERM is held until both finish, so no remains are left (SIGKILL leaves them: below)
    assert not list(tmp_path.glob(".run.replaced.*.old"))
    assert (run / "checkpoint.pt").is_file() and not list(run.glob("part*")), sorted(p.name for p in run.iterdir())
    from mtl_lora_vl.cli import train_main
    assert train_main(["--resume", str(run)]) == 0   # the trained run: its final evaluation now
    assert (run / "eval.json").is_file()


def test_only_the_runs_own_leftovers_are_removed(tmp_path):
    """.run.replaced (an unfinished --overwrite's, to put back) and other runs' leftovers stay; so does a file."""
    from mtl_lora_vl.run_overwrite import remove_overwrite_leftovers

    names = [".run.replaced.ab_9cdef.old", ".run.replaced", ".run.replaced.abcdefgh.old.x",
             ".run2.replaced.abcdefgh.old", ".run.replaced.x.replaced.abcdefgh.old",
             ".run.replaced.abc.old"]   # (the 5th: run "run.replaced.x"s own)
    for name in names:
        (tmp_path / name / "dir").mkdir(parents=True)
    (tmp_path / ".run.replaced.zzzzzzzz.old").write_text("a file")
    assert remove_overwrite_leftovers(tmp_path / "run") == [tmp_path / names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[1:], ".run.replaced.zzzzzzzz.old"])


@pytest.mark.parametrize("length", [232, 240, 245, 250, 255])
def test_a_run_whose_name_is_long_finishes_its_overwrite_and_its_leftovers_are_found(tmp_path, monkeypatch, length):
    """A run name of 233 to 245 bytes (its .RUN.replaced fits in 255) made finish_overwrite's mkdtemp fail with
    'File name too long' at the first checkpoint: the new run stopped, and undo_overwrite deleted its checkpoint.
    From 246 bytes .RUN.replaced itself did not fit: every --overwrite of such a run was refused at its start."""
    from mtl_lora_vl import run_overwrite, rundir

    run = tmp_path / ("r" * (length - 5) + "é-ü")   # (multi-byte characters where a cut may fall)
    assert len(run.name.encode()) == length
    twin = tmp_path / ("r" * (length - 5) + "é-a")   # the same first bytes: another run's folder
    assert rundir.replaced_dir(run) != rundir.replaced_dir(twin)
    run.mkdir()
    for folder in (rundir.replaced_dir(run), tmp_path / "other"):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "old.txt").write_text("old run\n")
    run_overwrite.finish_overwrite(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run.name, "other"])
    (rundir.replaced_dir(run) / "sub").mkdir(parents=True)

    def cut_short(path, ignore_errors=False):   # a Ctrl-C as the delete starts: the renamed run stays
        raise KeyboardInterrupt

    monkeypatch.setattr(run_overwrite.shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        run_overwrite.finish_overwrite(run)
    monkeypatch.undo()
    left = [p for p in tmp_path.iterdir() if p.name not in (run.name, "other")]
    assert len(left) == 1 and all(len(p.name.encode()) <= 255 for p in left)
    assert run_overwrite.remove_overwrite_leftovers(run) == left and not left[0].exists()
    assert run_overwrite.remove_overwrite_leftovers(tmp_path / "other") == []


@pytest.mark.parametrize("where", ["claim", "lock"])
def test_a_signal_between_the_claim_and_the_lock_puts_the_replaced_run_back(tmp_path, monkeypatch, where):
    """SIGTERM (torchrun's, a peer failed) or Ctrl-C inside claim_run_dir's broadcast or start's hold_run_dir -- once
    the old run was set aside, before start's put-back was armed -- left it in .run.replaced, an empty run/ in its
    place: --resume run/ found no run and the next --overwrite was refused until it was moved back by hand."""
    import mtl_lora_vl.rundir as rundir
    import mtl_lora_vl.training.train as train_module
    from mtl_lora_vl.distributed import DistInfo
    from mtl_lora_vl.options import TrainOptions
    from mtl_lora_vl.training.stopping import Terminated

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"tasks": "vqa", "method": "mtl_lora", "out": str(run)}))
    (run / "metrics.jsonl").write_text("old\n")
    opts = TrainOptions(tasks="vqa", out=str(run), overwrite=True, device="cpu")

    def terminated(*args, **kwargs):
        raise Terminated

    if where == "claim":
        monkeypatch.setattr(rundir, "broadcast_from_main", terminated)
        with pytest.raises(Terminated):
            rundir.claim_run_dir(run, opts, DistInfo())
    else:
        monkeypatch.setattr(train_module, "prepare_rank", lambda o, *a: (o, None, None, None))
        monkeypatch.setattr(train_module, "hold_run_dir", terminated)
        with pytest.raises(Terminated):
            train_module.start(opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run / "metrics.jsonl").read_text() == "old\n"


def test_a_run_folder_that_cannot_be_made_again_puts_the_replaced_run_back(tmp_path, monkeypatch):
    """--overwrite set the old run aside, then making the new run's folder failed (a full disk or quota: the rename
    takes no space, the folder does): the error said 'cannot make the run directory' and left the old run in
    .run.replaced, nothing in run/, so --resume found no run and the next --overwrite was refused."""
    import errno

    import mtl_lora_vl.rundir as rundir
    from mtl_lora_vl.distributed import DistInfo
    from mtl_lora_vl.options import TrainOptions

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("old\n")
    opts = TrainOptions(tasks="vqa", out=str(run), overwrite=True, device="cpu")
    mkdir = Path.mkdir

    def full(self, *args, **kwargs):
        if self == run:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(rundir.RunDirError, match="cannot make the run directory.*Disk quota exceeded"):
        rundir.claim_run_dir(run, opts, DistInfo())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run / "metrics.jsonl").read_text() == "old\n"


def test_a_sigterm_as_the_claimed_path_is_made_puts_the_replaced_run_back(tmp_path, monkeypatch):
    """Helper 556: claim_run_dir made the returned ``Path`` after its ``try``: a SIGTERM (or Ctrl-C) landing there --
    pathlib's own Python code, where a pending signal's handler runs -- escaped it after the old run was set aside,
    and start's clean-up (the lock, the process group) does not put it back: the old run was left in .run.replaced,
    an empty run/ in its place. The path is now made inside the ``try`` that puts the run back."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"tasks": "vqa", "method": "mtl_lora", "out": str(run)}))
    (run / "metrics.jsonl").write_text("old\n")
    opts = TrainOptions(tasks="vqa", out=str(run), overwrite=True, device="cpu")
    real_path, real_broadcast, sent = rundir.Path, rundir.broadcast_from_main, []

    def broadcast(obj, info):
        sent.append("broadcast")
        return real_broadcast(obj, info)

    def made(*parts):   # a SIGTERM as the claimed path (str(run), broadcast) is made
        if sent == ["broadcast"] and parts == (str(run),):
            sent.append("SIGTERM")
            signal.raise_signal(signal.SIGTERM)
        return real_path(*parts)

    monkeypatch.setattr(rundir, "broadcast_from_main", broadcast)
    monkeypatch.setattr(rundir, "Path", made)
    with pytest.raises(Terminated), terminate_raises():
        rundir.claim_run_dir(run, opts, DistInfo())
    assert sent == ["broadcast", "SIGTERM"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run / "metrics.jsonl").read_text() == "old\n"
