"""The clean-up of a training run that ends in an error or a stop: what it lets go (the loader's workers, the run's
lock, the process group) and what it puts back (the run ``--overwrite`` replaced, before the new run's first
checkpoint). :func:`.train.start` calls :func:`undo_start` when it fails once the run directory is claimed, and
:func:`let_go` whenever it fails once the process group is up (after what each failing step lets go first: the
lock, ``all_ready``'s collective); ``train`` calls :func:`clean_up_run` when the run fails after it; each under
:func:`.stopping.cleaning_up_after` (a SIGTERM there neither cuts the clean-up short nor replaces what ended the run),
and the caller re-raises. :func:`close_run` ends every run, however it ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from ..data.loader import MultiTaskLoader
from ..distributed import DistInfo, cleanup
from ..options import TrainOptions
from ..run_overwrite import undo_overwrite
from .run import Run
from .stopping import stop_signals_ignored

__all__ = ["clean_up_run", "close_run", "let_go", "undo_start"]


def undo_start(info: DistInfo, run_dir: Path, opts: TrainOptions, lock: IO | None, held_elsewhere: bool) -> None:
    """``start`` failed (or was stopped) once it claimed ``run_dir``: rank 0 puts back the run ``--overwrite``
    replaced (not where the directory is ``held_elsewhere``: a run training in it now, nothing of ours to put back
    there), and the lock is let go."""
    if info.is_main and not held_elsewhere:
        with stop_signals_ignored():
            undo_overwrite(run_dir, opts, lock)
    if lock is not None:
        lock.close()


def let_go(info: DistInfo) -> None:
    """``start`` failed (or was stopped) once the process group was up -- a refused ``--workers``, a set-up's error
    (after ``all_ready``), the run directory's claim, :func:`undo_start`'s failure --: the process group is let go (a
    no-op where ``all_ready`` already did, and in one process). It stayed up for a caller in Python."""
    cleanup(info)


def clean_up_run(run: Run, loader: MultiTaskLoader | None) -> None:
    """The run failed (or was stopped) after ``start``: the loader's workers stopped, the replaced run put back
    (rank 0), then :func:`close_run`, even where that put-back failed."""
    try:
        with stop_signals_ignored():   # (nor a Ctrl-C the put-back)
            if loader is not None:
                loader.close()   # (its forked workers hold a copy of the run's lock, which undo lets go)
            if run.info.is_main:   # failed before its first checkpoint: the old run is back
                undo_overwrite(run.dir, run.opts, run.lock)
    finally:
        close_run(run, loader)


def close_run(run: Run, loader: MultiTaskLoader | None) -> None:
    """The loader's workers, the run's lock and the process group, let go (as the run ends, however it ends)."""
    if loader is not None:
        loader.close()   # its workers ignore SIGTERM: left to exit, a failed run never ended
    if run.lock is not None:
        run.lock.close()
    cleanup(run.info)
