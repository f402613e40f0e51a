"""One optimizer step: forward and backward over the micro-batches (AMP, DDP sync), then clip and step."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import Backbone
from ..data.loader import to_device
from ..distributed import DistInfo
from ..precision import autocast
from .checkpoint import CHECKPOINT_NAME
from .optim import Optimization

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What one step's forward passes gave: ``losses`` under metrics.jsonl's names, ``loss`` the loss averaged
    over micro-batches and ``loss/<task>`` each task's loss over the micro-batches it was in (a task named
    ``loss`` is ``loss/loss``, not the total), whether all were finite, the samples seen by all ranks, and this
    rank's rows that were given a substitute image, per task."""

    losses: dict[str, float]
    finite: bool
    samples: int
    replaced: dict[str, int] = field(default_factory=dict)


def task_row_scales(batches: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per micro-batch, each task's scale ``n_tm * A / n_t`` (``n_tm`` its rows in micro-batch m, ``n_t`` in the
    step, ``A`` the micro-batches): with it, the mean over the A micro-batches of a task's scaled per-row mean is
    the mean over all its rows of the step, as one batch of them gives -- also for a task that misses some
    micro-batches (mixed batches smaller than the task count), which counting only those it is in weighed by k/A."""
    counts = [{name: int(v["rows"].numel()) for name, v in b.get("tasks", {}).items()} for b in batches]
    total: dict[str, int] = {}
    for c in counts:
        for name, n in c.items():
            total[name] = total.get(name, 0) + n
    return [{name: n * len(batches) / total[name] for name, n in c.items()} for c in counts]


def forward_backward(net: nn.Module, batches: Iterator[dict[str, Any]], optim: Optimization, *,
                     accumulate: int, backbone: Backbone, amp_dtype: torch.dtype, info: DistInfo) -> StepResult:
    """Zero the gradients, then forward and backward ``accumulate`` micro-batches under autocast.

    Gradients sync across ranks only on the last micro-batch. The losses stay on the device until the
    step's end, where one host read (after one all-reduce of the finite flag under DDP) gives them all: a
    GPU is never made to wait mid-step. A non-finite loss on any rank, or (without fp16's loss scaling, which
    finds them itself) non-finite gradients after a finite loss, make the caller skip the step (its
    gradients are discarded, so the backward passes after it did no harm). With ``accumulate`` > 1 each
    micro-batch carries its tasks' row scales (``loss_scales``, :func:`task_row_scales`), which the model
    applies to its losses.
    """
    optim.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}
    micro_batches: dict[str, int] = {}  # per task: the micro-batches it was in (its mean, without loss_scales)
    total_sum: Any = 0.0
    samples = 0
    replaced: dict[str, int] = {}
    micro_list = [next(batches) for _ in range(accumulate)]   # host batches: the step's rows per task first
    if accumulate > 1:   # each task's rows weigh alike over the step's micro-batches
        for b, scales in zip(micro_list, task_row_scales(micro_list)):
            b["loss_scales"] = scales
    for micro in range(accumulate):
        batch = to_device(micro_list[micro], info.device, amp_dtype, backbone)
        for task, n in batch.get("replaced", {}).items():
            replaced[task] = replaced.get(task, 0) + n
        sync = micro == accumulate - 1 or not info.enabled
        with net.no_sync() if not sync else contextlib.nullcontext():
            with autocast(info.device, amp_dtype):
                total, per_task = net(batch)
            optim.scaler.scale(total / accumulate).backward()
        samples += batch["task_ids"].numel() * info.world_size
        for k, v in per_task.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
            micro_batches[k] = micro_batches.get(k, 0) + 1
        total_sum = total_sum + total.detach().float() / accumulate
    keys = list(sums)
    ok = torch.isfinite(torch.as_tensor(total_sum))
    grads = [p.grad for p in optim.params if p.grad is not None]
    if grads and not optim.scaler.is_enabled():   # a finite loss can still give NaN gradients (sqrt at 0, ...)
        ok = ok & torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
    ok = ok.to(torch.float32).reshape(1)
    if info.enabled:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    values = torch.cat([ok, total_sum.reshape(1), *(sums[k].reshape(1) for k in keys)]).tolist()
    # with loss_scales (accumulate > 1) a task's scaled losses sum to `accumulate` times its mean over its rows
    losses = {f"loss/{k}": v / (accumulate if accumulate > 1 else micro_batches[k]) for k, v in zip(keys, values[2:])}
    losses["loss"] = values[1]
    return StepResult(losses, values[0] == 1.0, samples, replaced)


def optimizer_step(optim: Optimization, grad_clip: float) -> bool:
    """Clip (``grad_clip > 0``), step through the scaler, and advance the schedule unless fp16 skipped the step.
    Returns whether the step was taken (False: fp16's loss scaling found non-finite gradients and lowered its
    scale instead)."""
    scaler = optim.scaler
    if grad_clip > 0:
        scaler.unscale_(optim.optimizer)
        torch.nn.utils.clip_grad_norm_(optim.params, grad_clip)
    scale = optim.loss_scale   # as the last step's update left it: read then, not again
    scaler.step(optim.optimizer)
    scaler.update()
    if scale is not None and optim.read_loss_scale() < scale:  # a lowered scale means the scaler skipped the step
        return False
    optim.scheduler.step()
    return True


class ScalerSkips:
    """The steps fp16 loss scaling skipped: counted per log window (``fp16_skipped_steps`` and the scale in
    metrics.jsonl) and over the run, reported at its end; a scale below 1 stops it (:func:`check_loss_scale`)."""

    def __init__(self, optim: Optimization, counts: tuple[int, int] = (0, 0)) -> None:
        """``counts``: (skipped in all, of them logged) so far, e.g. before a resume (a checkpoint's ``state``)."""
        self.optim = optim
        self.total, self.logged = counts

    @property
    def state(self) -> tuple[int, int]:
        """(skipped in all, of them logged): what a checkpoint keeps."""
        return self.total, self.logged

    def add(self, step: int, run_dir: Path) -> None:
        """Count a skipped step; a loss scale below 1 stops the run (:func:`check_loss_scale`)."""
        self.total += 1
        check_loss_scale(self.optim, step, run_dir)

    def flush(self) -> dict[str, float]:
        """The window's fields for metrics.jsonl (none without fp16 loss scaling)."""
        if not self.optim.scaler.is_enabled():
            return {}
        row = {"fp16_skipped_steps": self.total - self.logged, "loss_scale": self.optim.loss_scale}
        self.logged = self.total
        return row

    def report(self, trained: int) -> None:
        """Say how many of the ``trained`` steps were skipped (a warning above 10 %)."""
        if self.total:
            many = self.total > 0.1 * trained
            (logger.warning if many else logger.info)(
                "fp16 loss scaling skipped %d of the %d steps trained (their gradients overflowed in fp16; the "
                "learning-rate schedule waits on them); metrics.jsonl logs fp16_skipped_steps%s", self.total, trained,
                "; many skips: --precision bf16 avoids them" if many else "")


def _checkpoint_hint(run_dir: Path, note: str = "") -> str:
    """Where a stopped run goes on from: its last checkpoint, or (none saved yet) a fresh start."""
    if (run_dir / CHECKPOINT_NAME).is_file():
        return f"The last checkpoint{note} is in {run_dir}"
    return f"No checkpoint was saved yet (--save-every); start again with --out {run_dir} --overwrite"


def check_loss_scale(optim: Optimization, step: int, run_dir: Path) -> None:
    """Stop an fp16 run whose loss scale fell below 1: its gradients are non-finite at any scale (NaN, not an
    overflow), so every step is skipped and nothing trains -- the scaler alone would go on, silently."""
    scale = optim.loss_scale
    if scale is not None and scale < 1.0:
        raise FloatingPointError(
            f"step {step}: fp16 loss scaling has skipped every step since its scale fell to {scale:g} (the gradients "
            "are not finite at any scale); lower --lr, use --precision bf16 or fp32 (with --base-dtype fp32 if the "
            f"base loads in fp16), or check the data. {_checkpoint_hint(run_dir)}")


def skip_bad_step(optim: Optimization, bad: int, step: int, max_bad: int, run_dir: Path,
                  amp_dtype: torch.dtype = torch.float32) -> None:
    """A step whose loss or gradients were non-finite: warn and drop its gradients; ``max_bad`` in a row stop
    the run. ``amp_dtype``: the run's autocast dtype (the advice names a wider precision only where there is one)."""
    logger.warning("step %d: non-finite loss or gradients, step skipped (%d in a row)", step, bad)
    if bad >= max_bad:
        wider = {torch.float16: "use --precision bf16 or fp32 (with --base-dtype fp32 if the base loads in fp16), ",
                 torch.bfloat16: "use --precision fp32 (with --base-dtype fp32 if the base loads in bf16), "}
        raise FloatingPointError(
            f"{bad} non-finite steps in a row at step {step}; lower --lr, {wider.get(amp_dtype, '')}or check the "
            f"data. {_checkpoint_hint(run_dir, ' (it may hold steps skipped before this stop)')}")
    optim.optimizer.zero_grad(set_to_none=True)
