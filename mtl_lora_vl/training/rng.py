"""The random generators a training process draws from: seeding them, and their state for checkpoints.

A process draws from Python's ``random``, NumPy's global generator, torch's CPU generator and one CUDA
generator per device (adapter dropout draws from the generator of the device it runs on). Each rank has
its own streams: rank 0 continues the stream of ``--seed`` (a single-process run is unchanged), rank
r > 0 is reseeded from ``(seed, r)`` once the model is built, so ranks do not draw the same dropout masks.

:func:`rng_state` is the state of all of them as tensors and plain values (a checkpoint is read with
``torch.load(weights_only=True)``); :func:`set_rng_state` puts it back. A training checkpoint keeps the CUDA
state of the process's own GPU alone (``cuda_own``), and a resume puts it on the GPU that process trains on
now: the GPUs' numbers depend on ``CUDA_VISIBLE_DEVICES`` (rank 1's ``cuda:1`` is ``cuda:0`` when each rank
sees one GPU), and the other devices' streams are not drawn from.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..data.sampler import mix_seed
from ..log import rank_prefix, warn_user

_RANK = 6      # stream tag for mix_seed (the loader uses 1, 2, 4 and 5)


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy's global generator and torch (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Give rank ``rank`` its own streams for training from ``step`` on (rank 0 at step 0 keeps ``seed``'s)."""
    if rank == 0 and step == 0:
        return
    key = mix_seed(seed, _RANK, rank, step)
    random.seed(key)
    np.random.seed([key & 0xFFFFFFFF, key >> 32])
    torch.manual_seed(key)


def _cuda_live() -> bool:
    # Only a process that has used CUDA has CUDA streams to save (and no GPU context is made to find out).
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _cuda_index(device: torch.device | None) -> int | None:
    """The index of ``device`` when it is a CUDA device (the current one when it names none), else None."""
    if device is None or device.type != "cuda":
        return None
    return torch.cuda.current_device() if device.index is None else device.index


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's generator states: ``python``, ``numpy``, ``torch`` (CPU) and ``cuda`` (one per device).
    With ``device`` (the GPU a training process runs on), that device's CUDA state alone, as ``cuda_own``
    (and ``cuda`` empty)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    own = _cuda_index(device)
    if _cuda_live():
        if own is None:
            state["cuda"] = list(torch.cuda.get_rng_state_all())
        else:
            state["cuda_own"] = torch.cuda.get_rng_state(own)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore a :func:`rng_state`. A ``cuda_own`` state goes to ``device`` (the GPU this process trains on;
    on a CPU it has nothing to restore); per-device states (``cuda``) are restored by device number, for the
    devices present (with a warning when the saved and present device counts differ)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    own, index = state.get("cuda_own"), _cuda_index(device)
    if own is not None and index is not None:
        torch.cuda.set_rng_state(own, index)
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        present = torch.cuda.device_count()
        if present != len(cuda):
            warn_user(f"{rank_prefix()}the checkpoint holds CUDA generator states of {len(cuda)} devices, this "
                      f"machine has {present}; restoring the first {min(present, len(cuda))}")   # (each machine's)
        for i, s in enumerate(cuda[:present]):
            torch.cuda.set_rng_state(s, i)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block and put every generator back afterwards (evaluation during training does not move
    the training streams, so ``--eval-every`` does not change what is trained). CUDA generators that the block
    brought into being go back to the seed they would have started from (the last ``torch.manual_seed``'s)."""
    saved, seed, live = rng_state(), torch.initial_seed(), _cuda_live()
    try:
        yield
    finally:
        set_rng_state(saved)
        if not live and _cuda_live():   # the block made the CUDA generators: back to the seed they would start from
            torch.cuda.manual_seed_all(seed)
