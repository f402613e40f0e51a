"""The optimizer side of a run: AdamW over adapters and heads, its learning-rate schedule, the grad scaler."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..multitask import MultiTaskModel
from ..options import TrainOptions
from .schedule import cosine_with_warmup


@dataclass
class Optimization:
    """AdamW, its learning-rate schedule and the fp16 grad scaler; ``params`` are every trained tensor."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]
    _scale: float | None = field(default=None, init=False, repr=False)   # loss_scale, read once per step

    @property
    def loss_scale(self) -> float | None:
        """fp16's loss scale as of the last :meth:`read_loss_scale` (None without loss scaling). Reading the
        scaler's scale waits for the GPU, so the step reads it once (after its update) and the rest asks here."""
        if self._scale is None:
            self.read_loss_scale()
        return self._scale

    def read_loss_scale(self) -> float | None:
        """Read the scaler's scale now (a host sync once the scaler has stepped) and keep it as :attr:`loss_scale`."""
        self._scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        return self._scale

    @property
    def lr(self) -> float:
        """The adapters' current learning rate: that of the first group that trains something (an --extend run
        with --task-lr-mult trains only Λ_t / w_t, in the second group)."""
        rates = self.scheduler.get_last_lr()
        return next((lr for g, lr in zip(self.optimizer.param_groups, rates) if g["params"]), rates[0])

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's, scheduler's and scaler's states, for a checkpoint."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s states (an older checkpoint's single head group split as this version's)."""
        optimizer, scheduler = state["optimizer"], state["scheduler"]
        if len(optimizer["param_groups"]) == len(self.optimizer.param_groups) - 1:
            optimizer, scheduler = self._split_head_group(optimizer, scheduler)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        if state["scaler"] or not self.scaler.is_enabled():  # a run saved without loss scaling (fp32, bf16)
            self.scaler.load_state_dict(state["scaler"])     # resumed in fp16 starts its scale afresh
        self._scale = None

    def _split_head_group(self, optimizer: dict[str, Any], scheduler: dict[str, Any]) -> tuple[dict, dict]:
        """A checkpoint of a version that kept every head tensor in one group (weight decay on biases and
        retrieval's temperature too), in this version's two: those tensors' states moved to the no-decay group."""
        heads = self.params[len(self.params) - len(optimizer["param_groups"][-1]["params"]):]
        ids = optimizer["param_groups"][-1]["params"]
        decayed = dict(optimizer["param_groups"][-1], params=[i for i, p in zip(ids, heads) if not _no_decay(p)])
        undecayed = dict(optimizer["param_groups"][-1], params=[i for i, p in zip(ids, heads) if _no_decay(p)],
                         weight_decay=0.0)
        optimizer = {**optimizer, "param_groups": [*optimizer["param_groups"][:-1], decayed, undecayed]}
        scheduler = {**scheduler, **{k: [*scheduler[k], scheduler[k][-1]] for k in ("base_lrs", "_last_lr")
                                     if k in scheduler}}
        return optimizer, scheduler


def _no_decay(p: torch.Tensor) -> bool:
    """Head tensors that take no weight decay, as CLIP and open_clip train theirs: biases and scalars (retrieval's
    learnable temperature, which decay alone pulled from 100 towards 97 over the default run)."""
    return p.ndim < 2


def adamw(params: Iterable[Any], **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused (one kernel for every tensor, not ~10 per tensor) where torch has the fused
    kernel for every parameter's device (CPU and CUDA). Adapters are many small tensors, so on a CPU the
    for-each-tensor loop costs ~3.5x the fused step (384 MTL-LoRA tensors of ViT-B/32: 36 ms vs 10 ms)."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def build_optimization(model: MultiTaskModel, opts: TrainOptions, total_steps: int, device: torch.device,
                       amp_dtype: torch.dtype) -> Optimization:
    """AdamW groups (adapters at ``--lr``, Λ_t/w_t at ``--lr × --task-lr-mult`` when that is not 1, heads at
    ``--head-lr``), all at ``--weight-decay`` but the heads' biases and scalars; warm-up + cosine, a fp16 scaler.
    A fresh and an --extend run follow the one rule (the latter trains only the new tasks' rows)."""
    adapter_params = [p for p in model.model.parameters() if p.requires_grad]
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    # --weight-decay on every trained adapter tensor, an --extend run's too: the old tasks' rows of its grown
    # tensors are put back after each step (freeze_old_rows), so decay trains the new rows as a joint run does
    groups = [{"params": adapter_params, "lr": opts.lr}]
    if opts.task_lr_mult != 1.0:  # Lambda_t and w_t in a group of their own (only then: old checkpoints resume)
        task_specific = {id(p) for n, p in model.model.named_parameters() if n.endswith(("lora_lambda", "lora_w"))}
        if not any(id(p) in task_specific for p in adapter_params):
            raise ValueError(f"--task-lr-mult {opts.task_lr_mult:g}: these adapters train no task-specific Lambda_t / "
                             "w_t tensors (only mtl_lora and moe_lora have them), so it would change nothing; drop it "
                             "(or raise --lr)")
        groups = [{"params": [p for p in adapter_params if id(p) not in task_specific], "lr": opts.lr},
                  {"params": [p for p in adapter_params if id(p) in task_specific], "lr": opts.lr * opts.task_lr_mult}]
    optimizer = adamw([*groups, {"params": [p for p in head_params if not _no_decay(p)], "lr": opts.head_lr},
                       {"params": [p for p in head_params if _no_decay(p)], "lr": opts.head_lr, "weight_decay": 0.0}],
                      weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(opts.warmup, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Optimization(optimizer, scheduler, scaler, adapter_params + head_params)
