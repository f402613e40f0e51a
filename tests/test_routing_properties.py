"""Property checks of the routing contract on tiny LLaVA: random ids and row orders (repeated ids, one task, a task
absent) give each row what that row alone under its task gives, forward and gradients; a model re-entered from a
hook under another route leaves the outer forward unchanged; add_task then training keeps old tasks bit-identical."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from conftest import llava_inputs, tiny_llava

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES

TASKS = ["a", "b", "c", "d"]
METHODS = [("mtl_lora", "full"), ("mtl_lora", "diagonal"), ("mtl_lora", "none"), ("task_lora", "full"),
           ("moe_lora", "full"), ("multi_lora", "full"), ("lora", "full")]


def _model(method: str, lambda_type: str, tasks: list[str] = TASKS) -> torch.nn.Module:
    cfg = mlv.MTLLoRAConfig(tasks=tasks, r=4, alpha=8, n_up=2, method=method, lambda_type=lambda_type)
    model = mlv.attach(tiny_llava(), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method,lambda_type", METHODS)
def test_random_mixed_batches_equal_each_row_alone(method, lambda_type):
    base = _model(method, lambda_type)
    rng = random.Random(f"{method}-{lambda_type}")
    draws = [[rng.randrange(4) for _ in range(rng.randint(2, 5))],   # any order, repeated ids
             [rng.choice([0, 2, 3]) for _ in range(4)],             # a task absent (present tasks not consecutive)
             [1, 1, 1]]                                             # one task, given as ids
    for ids in draws:
        inputs = llava_inputs(len(ids), 20)
        mixed = copy.deepcopy(base)
        with mlv.route(mixed, torch.tensor(ids)):
            out = mixed(**inputs).logits
        up = torch.randn_like(out)
        (out * up).sum().backward()
        alone, rows = copy.deepcopy(base), []
        for i, t in enumerate(ids):
            with mlv.route(alone, TASKS[t]):
                row = alone(**{k: v[i:i + 1] for k, v in inputs.items()}).logits
            (row * up[i:i + 1]).sum().backward()
            rows.append(row.detach())
        torch.testing.assert_close(out.detach(), torch.cat(rows), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, ids=ids: f"{ids}: {m}")
        g, g_alone = _grads(mixed), _grads(alone)
        assert g.keys() == g_alone.keys(), ids
        for k in g:
            scale = 1 + g[k].abs().max().item()
            torch.testing.assert_close(g[k] / scale, g_alone[k] / scale, atol=2e-4, rtol=0,
                                       msg=lambda m, k=k, ids=ids: f"{ids} {k}: {m}")


@pytest.mark.parametrize("mode", ["no_grad", "grad", "disabled"])
@pytest.mark.parametrize("checkpointing", [None, "reentrant", "non_reentrant"])
def test_a_model_reentered_from_a_hook_under_another_route(mode, checkpointing):
    """A forward pre-hook inside the routed forward runs the same model under another route (or disabled): the
    outer rows keep their tasks, forward and gradients (recomputed ones too), and the inner call gets its own."""
    base = _model("mtl_lora", "full", TASKS[:3])
    inputs, ids, inner_ids = llava_inputs(3, 20), torch.tensor([1, 0, 1]), torch.tensor([2, 2, 0])

    def weight(t: torch.Tensor) -> torch.Tensor:
        return torch.sin(torch.arange(t.numel(), dtype=t.dtype)).view(t.shape)

    def plain(route_ids) -> tuple[torch.Tensor, dict]:
        m = copy.deepcopy(base)
        with mlv.route(m, route_ids):
            out = m(**inputs).logits
        (out * weight(out)).sum().backward()
        return out.detach(), _grads(m)

    want, want_g = plain(ids)
    m = copy.deepcopy(base)
    if checkpointing:
        m.train().activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"})
    inner: list[torch.Tensor] = []
    entered = []

    def hook(module, args):
        if entered:   # once: not in the inner call, nor again in the recomputation
            return
        entered.append(True)
        scope = mlv.disabled(m) if mode == "disabled" else mlv.route(m, inner_ids)
        with (torch.no_grad() if mode == "no_grad" else torch.enable_grad()), scope:
            inner.append(m(**inputs).logits)

    m.model.language_model.layers[1].register_forward_pre_hook(hook)
    with mlv.route(m, ids):
        out = m(**inputs).logits
    loss = (out * weight(out)).sum() + ((inner[0] * weight(inner[0])).sum() if mode == "grad" else 0)
    loss.backward()
    torch.testing.assert_close(out.detach(), want, atol=1e-6, rtol=1e-6)
    if mode == "grad":
        inner_want, inner_g = plain(inner_ids)
        want_g = {k: want_g[k] + inner_g[k] for k in want_g}
    else:
        with torch.no_grad():
            if mode == "disabled":
                with mlv.disabled(base):
                    inner_want = base(**inputs).logits
            else:
                with mlv.route(base, inner_ids):
                    inner_want = base(**inputs).logits
    torch.testing.assert_close(inner[0].detach(), inner_want, atol=1e-6, rtol=1e-6)
    got_g = _grads(m)
    assert got_g.keys() == want_g.keys()
    for k in got_g:
        torch.testing.assert_close(got_g[k], want_g[k], atol=1e-5, rtol=1e-4, msg=lambda msg, k=k: f"{k}: {msg}")
    assert m._mtl_lora.router.current is None


@pytest.mark.parametrize("method,lambda_type", [x for x in METHODS if x[0] not in ("lora", "multi_lora")])
def test_add_task_then_training_it_in_mixed_batches_keeps_old_tasks_bit_identical(method, lambda_type):
    model = _model(method, lambda_type, TASKS[:3])
    inputs, old_ids = llava_inputs(4, 20), torch.tensor([2, 0, 1, 0])
    with torch.no_grad(), mlv.route(model, old_ids):
        before = model(**inputs).logits
    added = mlv.add_task(model, "new")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    added.freeze_old_rows(opt)
    with torch.no_grad(), mlv.route(model, "new"):
        new_before = model(**inputs).logits
    for _ in range(2):   # the new task's rows beside old tasks' rows: the old rows' gradients reach no old tensor
        with mlv.route(model, torch.tensor([3, 0, 3, 1])):
            model(**inputs).logits.square().mean().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        with mlv.route(model, old_ids):
            after = model(**inputs).logits
        with mlv.route(model, "new"):
            new_after = model(**inputs).logits
    assert torch.equal(before, after)
    assert not torch.equal(new_before, new_after)   # the new task did train
