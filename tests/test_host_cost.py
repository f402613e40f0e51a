"""The host (Python) cost of an eager ``mtl_lora`` layer step: work a layer repeats on every forward although its
result is constant per route or per step (adapters/layers.py, adapters/formation.py)."""

from __future__ import annotations

import torch
from torch import nn

import mtl_lora_vl as mlv

TASKS = ["a", "b", "c"]


def _model(layers: int = 4):
    torch.manual_seed(0)
    base = nn.Sequential(*[nn.Linear(8, 8) for _ in range(layers)])
    return mlv.attach(base, mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"^\d+$"]}))


def test_a_mixed_step_reads_no_missing_module_attribute(monkeypatch):
    """A name nn.Module.__getattr__ does not find raises AttributeError (~3 us): no layer pays it per forward."""
    model, x = _model(), torch.randn(4, 8)
    missed: list[tuple[str, str]] = []
    original = nn.Module.__getattr__

    def counting(self, name):
        try:
            return original(self, name)
        except AttributeError:
            missed.append((type(self).__name__, name))
            raise

    with mlv.route(model, torch.tensor([0, 1, 2, 0])):
        model(x)   # the first forward makes every layer a member of its group
    monkeypatch.setattr(nn.Module, "__getattr__", counting)
    with mlv.route(model, torch.tensor([0, 1, 2, 0])):
        out = model(x)
    out.sum().backward()
    assert [m for m in missed if m[0] == "LoRALinear"] == []
