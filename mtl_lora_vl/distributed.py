"""torchrun / DDP plumbing: who am I, which device, averaging numbers across ranks, sharded evaluation.

``torchrun --nproc_per_node N scripts/train_vl.py ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; we
then use NCCL on CUDA and gloo on the CPU. Without those variables everything is a no-op.

**Sharded evaluation.** Inside ``with sharded_evaluation(info):`` (every rank enters it), each call
``map_shards(fn, items)`` that a task kind makes around its per-example work (predicting answers,
embedding images or texts, generating captions) runs ``fn`` on this rank's contiguous shard of
``items`` only, then gathers the shards' results in order, so every rank gets what ``fn(items)`` gives
in one process: a list (concatenated) or a tensor (concatenated along dim 0, back on the device ``fn``
returned it on). The kind then computes its metrics from the full results as it always does. Outside
the scope, or without DDP, ``map_shards(fn, items)`` is ``fn(items)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .cores import affinity, cores_note, cpu_quota, local_ranks, loky_cap, pooled_note, refuse_workers, usable_cores
from .process_start import parent_died

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a run: its rank and the world size (1: no DDP), its local rank and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """Whether the run is distributed (more than one process)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs and writes."""
        return self.rank == 0


def _local_gpu(local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK``; ``cuda:0`` when CUDA_VISIBLE_DEVICES gives this process a single GPU (as
    ``srun --gpus-per-task=1`` does, while LOCAL_RANK counts on). A LOCAL_RANK with no GPU of its own is
    refused; processes that all set CUDA_VISIBLE_DEVICES to the same single GPU cannot be told apart from
    that case here, and NCCL refuses them ("Duplicate GPU detected")."""
    count = torch.cuda.device_count()
    if local_rank < count:
        return torch.device("cuda", local_rank)
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if count == 1 and len(visible) == 1:
        return torch.device("cuda", 0)
    raise RuntimeError(f"LOCAL_RANK {local_rank} has no GPU of its own: this process sees {count} CUDA devices "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); start at most "
                       f"{count} processes per node, or give each process one GPU")


def pick_device(requested: str = "auto", local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """``auto``: this rank's GPU when CUDA is there, else the CPU; otherwise the device asked for
    (``cpu``, ``cuda`` or ``cuda:N``; anything else is refused with a RuntimeError naming ``--device``).
    With several processes on this machine (``local_world_size`` > 1, torchrun's ``LOCAL_WORLD_SIZE``) each
    takes its own GPU, so ``cuda:N`` is refused; one process per node may name its GPU."""
    if requested == "auto":
        return _local_gpu(local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"--device {requested!r}: not a device this package runs on; use auto | cpu | cuda | "
                           "cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
        if device.index is None:
            return _local_gpu(local_rank)
        if local_world_size > 1:
            raise RuntimeError(f"--device {requested}: under torchrun every rank would use that one GPU (NCCL "
                               "refuses duplicate GPUs); use --device cuda (or auto): rank r takes cuda:LOCAL_RANK, "
                               "and CUDA_VISIBLE_DEVICES chooses which GPUs the ranks see")
        count = torch.cuda.device_count()
        if device.index >= count:
            raise RuntimeError(f"--device {requested}: this machine has {count} CUDA device(s), numbered 0 to "
                               f"{count - 1}; use auto | cpu | cuda | cuda:N with N < {count}")
    return device


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local, int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    if device.type == "cuda":  # the current device: kernels, pinned-memory copies and NCCL all use it
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():   # NCCL bound to this rank's GPU: its barrier and object
        cuda = device.type == "cuda"                # collectives use it (unbound, rank 0 warned at the first barrier)
        end_with_the_agent()
        dist.init_process_group(backend="nccl" if cuda else "gloo", **({"device_id": device} if cuda else {}))
    return DistInfo(rank, world, local, device)


_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def end_with_the_agent() -> bool:
    """Under torchrun on Linux, have the kernel send this rank SIGTERM when the agent that started it dies; whether
    it was asked. A ``kill -9`` of the agent (an OOM kill, a lost job step) left the ranks training under PID 1,
    holding the run's lock and ports; SIGTERM stops the loop at its step boundary with a checkpoint. The signal
    follows the agent thread that forked the rank: torchrun's ``agent.run()`` thread, which forks every rank and
    polls them until they end. A rank whose agent died during the call, or before it (since the package was imported:
    :mod:`.process_start`), SIGTERMs itself (the latter waited 30 minutes for the dead agent's store). Elsewhere (no
    torchrun, not Linux) nothing is asked."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (AttributeError, OSError):   # no prctl in this C library
        return False
    if os.getppid() != parent or parent_died():   # the agent died already: reparented, no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average each value over ranks (identity without DDP)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def max_over_ranks(value: int, info: DistInfo) -> int:
    """The largest of every rank's ``value`` (every rank must call it; ``value`` itself without DDP)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the gathered rows and keeps this
    rank's own (``torch.distributed.nn``'s version is deprecated in recent torch)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rows = slice(rank * t.shape[0], (rank + 1) * t.shape[0])
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows], None, None


def gather_with_grad(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order, gradients flowing back to each rank's own
    rows (open_clip's ``gather_with_grad``); ``t`` itself without DDP. Every rank must call it, with the same
    shape: the sampler gives every rank the same rows of each task per step."""
    if not info.enabled:
        return t
    return _GatherRows.apply(t, info.rank, info.world_size)


def broadcast_from_main(obj: T, info: DistInfo) -> T:
    """Rank 0's ``obj`` (picklable) on every rank; ``obj`` itself without DDP. Every rank must call it."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0, device=info.device if info.device.type == "cuda" else None)
    return box[0]


def all_ready(info: DistInfo, error: BaseException | None = None) -> None:
    """Every rank says whether its start-up failed (``error``) before any of them writes: a rank re-raises its
    own error, and the others raise too when any rank failed (rank 0 would otherwise go on to replace an
    ``--overwrite`` run and then wait for a rank that had stopped). Every rank must call it. A failed start-up
    destroys the process group on every rank (NCCL warns of one left undestroyed at exit). A rank stopped by a signal
    (``error`` a ``KeyboardInterrupt``: Ctrl-C, SIGTERM's ``Terminated``) is named as stopped, not as failed: it prints
    no error to say why (a Ctrl-C nothing at all)."""
    stopped = isinstance(error, KeyboardInterrupt)   # (sent above every rank's error: one value, the largest kept)
    failed = max_over_ranks(0 if error is None else info.rank + 1 + (info.world_size if stopped else 0), info)
    if failed:
        cleanup(info)
    if error is not None:
        raise error
    if failed > info.world_size:
        raise StartupError(f"the start-up was stopped on rank {failed - 1 - info.world_size} (a Ctrl-C or SIGTERM "
                           "there); nothing was written")
    if failed:
        raise StartupError(f"the start-up failed on rank {failed - 1} (that process's error says why); nothing "
                           "was written")


class StartupError(RuntimeError):
    """Another rank's start-up failed; that rank's error says why."""


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op in one process)."""
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Tear down the process group this run started, if any."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# Sharded evaluation ---------------------------------------------------------------------------------
# The sharded_evaluation scope open in this thread (or asyncio task): another thread's evaluation is not sharded.
_sharding: contextvars.ContextVar[DistInfo | None] = contextvars.ContextVar("mtl_lora_vl_sharding", default=None)


@contextlib.contextmanager
def sharded_evaluation(info: DistInfo) -> Iterator[None]:
    """While open (on every rank), :func:`map_shards` splits per-example work across the ranks of ``info``,
    in the thread that opened it."""
    token = _sharding.set(info)
    try:
        yield
    finally:
        _sharding.reset(token)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous shard of ``n`` items (sizes differ by at most one)."""
    return rank * n // world_size, (rank + 1) * n // world_size


class Shard(list):
    """One rank's part of a sequence, ``whole[start:stop]``, that remembers the whole and where it starts: an
    evaluation image that cannot be decoded gets the substitute one process would give it
    (:class:`~mtl_lora_vl.data.fallback.ImageFallback` chooses from ``whole``)."""

    def __init__(self, whole: Sequence[Any], start: int, stop: int) -> None:
        super().__init__(whole[start:stop])
        self.whole, self.start = whole, start


def map_shards(fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> R:
    """``fn(items)``, computed shard by shard across the ranks inside :func:`sharded_evaluation`.

    ``fn`` maps a sequence of items to one result per item, as a list or a tensor with one row per item.
    With fewer items than ranks every rank computes all of them (no rank gets an empty shard).
    """
    info = _sharding.get()
    if info is None or not info.enabled or len(items) < info.world_size:
        return fn(items)
    start, stop = shard_bounds(len(items), info.rank, info.world_size)
    part = fn(Shard(items, start, stop))
    if isinstance(part, torch.Tensor):
        return _all_gather_rows(part, info)  # type: ignore[return-value]
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, list(part))
    return [x for p in parts for x in p]  # type: ignore[return-value]


def node_cores(info: DistInfo, root: str | os.PathLike[str] = "/") -> tuple[int, int]:
    """(the cores the ranks on this machine may use between them, how many ranks run here). The cores are the
    union of those ranks' affinity masks: ranks that share one mask count it once, ranks a launcher pins to
    cores of their own (srun --cpu-bind) count each; capped, where every rank here has a CPU quota (a container's
    ``--cpus``), by the quotas of their cgroups (ranks in one cgroup share one), and where every rank here has a
    LOKY_MAX_CPU_COUNT, by their sum (it caps each process). Every rank calls it (a gather) when the run has several;
    ``root`` is where the quota is read (:func:`.cores.cpu_quota`)."""
    cores, local, _ = node_limits(info, root)
    return cores, local


def node_limits(info: DistInfo, root: str | os.PathLike[str] = "/") -> tuple[int, int, str]:
    """:func:`node_cores` and what capped those cores below the ranks' affinity masks, as a refusal says it
    (:func:`.cores.cores_note` for one rank here, :func:`.cores.pooled_note` for several)."""
    mask, quota, cap = affinity(), cpu_quota(root), loky_cap()
    if not info.enabled:
        return usable_cores(mask, quota, cap), local_ranks(), cores_note(mask, quota, cap)
    parts: list[Any] = [None] * info.world_size
    me = _machine()
    dist.all_gather_object(parts, (me, mask, None if quota is None else tuple(quota), cap))
    here = [(m, q, c) for machine, m, q, c in parts if machine == me]
    masked = len({c for m, _, _ in here for c in m})
    quotas = {cgroup: n for n, cgroup in (q for _, q, _ in here)} if all(q is not None for _, q, _ in here) else None
    caps = [c for _, _, c in here] if all(c is not None for _, _, c in here) else None
    cores = min([masked, *(n for n in (None if quotas is None else sum(quotas.values()),
                                       None if caps is None else sum(caps)) if n is not None)])
    note = cores_note(mask, quota, cap) if len(here) == 1 else pooled_note(len(here), masked, quotas, caps)
    return max(1, cores), len(here), note


def check_workers(workers: int, info: DistInfo) -> None:
    """Refuse a --workers beyond :data:`.cores.WORKERS_PER_CORE` times this rank's share of its machine's usable cores,
    before any work (every rank calls it: :func:`node_cores` gathers under torchrun); the refusal says what capped the
    cores the ranks here share (not this rank's own figures: its share of a pooled quota is not its own cap)."""
    if workers <= 0:
        return
    refuse_workers(workers, *node_limits(info))


def _machine() -> tuple[str, str]:
    """Which machine this rank runs on: the host name, and the launcher's node index where it gives one
    (torchrun's GROUP_RANK, Slurm's SLURM_NODEID) -- containers on different machines may share a host name."""
    node = os.environ.get("GROUP_RANK") or os.environ.get("SLURM_NODEID") or ""
    return socket.gethostname(), node


def union_over_shards(values: set[str]) -> set[str]:
    """The union of every rank's ``values`` inside :func:`sharded_evaluation` (``values`` itself elsewhere);
    every rank must call it."""
    info = _sharding.get()
    if info is None or not info.enabled:
        return values
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, sorted(values))
    return {v for p in parts for v in p}


def _all_gather_rows(part: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The ranks' tensors concatenated along dim 0, in rank order (shapes may differ in dim 0 only)."""
    comm = info.device if info.device.type == "cuda" else torch.device("cpu")   # NCCL: CUDA; gloo: CPU
    sizes = [torch.zeros(1, dtype=torch.int64, device=comm) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([part.shape[0]], dtype=torch.int64, device=comm))
    rows = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(rows), *part.shape[1:]), dtype=part.dtype, device=comm)
    padded[: part.shape[0]] = part.to(comm)
    out = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, rows)]).to(part.device)
