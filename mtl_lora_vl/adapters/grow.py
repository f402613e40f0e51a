"""add_task: grow a trained adapter by one task, training only that task's own tensors.

Keeping the existing tasks bit-identical needs two things: a gradient hook on each grown tensor
(installed by ``AdapterBank.grow_tasks``; it lives on the model's own parameters) and, because weight
decay moves parameters whatever their gradient, restoring the frozen rows after every optimizer step.
The latter is scoped to the optimizer the caller hands in (:func:`freeze_old_rows`, or
``AddedTask.freeze_old_rows``): nothing process-wide, no hook on any other optimizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..config import task_name_problem
from .attach import attach_info
from .layers import AdapterBank

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddedTask:
    """What :func:`add_task` did: the new task's name and id, how many adapter values will train, and the adapted
    projections the new task cannot adapt (``idle``: their frozen B_i are still all zero)."""

    model: nn.Module = field(repr=False)   # (printing it printed the whole model)
    name: str
    task_id: int
    trainable: int
    idle: tuple[str, ...] = ()

    def freeze_old_rows(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Keep the existing tasks' rows exact through ``optimizer``'s steps (see :func:`freeze_old_rows`)."""
        return freeze_old_rows(self.model, optimizer)


def _grown_banks(model: nn.Module) -> list[AdapterBank]:
    return [b for b in attach_info(model).layers.values() if b.frozen_task_rows]


def freeze_old_rows(model: nn.Module, optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """After every step of ``optimizer`` (and of no other), put back the rows ``add_task`` froze.

    Register it on the optimizer that trains a grown adapter; a no-op hook when nothing was grown.
    Returns the hook's handle (``handle.remove()`` to stop).
    """
    banks = _grown_banks(model)

    def restore(opt: torch.optim.Optimizer, args, kwargs) -> None:  # noqa: ARG001
        for bank in banks:
            bank.restore_frozen_rows()

    return optimizer.register_step_post_hook(restore)


def add_task(model: nn.Module, name: str) -> AddedTask:
    """Add task ``name`` to a trained adapter and make only its own tensors trainable.

    Every bank grows by one task (MTL-LoRA: Λ_t = I, w_t ~ U(−1/√n, 1/√n); moe_lora: a gate row;
    task_lora: a new A_t (kaiming) and B_t = 0; lora / multi_lora share everything, so nothing new
    trains and ``trainable`` is 0: train the new head only). A and every B_i are frozen and the existing
    tasks' rows get zero gradients. Build the optimizer after this call (the grown tensors are new
    parameters), then ``added.freeze_old_rows(optimizer)`` so those rows are restored after each of its
    steps and stay bit-identical whatever the optimizer (weight decay included: the training loop gives the
    new rows the decay a joint run gives them). Several tasks may be added in turn; all of them
    train. Save with ``save_adapter`` as usual.

    The new task does not start as the base model for ``mtl_lora`` and ``moe_lora``: its w_t mixes the
    already trained B_i (through Λ_t = I with mtl_lora), so its update is nonzero from step 0;
    ``task_lora``'s new task starts as the base (B_t = 0).
    """
    info = attach_info(model)
    problem = task_name_problem(name)
    if problem:
        raise ValueError(f"add_task: {problem}")
    if name.casefold() in {t.casefold() for t in info.config.tasks}:   # one file per task: case-insensitive
        raise ValueError(f"add_task: the adapter already has a task {name!r} (tasks: {info.config.tasks}; names "
                         "that differ only in case are one file on macOS and Windows); choose a new name")
    if info.router.merged_task is not None:
        raise ValueError("add_task: the adapters are merged into the weights; call mtl_lora_vl.unmerge(model) first")
    # shared B_i that no earlier task trained (a CoCa decoder under contrastive tasks) stay zero once frozen: the
    # new task's Λ_t, w_t there get zero gradients, so its values there do not count as training
    idle = tuple(path for path, bank in info.layers.items()
                 if bank.task_tensor_names() and "lora_B" not in bank.task_tensor_names() and not bank.lora_B.any())
    grown = {path: bank.grow_tasks(1) for path, bank in info.layers.items()}
    trainable = sum(n for path, n in grown.items() if path not in idle)
    info.config.tasks.append(name)
    info.router.tasks.append(name)
    if idle:
        logger.warning("add_task(%r): %d of %d adapted projections (e.g. %s) have up-projections B_i that are still "
                       "all zero (no earlier task trained them) and are frozen, so task %r cannot adapt them; to adapt "
                       "them, train all the tasks together in one run", name, len(idle), len(info.layers), idle[0],
                       name)
    return AddedTask(model, name, len(info.config.tasks) - 1, trainable, idle)
