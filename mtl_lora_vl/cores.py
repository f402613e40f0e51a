"""The cores this process may use and the loader workers they take, without torch: a command line checks
``--threads`` and ``--workers`` against them before it imports torch (:mod:`.distributed` counts them across the
ranks of a torchrun run with the same rules).

The cores a process may use are its affinity mask capped by its cgroup's CPU quota (``docker --cpus 2`` on a 64-core
host leaves the mask at 64 cores), as loky, joblib and torch count them: min(mask, ceil(quota / period))."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

__all__ = ["WORKERS_PER_CORE", "CpuQuota", "affinity", "check_local_workers", "cpu_quota", "local_cores",
           "local_ranks", "refuse_workers", "usable_cores"]

#: The most loader workers --workers may ask for per core this rank may use: more only compete for the cores, and
#: --workers 1000000 forked processes (each a copy of the run) for minutes before the first step.
WORKERS_PER_CORE = 4


def affinity() -> list[int]:
    """The cores this process may run on (its affinity mask; every core where the system has none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


class CpuQuota(NamedTuple):
    """A cgroup's CPU bandwidth limit in whole cores, and the cgroup directory that sets it (ranks that share it
    share the cores)."""

    cores: int
    cgroup: str


def _quota_v2(folder: Path) -> float | None:
    """Cores from cgroup v2's ``cpu.max`` (``QUOTA PERIOD``; ``max`` when unlimited), None where it sets none."""
    quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
    return None if quota == "max" else _ratio(quota, period or "100000")


def _quota_v1(folder: Path) -> float | None:
    """Cores from cgroup v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (a quota of -1 is none)."""
    return _ratio((folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text())


def _ratio(quota: str, period: str) -> float | None:
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(root: Path) -> list[tuple[str, str]]:
    """(controllers, path) of each hierarchy this process belongs to, from ``/proc/self/cgroup`` (``/`` for both
    versions where it cannot be read: the files at the top of ``/sys/fs/cgroup``, as loky reads them)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return [("", "/"), ("cpu", "/")]
    return [(ctl, path) for _, ctl, path in (line.split(":", 2) for line in lines if line.count(":") >= 2)]


def _with_ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and each folder above it up to ``base``: a parent's limit also binds its children. A path
    outside this cgroup namespace (``/../x``) is read at ``base``, the top this process sees."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        parts = []
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cpu_quota(root: str | os.PathLike[str] = "/") -> CpuQuota | None:
    """The tightest CPU quota on this process's cgroup and the cgroups above it, rounded up to whole cores
    (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None where none is set or the system
    has no cgroups. ``root`` is where ``/proc`` and ``/sys`` are read (tests give it a fake tree)."""
    top = Path(root) / "sys/fs/cgroup"
    found: list[tuple[float, Path]] = []
    for controllers, path in _own_cgroups(Path(root)):
        names = controllers.split(",")
        if controllers == "":
            folders, read = _with_ancestors(top, path), _quota_v2
        elif "cpu" in names:
            mount = next((m for m in (top / controllers, top / "cpu") if m.is_dir()), top / "cpu")
            folders, read = _with_ancestors(mount, path), _quota_v1
        else:
            continue
        for folder in folders:
            try:
                cores = read(folder)
            except (OSError, ValueError):   # no such file at this level, or one this kernel writes otherwise
                continue
            if cores is not None:
                found.append((cores, folder))
    if not found:
        return None
    cores, folder = min(found, key=lambda f: f[0])
    return CpuQuota(max(1, math.ceil(cores)), str(folder))


def usable_cores(mask: list[int], quota: CpuQuota | None) -> int:
    """How many cores a process with affinity ``mask`` under ``quota`` may use: the mask capped by the quota."""
    return len(mask) if quota is None else max(1, min(len(mask), quota.cores))


def local_ranks() -> int:
    """How many ranks run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def local_cores(root: str | os.PathLike[str] = "/") -> tuple[int, int]:
    """(the cores this process may use: its affinity mask capped by its CPU quota, the ranks on this machine) for a
    process outside a distributed run, as :func:`.distributed.node_cores` counts them there."""
    return usable_cores(affinity(), cpu_quota(root)), local_ranks()


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
