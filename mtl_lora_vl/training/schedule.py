"""The learning-rate schedule: linear warm-up, then cosine decay (training runs and backbone pretraining)."""

from __future__ import annotations

import math
from collections.abc import Callable


def cosine_with_warmup(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """Learning-rate factor of a step (for ``LambdaLR``): linear warm-up to 1 over ``warmup`` steps, then
    cosine decay to ``floor`` at step ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
