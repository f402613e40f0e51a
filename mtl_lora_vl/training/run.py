"""The state every phase of a training run reads (:class:`Run`), built by :func:`.train.start`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from ..distributed import DistInfo
from ..multitask import Setup
from ..options import TrainOptions
from ..precision import base_weights_dtype, dtype_flag

__all__ = ["Run"]


@dataclass
class Run:
    """What every phase of a run reads: its options, process, directory, precision and built setup."""

    opts: TrainOptions
    info: DistInfo
    dir: Path
    amp_dtype: torch.dtype
    setup: Setup
    total_steps: int
    workers: int
    #: The checkpoint a resumed run read at start-up (dropped once restored).
    saved: dict | None = None
    #: --keep-best: the validation evaluation the run finished with (eval.json "selected").
    selected: dict | None = None
    #: Rank 0's open RUN/.lock (rundir.hold_run_dir): another --resume or --overwrite of the run is refused meanwhile.
    lock: IO | None = None

    @property
    def trained(self) -> list[str]:
        """The tasks this run trains, in adapter order (all, or the new ones of an ``--extend`` run)."""
        return list(self.setup.train_splits)

    @property
    def resolved(self) -> dict[str, Any]:
        """What this process trains with where the options say ``auto`` or a resume may choose anew (config.json's
        ``resolved``): its device, the processes, loader workers, autocast dtype and base weights' dtype."""
        return {"device": str(self.info.device), "world_size": self.info.world_size, "workers": self.workers,
                "precision": dtype_flag(self.amp_dtype),
                "base_dtype": dtype_flag(base_weights_dtype(self.setup.model.model))}
