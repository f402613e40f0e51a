"""The random generators a training process draws from: seeding them, and their state for checkpoints.

A process draws from Python's ``random``, NumPy's global generator, torch's CPU generator and one CUDA
generator per device (adapter dropout draws from the generator of the device it runs on). Each rank has
its own streams: rank 0 continues the stream of ``--seed`` (a single-process run is unchanged), rank
r > 0 is reseeded from ``(seed, r)`` once the model is built, so ranks do not draw the same dropout masks.

:func:`rng_state` is the state of all of them as tensors and plain values (a checkpoint is read with
``torch.load(weights_only=True)``); :func:`set_rng_state` puts it back.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..data.sampler import _mix
from ..log import warn_user

_RANK = 6      # stream tag for _mix (the loader uses 1, 2, 4 and 5)


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy's global generator and torch (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Give rank ``rank`` its own streams for training from ``step`` on (rank 0 at step 0 keeps ``seed``'s)."""
    if rank == 0 and step == 0:
        return
    key = _mix(seed, _RANK, rank, step)
    random.seed(key)
    np.random.seed([key & 0xFFFFFFFF, key >> 32])
    torch.manual_seed(key)


def _cuda_live() -> bool:
    # Only a process that has used CUDA has CUDA streams to save (and no GPU context is made to find out).
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def rng_state() -> dict[str, Any]:
    """This process's generator states: ``python``, ``numpy``, ``torch`` (CPU) and ``cuda`` (one per device)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if _cuda_live() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`rng_state`. CUDA states are restored for the devices present (with a warning when
    the saved and present device counts differ)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        present = torch.cuda.device_count()
        if present != len(cuda):
            warn_user(f"the checkpoint holds CUDA generator states of {len(cuda)} devices, this machine has "
                          f"{present}; restoring the first {min(present, len(cuda))}")
        for i, s in enumerate(cuda[:present]):
            torch.cuda.set_rng_state(s, i)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block and put every generator back afterwards (evaluation during training does not move
    the training streams, so ``--eval-every`` does not change what is trained)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
