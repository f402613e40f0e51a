"""Deterministic randomness in the training loader, independent of workers, prefetching and resumption.

Whatever a task kind draws while a row is made (``sample_text`` / ``sample_fields``: a random reference
caption, an augmentation) comes from Python's ``random``, NumPy's global ``numpy.random`` and torch's CPU
generator, **reseeded for every row** from ``(seed, rank, step, position in the batch)``. So a row's
randomness is a function of where it sits in the run, not of which worker made it, how far workers had
prefetched, or whether the run was resumed: ``--workers 0``, ``--workers 4`` and a resumed run make the
same batches. (A kind that keeps its own unseeded generator, e.g. ``numpy.random.default_rng()``, opts
out of this.)

In the main process (``--workers 0``) the three generators are put back after each batch, so making a
batch never moves the training stream (dropout). The ``DataLoader`` gets a generator of its own
(:func:`loader_generator`), reseeded from ``(seed, rank, step)`` whenever an iterator starts: PyTorch
draws each iterator's worker base seed from it (workers seed ``random``, ``torch`` and NumPy with
``base_seed + worker_id``) instead of from the global generator, which it would otherwise advance.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from mtl_lora_vl.data.sampler import MultiTaskBatchSampler, mix_seed

_ROW, _LOADER = 4, 5      # stream tags for mix_seed (the sampler uses 1 and 2)


def row_seed(seed: int, rank: int, step: int, position: int) -> int:
    """The seed of the row at ``position`` of batch ``step`` on ``rank``."""
    return mix_seed(seed, _ROW, rank, step, position)


def seed_global_rngs(key: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's CPU generator (not CUDA) from ``key``."""
    random.seed(key)
    np.random.seed(key & 0xFFFFFFFF)
    torch.default_generator.manual_seed(key)


@contextlib.contextmanager
def kept_global_rngs() -> Iterator[None]:
    """In the main process, put ``random``, NumPy's and torch's CPU generators back after the block
    (a worker's own streams need no restoring)."""
    if get_worker_info() is not None:
        yield
        return
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class SeededBatches:
    """A :class:`MultiTaskBatchSampler` whose batches carry each row's seed: ``[(task_id, index, seed), ...]``."""

    def __init__(self, sampler: MultiTaskBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.sampler
        for batch in s:
            step = s.step - 1     # the sampler has advanced past this batch
            yield [(t, i, row_seed(s.seed, s.rank, step, p)) for p, (t, i) in enumerate(batch)]


class SeededDataset(Dataset):
    """A dataset addressed by ``(task_id, index)``, read by ``(task_id, index, seed)`` under that row's seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> list[Any]:
        """A batch of rows, each made with the global generators seeded from its own seed (the
        ``DataLoader`` fetches a batch through this)."""
        rows = []
        with kept_global_rngs():
            for task, index, seed in keys:
                seed_global_rngs(seed)
                rows.append(self.dataset[(task, index)])
        return rows

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        return self.__getitems__([key])[0]


def loader_generator() -> torch.Generator:
    """The ``DataLoader``'s own generator (see :func:`reseed_loader`)."""
    return torch.Generator()


def reseed_loader(generator: torch.Generator, seed: int, rank: int, step: int) -> None:
    """Seed the loader generator for an iterator starting at ``step``; its workers' base seed follows from it."""
    generator.manual_seed(mix_seed(seed, _LOADER, rank, step))
