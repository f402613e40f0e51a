"""Growing an adapter bank's task dimension (``add_task``), the tasks it had kept exact: :class:`TaskGrowth`, which
:class:`.layers.AdapterBank` inherits. It appends the rows the bank draws (``_new_task_rows``: the initialisation, with
the rest of the adapter math, stays in :mod:`.layers`), freezes every other adapter tensor, and keeps the old rows
exact with a gradient hook and a snapshot (:mod:`.grow` restores it after each optimizer step).
"""

from __future__ import annotations

import torch
from torch import nn


class TaskGrowth:
    """The task-growth half of :class:`.layers.AdapterBank` (a mixin of ``nn.Module``). The bank provides
    ``ADAPTER_PARAM_NAMES``, ``task_tensor_names()``, ``_new_task_rows()`` and ``lora_A``, and starts with
    ``_n_frozen = 0`` and ``_frozen_names = ()``."""

    @property
    def frozen_task_rows(self) -> int:
        """How many leading task rows ``grow_tasks`` froze (0 when the bank never grew)."""
        return self._n_frozen

    @torch.no_grad()
    def grow_tasks(self, n_new: int = 1) -> int:
        """Append ``n_new`` tasks, initialised as at construction (Λ = I, w ~ U(±1/√n), task_lora: new A, B = 0).

        Afterwards only the grown rows train: every other adapter tensor is frozen, and a gradient hook
        zeroes the frozen rows' gradients (so Adam-type moments stay zero and, with weight_decay=0, the
        update is exactly zero). The frozen rows -- the tasks the bank had before its first growth -- are
        kept in a snapshot (non-persistent ``_frozen_<name>`` buffers); :meth:`restore_frozen_rows` puts
        them back, which merge/export do first and which ``mtl_lora_vl.adapters.grow.freeze_old_rows``
        does after every step of the optimizer it is given, so weight decay cannot move them either.
        Growing again keeps the first snapshot: every task added since trains. The grown tensors are new
        ``nn.Parameter`` objects: build the optimizer after growing. Returns the number of new elements.
        """
        if n_new < 1:
            raise ValueError(f"grow_tasks: n_new must be >= 1, got {n_new}")
        self.restore_frozen_rows()
        dev = self.lora_A.device
        trainable = 0
        names = self.task_tensor_names()
        for name in self.ADAPTER_PARAM_NAMES:
            if hasattr(self, name) and name not in names:
                getattr(self, name).requires_grad_(False)
        first = not self._n_frozen
        for name in names:
            old = getattr(self, name).detach()
            rows = self._new_task_rows(name, n_new, old, dev)
            if first:
                self.register_buffer("_frozen_" + name, old.clone(), persistent=False)
            param = nn.Parameter(torch.cat([old, rows.to(old.dtype)]))
            param.register_hook(_zero_rows_hook(getattr(self, "_frozen_" + name).shape[0]))
            setattr(self, name, param)
            trainable += rows.numel()
        if first and names:
            self._n_frozen = getattr(self, "_frozen_" + names[0]).shape[0]
        self._frozen_names = names
        return trainable

    def frozen_values(self) -> int:
        """Values of this bank's ``requires_grad`` tensors that ``grow_tasks`` froze (rows kept exact by a
        gradient hook, not by ``requires_grad``): what a count of trainable parameters must leave out."""
        return sum(getattr(self, "_frozen_" + n).numel() for n in self._frozen_names if getattr(self, n).requires_grad)

    def __setstate__(self, state: dict) -> None:
        """deepcopy and pickle drop tensor hooks: re-register the ones that keep grown tensors' old rows frozen."""
        super().__setstate__(state)
        for name in self._frozen_names:   # (a hook needs requires_grad; it stays when that is switched off again)
            p = getattr(self, name)
            wanted = p.requires_grad
            p.requires_grad_(True)
            p.register_hook(_zero_rows_hook(self._n_frozen))
            p.requires_grad_(wanted)

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        """Put back the snapshot of the rows that ``grow_tasks`` froze (a no-op otherwise)."""
        for name in self._frozen_names:
            snap = getattr(self, "_frozen_" + name)
            getattr(self, name)[: snap.shape[0]].copy_(snap)


def _zero_rows_hook(n_old: int):
    """A gradient hook that zeroes the first ``n_old`` rows (the frozen tasks) of a task tensor."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_old] = 0
        return grad

    return hook


