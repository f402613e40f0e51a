"""Runs of rows: a route's segments (the maximal runs of consecutive rows with one task, as the loader makes them)
and how many runs per task layers apply one by one (:meth:`.routing.Route.plan`). A leaf module; :mod:`.routing`
re-exports its names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Segment = tuple[int, int, int]  # (task id, first row, one past the last row)
# A plan entry: (position of the task in Route.present, its rows as a slice or a LongTensor index).
PlanEntry = tuple[int, slice | torch.Tensor]

#: Up to this many runs of rows per present task, task_lora and moe_lora layers apply M_t with one in-place
#: matrix product per run; past it, with one gathered index set per task (one extra pass over the output's
#: rows). An mtl_lora batch needs no plan (see rows.update_mtl_rows). The cap was chosen when mtl_lora
#: still used plans, by measurement on CPU (one ViT-B-32-sized projection, 16 rows interleaved row by row over 3
#: tasks, forward + backward, one thread): +3-4% over one LoRA's layer with runs, +16-18% with the
#: gather; the whole bench step with runs is 1.04x ``lora``'s. So on CPU runs are used up to a generous
#: cap. On an accelerator each run is a kernel launch, so the gather takes over past 2 runs per task
#: (reasoned, not measured here: no GPU was available).
MAX_RUNS_PER_TASK = {"cpu": 64}
MAX_RUNS_PER_TASK_DEFAULT = 2


def id_runs(ids: Sequence[int]) -> list[Segment]:
    """The maximal runs of equal consecutive ``ids``, as ``(id, start, stop)`` (a route's segments; the loader's)."""
    segs: list[Segment] = []
    for i, t in enumerate(ids):
        if segs and segs[-1][0] == t:
            segs[-1] = (t, segs[-1][1], i + 1)
        else:
            segs.append((t, i, i + 1))
    return segs
