"""Loader workers and ``--workers`` / ``--threads`` limits count a container's CPU quota (helper 492).

Only the affinity mask was counted: a container limited to 2 CPUs by a cgroup quota (``docker --cpus 2``) on a
64-core host sees all 64 cores in its mask, so it took the default 4 loader workers and allowed ``--workers 256``.
The cores now are min(mask, ceil(quota / period)), the quota read from cgroup v2 ``cpu.max`` or v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of this process's cgroup and those above it, as loky counts them. The
tests read fake ``/proc`` and ``/sys`` trees."""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path

import pytest

import mtl_lora_vl.distributed as dist_mod
from mtl_lora_vl.cores import CpuQuota, check_local_workers, cpu_quota, local_cores, refuse_workers
from mtl_lora_vl.distributed import DistInfo, check_workers, node_cores
from mtl_lora_vl.training import loading


def _tree(root: Path, cgroup: str | None, files: dict[str, str], mounts: str | None = None,
          under: str = "sys/fs/cgroup") -> Path:
    """A fake root: ``/proc/self/cgroup`` (none when ``cgroup`` is None), ``/proc/self/mountinfo`` (none when
    ``mounts`` is None) and files under ``/<under>``."""
    for name, text in (("cgroup", cgroup), ("mountinfo", mounts)):
        if text is not None:
            (root / "proc/self").mkdir(parents=True, exist_ok=True)
            (root / "proc/self" / name).write_text(text)
    for rel, text in files.items():
        path = root / under / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def _mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """``/proc/self/mountinfo`` lines of (mount root, mount point, fs type, super options) mounts."""
    return "".join(f"{30 + i} 23 0:{40 + i} {top} {point} rw,nosuid,nodev,noexec,relatime shared:{9 + i} - {kind} "
                   f"{kind} {opts}\n" for i, (top, point, kind, opts) in enumerate(mounts))


def _cores(quota: CpuQuota | None) -> int | None:
    return None if quota is None else quota.cores


@pytest.mark.parametrize(("text", "cores"), [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1),
                                             ("6400000 100000", 64), ("max 100000", None)])
def test_cgroup_v2_cpu_max_in_a_container(tmp_path, text, cores):
    root = _tree(tmp_path, "0::/\n", {"cpu.max": text})
    assert _cores(cpu_quota(root)) == cores


def test_cgroup_v2_a_parents_quota_binds_its_children(tmp_path):
    root = _tree(tmp_path, "0::/jobs/run7\n", {"cpu.max": "max 100000", "jobs/cpu.max": "300000 100000",
                                               "jobs/run7/cpu.max": "max 100000"})
    assert cpu_quota(root) == CpuQuota(3, str(root / "sys/fs/cgroup/jobs"))
    (root / "sys/fs/cgroup/jobs/run7/cpu.max").write_text("100000 100000\n")   # the tighter one counts
    assert _cores(cpu_quota(root)) == 1


def test_cgroup_v2_the_process_own_cgroup_not_the_top(tmp_path):
    # the top of a host's hierarchy sets none; this process's slice does (what loky, reading only the top, misses)
    root = _tree(tmp_path, "0::/user.slice/job.scope\n", {"cpu.max": "max 100000",
                                                         "user.slice/job.scope/cpu.max": "400000 100000"})
    assert _cores(cpu_quota(root)) == 4


@pytest.mark.parametrize(("quota", "cores"), [("200000", 2), ("-1", None)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, cores):
    # a docker v1 container: /proc/self/cgroup names its host path, the mount shows that cgroup at its top
    mounts = _mountinfo(("/docker/abc", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
                        ("/docker/abc", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
                        ("/docker/abc", "/sys/fs/cgroup/cpuset", "cgroup", "rw,cpuset"))
    root = _tree(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/docker/abc\n",
                 {"cpu,cpuacct/cpu.cfs_quota_us": quota, "cpu,cpuacct/cpu.cfs_period_us": "100000"}, mounts)
    assert _cores(cpu_quota(root)) == cores


@pytest.mark.parametrize(("line", "point", "folder"), [
    ("4:cpuacct,cpu:/batch", "/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct/batch"),   # the names in another order
    ("4:cpu,cpuacct:/batch", "/cgroup/cpu", "cpu/batch"),                          # mounted outside /sys/fs/cgroup
    ("4:cpu:/batch", "/sys/fs/cgroup/my\\040cpu", "my cpu/batch")])               # a space in the mount point
def test_cgroup_v1_read_where_mountinfo_says_it_is_mounted(tmp_path, line, point, folder):
    """Helper 498: v1's folder was guessed from the controller names (``/sys/fs/cgroup/<names>``, else ``.../cpu``),
    so a cpu hierarchy mounted under another name or elsewhere set no quota; it is read from the mount table."""
    under = "cgroup" if point.startswith("/cgroup/") else "sys/fs/cgroup"
    root = _tree(tmp_path, line + "\n", {f"{folder}/cpu.cfs_quota_us": "300000",
                                         f"{folder}/cpu.cfs_period_us": "100000"},
                 _mountinfo(("/", point, "cgroup", "rw,cpu,cpuacct")), under=under)
    assert cpu_quota(root) == CpuQuota(3, str(root / under / folder))


def test_a_mount_that_shows_a_cgroup_at_its_top(tmp_path):
    """A v2 container without its own cgroup namespace: /proc/self/cgroup gives the host's path, the mount shows that
    folder at its top. A folder of the same path below the top is another cgroup, not this process's."""
    root = _tree(tmp_path, "0::/system.slice/docker-abc.scope\n",
                 {"cpu.max": "200000 100000", "system.slice/docker-abc.scope/cpu.max": "100000 100000"},
                 _mountinfo(("/system.slice/docker-abc.scope", "/sys/fs/cgroup", "cgroup2", "rw")))
    assert cpu_quota(root) == CpuQuota(2, str(root / "sys/fs/cgroup"))


def test_cgroup_v1_mounted_as_cpu(tmp_path):
    files = {"cpu/batch/cpu.cfs_quota_us": "250000", "cpu/batch/cpu.cfs_period_us": "100000"}
    root = _tree(tmp_path / "mounts", "4:cpu,cpuacct:/batch\n", files,
                 _mountinfo(("/", "/sys/fs/cgroup/cpu", "cgroup", "rw,cpu,cpuacct")))
    assert _cores(cpu_quota(root)) == 3
    assert _cores(cpu_quota(_tree(tmp_path / "no-mountinfo", "4:cpu,cpuacct:/batch\n", files))) == 3   # loky's place


def test_without_proc_the_top_files_are_read(tmp_path):
    assert _cores(cpu_quota(_tree(tmp_path / "v2", None, {"cpu.max": "200000 100000"}))) == 2
    assert _cores(cpu_quota(_tree(tmp_path / "v1", None, {"cpu/cpu.cfs_quota_us": "100000",
                                                          "cpu/cpu.cfs_period_us": "100000"}))) == 1


def test_no_cgroups_or_unreadable_files_set_no_quota(tmp_path):
    assert cpu_quota(tmp_path / "empty") is None
    assert cpu_quota(_tree(tmp_path / "bad", "0::/\n", {"cpu.max": "garbage"})) is None
    assert cpu_quota(_tree(tmp_path / "out", "0::/../../x\n", {"cpu.max": "max 100000"})) is None


def test_local_cores_and_the_workers_limit_count_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    root = _tree(tmp_path, "0::/\n", {"cpu.max": "200000 100000"})
    assert local_cores(root) == (2, 1)                       # was (64, 1)
    assert node_cores(DistInfo(), root) == (2, 1)
    with pytest.raises(ValueError, match=r"--workers 9: .* 2 core\(s\).* give --workers 8 or fewer"):
        refuse_workers(9, *local_cores(root))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert local_cores(root) == (1, 1)                       # the mask when it is the smaller


def test_default_workers_in_a_two_cpu_container(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    root = _tree(tmp_path, "0::/\n", {"cpu.max": "200000 100000"})
    monkeypatch.setattr(dist_mod, "cpu_quota", lambda _="/": cpu_quota(root))
    assert loading.default_workers(DistInfo()) == 1          # 2 cores less the trainer; was 4


def test_ranks_pool_the_quotas_of_their_cgroups(monkeypatch):
    host = socket.gethostname()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("GROUP_RANK", "0")
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    mine = CpuQuota(4, "/sys/fs/cgroup")
    monkeypatch.setattr(dist_mod, "cpu_quota", lambda root="/": mine)

    def gather(parts, me, quotas):
        assert me == ((host, "0"), list(range(64)), tuple(mine), None)
        parts[:] = [((host, "0"), list(range(64)), q, None) for q in quotas]

    monkeypatch.setattr(dist_mod.dist, "all_gather_object", partial(gather, quotas=[tuple(mine)] * 2))
    assert node_cores(DistInfo(world_size=2)) == (4, 2)      # one container's 4 CPUs, shared
    other = (4, "/sys/fs/cgroup/other")
    monkeypatch.setattr(dist_mod.dist, "all_gather_object", partial(gather, quotas=[tuple(mine), other]))
    assert node_cores(DistInfo(world_size=2)) == (8, 2)      # two cgroups of 4 each
    monkeypatch.setattr(dist_mod.dist, "all_gather_object", partial(gather, quotas=[tuple(mine), None]))
    assert node_cores(DistInfo(world_size=2)) == (64, 2)     # a rank with no quota may use its whole mask


@pytest.mark.parametrize(("value", "cores"), [("3", 3), ("100", 64), ("0", 1), ("-2", 1), (" 5\n", 5)])
def test_loky_max_cpu_count_caps_the_cores(tmp_path, monkeypatch, value, cores):
    """Helper 498: LOKY_MAX_CPU_COUNT, which loky and joblib take as the most cores a process may use (int() of
    it, at least 1), was not read: the mask and the quota alone were counted."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    root = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000"})
    assert local_cores(root, {}) == (64, 1)
    assert local_cores(root, {"LOKY_MAX_CPU_COUNT": value}) == (cores, 1)
    assert local_cores(_tree(tmp_path / "quota", "0::/\n", {"cpu.max": "200000 100000"}),
                       {"LOKY_MAX_CPU_COUNT": value}) == (min(cores, 2), 1)   # the tighter of the two
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", value)
    assert node_cores(DistInfo(), root) == (cores, 1)


@pytest.mark.parametrize("value", ["", "two", "2.5"])
def test_a_loky_max_cpu_count_that_is_no_whole_number_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match=rf"LOKY_MAX_CPU_COUNT={value!r} is not a whole number: set it to the most "
                                         r"cores a process may use .*, or unset it"):
        local_cores(tmp_path, {"LOKY_MAX_CPU_COUNT": value})


def test_ranks_pool_their_loky_max_cpu_counts(monkeypatch):
    host = socket.gethostname()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("GROUP_RANK", "0")
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "3")
    monkeypatch.setattr(dist_mod, "cpu_quota", lambda root="/": None)

    def gather(parts, me, caps):
        assert me == ((host, "0"), list(range(64)), None, 3)
        parts[:] = [((host, "0"), list(range(64)), None, c) for c in caps]

    monkeypatch.setattr(dist_mod.dist, "all_gather_object", partial(gather, caps=[3, 3]))
    assert node_cores(DistInfo(world_size=2)) == (6, 2)      # each process may use 3
    monkeypatch.setattr(dist_mod.dist, "all_gather_object", partial(gather, caps=[3, None]))
    assert node_cores(DistInfo(world_size=2)) == (64, 2)     # a rank without it may use its whole mask


@pytest.mark.parametrize(("files", "env", "said"), [
    ({"cpu.max": "200000 100000"}, {}, "the CPU quota of its cgroup {top} allows 2 of the 64 cores of its affinity "
                                       "mask"),
    ({"cpu.max": "200000 100000"}, {"LOKY_MAX_CPU_COUNT": "1"}, "LOKY_MAX_CPU_COUNT=1 caps the 64 cores of its "
                                                                "affinity mask"),
    ({"cpu.max": "max 100000"}, {"LOKY_MAX_CPU_COUNT": "2"}, "LOKY_MAX_CPU_COUNT=2 caps the 64 cores of its affinity "
                                                             "mask")])
def test_the_workers_refusal_says_what_capped_the_cores(tmp_path, monkeypatch, files, env, said):
    """Helper 498: the refusal said "may use 2 core(s) of this machine" on a 64-core machine, not that a quota (or
    LOKY_MAX_CPU_COUNT) capped them."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    root = _tree(tmp_path, "0::/\n", files)
    want = said.format(top=root / "sys/fs/cgroup")
    with pytest.raises(ValueError, match=r"--workers 9: this process may use \d core\(s\) of this machine \(") as e:
        check_local_workers(9, root, env)
    assert f"machine ({want}), and each loader worker" in str(e.value)
    monkeypatch.setattr(dist_mod, "cpu_quota", lambda root="/": cpu_quota(tmp_path))   # (check_workers: under torchrun)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as e:
        check_workers(9, DistInfo())
    assert f"machine ({want}), and each loader worker" in str(e.value)


def test_the_workers_refusal_says_nothing_more_where_the_mask_is_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.raises(ValueError, match=r"may use 2 core\(s\) of this machine, and each loader worker"):
        check_local_workers(9, _tree(tmp_path, "0::/\n", {"cpu.max": "400000 100000"}), {"LOKY_MAX_CPU_COUNT": "8"})


@pytest.mark.parametrize(("masks", "quotas", "caps", "said"), [
    # two ranks pinned to 8 cores each, one cgroup's quota of 4 over both: each may use 2
    ([range(8), range(8, 16)], [(4, "/sys/fs/cgroup")] * 2, [None, None],
     "may use 2 core(s) of this machine (the 2 ranks here share 4: the CPU quota of their cgroup /sys/fs/cgroup "
     "allows 4 of the 16 cores of their affinity masks), "),
    ([range(64)] * 2, [(2, "/a"), (2, "/b")], [None, None],
     "may use 2 core(s) of this machine (the 2 ranks here share 4: the CPU quotas of their cgroups /a, /b allow 4 of "
     "the 64 cores of their affinity masks), "),
    ([range(64)] * 2, [None, None], [3, 3],
     "may use 3 core(s) of this machine (the 2 ranks here share 6: their LOKY_MAX_CPU_COUNT (3, 3) caps the 64 "
     "cores of their affinity masks), "),
    # each rank's own cap (3 of its 4 cores) is not what limits the 4 cores the two share
    ([range(4)] * 2, [None, None], [3, 3], "may use 2 core(s) of this machine, and each loader worker")])
def test_the_workers_refusal_under_torchrun_says_what_capped_the_cores_the_ranks_share(
        monkeypatch, masks, quotas, caps, said):
    """Helper 505: under torchrun the refusal's note described this rank's own limits, beside the pooled share it
    refuses by: two ranks pinned to 8 cores each under one quota of 4 were told they "may use 2 core(s) (the CPU quota
    of its cgroup /sys/fs/cgroup allows 4 of the 8 cores of its affinity mask)"; two with LOKY_MAX_CPU_COUNT=3 on 4
    shared cores that "LOKY_MAX_CPU_COUNT=3 caps the 4 cores", where it capped nothing they share."""
    host = socket.gethostname()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(masks[0]), raising=False)
    monkeypatch.setenv("GROUP_RANK", "0")
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    if caps[0] is not None:
        monkeypatch.setenv("LOKY_MAX_CPU_COUNT", str(caps[0]))
    monkeypatch.setattr(dist_mod, "cpu_quota", lambda root="/": None if quotas[0] is None else CpuQuota(*quotas[0]))

    def gather(parts, me):
        parts[:] = [((host, "0"), list(m), q, c) for m, q, c in zip(masks, quotas, caps)]

    monkeypatch.setattr(dist_mod.dist, "all_gather_object", gather)
    with pytest.raises(ValueError, match=r"--workers 99: this process ") as e:
        check_workers(99, DistInfo(world_size=2))
    assert said in str(e.value)


def test_a_hierarchy_mounted_twice_is_read_through_the_mount_that_shows_the_parents(tmp_path):
    """Helper 505: the first mount that showed the cgroup was read alone. A pod (cgroup v1, no cgroup namespace)
    mounting the host's hierarchy too (``/host/sys/fs/cgroup``, as node exporters and monitoring agents do): its own
    mount shows its container's cgroup at its top, the pod's quota above it only in the host's mount, and that 2-CPU
    quota was missed (no quota: the 64-core mask)."""
    mounts = _mountinfo(("/kubepods/pod1/ctr", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
                        ("/", "/host/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"))
    root = _tree(tmp_path, "4:cpu,cpuacct:/kubepods/pod1/ctr\n",
                 {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, mounts)
    host = root / "host/sys/fs/cgroup/cpu,cpuacct"
    for folder, quota in (("", "-1"), ("kubepods", "-1"), ("kubepods/pod1", "200000"), ("kubepods/pod1/ctr", "-1")):
        (host / folder).mkdir(parents=True, exist_ok=True)
        (host / folder / "cpu.cfs_quota_us").write_text(quota + "\n")
        (host / folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(root) == CpuQuota(2, str(host / "kubepods/pod1"))
