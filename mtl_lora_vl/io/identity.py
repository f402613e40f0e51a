"""What base model an adapter fits: its adapted projections, their shapes, and a fingerprint over them.

Adapter files and exports record :func:`model_identity` (family, class as ``module.qualname``, the
adapted projection names with their base weight shapes ``[d_out, d_in]``, a sha256 ``fingerprint``
over them, and a few values of each adapted base weight), so that loading can refuse a base model of another
architecture or size by name, and other weights of the same architecture by value. A
:class:`BankPlan` says, for one adapter bank, what ``attach`` creates and which base weight it updates;
:func:`plan_targets` computes that for a model not yet adapted, :func:`plan_attached` for an adapted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapters.attach import adapted_module, base_weights, select_targets
from ..adapters.layers import ADAPTER_PARAM_NAMES, AdapterBank, LoRALinear
from ..config import MTLLoRAConfig

__all__ = ["BankPlan", "adapted_module", "class_name", "expected_tensors", "fingerprint", "model_identity",
           "plan_attached", "plan_targets", "projections_of", "same_weights", "weight_sample"]


@dataclass
class BankPlan:
    """One adapter bank: its tower, base weight shape and the state-dict key of that base weight."""

    tower: str
    d_in: int
    d_out: int
    out_slices: tuple[bool, ...] | None
    base_weight: str


def class_name(model: nn.Module) -> str:
    """``module.qualname`` of the model's class, as recorded in adapter files."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def fingerprint(projections: dict[str, list[int]]) -> str:
    """sha256 over the sorted projection names and their base weight shapes."""
    text = json.dumps(sorted((k, list(v)) for k, v in projections.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def plan_targets(model: nn.Module, cfg: MTLLoRAConfig) -> dict[str, BankPlan]:
    """What ``attach(model, cfg)`` would create, per adapter bank, without touching ``model``."""
    plan: dict[str, BankPlan] = {}
    for name, module, tower, slices in select_targets(model, cfg, warn_overlap=False):   # attach warns
        if isinstance(module, nn.MultiheadAttention):
            E = module.embed_dim
            qkv = tuple(c in cfg.qkv_slices for c in "qkv")
            plan[name + ".in_proj"] = BankPlan(tower, E, 3 * E, qkv, name + ".in_proj_weight")
            out = module.out_proj
            plan[name + ".out_proj"] = BankPlan(tower, out.in_features, out.out_features, None,
                                                name + ".out_proj.weight")
        else:
            plan[name] = BankPlan(tower, module.in_features, module.out_features, slices, name + ".weight")
    return plan


def plan_attached(inner: nn.Module) -> dict[str, BankPlan]:
    """The bank plan of a model ``attach`` already adapted (``inner``: see :func:`adapted_module`)."""
    info = inner._mtl_lora
    plan = {}
    for name, bank in info.layers.items():
        if isinstance(bank, LoRALinear):
            key = name + ".weight"
        else:  # the packed in-projection bank of a LoRAMultiheadAttention
            key = name[: -len(".in_proj")] + ".in_proj_weight"
        plan[name] = BankPlan(info.towers[name], bank.d_in, bank.d_out_full, bank.out_slices, key)
    return plan


def expected_tensors(plan: dict[str, BankPlan], cfg: MTLLoRAConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every adapter tensor ``attach`` creates (banks built on the meta device)."""
    out: dict[str, tuple[int, ...]] = {}
    meta = torch.device("meta")
    for name, p in plan.items():
        bank = AdapterBank(p.d_in, p.d_out, cfg, p.out_slices, device=meta)
        for pname, param in bank.named_parameters(recurse=False):
            out[f"{name}.{pname}"] = tuple(param.shape)
    return out


def projections_of(plan: dict[str, BankPlan]) -> dict[str, list[int]]:
    """Projection name -> base weight shape ``[d_out, d_in]``, sorted by name."""
    return {n: [p.d_out, p.d_in] for n, p in sorted(plan.items())}


def model_identity(model: nn.Module) -> dict[str, Any]:
    """The base-model identity recorded in adapter files: family, class, fingerprint, projections, a few
    values of every base parameter (``weight_samples``: another checkpoint of the same architecture differs,
    also where it differs only outside the adapted layers, e.g. in LLaVA's projector or the embeddings), and each
    one's shape (``weight_shapes``: a base of another size -- image size, vocabulary -- is named as such)."""
    inner = adapted_module(model)
    projections = projections_of(plan_attached(inner))
    # every parameter but the adapter tensors: an adapted layer's bias too (its weight is replaced just below)
    weights = {n: p for n, p in inner.named_parameters() if n.rpartition(".")[2] not in ADAPTER_PARAM_NAMES
               and p.numel()}
    weights.update(base_weights(inner))   # an adapted weight as it was before any merge
    return {"family": inner._mtl_lora.family, "class": class_name(inner),
            "fingerprint": fingerprint(projections), "projections": projections,
            "weight_samples": {k: weight_sample(w) for k, w in sorted(weights.items())},
            "weight_shapes": {k: list(w.shape) for k, w in sorted(weights.items())}}


#: Values read from each base parameter (evenly spaced through it) for ``weight_samples``.
SAMPLES = 4


def weight_sample(weight: torch.Tensor) -> list[float]:
    """:data:`SAMPLES` values evenly spaced through ``weight`` (flattened), as floats of 6 significant digits."""
    flat = weight.detach().reshape(-1)
    n = flat.numel()
    idx = torch.tensor([n * (2 * j + 1) // (2 * SAMPLES) for j in range(SAMPLES)], device=flat.device)
    return [float(f"{v:.6g}") for v in flat[idx].float().tolist()]


def same_weights(mine: list[float], recorded: list[float]) -> bool:
    """Whether two samples come from one weight, up to the rounding of bf16 / fp16 storage (~0.4 %)."""
    return len(mine) == len(recorded) and all(abs(a - b) <= 1e-2 * max(abs(a), abs(b)) + 1e-6
                                              for a, b in zip(mine, recorded))
