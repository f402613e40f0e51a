"""Task sharing of a trained MTL-LoRA adapter, read from its files: softmax(w_t / τ) per tower.

Read from the adapter's weights file (the ``*.lora_w`` tensors, T × n each) and its config (τ, the task names and which
tower each projection belongs to), so any saved adapter can be inspected without building a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..adapters.rows import mixture
from ..io.layout import adapter_layout


def mixing_from_adapter(adapter_dir: str | Path) -> dict[str, Any] | None:
    """``{"tasks", "temperature", "towers": {tower: T × n nested list}, "spread": {tower: {...}}}``: the mixing
    averaged over each tower's projections, and what that average hides -- the smallest and largest weight of
    any one projection, and how far apart the tasks' choices are per projection (``tv_median``: the median over
    projections (the lower middle one for an even count) of the mean pairwise total-variation distance between
    tasks, 0 = the same mixture, 1 =
    disjoint). Averaging over projections pulls every entry towards 1/n even where each projection's tasks
    choose differently. None when the adapter has no ``lora_w`` (methods without task mixing)."""
    adapter_dir = Path(adapter_dir)
    layout = adapter_layout(adapter_dir)
    meta = json.loads((adapter_dir / layout.config).read_text())
    cfg, towers = meta["config"], meta.get("towers", {})
    tensors = load_file(str(adapter_dir / layout.weights))
    per: dict[str, list[torch.Tensor]] = {}
    for key, w in tensors.items():
        if not key.endswith(".lora_w"):
            continue
        proj = key.removesuffix(".lora_w")
        per.setdefault(towers.get(proj, "all"), []).append(mixture(w.float(), cfg["temperature"]))
    if not per:
        return None
    stacked = {t: torch.stack(ms) for t, ms in sorted(per.items())}
    return {"tasks": list(cfg["tasks"]), "temperature": cfg["temperature"],
            "towers": {t: m.mean(0).tolist() for t, m in stacked.items()},
            "spread": {t: _spread(m) for t, m in stacked.items()}}


def _spread(m: torch.Tensor) -> dict[str, float]:
    """Per-projection statistics of mixtures ``m`` (projections × T × n); see :func:`mixing_from_adapter`."""
    T = m.shape[1]
    pairs = [(a, b) for a in range(T) for b in range(a + 1, T)]
    if pairs:
        tv = torch.stack([0.5 * (m[:, a] - m[:, b]).abs().sum(-1) for a, b in pairs]).mean(0)
    else:
        tv = torch.zeros(m.shape[0])
    return {"weight_min": float(m.min()), "weight_max": float(m.max()), "tv_median": float(tv.median()),
            "tv_max": float(tv.max()), "projections": int(m.shape[0])}
