"""Forming every mtl_lora layer's M_t together (adapters/formation.py): the same outputs and gradients as forming
them layer by layer, in a fixed number of operators per group of layers instead of a few per layer."""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import pickle
import weakref
from pathlib import Path

import pytest
import torch
from conftest import llava_inputs, tiny_llava, tiny_open_clip
from gemm_rounding import SCALE_FRACTION, assert_close_at_scale
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.checkpoint import checkpoint

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters import formation
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES, AdapterBank
from mtl_lora_vl.training.optim import adamw

TASKS = ["vqa", "captioning", "cls"]
MIXED = torch.tensor([2, 0, 1, 0])


def _banks(model) -> list[AdapterBank]:
    return [m for m in model.modules() if isinstance(m, AdapterBank)]


def _pair(lambda_type: str = "full", family: str = "llava", method: str = "mtl_lora"):
    """(model forming M_t together, a copy forming them layer by layer), adapters randomised alike."""
    base = tiny_llava() if family == "llava" else tiny_open_clip()
    model = mlv.attach(base, mlv.MTLLoRAConfig(tasks=TASKS, lambda_type=lambda_type, method=method, n_up=3))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.add_(torch.randn_like(p) * 0.3)
    return model, _layer_by_layer(model)


def _layer_by_layer(model):
    """A copy of ``model`` whose layers form their M_t each on its own (the per-layer path)."""
    copied = copy.deepcopy(model)
    for b in _banks(copied):
        b.formation = None
    return copied


def _assert_tasks_differ(model, x: torch.Tensor) -> None:
    """Each row of ``MIXED`` routed to another task moves the output by far more than a comparison at scale allows
    (0.15 to 2.0 of outputs up to 1.0 here, against 2e-3): such comparisons still see a row on the wrong task."""
    copied = _layer_by_layer(model)   # a copy: the model's own formation state is left as it was
    with torch.no_grad():
        with mlv.route(copied, MIXED):
            mixed = copied(x)
        with mlv.route(copied, MIXED.roll(1)):
            moved = copied(x)
    assert ((mixed - moved).abs().amax(-1) > 10 * SCALE_FRACTION * mixed.abs().max()).all(), (mixed - moved)


def _loss(model, family: str, inputs, ids):
    with mlv.route(model, ids):
        if family == "llava":
            return model(**inputs).logits.square().mean()
        img, txt = inputs
        return (model.encode_image(img) @ model.encode_text(txt).T).square().sum()


def _inputs(family: str, batch: int = 4):
    if family == "llava":
        return llava_inputs(batch)
    return torch.randn(batch, 3, 32, 32), torch.randint(1, 60, (batch, 12))


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _same(a: dict, b: dict) -> None:
    assert a and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def _step(model, family, inputs, ids):
    model.zero_grad(set_to_none=True)
    loss = _loss(model, family, inputs, ids)
    loss.backward()
    return loss.detach(), _grads(model)


@pytest.mark.parametrize("lambda_type", ["full", "diagonal", "none"])
@pytest.mark.parametrize("family", ["llava", "open_clip"])
@pytest.mark.parametrize("ids", ["mixed", "grouped", "one_task"])
def test_outputs_and_gradients_equal_forming_layer_by_layer(lambda_type, family, ids):
    ids = {"mixed": MIXED, "grouped": torch.tensor([0, 0, 2, 2]), "one_task": "captioning"}[ids]
    model, per_layer = _pair(lambda_type, family)
    inputs = _inputs(family)
    for _ in range(2):   # the first step forms each layer's alone (and makes it a member), the second together
        got, want = _step(model, family, inputs, ids), _step(per_layer, family, inputs, ids)
        torch.testing.assert_close(got[0], want[0])
        _same(got[1], want[1])
    with torch.no_grad():   # and without gradients (evaluation, generation)
        torch.testing.assert_close(_loss(model, family, inputs, ids), _loss(per_layer, family, inputs, ids))


def _op_count():
    """scripts/bench_adapters.py's count of the aten operators a step dispatches."""
    spec = importlib.util.spec_from_file_location("bench_adapters",
                                                  Path(__file__).parents[1] / "scripts" / "bench_adapters.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.OpCount()


def _ops(model, inputs, ids) -> int:
    _step(model, "llava", inputs, ids)   # members now
    with _op_count() as ops:
        _step(model, "llava", inputs, ids)
    return ops.n


@pytest.mark.parametrize("ids", ["mixed", "one_task"])
def test_a_step_runs_a_lora_steps_operators_plus_a_few_per_layer(ids):
    """The point of forming together: an mtl_lora step ran ~30 more aten operators per adapted layer than a lora
    step (π, B̄, M_t and their gradients, in every layer); formed together (two groups of 26 layers here: the layers
    whose B has 32 rows, and those with 64), ~7: a group's ~50 operators, a view of its tensors per layer, and a
    mixed batch's per-sample gather."""
    ids = MIXED if ids == "mixed" else "captioning"
    inputs = _inputs("llava")
    model, per_layer = _pair()
    lora = _pair(method="lora")[0]
    n_layers = len(_banks(model))
    assert len({formation._signature(b) for b in _banks(model)}) == 2 and n_layers == 26
    grouped, layered, plain = _ops(model, inputs, ids), _ops(per_layer, inputs, ids), _ops(lora, inputs, ids)
    assert layered - plain > 25 * n_layers
    assert grouped - plain < 8 * n_layers


class _Skip(torch.nn.Module):
    """Three same-shaped layers; the second does not run when ``skip``, the third's output is never used."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])

    def forward(self, x, skip: bool):
        y = self.fc[0](x)
        self.fc[2](x)
        return y if skip else self.fc[1](y)


def test_a_layer_that_does_not_run_gets_no_gradient_one_whose_output_is_unused_gets_zero():
    """Members are the layers that ran under these tasks, and only a layer that ran in this forward gets gradients:
    one that did not run gets none (as on the per-layer path), so an optimizer leaves it alone; one that ran but
    whose output does not reach the loss gets zeros (it is an input of the group's node, which the loss reaches:
    DDP's search for unused parameters waits for its gradient; on the per-layer path it got none)."""
    model = mlv.attach(_Skip(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"fc\.\d$"]}))
    x = torch.randn(4, 8)
    for skip in (False, False, True):   # all three are members after the first; then fc.1 does not run
        model.zero_grad(set_to_none=True)
        with mlv.route(model, MIXED):
            model(x, skip).square().sum().backward()
    grads = _grads(model)
    assert "fc.1.lora_B" not in grads and "fc.1.lora_w" not in grads
    assert grads["fc.0.lora_B"].abs().sum() > 0
    assert all(not grads[f"fc.2.lora_{k}"].any() for k in ("B", "w", "lambda")) and "fc.2.lora_A" not in grads
    formation = _banks(model)[0].formation
    ((_, group),) = formation._groups.values()
    assert len(group.position) == 3   # formed together, fc.1 included (it is a member)


def test_an_optimizer_step_or_new_tensors_form_them_again():
    """A node is not reused after its backward (a fused optimizer step, which writes without counting versions, may
    have followed), nor when a tensor is replaced (grow_tasks)."""
    inputs = _inputs("llava")
    model, per_layer = _pair()
    # fused: writes the parameters without counting versions (only the spent node tells that M_t are stale)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.05, fused=True)
            for m in (model, per_layer)]
    for _ in range(3):
        for m, opt in zip((model, per_layer), opts):
            _step(m, "llava", inputs, MIXED)
            opt.step()
    torch.testing.assert_close(_loss(model, "llava", inputs, MIXED), _loss(per_layer, "llava", inputs, MIXED))
    mlv.add_task(model, "new")   # new w and Λ tensors (and B frozen: another signature)
    per_layer = _layer_by_layer(model)
    ids = torch.tensor([3, 0, 3, 1])
    for _ in range(2):
        got, want = _step(model, "llava", inputs, ids), _step(per_layer, "llava", inputs, ids)
        torch.testing.assert_close(got[0], want[0])
        _same(got[1], want[1])


def test_accumulated_micro_batches_give_the_layer_by_layer_gradients():
    inputs = [_inputs("llava") for _ in range(2)]
    model, per_layer = _pair()
    _step(model, "llava", inputs[0], MIXED)
    for m in (model, per_layer):
        m.zero_grad(set_to_none=True)
        for x in inputs:   # two forwards and backwards before a step
            _loss(m, "llava", x, MIXED).backward()
    _same(_grads(model), _grads(per_layer))


def test_a_tensor_modified_between_forward_and_backward_is_refused():
    model, _ = _pair()
    inputs = _inputs("llava")
    _step(model, "llava", inputs, MIXED)
    loss = _loss(model, "llava", inputs, MIXED)
    with torch.no_grad():
        _banks(model)[0].lora_B.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place between the forward pass"):
        loss.backward()


class _Blocks(torch.nn.Module):
    """Three Linear+Tanh blocks, the first ``plain`` run as they are and the others under activation checkpointing."""

    def __init__(self, reentrant: bool, plain: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
                                           for _ in range(3)])
        self.reentrant, self.plain = reentrant, plain

    def forward(self, x):
        for i, b in enumerate(self.blocks):
            x = b(x) if i < self.plain else checkpoint(b, x, use_reentrant=self.reentrant)
        return x


def _checkpointed(reentrant: bool, plain: int = 0):
    """:class:`_Blocks` with one group of three adapted layers, their B randomised (so the tasks differ)."""
    torch.manual_seed(0)
    model = mlv.attach(_Blocks(reentrant, plain), mlv.MTLLoRAConfig(tasks=TASKS, r=2,
                                                                    targets={"image": [r"blocks\.\d\.0$"]}))
    with torch.no_grad():
        for b in _banks(model):
            b.lora_B.normal_()
    return model


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_layers_recompute_what_they_saved(reentrant):
    """A checkpointed block's recomputation in the first step finds its layers members, where its forward did not:
    both save the same tensors (a group of one forms the first M_t), so recomputation is consistent."""
    model = _checkpointed(reentrant)
    per_layer = _layer_by_layer(model)
    x = torch.randn(4, 8, requires_grad=True)
    for _ in range(2):
        for m in (model, per_layer):
            m.zero_grad(set_to_none=True)
            with mlv.route(m, MIXED):
                m(x).square().sum().backward()
        _same(_grads(model), _grads(per_layer))


def _mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()) for _ in range(3)])
    model = mlv.attach(net, mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"\d\.0$"]}))
    with torch.no_grad():
        for b in _banks(model):
            b.lora_B.normal_()
    return model


def test_second_derivatives_equal_forming_layer_by_layer():
    """A gradient penalty (create_graph=True): the group node's backward is formed with its graph."""
    model = _mlp()
    per_layer = _layer_by_layer(model)
    x = torch.randn(4, 8)

    def penalty(m):
        params = [p for n, p in m.named_parameters() if "lora_" in n]
        xs = x.clone().requires_grad_()
        with mlv.route(m, MIXED):
            gx, = torch.autograd.grad(m(xs).square().sum(), xs, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), params)

    _assert_tasks_differ(model, x)
    for _ in range(2):   # alone, then together
        for a, b in zip(penalty(model), penalty(per_layer)):
            # the group's GEMMs and the layers' accumulate apart (MKL, AVX-512): 5.0e-6 past rtol, gradients to 274
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_copies_start_afresh_and_form_their_own():
    model = _mlp()
    x = torch.randn(4, 8)

    def loss(m):
        with mlv.route(m, MIXED):
            return m(x).square().sum()

    loss(model).backward()
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        formation = _banks(copied)[0].formation
        assert formation is not _banks(model)[0].formation and not formation._members and not formation._groups
        assert all(b.formation is formation for b in _banks(copied))
        for _ in range(2):
            torch.testing.assert_close(loss(copied), loss(model))


def test_steps_do_not_keep_their_formed_matrices_alive():
    """The node of a group must not hold the group (whose formed M_t hold the node): that cycle runs through the
    autograd graph, which the garbage collector cannot see, and kept every step's group and M_t alive."""
    model = _mlp()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x = torch.randn(4, 8)
    for _ in range(6):
        with mlv.route(model, MIXED):
            model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    gc.collect()
    assert sum(type(o) is formation._Group for o in gc.get_objects()) == 1   # the one kept for the next forward
    ((_, group),) = _banks(model)[0].formation._groups.values()
    assert group.done and not group.formed   # every layer took its M_t: the group let them go


@pytest.mark.parametrize("grad", [False, True])
def test_a_converted_model_does_not_keep_its_old_adapter_data(grad):
    """A held group keeps the storages it formed M_t from; keyed by the old dtype (or device), it was never looked
    up again after ``model.double()`` (or ``.cpu()`` of a CUDA model): the old adapter data stayed alive with the
    model, after any later forward too."""
    model = _mlp()
    x = torch.randn(4, 8)
    with torch.set_grad_enabled(grad), mlv.route(model, MIXED):
        for _ in range(2):   # members, then a held group
            model(x).square().sum()
        old = [weakref.ref(p.untyped_storage()) for b in _banks(model) for p in (b.lora_w, b.lora_lambda, b.lora_B)]
        model.double()
        torch.testing.assert_close(model(x.double()), model(x.double()))
    gc.collect()
    assert not any(r() is not None for r in old)


def _saved_bytes(model, inputs, ids) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one forward, the model's own tensors left out."""
    _step(model, "llava", inputs, ids)   # members
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in own:
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(model, "llava", inputs, ids)
    loss.backward()
    return sum(seen.values())


@pytest.mark.parametrize("ids", ["mixed", "one_task"])
def test_a_step_keeps_what_a_lora_step_keeps_for_backward(ids):
    """Mixed: the row updates do not keep the formed M_t for backward (it forms them again, once per group), and the
    formed M_t are let go once every layer has taken its own: a mixed step's activations are a lora step's, plus the
    rows' task positions (keeping M_t was +4.6 % on the bench's small LLaVA). One task: autograd's own addmm_, as a
    lora layer's, which keeps the task's M_t (d_out x r a layer) and nothing else beyond a lora step."""
    one = ids == "one_task"
    ids = "captioning" if one else MIXED
    inputs = _inputs("llava")
    mtl, lora = _pair()[0], _pair(method="lora")[0]
    extra = _saved_bytes(mtl, inputs, ids) - _saved_bytes(lora, inputs, ids)
    if one:
        assert extra == sum(b.lora_B[0].numel() * b.lora_B.element_size() for b in _banks(mtl))
    else:
        assert 0 <= extra <= 8 * len(MIXED)


def test_forwards_without_gradients_reuse_the_formed_matrices_until_a_tensor_changes():
    """A generate call's decoding steps: formed once in the scope, until a tensor is written to (or other tasks are
    routed)."""
    model = _mlp()
    per_layer = _layer_by_layer(model)
    x = torch.randn(4, 8)
    with torch.no_grad():
        with mlv.route(model, MIXED):
            model(x), model(x)   # alone, then together
            ((_, group),) = _banks(model)[0].formation._groups.values()
            formed = group.formed[torch.float32]
            model(x)
            assert group.formed[torch.float32] is formed   # reused
        for m in (model, per_layer):
            _banks(m)[1].lora_B.mul_(2.0)
        with mlv.route(model, MIXED):
            y = model(x)
        ((_, again),) = _banks(model)[0].formation._groups.values()
        assert again is not group
        with mlv.route(per_layer, MIXED):
            torch.testing.assert_close(y, per_layer(x))


@pytest.mark.parametrize("name", ["lora_w", "lora_lambda"])
def test_a_tensor_given_a_transposed_view_of_its_own_storage_forms_them_again(name):
    """``p.data = p.data.t()`` of a square w (3 tasks x 3 up-projections) or Λ keeps the storage's address, shape and
    version: M_t formed before it were reused inside the no-grad scope (1.99 off here), and a node whose tensor was
    so replaced before its backward gave the gradients of the transposed values instead of refusing."""
    model = _mlp()
    with torch.no_grad():
        for b in _banks(model):
            b.lora_w.normal_(), b.lora_lambda.normal_()
    x = torch.randn(4, 8)
    _assert_tasks_differ(model, x)

    def transpose(m):
        for b in _banks(m):
            p = getattr(b, name)
            p.data = p.data.transpose(-1, -2)

    with torch.no_grad(), mlv.route(model, MIXED):
        model(x), model(x)   # alone, then together: the group is kept in the scope
        transpose(model)
        got = model(x)
    with torch.no_grad(), mlv.route(per_layer := _layer_by_layer(model), MIXED):
        assert_close_at_scale(got, per_layer(x))   # stale M_t: 1.99 off
    with mlv.route(model, MIXED):
        loss = model(x).square().sum()
    transpose(model)
    with pytest.raises(RuntimeError, match="modified in place between the forward pass"):
        loss.backward()


def test_a_tensor_given_a_dtype_view_of_its_own_storage_forms_them_again():
    """``p.data = p.data.view(torch.float16)`` of a bfloat16 w, Λ and B keeps address, shape, strides and version: M_t
    formed before it were reused inside the no-grad scope (2.0 off here), and a node whose tensors were so viewed
    before its backward gave bfloat16 gradients of the float16 values instead of refusing."""
    model = _mlp().to(torch.bfloat16)
    with torch.no_grad():
        for b in _banks(model):
            b.lora_w.normal_(), b.lora_lambda.normal_()
    x = torch.randn(4, 8, dtype=torch.bfloat16)

    def view(m, dtype):
        for b in _banks(m):
            for p in (b.lora_w, b.lora_lambda, b.lora_B):
                p.data = p.data.view(dtype)

    with torch.no_grad(), mlv.route(model, MIXED):
        model(x), model(x)   # alone, then together: the group is kept in the scope
        view(model, torch.float16)
        got = model(x)
    with torch.no_grad(), mlv.route(per_layer := _layer_by_layer(model), MIXED):
        torch.testing.assert_close(got, per_layer(x), rtol=0.02, atol=0.02)
    view(model, torch.bfloat16)
    with mlv.route(model, MIXED):
        loss = model(x).float().square().sum()
    view(model, torch.float16)
    with pytest.raises(RuntimeError, match="modified in place between the forward pass"):
        loss.backward()


@pytest.mark.parametrize("grad", [False, True])
def test_data_freed_by_a_replacement_is_not_handed_to_the_next_one(grad):
    """``p.data = p.data.clone()`` then ``p.data = new`` (twice in one scope, or between a forward and its backward)
    frees the data M_t were formed from, and the allocator may give ``new`` that address: version, shape and strides
    equal, the M_t formed before were reused (2.0 off here, float64, where glibc did: about one run in three) and the
    node's backward gave the gradients of the new values. The formation holds the storages it formed from."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.Tanh()) for _ in range(2)]).double()
    model = mlv.attach(net, mlv.MTLLoRAConfig(tasks=TASKS, r=4, targets={"image": [r"\d\.0$"]}))
    B = _banks(model)[1].lora_B   # (3, 64, 4) float64: 6 KB, a size glibc soon hands out again
    with torch.no_grad():
        B.normal_()
    x = torch.randn(4, 64, dtype=torch.float64)

    def replace():
        formed_from, address = StorageWeakRef(B.untyped_storage()), B.data_ptr()
        B.data = B.data.clone()
        assert not formed_from.expired()   # so its address cannot be the next tensor's
        keep = []   # the allocator's next blocks of B's size, up to the one at the old address if it is free
        while len(keep) < 4000 and (new := torch.empty_like(B.data)).data_ptr() != address:
            keep.append(new)
        B.data = new.normal_()

    if grad:
        with mlv.route(model, MIXED):
            loss = model(x).square().sum()
        replace()
        with pytest.raises(RuntimeError, match="modified in place between the forward pass"):
            loss.backward()
        return
    with torch.no_grad(), mlv.route(model, MIXED):
        model(x), model(x)   # alone, then together: the group is kept in the scope
        replace()
        got = model(x)
    with torch.no_grad(), mlv.route(per_layer := _layer_by_layer(model), MIXED):
        torch.testing.assert_close(got, per_layer(x))


def test_frozen_adapters_still_pass_the_inputs_gradient():
    """Adapters frozen, the input's gradient wanted (a saliency map): the formed M_t have no graph, so the row
    update keeps them for its backward instead of forming them again."""
    model = _mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    per_layer = _layer_by_layer(model)
    x = torch.randn(4, 8)
    for _ in range(2):   # alone, then together
        got = []
        for m in (model, per_layer):
            xs = x.clone().requires_grad_()
            with mlv.route(m, MIXED):
                m(xs).square().sum().backward()
            got.append(xs.grad)
        torch.testing.assert_close(*got)


def test_adapter_tensors_held_as_plain_attributes_still_form_together():
    """A wrapper that takes the parameters out of ``_parameters`` and sets tensors as attributes (FSDP1's flat
    parameters do) leaves formation reading them by attribute: the same loss and gradients as the per-layer path."""
    model, per_layer = _pair()
    inputs = _inputs("llava")
    plain = {}
    for i, bank in enumerate(_banks(model)):
        for name in [("lora_w", "lora_lambda", "lora_B"), ("lora_lambda",), ("lora_B",)][i % 3]:   # or some of them
            p = bank._parameters.pop(name)
            setattr(bank, name, p.detach().clone().requires_grad_(True))
            plain[bank.layer_name, name] = getattr(bank, name)
    for _ in range(2):
        with mlv.route(model, MIXED):
            loss = model(**inputs).logits.square().mean()
        loss.backward()
        want = _step(per_layer, "llava", inputs, MIXED)
        torch.testing.assert_close(loss.detach(), want[0])
    want = {(b.layer_name, n): getattr(b, n).grad
            for b in _banks(per_layer) for n in ("lora_w", "lora_lambda", "lora_B")}
    assert len(plain) > len(_banks(model))
    for key, t in plain.items():   # two steps' gradients accumulated in the attributes
        torch.testing.assert_close(t.grad, 2 * want[key])


def _attached_mlp(tasks: tuple[str, ...] = ("a", "b")):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8))
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=list(tasks), r=2, alpha=3.0, targets={"image": [r"^[02]$"]}))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    return m


def _on_a_copy(m, x, ids):
    """The same forward on a deep copy (a copy starts with no formed matrices)."""
    c = copy.deepcopy(m)
    with torch.no_grad(), mlv.route(c, ids):
        return c(x)


def _update_unversioned(m, x, update: str, ids=None) -> None:
    """Change the adapter tensors without counting a version: a fused AdamW step (after a training forward, routed
    by ``ids`` when given) or a write through ``p.data``."""
    params = [p for p in m.parameters() if p.requires_grad]
    if update == "fused_adamw":
        opt = adamw(params, lr=0.1)
        with mlv.route(m.train(), ids) if ids is not None else contextlib.nullcontext():
            m(x).pow(2).sum().backward()
        opt.step()
        m.eval()
    else:
        with torch.no_grad():
            for p in params:
                p.data.mul_(0.5)


@pytest.mark.parametrize("update", ["fused_adamw", "p.data"])
def test_evaluation_after_an_update_that_counts_no_version_uses_the_new_values(update):
    """Helper 144: M_t formed without gradients were reused across route scopes until a tensor's version changed,
    but the trainer's fused AdamW (and a write through p.data) changes none: the next evaluation batch added the old
    M_t to a fresh A x (0.24 off here)."""
    m = _attached_mlp().eval()
    x, ids = torch.randn(4, 6), torch.tensor([0, 1, 1, 0])
    for _ in range(2):   # two evaluation batches: the second forms the group and keeps it
        with torch.no_grad(), mlv.route(m, ids):
            m(x)
    _update_unversioned(m, x, update, ids)
    with torch.no_grad(), mlv.route(m, ids):
        got = m(x)
    torch.testing.assert_close(got, _on_a_copy(m, x, ids), rtol=1e-6, atol=1e-6)


def test_evaluation_after_one_step_per_task_uses_the_new_values():
    """The trainer's shape with one task per batch: evaluate, one step per task (each a first forward under its
    tasks, so no group with gradients replaces the evaluation's), evaluate again."""
    m = _attached_mlp().eval()
    x = torch.randn(4, 6)
    for _ in range(2):
        with torch.no_grad(), mlv.route(m, "a"):
            m(x)
    opt = adamw([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.train()
    for t in ("b", "a"):
        with mlv.route(m, t):
            m(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad(), mlv.route(m.eval(), "a"):
        got = m(x)
    torch.testing.assert_close(got, _on_a_copy(m, x, "a"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("update", ["fused_adamw", "p.data"])
def test_one_task_adapter_without_a_route_scope_sees_an_update_that_counts_no_version(update):
    """A one-task adapter runs without any route scope (router.resolve gives task 0): router.scope stays 0 for
    every forward, so the scope check never fires and the stale M_t of the first evaluation are reused after a
    fused AdamW step / a p.data write -- the bug 345603a fixed for routed forwards only (helper 148)."""
    m = _attached_mlp(tasks=("a",)).eval()
    x = torch.randn(4, 6)
    for _ in range(2):                      # the second no-grad forward forms the group and keeps it
        with torch.no_grad():
            m(x)
    _update_unversioned(m, x, update)   # its first forward with gradients forms alone: the kept group stays
    with torch.no_grad():
        got = m(x)
    c = copy.deepcopy(m)
    with torch.no_grad():
        want = c(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_a_training_step_split_over_two_route_scopes_forms_each_group_once(monkeypatch):
    """The trainer routes the image tower and the text tower in two scopes of one step (multitask/model.py). Layers
    of both towers with one signature (the built-in CLIP: both widths 128) are one group; with gradients the scope
    check re-forms that group in the text scope, so each step forms every group twice (6 nodes instead of 3 here),
    though with gradients a group is already never reused after its backward (``spent``; helper 148)."""
    calls = []
    orig = formation._FormGroup.apply
    monkeypatch.setattr(formation._FormGroup, "apply", lambda *a: calls.append(1) or orig(*a))
    torch.manual_seed(0)
    m = tiny_open_clip()
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    ids = torch.tensor([0, 1, 1, 0])
    img, tok = torch.randn(4, 3, 32, 32), torch.randint(0, 64, (4, 12))

    def step(split):
        calls.clear()
        if split:
            with mlv.route(m, ids):
                ie = m.encode_image(img)
            with mlv.route(m, ids):
                te = m.encode_text(tok)
        else:
            with mlv.route(m, ids):
                ie, te = m.encode_image(img), m.encode_text(tok)
        (ie * te).sum().backward()
        return len(calls)

    step(False)          # first forwards: every layer forms alone and becomes a member
    one_scope = step(False)
    assert step(True) == one_scope


def test_evaluation_inside_the_scope_a_training_loop_runs_in_sees_the_step():
    """A user loop routed once for all its steps (``with mlv.route(m, "a"):`` around the loop, as for one task by
    name) that evaluates without gradients between fused AdamW steps: every forward is in one scope, so the scope
    number cannot tell the steps apart and the evaluation reused M_t formed before the step (helper 148)."""
    m = _attached_mlp()
    x = torch.randn(4, 6)
    opt = adamw([p for p in m.parameters() if p.requires_grad], lr=0.1)
    with mlv.route(m, "a"):
        for _ in range(2):
            with torch.no_grad():
                m(x)                       # evaluation: the second forms the group and keeps it
        m(x).pow(2).sum().backward()       # first forward with gradients under "a": forms alone
        opt.step()
        with torch.no_grad():
            got = m(x)
    c = copy.deepcopy(m)
    with torch.no_grad(), mlv.route(c, "a"):
        want = c(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_a_groups_backward_forms_its_matrices_once(monkeypatch):
    """The layers' backward forms their group's M_t again (once); the group's own backward reuses that forming's π,
    B̄ and Λ instead of forming them a second time when every layer ran (three fewer formings a LLaVA step), with the
    same gradients as the layer-by-layer path."""
    from mtl_lora_vl.adapters import formation

    model = _mlp()
    per_layer = _layer_by_layer(model)
    x = torch.randn(4, 8)
    for m in (model, model):   # the first step forms each layer alone, the second as a group
        with mlv.route(m, MIXED):
            m(x).square().sum().backward()
    for m in (model, per_layer):
        m.zero_grad(set_to_none=True)
    calls = []
    real = formation._formed
    monkeypatch.setattr(formation, "_formed", lambda *a: calls.append(torch.is_grad_enabled()) or real(*a))
    with mlv.route(model, MIXED):
        loss = model(x).square().sum()
    forward_calls = len(calls)
    loss.backward()
    assert forward_calls == 1 and len(calls) - forward_calls == 1   # forward: the group; backward: once, not twice
    with mlv.route(per_layer, MIXED):
        per_layer(x).square().sum().backward()
    ref = _grads(per_layer)
    got = _grads(model)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])


def test_a_group_formed_in_a_checkpoints_recomputation_is_not_reused_after_that_backward():
    """Layer 0 outside any checkpoint, layers 1-2 checkpointed (non-reentrant), one group: the recomputation's group
    is never spent (its node's backward never runs) nor done (layer 0 never takes its M), and a fused AdamW step
    counts no version, so the next step's layer 0 took the M_t of before the step (loss 27.72 against 24.27 at step
    2, helper 152). A group formed inside a backward pass now lives only in that pass."""
    model = _checkpointed(reentrant=False, plain=1)
    ref = _layer_by_layer(model)
    x = torch.randn(4, 8)
    _assert_tasks_differ(ref, x)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1, fused=True) for m in (model, ref)]
    for step in range(4):
        losses = []
        for m, opt in zip((model, ref), opts):
            opt.zero_grad(set_to_none=True)
            with mlv.route(m, MIXED):
                loss = m(x).square().sum()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert_close_at_scale(torch.tensor(losses[0]), torch.tensor(losses[1]), msg=f"step {step}: {losses}")


# torch.func.grad through mtl_lora layers failed inside the formation ("Cannot access data pointer of Tensor that
# doesn't have storage") instead of torch's message about setup_context that the README names (helper 162).
@pytest.mark.parametrize("tasks", ["a", [0, 1]])
def test_torch_func_grad_through_the_adapters_names_the_limit(tasks):
    torch.manual_seed(0)
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, method="mtl_lora"))
    img = torch.randn(2, 3, 32, 32)
    params = {k[len("visual."):]: v.detach() for k, v in model.named_parameters() if k.startswith("visual.")}

    def loss(p):
        return torch.func.functional_call(model.visual, p, (img,)).sum()

    with pytest.raises(RuntimeError) as e, mlv.route(model, tasks, recompute=False):
        torch.func.grad(loss)(params)
    assert "setup_context" in str(e.value), str(e.value)[:300]
