"""Adapter parameter counts per method and rank, and the rank that matches a parameter budget.

Counts come from attaching each configuration to a copy of the real backbone and counting
``trainable_parameters`` -- the same number the trainer reports -- so no formula can drift from the
layers.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..adapters.attach import attach, trainable_parameters
from ..backbones import load_backbone
from ..config import MTLLoRAConfig


class ParameterCounter:
    """Counts adapter parameters of configurations on one backbone (loaded once, copied per count)."""

    def __init__(self, backbone: str = "builtin", pretrained: str | None = None, base: nn.Module | None = None, *,
                 pretrained_as: str = "pretrained"):
        """``pretrained_as``: what a refusal of ``pretrained`` calls it (``--pretrained`` from the command line)."""
        self.base = base if base is not None else load_backbone(backbone, pretrained, "cpu",
                                                                pretrained_as=pretrained_as).model
        self._cache: dict[tuple, int] = {}

    def count(self, n_tasks: int, **cfg: Any) -> int:
        """Adapter parameters of ``MTLLoRAConfig(**cfg)`` with ``n_tasks`` tasks on this backbone."""
        key = (n_tasks, tuple(sorted(cfg.items())))
        if key not in self._cache:
            model = copy.deepcopy(self.base)
            attach(model, MTLLoRAConfig(tasks=[f"task{i}" for i in range(n_tasks)], **cfg))
            self._cache[key] = trainable_parameters(model)
        return self._cache[key]

    def matching_rank(self, target: int, n_tasks: int, max_rank: int = 1024, **cfg: Any) -> int:
        """The rank r whose count is closest to ``target`` (the smaller r on a tie).

        Counts grow with r, so the first r reaching ``target`` is found by doubling and bisection.
        """
        hi = 1
        while hi < max_rank and self.count(n_tasks, **cfg, r=hi) < target:
            hi *= 2
        hi = min(hi, max_rank)
        lo = hi // 2 + 1 if hi > 1 else 1  # count(hi // 2) < target
        while lo < hi:
            mid = (lo + hi) // 2
            if self.count(n_tasks, **cfg, r=mid) < target:
                lo = mid + 1
            else:
                hi = mid
        if hi > 1 and target - self.count(n_tasks, **cfg, r=hi - 1) <= self.count(n_tasks, **cfg, r=hi) - target:
            return hi - 1
        return hi
