"""The host (Python) cost of an eager ``mtl_lora`` layer step: work a layer repeats on every forward although its
result is constant per route or per step (adapters/layers.py, adapters/formation.py)."""

from __future__ import annotations

import copy
import functools

import torch
from gemm_rounding import SCALE_FRACTION, assert_close_at_scale
from torch import nn

import mtl_lora_vl as mlv

TASKS = ["a", "b", "c"]


def _model(layers: int = 4):
    torch.manual_seed(0)
    base = nn.Sequential(*[nn.Linear(8, 8) for _ in range(layers)])
    return mlv.attach(base, mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"^\d+$"]}))


def test_a_mixed_step_reads_no_adapter_attribute_through_module_getattr(monkeypatch):
    """nn.Module.__getattr__ costs ~1 us a name, and one it does not find raises AttributeError (~3 us): a layer's
    forward reads only the base projection's weight and bias through it."""
    model, x = _model(), torch.randn(4, 8)
    read: list[tuple[str, str]] = []
    original = nn.Module.__getattr__

    def counting(self, name):
        read.append((type(self).__name__, name))
        return original(self, name)

    with mlv.route(model, torch.tensor([0, 1, 2, 0])):
        model(x)   # the first forward makes every layer a member of its group
    monkeypatch.setattr(nn.Module, "__getattr__", counting)
    with mlv.route(model, torch.tensor([0, 1, 2, 0])):
        out = model(x)
    out.sum().backward()
    assert {n for t, n in read if t == "LoRALinear"} == {"weight", "bias"}


def test_a_member_of_the_held_group_is_handed_its_matrix_without_forming_its_signature(monkeypatch):
    """Only the layer that forms a step's group reads a signature; the others find the group by their id."""
    from mtl_lora_vl.adapters import formation

    model, x = _model(), torch.randn(4, 8)
    for _ in range(2):   # members, then a group of all four
        with mlv.route(model, torch.tensor([0, 1, 2, 0])):
            model(x).sum().backward()
    calls: list[object] = []
    signature = formation._signature
    monkeypatch.setattr(formation, "_signature", lambda bank: calls.append(bank) or signature(bank))
    with mlv.route(model, torch.tensor([0, 1, 2, 0])):
        model(x).sum().backward()
    assert len(calls) == 1


def test_adapters_unfrozen_inside_a_scope_get_gradients():
    """Frozen adapters' M_t (no graph) are reused within their route scope; once they require gradients again the
    next forward forms M_t with a graph (the signature's requires_grad, checked on the fast path too)."""
    model, x = _model(), torch.randn(4, 8)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    with mlv.route(model, torch.tensor([0, 1, 2, 0])):
        for p in adapters:
            p.requires_grad_(False)
        for _ in range(3):
            model(x)
        for p in adapters:
            p.requires_grad_(True)
        model(x).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_a_mixed_step_builds_no_partial_per_layer(monkeypatch):
    """add_delta calls its row update directly (a partial with keywords, built and called: ~1 us a layer)."""
    from mtl_lora_vl.adapters import layers

    model, x = _model(), torch.randn(4, 8)
    built: list[object] = []
    monkeypatch.setattr(layers, "partial", lambda *a, **k: built.append(a) or functools.partial(*a, **k))
    for _ in range(2):
        with mlv.route(model, torch.tensor([0, 1, 2, 0])):
            model(x).sum().backward()
    assert built == []


def test_a_tensor_written_between_two_layers_of_one_forward_is_seen_by_the_later_layer():
    """The group formed every layer's M_t at the first layer; a later layer whose B a hook wrote to in place since
    forms its M_t again (the fast path keeps valid_for's version checks): the per-layer path's output."""
    model, x = _model(), torch.randn(4, 8)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    plain = _model()
    plain.load_state_dict(model.state_dict())
    for m in plain.modules():
        if hasattr(m, "formation"):
            m.formation = None
    ids = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():   # each row on another task moves by far more than the comparison at scale allows
        with mlv.route(other := copy.deepcopy(plain), ids):
            mixed = other(x)
        with mlv.route(other, (ids + 1) % len(TASKS)):
            moved = other(x)
    assert ((mixed - moved).abs().amax(-1) > 10 * SCALE_FRACTION * mixed.abs().max()).all(), (mixed - moved)
    for _ in range(2):   # members, then a held group of all four
        with mlv.route(model, ids):
            model(x).sum().backward()

    def write(module, args):
        with torch.no_grad():
            module.lora_B.mul_(2.0)

    for m in (model, plain):
        m[2].register_forward_pre_hook(write)
    with mlv.route(model, ids):
        got = model(x)
    with mlv.route(plain, ids):
        want = plain(x)
    assert_close_at_scale(got, want)   # the group's GEMMs against the layers' (a missed write: 602 off of 1371)


def test_a_tensor_given_a_view_of_its_own_storage_of_another_shape_is_formed_again():
    """The fast path keys on a tensor's identity, version and storage address; ``p.data = p.data[:k]`` keeps all
    three: evaluation inside the scope reused the M_t of the old shape (0.47 off) instead of forming them again."""
    model, x, ids = _model(), torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    model.double().eval()
    bank = next(m for m in model[1].modules() if hasattr(m, "lora_w"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    with torch.no_grad(), mlv.route(model, ids):
        model(x), model(x)   # the second forward forms the group and keeps it
        bank.lora_B.data = bank.lora_B.data[:2]   # drop one basis matrix: same storage address, other shape
        bank.lora_w.data = bank.lora_w.data[:, :2]
        got = model(x)
    fresh = copy.deepcopy(model)   # a copy forms its own
    with torch.no_grad(), mlv.route(fresh, ids):
        want = fresh(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
