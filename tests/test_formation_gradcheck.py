"""The grouped M_t forming (adapters/formation.py) in fp64 against finite differences: every adapter tensor's gradient
through several layers formed together, on a mixed batch in any row order with a task absent, and on a one-task
batch."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES, AdapterBank

TASKS = ["a", "b", "c"]


def _model(lambda_type: str) -> torch.nn.Module:
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=4, depth=1, num_heads=1, num_classes=2, mlp_ratio=1.0)
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=2, alpha=3, n_up=2, lambda_type=lambda_type, temperature=0.7)
    model = mlv.attach(vit, cfg).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.copy_(torch.randn_like(p) * 0.5)
    return model


@pytest.mark.parametrize("lambda_type", ["full", "diagonal", "none"])
@pytest.mark.parametrize("ids", [[2, 0, 2], "b"])
def test_grouped_forming_gradients_equal_finite_differences(lambda_type, ids):
    model = _model(lambda_type)
    banks = [m for m in model.modules() if isinstance(m, AdapterBank)]
    assert len(banks) >= 4 and all(b.formation is not None for b in banks)   # the grouped path, not the per-layer one
    params = tuple(p for p in model.parameters() if p.requires_grad)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    route = torch.tensor(ids) if isinstance(ids, list) else ids

    def f(*_params: torch.Tensor) -> torch.Tensor:   # gradcheck perturbs the parameters themselves, in place
        with mlv.route(model, route):
            return model(x)

    f()   # every layer a member of its group: the next forwards form their M_t together
    assert torch.autograd.gradcheck(f, params)
    with mlv.route(model, route):
        model(x).square().sum().backward()
    absent = [t for t in range(len(TASKS)) if t not in ([1] if ids == "b" else ids)]
    for name, p in model.named_parameters():
        if name.endswith(("lora_w", "lora_lambda")):
            assert p.grad[absent].abs().max() == 0, f"{name}: an absent task got a gradient"
