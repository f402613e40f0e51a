"""Properties of the core maths that a mutation audit found no test for (each test here failed on its mutant).

* A task added to a trained adapter (``grow_tasks`` / ``add_task``) starts as DESIGN §2's formula with Λ_t = I
  (diagonal: ones) over the *trained*, shared B_i: with B = 0 (every test of growth) any Λ_t gives the same zero
  update, so a new Λ_t of 2·I went unnoticed.
* :class:`MultiTaskModel` scales each task's loss by ``batch["loss_scales"]`` (gradient accumulation's per-task row
  weights) on the towers path too: only the generative path and a stand-in net were tested.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from vl_tiny import tiny_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.layers import LoRALinear
from mtl_lora_vl.adapters.routing import Router
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskLoader, to_device
from mtl_lora_vl.multitask import MultiTaskModel
from mtl_lora_vl.tasks import build_kind, resolve_tasks


def _formula_delta(bank: LoRALinear, t: int, lam: torch.Tensor) -> torch.Tensor:
    """s · (Σ_i softmax(w_t / τ)_i B_i) · Λ · A, written out from DESIGN §2."""
    pi = torch.softmax(bank.lora_w[t] / bank.temperature, dim=0)
    Bbar = sum(pi[i] * bank.lora_B[i] for i in range(bank.lora_B.shape[0]))
    return bank.scaling * Bbar @ lam @ bank.lora_A


@pytest.mark.parametrize("lambda_type", ["full", "diagonal"])
def test_a_grown_task_starts_as_the_formula_with_identity_lambda_over_the_trained_b(lambda_type):
    torch.manual_seed(0)
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, alpha=8, n_up=3, temperature=0.5, lambda_type=lambda_type)
    layer = LoRALinear(nn.Linear(12, 10), cfg)
    with torch.no_grad():   # "trained": B_i, the old tasks' Λ_t and w_t away from their initial values
        layer.lora_B.normal_(0, 0.5)
        layer.lora_lambda.normal_(0, 0.5)
        layer.lora_w.normal_(0, 0.5)
    old = {n: getattr(layer, n).detach().clone() for n in ("lora_lambda", "lora_w")}
    layer.grow_tasks(1)
    assert layer.num_tasks == 3
    new_lam = layer.lora_lambda[2].detach()
    assert torch.equal(new_lam, torch.eye(4) if lambda_type == "full" else torch.ones(4))
    assert layer.lora_w[2].abs().max() <= 1 / math.sqrt(3)
    for name, before in old.items():   # the old tasks' rows are kept
        assert torch.equal(getattr(layer, name)[:2], before)
    with torch.no_grad():
        torch.testing.assert_close(layer.delta_weight(2), _formula_delta(layer, 2, torch.eye(4)), atol=1e-6, rtol=1e-6)
    layer.router, layer.layer_name = Router(["a", "b", "c"]), "x"
    x = torch.randn(5, 12)
    with torch.no_grad(), mlv.route(layer.router, "c"):
        y = layer(x)
    torch.testing.assert_close(y, x @ (layer.weight + _formula_delta(layer, 2, torch.eye(4))).T + layer.bias,
                               atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


def test_the_towers_path_scales_each_task_loss_by_its_loss_scale(clip):
    """--accumulate's per-task row weights reach the loss: losses[t] = scale_t · loss_t and the total weighs them."""
    names = ["retrieval", "caption_cls"]
    specs = resolve_tasks(",".join(names))
    splits = {s.name: world.build_split(s.kind, "train", n=6, seed=0) for s in specs}
    kinds = {s.name: build_kind(s, splits[s.name], clip) for s in specs}
    heads = nn.ModuleDict({n: k.build_head(clip) for n, k in kinds.items()})
    mlv.attach(clip.model, mlv.MTLLoRAConfig(tasks=names, r=4))
    model = MultiTaskModel(clip, kinds, heads).eval()
    loader = MultiTaskLoader([kinds[n] for n in names], [splits[n] for n in names], clip, batch_size=8, steps=1)
    batch = to_device(next(iter(loader)), "cpu", torch.float32, clip)
    assert set(batch["tasks"]) == set(names)
    with torch.no_grad():
        total, plain = model(batch)
        scales = {"retrieval": 0.25, "caption_cls": 3.0}
        scaled_total, scaled = model({**batch, "loss_scales": scales})
    assert all(plain[n] > 0 for n in names)
    for n in names:
        torch.testing.assert_close(scaled[n], scales[n] * plain[n])
    torch.testing.assert_close(scaled_total, sum(kinds[n].spec.loss_weight * scaled[n] for n in names))
    torch.testing.assert_close(total, sum(kinds[n].spec.loss_weight * plain[n] for n in names))
