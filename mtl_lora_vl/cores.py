"""The cores this process may use and the loader workers they take, without torch: a command line checks
``--threads`` and ``--workers`` against them before it imports torch (:mod:`.distributed` counts them across the
ranks of a torchrun run with the same rules).

The cores a process may use are its affinity mask capped by its cgroup's CPU quota (``docker --cpus 2`` on a 64-core
host leaves the mask at 64 cores) and by ``LOKY_MAX_CPU_COUNT``, as loky and joblib count them: min(mask,
ceil(quota / period), LOKY_MAX_CPU_COUNT). The quota is read from this process's own cgroup (and those above it)
where ``/proc/self/mountinfo`` says its hierarchy is mounted."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

__all__ = ["LOKY_MAX_CPU_COUNT", "WORKERS_PER_CORE", "CpuQuota", "affinity", "check_local_workers", "cores_note",
           "cpu_quota", "local_cores", "local_ranks", "loky_cap", "own_limits", "pooled_note", "refuse_workers",
           "usable_cores"]

#: The most loader workers --workers may ask for per core this rank may use: more only compete for the cores, and
#: --workers 1000000 forked processes (each a copy of the run) for minutes before the first step.
WORKERS_PER_CORE = 4

#: The variable loky (and so joblib) reads as the most cores a process may use, below its mask and quota.
LOKY_MAX_CPU_COUNT = "LOKY_MAX_CPU_COUNT"


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


class _Mount(NamedTuple):
    """A cgroup hierarchy mounted in this process's mount namespace: the folder of the hierarchy it shows
    (``root``: a container's own cgroup, where the host's path to it is hidden), where it shows it, and its
    controllers (None: cgroup v2, whose controllers every folder lists for itself)."""

    root: str
    point: Path
    controllers: frozenset[str] | None


def _unescape(field: str) -> str:
    """A ``/proc/self/mountinfo`` path field as the path it names (the kernel writes a space as ``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(root: Path) -> list[_Mount]:
    """The cgroup mounts ``/proc/self/mountinfo`` lists (``ID PARENT DEV ROOT POINT OPTIONS [OPTIONAL...] - TYPE
    SOURCE SUPER_OPTIONS``; a v1 mount's controllers are among its super options); where it cannot be read, v2 at
    ``/sys/fs/cgroup`` and v1's ``cpu`` at ``/sys/fs/cgroup/cpu``, the folders loky reads."""
    try:
        lines = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return [_Mount("/", root / "sys/fs/cgroup", None), _Mount("/", root / "sys/fs/cgroup/cpu", frozenset({"cpu"}))]
    mounts = []
    for line in lines:
        mount, sep, fs = line.partition(" - ")
        fields, kind = mount.split(), fs.split()
        if not sep or len(fields) < 5 or not kind or kind[0] not in ("cgroup", "cgroup2"):
            continue
        controllers = None if kind[0] == "cgroup2" else frozenset(kind[2].split(",") if len(kind) > 2 else ())
        mounts.append(_Mount(_unescape(fields[3]), root / _unescape(fields[4]).lstrip("/"), controllers))
    return mounts


def _below(path: str, top: str) -> list[str] | None:
    """The folders of cgroup ``path`` below ``top`` (a mount's root), or None where ``path`` is not under it."""
    parts, head = [p for p in path.split("/") if p not in ("", ".")], [p for p in top.split("/") if p not in ("", ".")]
    return parts[len(head):] if parts[:len(head)] == head else None


def _folders(mounts: list[_Mount], path: str) -> list[Path]:
    """The folder of cgroup ``path`` in each of ``mounts`` that shows it, and each folder above it up to that mount's
    top: a parent's limit also binds its children, and a hierarchy mounted twice (a container's own cgroup at
    ``/sys/fs/cgroup``, the host's whole hierarchy at ``/host/sys/fs/cgroup``) shows the parents in one mount only.
    Where none shows it (a path outside this cgroup namespace, ``/../x``, or under another mount root), the top of
    the first mount, the top this process sees."""
    folders: list[Path] = []
    for mount in mounts:
        parts = _below(path, mount.root)
        if parts is not None and ".." not in parts:
            folders += [f for f in (mount.point.joinpath(*parts[:i]) for i in range(len(parts), -1, -1))
                        if f not in folders]
    return folders or ([mounts[0].point] if mounts else [])


def cpu_quota(root: str | os.PathLike[str] = "/") -> CpuQuota | None:
    """The tightest CPU quota on this process's cgroup and the cgroups above it, rounded up to whole cores
    (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, each read where
    ``/proc/self/mountinfo`` says its hierarchy is mounted); None where none is set or the system has no cgroups.
    ``root`` is where ``/proc`` and ``/sys`` are read (tests give it a fake tree)."""
    mounts = _mounts(Path(root))
    found: list[tuple[float, Path]] = []
    for controllers, path in _own_cgroups(Path(root)):
        names = frozenset(controllers.split(","))
        if controllers == "":
            shown, read = [m for m in mounts if m.controllers is None], _quota_v2
        elif "cpu" in names:
            shown, read = [m for m in mounts if m.controllers is not None and "cpu" in m.controllers], _quota_v1
        else:
            continue
        for folder in _folders(shown, path):
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


def loky_cap(environ: Mapping[str, str] = os.environ) -> int | None:
    """The most cores :data:`LOKY_MAX_CPU_COUNT` lets a process use (at least 1, as loky and joblib count a 0 or a
    negative one), None where it is not set; a value that is not a whole number is refused, as loky refuses it."""
    text = environ.get(LOKY_MAX_CPU_COUNT)
    if text is None:
        return None
    try:
        return max(1, int(text))
    except ValueError:
        raise ValueError(f"{LOKY_MAX_CPU_COUNT}={text!r} is not a whole number: set it to the most cores a process "
                         f"may use (loky and joblib read it so), or unset it") from None


def usable_cores(mask: list[int], quota: CpuQuota | None, cap: int | None = None) -> int:
    """How many cores a process with affinity ``mask`` under ``quota`` may use: the mask capped by the quota and by
    ``cap`` (:func:`loky_cap`)."""
    return max(1, min([len(mask), *(n for n in (None if quota is None else quota.cores, cap) if n is not None)]))


def cores_note(mask: list[int], quota: CpuQuota | None, cap: int | None) -> str:
    """What capped this process's cores below its affinity mask, as a refusal says it (empty where nothing did)."""
    return _capped_note(len(mask), None if quota is None else quota.cores, [] if quota is None else [quota.cgroup],
                        cap, f"{LOKY_MAX_CPU_COUNT}={cap}", ranks=None)


def pooled_note(ranks: int, masked: int, quotas: Mapping[str, int] | None, caps: list[int] | None) -> str:
    """What capped the cores the ``ranks`` ranks on one machine share below the ``masked`` cores of their affinity
    masks' union, as a refusal says it (empty where nothing did): their cgroups' CPU quotas (``quotas``: cores by
    cgroup, None where some rank has none) or their :data:`LOKY_MAX_CPU_COUNT` caps (None where some rank has none),
    as :func:`.distributed.node_cores` pools them. :func:`cores_note` says it for one process."""
    return _capped_note(masked, None if quotas is None else sum(quotas.values()), sorted(quotas or {}),
                        None if caps is None else sum(caps),
                        f"their {LOKY_MAX_CPU_COUNT} ({', '.join(map(str, caps or []))})", ranks=ranks)


def _capped_note(masked: int, quota: int | None, cgroups: list[str], cap: int | None, cap_said: str,
                 ranks: int | None) -> str:
    """The note of :func:`cores_note` (``ranks`` None: "its" mask) and :func:`pooled_note` (``ranks`` ranks: "their"
    masks and the cores they share): ``quota`` (cores, set by ``cgroups``) or ``cap`` (``cap_said`` names it) below
    ``masked`` cores, the cap named where it sets the figure (where both do too); empty where neither caps them."""
    usable = max(1, min([masked, *(n for n in (quota, cap) if n is not None)]))
    if usable >= masked:
        return ""
    whose, masks = ("its", "mask") if ranks is None else ("their", "masks")
    share = "" if ranks is None else f"the {ranks} ranks here share {usable}: "
    if cap is not None and cap == usable:
        said = f"{cap_said} caps"
    elif not cgroups:
        return ""
    elif len(cgroups) == 1:
        said = f"the CPU quota of {whose} cgroup {cgroups[0]} allows {usable} of"
    else:
        said = f"the CPU quotas of their cgroups {', '.join(cgroups)} allow {usable} of"
    return f" ({share}{said} the {masked} cores of {whose} affinity {masks})"


def local_ranks(environ: Mapping[str, str] = os.environ) -> int:
    """How many ranks run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return max(1, int(environ.get("LOCAL_WORLD_SIZE", "1")))


def own_limits(root: str | os.PathLike[str] = "/",
               environ: Mapping[str, str] = os.environ) -> tuple[list[int], CpuQuota | None, int | None]:
    """(this process's affinity mask, its CPU quota, its :data:`LOKY_MAX_CPU_COUNT` cap): what
    :func:`usable_cores` and :func:`cores_note` take."""
    return affinity(), cpu_quota(root), loky_cap(environ)


def local_cores(root: str | os.PathLike[str] = "/", environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(the cores this process may use: its affinity mask capped by its CPU quota and LOKY_MAX_CPU_COUNT, the ranks
    on this machine) for a process outside a distributed run, as :func:`.distributed.node_cores` counts them there."""
    return usable_cores(*own_limits(root, environ)), local_ranks(environ)


def refuse_workers(workers: int, cores: int, local: int, note: str = "") -> None:
    """Refuse a --workers beyond :data:`WORKERS_PER_CORE` times this rank's share (``cores // local``) of its
    machine's usable cores; ``note`` says what capped them (:func:`cores_note`)."""
    if workers <= 0:
        return
    most = WORKERS_PER_CORE * max(1, cores // local)
    if workers > most:
        raise ValueError(f"--workers {workers}: this process may use {max(1, cores // local)} core(s) of this "
                         f"machine{note}, and each loader worker is a process of its own; more than {most} only "
                         f"compete for the cores (a machine stalls forking that many); give --workers {most} or fewer")


def check_local_workers(workers: int, root: str | os.PathLike[str] = "/",
                        environ: Mapping[str, str] = os.environ) -> None:
    """:func:`refuse_workers` for a process outside a distributed run (``check_workers(workers, DistInfo())``)."""
    limits = own_limits(root, environ)
    refuse_workers(workers, usable_cores(*limits), local_ranks(environ), cores_note(*limits))
