"""add_task: grow a trained adapter by one task, training only that task's own tensors."""

from __future__ import annotations

from torch import nn

from .attach import attach_info


def add_task(model: nn.Module, name: str) -> int:
    """Add task ``name`` to a trained adapter and make only its own tensors trainable; return their count.

    Every bank grows by one task (MTL-LoRA: Λ_t = I, w_t ~ U(−1/√n, 1/√n); moe_lora: a gate row;
    task_lora: a new A_t (kaiming) and B_t = 0; lora / multi_lora share everything, so nothing new
    trains and 0 is returned: train the new head only). A and every B_i are frozen, gradients of the
    existing tasks' rows are zeroed, and those rows are restored from a snapshot after every optimizer
    step, so the existing tasks' outputs stay bit-identical whatever the optimizer. Build the optimizer
    after this call (the grown tensors are new parameters); weight_decay=0 for them is still advised so
    the optimizer's own view of those tensors matches. Save with ``save_adapter`` as usual.
    """
    info = attach_info(model)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"add_task: the task name must be a non-empty string, got {name!r}")
    if name in info.config.tasks:
        raise ValueError(f"add_task: the adapter already has a task {name!r} (tasks: {info.config.tasks}); "
                         "choose a new name")
    if info.router.merged_task is not None:
        raise ValueError("add_task: the adapters are merged into the weights; call mtl_lora_vl.unmerge(model) first")
    trainable = sum(bank.grow_tasks(1) for bank in info.layers.values())
    info.config.tasks.append(name)
    info.router.tasks.append(name)
    return trainable
