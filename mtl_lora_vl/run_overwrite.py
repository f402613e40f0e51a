"""The run an ``--overwrite`` replaces (:mod:`.rundir` sets it aside as the new run's directory is claimed): kept in
``.RUN.replaced`` until the new run's first checkpoint, then deleted (:func:`finish_overwrite`), or put back when the
new run fails before it (:func:`undo_overwrite`); what a cut-short delete left is removed by the next run
(:func:`remove_overwrite_leftovers`)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO

from .options import TrainOptions

__all__ = ["finish_overwrite", "remove_overwrite_leftovers", "replaced_dir", "undo_overwrite"]


def replaced_dir(run: Path) -> Path:
    """Where ``--overwrite`` keeps the run it replaces until the new one has written a checkpoint: ``.RUN.replaced``,
    or for a name too long to take those 10 bytes more (a file name holds 255) its first 236 bytes and a short hash
    of it (the rename failed: every --overwrite of a run named with 246 to 255 bytes was refused)."""
    run = Path(os.path.abspath(run))   # (--out . has no name of its own)
    name = f".{run.name}.replaced"
    if len(name.encode()) > 255:
        digest = hashlib.sha256(run.name.encode()).hexdigest()[:8]
        name = f".{run.name.encode()[:236].decode(errors='ignore')}-{digest}.replaced"
    return run.with_name(name)


def finish_overwrite(run: Path) -> None:
    """The new run can be resumed (it wrote a checkpoint): delete the run ``--overwrite`` replaced (rank 0). It is
    renamed first, in one step: a Ctrl-C or SIGTERM during a long delete found it half gone, and
    :func:`undo_overwrite` put those remains in the new run's place, deleting its checkpoint."""
    aside = replaced_dir(run)
    if not aside.is_dir():
        return
    trash = Path(tempfile.mkdtemp(prefix=_trash_prefix(run), suffix=".old", dir=aside.parent))
    try:
        os.replace(aside, trash / "dir")
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _trash_prefix(run: Path) -> str:
    """The start of the name :func:`finish_overwrite` gives the run it deletes (mkdtemp adds 8 characters and
    ``.old``): ``.RUN.replaced.``, or for a name too long to take those 13 bytes more (a file name holds 255), its
    first 230 bytes and a short hash of it (mkdtemp failed: the new run stopped and its checkpoint was deleted)."""
    name = replaced_dir(run).name
    if len(name.encode()) <= 242:
        return f"{name}."
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:230].decode(errors='ignore')}-{digest}."


def remove_overwrite_leftovers(run: Path) -> list[Path]:
    """Delete what a :func:`finish_overwrite` cut short (a Ctrl-C, SIGTERM or crash during its delete) left of the
    run it replaced: ``.RUN.replaced.XXXXXXXX.old`` beside ``run``, of ``run`` only (``.RUN.replaced`` itself, which
    an unfinished --overwrite keeps to put back, and another run's, are left alone). Rank 0 only, while it holds
    ``run/.lock`` (:func:`hold_run_dir`): a run deleting its own leftovers holds that lock, so none is mid-delete.
    Returns those deleted."""
    aside = replaced_dir(run)
    pattern = re.compile(re.escape(_trash_prefix(run)) + r"[a-z0-9_]{8}\.old")   # tempfile.mkdtemp's 8 characters
    try:
        found = [p for p in aside.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    for p in found:
        shutil.rmtree(p, ignore_errors=True)   # (cut short again: the next run takes the rest)
    return found


def undo_overwrite(run: Path, opts: TrainOptions, lock: IO | None = None) -> None:
    """The new run failed before its first checkpoint: put back the run ``--overwrite`` replaced (rank 0; a no-op
    once :func:`finish_overwrite` ran, and for a run without ``--overwrite`` or a resumed one, which set nothing
    aside: a stale :func:`replaced_dir` left by a killed --overwrite is not theirs to put back over their own
    checkpoints). ``lock`` (:func:`hold_run_dir`) is let go first (and the loader's forked workers, which hold a
    copy, stopped before): on NFS the new run's open .lock would be kept as .nfsXXXX, and the folder could not be
    deleted."""
    if lock is not None:
        lock.close()
    aside = replaced_dir(run)
    if opts.overwrite and not opts.resume and aside.is_dir():
        shutil.rmtree(run, ignore_errors=True)
        os.replace(aside, run)
