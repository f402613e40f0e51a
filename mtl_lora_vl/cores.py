"""The cores this process may use and the loader workers they take, without torch: a command line checks
``--threads`` and ``--workers`` against them before it imports torch (:mod:`.distributed` counts them across the
ranks of a torchrun run with the same rules)."""

from __future__ import annotations

import os

__all__ = ["WORKERS_PER_CORE", "affinity", "check_local_workers", "local_cores", "local_ranks", "refuse_workers"]

#: The most loader workers --workers may ask for per core this rank may use: more only compete for the cores, and
#: --workers 1000000 forked processes (each a copy of the run) for minutes before the first step.
WORKERS_PER_CORE = 4


def affinity() -> list[int]:
    """The cores this process may run on (its affinity mask; every core where the system has none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def local_ranks() -> int:
    """How many ranks run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def local_cores() -> tuple[int, int]:
    """(the cores this process may use, the ranks on this machine) for a process outside a distributed run, as
    :func:`.distributed.node_cores` counts them there."""
    return len(affinity()), local_ranks()


def refuse_workers(workers: int, cores: int, local: int) -> None:
    """Refuse a --workers beyond :data:`WORKERS_PER_CORE` times this rank's share (``cores // local``) of its
    machine's usable cores."""
    if workers <= 0:
        return
    most = WORKERS_PER_CORE * max(1, cores // local)
    if workers > most:
        raise ValueError(f"--workers {workers}: this process may use {max(1, cores // local)} core(s) of this machine, "
                         f"and each loader worker is a process of its own; more than {most} only compete for the "
                         f"cores (a machine stalls forking that many); give --workers {most} or fewer")


def check_local_workers(workers: int) -> None:
    """:func:`refuse_workers` for a process outside a distributed run (``check_workers(workers, DistInfo())``)."""
    refuse_workers(workers, *local_cores())
