"""Run directories: new, resumed, or replaced with --overwrite; never silently reused."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .distributed import DistInfo, barrier
from .options import TrainOptions


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it exists, or there is nothing to resume)."""


def prepare_run_dir(opts: TrainOptions, info: DistInfo) -> Path:
    """The run directory: new, resumed, or replaced with --overwrite; never silently reused."""
    if opts.resume:
        run = Path(opts.resume)
        if not (run / "config.json").is_file():
            raise RunDirError(f"--resume {run}: not a run directory (no config.json); give the --out folder of a run")
        return run
    if opts.out:
        run = Path(opts.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = Path("runs") / f"{opts.tasks.replace(',', '+').replace('/', '_')}-{opts.method}-{stamp}"
    if run.exists() and any(run.iterdir()):
        if not opts.overwrite:
            raise RunDirError(
                f"--out {run}: the directory exists and is not empty; pass --overwrite to replace it, "
                f"--resume {run} to continue it, or choose another --out"
            )
        if info.is_main:
            shutil.rmtree(run)
    barrier(info)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
    barrier(info)
    return run

