"""Routing (issue 8): routes that hold through activation recomputation, any row order, Route.expand,
one id space from the loader to the layers, add_task's freezing scoped to one optimizer, merge backups."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch
from conftest import tiny_hf_clip, tiny_llava, tiny_open_clip
from torch import nn
from torch.optim import optimizer as optim_module
from torch.utils.checkpoint import checkpoint
from vl_tiny import tiny_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters import routing, scopes
from mtl_lora_vl.adapters.grow import freeze_old_rows
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES, LoRALinear
from mtl_lora_vl.adapters.routing import Route, Router
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskLoader, to_device
from mtl_lora_vl.multitask import MultiTaskModel
from mtl_lora_vl.tasks import build_kind, resolve_tasks

TASKS = ["vqa", "retrieval", "cls"]
IDS = torch.tensor([2, 0, 1, 0])  # a mixed batch whose rows are not grouped by task


def _randomize(model: nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.add_(torch.randn_like(p) * 0.2)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a and set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


#: A compiled graph's GEMMs against eager's: MKL (AVX-512) accumulates them apart, up to 1.5e-5 past rtol=1e-5 in
#: gradients up to 361 (test_torch_compile_does_not_recompile_for_each_mix_of_rows); 3x that.
COMPILED_ATOL = 5e-5


def _grads_apart(a: dict, b: dict) -> float:
    """The largest difference between two runs' gradients (another route's, where the tasks' must differ)."""
    assert a and set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ---------------------------------------------------------------------------------- activation checkpointing


def _features(x):
    return x if isinstance(x, torch.Tensor) else x.pooler_output


def _family(name: str):
    """(model, loss function, a switch that turns checkpointing on) for a tiny model of each family."""
    if name == "open_clip":
        model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
        img, txt = torch.randn(4, 3, 32, 32), torch.randint(1, 60, (4, 12))

        def loss(m):
            return (m.encode_image(img) @ m.encode_text(txt).T).square().sum()

        return model, loss, lambda m: m.set_grad_checkpointing(True)
    model = mlv.attach(tiny_hf_clip().train(), mlv.MTLLoRAConfig(tasks=TASKS))
    pix, tok = torch.randn(4, 3, 32, 32), torch.randint(0, 60, (4, 10))

    def loss(m):
        a = _features(m.get_image_features(pixel_values=pix))
        return (a @ _features(m.get_text_features(input_ids=tok)).T).square().sum()

    def enable(m):
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": name == "hf_reentrant"})

    return model, loss, enable


def _count_calls(model: nn.Module) -> list[int]:
    """Count forward calls of the adapted layers (recomputation calls them again)."""
    calls = [0]
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("family", ["open_clip", "hf_reentrant", "hf_non_reentrant"])
def test_checkpointed_gradients_equal_plain_ones_with_backward_outside_the_scope(family):
    model, loss_fn, enable = _family(family)
    _randomize(model)
    plain, ck = copy.deepcopy(model), copy.deepcopy(model)
    with mlv.route(plain, IDS):
        loss = loss_fn(plain)
    loss.backward()
    enable(ck)
    calls = _count_calls(ck)
    with mlv.route(ck, IDS):
        loss_ck = loss_fn(ck)
    forward_calls = calls[0]
    loss_ck.backward()  # recomputation runs here, after the scope closed
    assert calls[0] > forward_calls, "checkpointing did not recompute; the test would prove nothing"
    torch.testing.assert_close(loss_ck, loss)
    _assert_same_grads(_grads(plain), _grads(ck))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


class _Net(nn.Module):
    """Two residual blocks, each optionally under torch.utils.checkpoint (reentrant or not)."""

    def __init__(self, reentrant: bool | None = None):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.reentrant = reentrant

    def forward(self, x):
        for b in self.blocks:
            x = b(x) if self.reentrant is None else checkpoint(b, x, use_reentrant=self.reentrant)
        return x


def _net(reentrant=None, tasks=TASKS) -> _Net:
    net = mlv.attach(_Net(reentrant), mlv.MTLLoRAConfig(tasks=tasks, r=2, targets={"image": [r"fc\d$"]}))
    _randomize(net)
    return net


def _net_grads(net: _Net, x: torch.Tensor, ids, reentrant=None) -> dict[str, torch.Tensor]:
    net = copy.deepcopy(net)
    net.reentrant = reentrant
    with mlv.route(net, ids):
        loss = net(x).square().sum()
    loss.backward()
    return _grads(net)


@pytest.mark.parametrize("reentrant", [True, False])
def test_torch_checkpoint_recomputation_sees_the_route_of_its_forward(reentrant):
    net = _net()
    x = torch.randn(5, 3, 8, requires_grad=True)  # a reentrant checkpoint needs an input that requires grad
    ids = torch.tensor([2, 0, 0, 1, 2])
    ref = _net_grads(net, x, ids)
    _assert_same_grads(ref, _net_grads(net, x, ids, reentrant))

    # Two forwards with different routes before one backward, the backward inside a third scope:
    # each recomputation still uses its own forward's route.
    def two(net):
        with mlv.route(net, ids):
            a = net(x)
        with mlv.route(net, "cls"):
            b = net(x)
        with mlv.route(net, "vqa"):
            (a.square().sum() + b.pow(3).sum()).backward()
        return _grads(net)

    plain, ck = copy.deepcopy(net), copy.deepcopy(net)
    ck.reentrant = reentrant
    _assert_same_grads(two(plain), two(ck))


def test_without_replay_hooks_recomputation_has_no_route(monkeypatch):
    """What the hooks fix: a recomputation outside the scope cannot know its task."""
    monkeypatch.setattr(scopes, "_replay_hooks", lambda router, r, recompute=True: None)
    net = _net(reentrant=False)
    with mlv.route(net, IDS[:3]):
        loss = net(torch.randn(3, 8)).sum()
    with pytest.raises(mlv.RoutingError, match="no route scope saw that forward"):
        loss.backward()


def _top_hooks():
    return torch._C._autograd._top_saved_tensors_default_hooks(False)


def test_recompute_false_installs_no_hooks_and_trains_the_same():
    """``route(..., recompute=False)``: no saved-tensor hooks in the scope (they cost ~4 µs per saved tensor), the
    same loss and gradients as a default scope on a forward that is not checkpointed."""
    net, x = _net(), torch.randn(5, 3, 8)
    ids = torch.tensor([2, 0, 0, 1, 2])
    got = {}
    for recompute in (True, False):
        m = copy.deepcopy(net)
        with mlv.route(m, ids, recompute=recompute):
            hooks = _top_hooks()
            loss = m(x).square().sum()
        loss.backward()
        got[recompute] = loss, _grads(m), hooks
    assert isinstance(getattr(got[True][2][1], "__self__", None), scopes._ReplayHooks)
    assert got[False][2] is None
    torch.testing.assert_close(got[False][0], got[True][0], rtol=0, atol=0)
    _assert_same_grads(got[True][1], got[False][1])


def test_disabled_takes_recompute_false_for_torch_func():
    """disabled() always installed saved-tensor hooks, which torch.func transforms refuse, so a gradient of the base
    model by torch.func.grad could not be taken inside it (helper 139); route had recompute=False already."""
    net, x = _net(), torch.randn(3, 8)

    def loss(x):
        return net(x).square().sum()

    with mlv.disabled(net, recompute=False):
        assert _top_hooks() is None
        got = torch.func.grad(loss)(x)
    with mlv.disabled(net):
        assert _top_hooks() is not None
        xr = x.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(loss(xr), xr)
        with pytest.raises(RuntimeError, match="saved tensor hooks"):
            torch.func.grad(loss)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [True, False])
def test_recompute_false_on_a_checkpointed_forward_is_refused_in_backward(reentrant):
    """A checkpointed multi-task forward routed without hooks cannot be recomputed with its route: refused, not
    recomputed with another task's adapters."""
    net = _net(reentrant=reentrant)
    x = torch.randn(3, 8, requires_grad=True)
    with mlv.route(net, IDS[:3], recompute=False):
        loss = net(x).sum()
    with pytest.raises(mlv.RoutingError, match=r"no route scope saw that forward.*recompute=True"):
        loss.backward()


@pytest.mark.parametrize("reentrant", [True, False])
def test_recompute_false_inside_a_scope_with_hooks_still_replays_its_own_route(reentrant):
    """Inside an outer route scope of the same model, tensors saved by the inner forward would go through the
    outer scope's hooks and replay the outer task: an inner ``recompute=False`` scope installs its own then."""
    net = _net()
    x = torch.randn(5, 3, 8, requires_grad=True)
    ids = torch.tensor([2, 0, 0, 1, 2])
    ref = _net_grads(net, x, ids)
    ck = copy.deepcopy(net)
    ck.reentrant = reentrant
    with mlv.route(ck, "cls"):
        with mlv.route(ck, ids, recompute=False):
            assert _top_hooks()[1].__self__.routes[-1][1].segments == Route.from_ids(ids.tolist()).segments
            loss = ck(x).square().sum()
    loss.backward()
    _assert_same_grads(ref, _grads(ck))


@pytest.mark.parametrize("family", ["open_clip", "hf_non_reentrant"])
def test_may_recompute_sees_each_familys_checkpointing_switch(family):
    model, _, enable = _family(family)
    assert not mlv.may_recompute(model)
    enable(model)
    assert mlv.may_recompute(model)
    assert not mlv.may_recompute(_net(reentrant=False))   # a forward calling torch's checkpoint itself: not seen


def test_may_recompute_sees_torchs_checkpoint_wrapper():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    net = _net()
    assert not mlv.may_recompute(net)
    net.blocks[1] = checkpoint_wrapper(net.blocks[1])   # as apply_activation_checkpointing wraps a block
    assert mlv.may_recompute(net)


def test_may_recompute_follows_the_trainers_switch_on_a_llava():
    """The trainer's ``--grad-checkpointing`` on a Hugging Face VLM (transformers 5's activation_checkpointing_*)."""
    from mtl_lora_vl.backbones.hf import hf_grad_checkpointing

    model = tiny_llava()
    assert not mlv.may_recompute(model)
    hf_grad_checkpointing(model, True)
    assert mlv.may_recompute(model)
    hf_grad_checkpointing(model, False)
    assert not mlv.may_recompute(model)


@pytest.mark.parametrize("reentrant", [True, False])
def test_a_replay_route_is_never_reused_by_a_later_backward(reentrant):
    """The route armed by one backward pass is not read by the next one's recomputation: a one-task
    adapter after a backward under ``disabled`` still trains, and a forward whose tensors no route scope
    saw (hooks opened inside the scope shadow the route's) is refused, not trained on the previous task."""
    from torch.autograd.graph import save_on_cpu

    one = _net(tasks=["only"])
    x = torch.randn(4, 8, requires_grad=True)
    with mlv.disabled(one):
        one(x).sum().backward()                     # arms the replay route "adapters off"
    _assert_same_grads(_net_grads(one, x, "only"), _net_grads_unscoped(one, x, reentrant))

    net = _net()
    ck = copy.deepcopy(net)
    ck.reentrant = reentrant
    with mlv.route(ck, "cls"):
        ck(x).sum().backward()                      # recomputes under "cls": arms it
    with mlv.route(ck, "vqa"), save_on_cpu():
        loss = ck(x).square().sum()
    with pytest.raises(mlv.RoutingError, match="no route scope saw that forward"):
        loss.backward()


@pytest.mark.parametrize("reentrant", [True, False])
def test_a_route_opened_inside_disabled_recomputes_without_adapters(reentrant):
    """``disabled`` wins over a route opened inside it, in the forward and in its recomputation: the inner
    scope's replay hooks armed the task, so a checkpointed region recomputed *with* adapters (reentrant: silently
    wrong input gradients; non-reentrant: CheckpointError on the recomputed shapes)."""
    net = _net()

    def grads(ck: bool, inner: bool) -> torch.Tensor:
        m = copy.deepcopy(net)
        m.reentrant = reentrant if ck else None
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        with mlv.disabled(m), (mlv.route(m, IDS) if inner else contextlib.nullcontext()):
            loss = m(x).square().sum()
        loss.backward()   # after both scopes closed
        return x.grad

    ref = grads(False, False)
    torch.testing.assert_close(grads(False, True), ref)   # the forward ignored the inner route already
    torch.testing.assert_close(grads(True, True), ref)


def _net_grads_unscoped(net: _Net, x: torch.Tensor, reentrant: bool) -> dict[str, torch.Tensor]:
    net = copy.deepcopy(net)
    net.reentrant = reentrant
    net(x).square().sum().backward()
    return _grads(net)


def test_route_opened_inside_a_checkpointed_function_and_nested_models():
    a, b = _net(), _net(tasks=["x", "y"])
    x = torch.randn(4, 8, requires_grad=True)

    def run(ck: bool):
        ma, mb = copy.deepcopy(a), copy.deepcopy(b)
        ma.reentrant = False if ck else None  # model a checkpoints its blocks itself

        def inner(h):
            with mlv.route(mb, ["y", "x", "x", "y"]):  # a scope inside the checkpointed region
                return mb(h)

        with mlv.route(ma, IDS):  # scopes of two models, nested; backward after both closed
            h = ma(x)
            out = checkpoint(inner, h, use_reentrant=False) if ck else inner(h)
        with mlv.route(mb, "x"), mlv.route(ma, "cls"):
            out.square().sum().backward()
        return {**_grads(ma), **{"b." + k: v for k, v in _grads(mb).items()}}

    _assert_same_grads(run(False), run(True))


def test_user_saved_tensor_hooks_still_apply_inside_a_route():
    net = _net(reentrant=False)
    x = torch.randn(4, 8)
    ref = _net_grads(net, x, IDS)
    packed = []

    def pack(t):
        packed.append(1)
        return t.detach()

    net = copy.deepcopy(net)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with mlv.route(net, IDS):
            loss = net(x).square().sum()
    loss.backward()
    assert packed, "the user's pack hook was shadowed by the route's"
    _assert_same_grads(ref, _grads(net))


def test_inference_forwards_store_nothing():
    net = _net()
    router = net._mtl_lora.router
    with torch.no_grad():
        for _ in range(5):
            with mlv.route(net, IDS):
                net(torch.randn(4, 8))
    assert router.replay is None and router.current is None


def test_torch_compile_mixed_route_and_checkpoint_match_eager():
    net = _net()
    x = torch.randn(5, 3, 8, requires_grad=True)
    ids = torch.tensor([2, 0, 0, 1, 2])
    ref = _net_grads(net, x, ids)
    moved = _net_grads(net, x, (ids + 1) % len(TASKS))   # every row on another task: each gradient 15 to 325 off
    assert all((ref[k] - moved[k]).abs().max() > 1000 * COMPILED_ATOL for k in ref), _grads_apart(ref, moved)
    for reentrant in (None, False):
        compiled = copy.deepcopy(net)
        compiled.reentrant = reentrant
        with mlv.route(compiled, ids):
            loss = torch.compile(compiled, backend="aot_eager")(x).square().sum()
        loss.backward()
        _assert_same_grads(ref, _grads(compiled), atol=COMPILED_ATOL)



class _BreakingNet(_Net):
    """A forward that opens its route itself and graph-breaks inside the scope (as transformers' LLaVA does with
    ``Tensor.item()``): dynamo runs this frame eagerly, so the checkpoints it calls are eager too (not traced into a
    graph) and recompute in backward, asking the router."""

    def forward(self, x, segments):
        with mlv.route(self, Route.from_segments(segments)):   # host segments, as the trainer routes
            torch._dynamo.graph_break()
            for b in self.blocks:
                x = checkpoint(b, x, use_reentrant=self.reentrant)
            return x


@pytest.mark.parametrize("reentrant", [True, False])
def test_torch_compile_graph_break_inside_a_route_scope_still_replays_the_route(reentrant):
    """The scope's hooks were decided in a helper dynamo compiled as a frame of its own (is_compiling() true), so the
    eager fallback's checkpoints saved no route: backward's recomputation was refused (RoutingError)."""
    torch.manual_seed(0)
    net = mlv.attach(_BreakingNet(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"fc\d$"]}))
    _randomize(net)
    x = torch.randn(5, 3, 8, requires_grad=True)
    segments = [(2, 0, 1), (0, 1, 3), (1, 3, 5)]
    net.reentrant = reentrant
    ref = copy.deepcopy(net)
    ref(x, segments).square().sum().backward()
    torch._dynamo.reset()
    torch.compile(net, backend="eager")(x, segments).square().sum().backward()
    _assert_same_grads(_grads(ref), _grads(net))


def test_torch_compile_graph_break_inside_a_route_scope_still_refuses_another_threads_scope():
    """The thread record was also kept by a helper dynamo compiled as a frame of its own: under the eager fallback
    the scope recorded no thread, so another thread's scope on the same model passed (its forward mixing tasks)."""
    import threading

    net = mlv.attach(_BreakingNet(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"fc\d$"]}))
    net.reentrant, errors = False, []

    def other_thread():
        try:
            with mlv.route(net, "cls"):
                pass
        except routing.RoutingError as e:
            errors.append(str(e))

    def block(b, x):   # runs while the compiled forward's scope is open
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        return b(x)

    net.blocks[0] = _Probe(net.blocks[0], block)
    torch._dynamo.reset()
    torch.compile(net, backend="eager")(torch.randn(2, 3, 8), [(0, 0, 1), (1, 1, 2)])
    assert len(errors) == 1 and "another thread has a route or disabled scope open" in errors[0]


class _Probe(nn.Module):
    def __init__(self, inner, fn):
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, x):
        return self.fn(self.inner, x)


class _CompiledStep(nn.Module):
    """What MultiTaskModel.forward does under ``--compile``: the route built inside the compiled forward from the
    loader's segments (host ints), then one task's own route (a kind's loss)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, segments):
        with mlv.route(self.net, Route.from_segments(segments)):
            y = self.net(x)
        with mlv.route(self.net, TASKS[0]):
            y = y + self.net(x[:1])
        return y.square().sum()


def _compiles(step: nn.Module, x: torch.Tensor, mixes) -> tuple[int, list[dict]]:
    """Run each mix of rows through ``step`` (forward + backward): the frames dynamo compiled, and the grads."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    grads = []
    for segs in mixes:
        step.net.zero_grad(set_to_none=True)
        step(x, segs).backward()
        grads.append(_grads(step.net))
    return counters["frames"]["total"], grads


def test_torch_compile_compiles_a_repeated_batch_once():
    """The first traced call's one-task route filled the router's cache, which that graph's guards said was
    empty: the same batch again compiled a second time (one of the three compilations an H200 run made)."""
    x = torch.randn(6, 3, 8)
    mix = ((0, 0, 2), (1, 2, 6))
    n, _ = _compiles(torch.compile(_CompiledStep(_net()), backend="eager"), x, [mix, mix, mix])
    assert n == 1, f"{n} compilations for one batch run three times"


def test_torch_compile_does_not_recompile_for_each_mix_of_rows():
    """Mixed batches change how many rows each task has; the rows' positions were baked into the graph as
    constants (a guard on every segment bound), so each new mix compiled again, up to dynamo's recompile limit
    (then the frame runs eagerly). Each mix's gradients stay its own."""
    net = _net()
    x = torch.randn(6, 3, 8)
    mixes = [((0, 0, 2), (1, 2, 6)), ((0, 0, 3), (1, 3, 6)), ((0, 0, 4), (1, 4, 6)), ((0, 0, 1), (1, 1, 6)),
             ((0, 0, 5), (1, 5, 6)), ((0, 0, 2), (1, 2, 6)),
             ((0, 0, 1), (2, 1, 6)), ((0, 0, 4), (2, 4, 6))]   # another set of tasks: a graph of its own
    n, grads = _compiles(torch.compile(_CompiledStep(copy.deepcopy(net)), backend="eager"), x, mixes)
    assert n <= 3, f"{n} compilations for {len(mixes)} batches of the same shapes and two sets of tasks"
    _, ref = _compiles(_CompiledStep(copy.deepcopy(net)), x, mixes)   # eager
    for i in range(len(mixes) - 1):   # each mix's own: 178 to 808 apart from the next's
        assert _grads_apart(ref[i], ref[i + 1]) > 1000 * COMPILED_ATOL, (mixes[i], mixes[i + 1])
    for r, g in zip(ref, grads):
        _assert_same_grads(r, g, atol=COMPILED_ATOL)

@pytest.mark.parametrize("method", ["lora", "task_lora", "moe_lora"])
def test_torch_compile_one_matrix_layers_do_not_break_the_graph(method):
    """A one-matrix layer (method lora, or task_lora/moe_lora under one task's route) passes WHOLE_BATCH to
    update_rows; under dynamo `plan is WHOLE_BATCH` was False, the loop called torch.arange(None, None) and every
    adapted layer broke the graph (25 frames for a 2-layer net)."""
    from torch._dynamo.utils import counters

    tasks = ["a"] if method == "lora" else ["a", "b"]
    kw = {"n_up": 2} if method == "moe_lora" else {}
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=tasks, r=2, method=method, targets={"image": [r"fc\d$"]}, **kw))

    def f(x):
        with mlv.route(net, "a"):
            return net(x).square().sum()

    torch._dynamo.reset()
    counters.clear()
    torch.compile(f, backend="eager")(torch.randn(4, 3, 8)).backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["frames"]["total"] == 1


@pytest.mark.parametrize("method", ["task_lora", "moe_lora"])
def test_torch_compile_task_lora_does_not_recompile_for_each_mix_of_rows(method):
    """The mtl_lora test above, for the methods whose mixed route goes through Route.plan: `plan is WHOLE_BATCH`
    compared the plan's slices to WHOLE_BATCH's under dynamo, a guard on every segment bound (one graph per mix).
    The plan's slices themselves were then specialised on (a run of one row, a bound at 0): 4 graphs for 5 mixes,
    before compiled layers gathered each sample's M_t by its position. In float64: summed per sample, fp32's
    gradients differ from eager's by up to 2e-5 relative."""
    kw = {"n_up": 2} if method == "moe_lora" else {}
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]}, **kw))
    _randomize(net)
    net.double()
    x = torch.randn(6, 3, 8, dtype=torch.float64)
    mixes = [((0, 0, k), (1, k, 6)) for k in (2, 3, 4, 1, 5, 2)]
    n, grads = _compiles(torch.compile(_CompiledStep(copy.deepcopy(net)), backend="eager"), x, mixes)
    assert n <= 2, f"{n} compilations for {len(mixes)} mixes of two tasks"
    _, ref = _compiles(_CompiledStep(copy.deepcopy(net)), x, mixes)
    for r, g in zip(ref, grads):
        _assert_same_grads(r, g)

@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("method", ["task_lora", "moe_lora"])
def test_torch_compile_task_lora_under_routes_opened_outside_does_not_recompile_for_each_mix(method, backend):
    """``with mlv.route(model, ids): compiled(x)`` for the baselines of the method benchmark: Route.plan's slices have
    host bounds, which dynamo guarded as constants (7 graphs for 7 mixes of rows). Compiled layers now gather each
    sample's M_t (task_lora: its block of z) by its position, a graph input the scope makes once the model has been
    traced: the first call's graph, then one for every mix (finely interleaved rows too)."""
    from torch._dynamo.utils import counters

    interleaved = tuple((i % 2 * 2, i, i + 1) for i in range(8))
    mixes = [((0, 0, k), (2, k, 8)) for k in (2, 3, 4, 5, 6, 7, 1, 3)] + [interleaved]

    def run(compiled: bool) -> list[tuple]:
        torch.manual_seed(0)
        kw = {"n_up": 2} if method == "moe_lora" else {}
        net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]},
                                                   **kw))
        _randomize(net)
        net.double()   # float64: the same math summed in another order (per sample) is equal to 1e-6 and closer
        loss_of = (lambda x: net(x).square().mean())   # noqa: E731
        step = torch.compile(loss_of, backend=backend) if compiled else loss_of
        x = torch.randn(8, 3, 8, dtype=torch.float64)
        got = []
        for segs in mixes:
            net.zero_grad(set_to_none=True)
            with mlv.route(net, Route.from_segments(segs)):
                loss = step(x)
            loss.backward()
            got.append((loss.detach(), _grads(net)))
        return got

    torch._dynamo.reset()
    counters.clear()
    got = run(compiled=True)
    assert not counters["graph_break"], dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs <= 2, f"{graphs} graphs for {len(mixes)} mixes of rows"
    for (want_loss, want), (loss, grads) in zip(run(compiled=False), got):
        torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=1e-6)
        _assert_same_grads(want, grads)


@pytest.mark.parametrize("path", ["runs", "index"])
@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_route_first_used_under_inference_mode_still_trains(path, method, monkeypatch):
    """A Route caches its device tensors (plan, present index, positions); made under inference_mode they were
    inference tensors, which a later training forward with the same Route cannot save for backward."""
    if path == "index":
        monkeypatch.setitem(routing.MAX_RUNS_PER_TASK, "cpu", 1)
    layer = _layer(method)
    route = Route.from_ids([2, 0, 2, 0, 2])  # tasks 0 and 2: the present index is a tensor, not a slice
    x = torch.randn(5, 12)
    with torch.inference_mode(), mlv.route(layer.router, route):
        evaluated = layer(x)
    with mlv.route(layer.router, route):
        y = layer(x)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), evaluated)
    assert layer.lora_B.grad is not None


# ---------------------------------------------------------------------------------- row order


def _layer(method: str, batch_dim: int = 0) -> LoRALinear:
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=4, alpha=8, n_up=3, method=method)
    layer = LoRALinear(nn.Linear(12, 10), cfg)
    layer.router, layer.layer_name, layer.batch_dim = Router(TASKS), "test.layer", batch_dim
    _randomize(layer)
    return layer


def _layer_run(layer: LoRALinear, x: torch.Tensor, ids,
               upstream: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Outputs and adapter gradients of a copy of ``layer``; ``upstream``: the output's gradient (by default a
    fixed non-uniform one)."""
    layer = copy.deepcopy(layer)
    with mlv.route(layer.router, ids):
        y = layer(x)
    (y * (torch.arange(y.numel()).view(y.shape).sin() if upstream is None else upstream)).sum().backward()
    return y.detach(), _grads(layer)


@pytest.mark.parametrize("path", ["runs", "index"])
@pytest.mark.parametrize("method", ["mtl_lora", "task_lora", "moe_lora"])
@pytest.mark.parametrize("batch_dim", [0, 1])
def test_any_row_order_gives_the_grouped_outputs_and_gradients(path, method, batch_dim, monkeypatch):
    if path == "index":
        monkeypatch.setitem(routing.MAX_RUNS_PER_TASK, "cpu", 1)  # force the gathered-index path
    layer = _layer(method, batch_dim)
    grouped = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    perm = torch.tensor([5, 0, 3, 1, 6, 4, 2])  # interleaved: 7 runs for 3 tasks
    x = torch.randn(7, 5, 12)
    if batch_dim:
        x = x.transpose(0, 1).contiguous()  # (seq, batch, features)
    xp = x.index_select(batch_dim, perm)
    up = torch.randn(*x.shape[:-1], 10)   # the outputs' gradient, its rows permuted with the rows of x
    y, g = _layer_run(layer, x, grouped, up)
    yp, gp = _layer_run(layer, xp, grouped[perm], up.index_select(batch_dim, perm))
    torch.testing.assert_close(yp, y.index_select(batch_dim, perm), atol=1e-6, rtol=1e-6)
    _assert_same_grads(g, gp)   # the same loss, summed in another row order
    for t in range(3):  # and each row equals a one-task run of that row
        rows = (grouped[perm] == t).nonzero().flatten()
        with mlv.route(layer.router, TASKS[t]):
            alone = layer(xp.index_select(batch_dim, rows))
        torch.testing.assert_close(yp.index_select(batch_dim, rows), alone, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("path", ["runs", "index"])
def test_open_clip_shuffled_rows_match_grouped_rows_both_towers(path, monkeypatch):
    if path == "index":
        monkeypatch.setitem(routing.MAX_RUNS_PER_TASK, "cpu", 1)
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    _randomize(model)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    perm = torch.tensor([4, 2, 0, 5, 3, 1])
    img, txt = torch.randn(6, 3, 32, 32), torch.randint(1, 60, (6, 12))

    def run(order):
        m = copy.deepcopy(model)
        with mlv.route(m, ids[order]):
            a, b = m.encode_image(img[order]), m.encode_text(txt[order])
        (a @ b.T).square().sum().backward()  # invariant under a common permutation of the rows
        return a.detach(), b.detach(), _grads(m)

    a, b, g = run(torch.arange(6))
    ap, bp, gp = run(perm)
    torch.testing.assert_close(ap, a[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bp, b[perm], atol=1e-5, rtol=1e-5)
    for k in g:
        torch.testing.assert_close(gp[k], g[k], atol=1e-4, rtol=1e-3, msg=lambda m, k=k: f"{k}: {m}")


def test_route_segments_plans_and_errors():
    r = Route.from_ids([1, 1, 0, 2, 2, 0])
    assert r.segments == ((1, 0, 2), (0, 2, 3), (2, 3, 5), (0, 5, 6)) and r.present == (0, 1, 2)
    assert r.batch_size == 6 and r.task is None and not r.grouped
    plan = r.plan(torch.device("cpu"))
    assert [p for p, _ in plan] == [1, 0, 2, 0] and all(isinstance(rows, slice) for _, rows in plan)
    pos = r.sample_positions(torch.device("cpu"))
    assert pos.tolist() == [1, 1, 0, 2, 2, 0] and r.sample_positions(torch.device("cpu")) is pos  # made once
    assert r.expand(2).sample_positions(torch.device("cpu")).tolist() == [1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0, 0]
    assert Route.from_ids([3, 3, 1]).sample_positions(torch.device("cpu")).tolist() == [1, 1, 0]  # among (1, 3)
    g = Route.from_segments([(0, 0, 2), (0, 2, 3), (2, 3, 4)])  # adjacent runs of one task merge
    assert g.segments == ((0, 0, 3), (2, 3, 4)) and g.grouped
    assert Route.from_segments([(1, 0, 4)]).task == 1
    with pytest.raises(mlv.RoutingError, match="tile the batch"):
        Route.from_segments([(0, 0, 2), (1, 3, 4)])
    router = Router(TASKS)
    with pytest.raises(mlv.RoutingError, match=r"task id 5 is out of range"):
        router.make_route(Route.from_segments([(5, 0, 2)]))
    with pytest.raises(mlv.RoutingError, match=r"names no task.*Route.from_ids.*disabled"):
        router.make_route(Route())  # an empty Route is not the package's own adapters-off sentinel
    assert router.make_route("cls") is router.make_route(2)  # one cached route per task


def test_route_expand_repeats_each_row_like_repeat_interleave():
    r = Route.from_ids([2, 0, 0, 1], torch.tensor([2, 0, 0, 1]))
    e = r.expand(3)
    assert e.batch_size == 12 and e.segments == ((2, 0, 3), (0, 3, 9), (1, 9, 12))
    assert torch.equal(e.ids, torch.tensor([2, 0, 0, 1]).repeat_interleave(3))
    assert r.expand(1) is r and Route(task=1).expand(4).task == 1
    layer = _layer("mtl_lora")
    x = torch.randn(4, 2, 12)
    with torch.no_grad(), mlv.route(layer.router, r):
        y = layer(x)
    with torch.no_grad(), mlv.route(layer.router, e):
        ye = layer(x.repeat_interleave(3, dim=0))
    torch.testing.assert_close(ye, y.repeat_interleave(3, dim=0))


# ---------------------------------------------------------------------------------- loader -> model


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


def test_loader_emits_adapter_ids_and_the_model_routes_once_per_tower_without_ids(clip, monkeypatch):
    adapter_tasks = ["vqa", "retrieval", "caption_cls"]
    specs = resolve_tasks(",".join(adapter_tasks))
    splits = {s.name: world.build_split(s.kind, "train", n=6, seed=0) for s in specs}
    kinds = {s.name: build_kind(s, splits[s.name], clip) for s in specs}
    heads = nn.ModuleDict({n: k.build_head(clip) for n, k in kinds.items()})  # zero-shot heads, then adapters
    mlv.attach(clip.model, mlv.MTLLoRAConfig(tasks=adapter_tasks, r=4))
    model = MultiTaskModel(clip, kinds, heads)
    # An --extend-like loader: trains two of the adapter's tasks, listed out of adapter order.
    trained = ["caption_cls", "retrieval"]
    loader = MultiTaskLoader([kinds[n] for n in trained], [splits[n] for n in trained], clip, batch_size=8,
                             steps=1, adapter_tasks=adapter_tasks)
    batch = next(iter(loader))
    ids = batch["task_ids"].tolist()
    assert set(ids) == {1, 2} and ids == sorted(ids)  # adapter ids, rows grouped in adapter order
    assert batch["segments"] == Route.from_ids(ids).segments
    assert list(batch["tasks"]) == ["retrieval", "caption_cls"]
    text_ids = [ids[r] for r in batch["text_rows"].tolist()]
    assert batch["text_segments"] == (Route.from_ids(text_ids).segments if text_ids else ())

    seen = []
    real = Router.make_route
    monkeypatch.setattr(Router, "make_route", lambda self, t: seen.append(t) or real(self, t))
    for name, w in (("retrieval", 3.0), ("caption_cls", 0.5)):   # the joint objective weighs each task's loss
        kinds[name].spec = dataclasses.replace(kinds[name].spec, loss_weight=w)
    total, losses = model(to_device(batch, "cpu", torch.float32, clip))
    assert torch.isfinite(total) and set(losses) == {"retrieval", "caption_cls"}
    torch.testing.assert_close(total, 3.0 * losses["retrieval"] + 0.5 * losses["caption_cls"])
    tower_routes = [t for t in seen if isinstance(t, Route)]
    assert len(tower_routes) == (2 if text_ids else 1)  # one route per tower pass
    assert not any(isinstance(t, torch.Tensor) for t in seen)  # no ids -> host round trip
    with pytest.raises(ValueError, match=r"not in the adapter's tasks"):
        MultiTaskLoader([kinds["vqa"]], [splits["vqa"]], clip, batch_size=4, adapter_tasks=["other"])
    hooked = []
    real_hooks = scopes._replay_hooks
    monkeypatch.setattr(scopes, "_replay_hooks", lambda *a: hooked.append(real_hooks(*a)) or hooked[-1])
    model.train()                                     # not checkpointed: its route scopes install no hooks
    assert model.recompute is False
    model(to_device(batch, "cpu", torch.float32, clip))
    assert hooked and not any(hooked)
    clip.set_grad_checkpointing(True)
    model.train()                                     # checkpointed: they do
    assert model.recompute is True
    hooked.clear()
    model(to_device(batch, "cpu", torch.float32, clip))
    assert hooked and all(hooked)
    clip.set_grad_checkpointing(False)


# ---------------------------------------------------------------------------------- add_task, merge


def test_add_task_freezing_is_scoped_to_the_optimizer_it_is_given():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=4))
    _randomize(model)
    global_hooks = dict(optim_module._global_optimizer_post_hooks)
    added = mlv.add_task(model, "count")
    assert added.task_id == 2 and added.trainable > 0 and added.name == "count"
    assert dict(optim_module._global_optimizer_post_hooks) == global_hooks  # nothing process-wide
    bank = model._mtl_lora.layers["visual.transformer.resblocks.0.mlp.c_fc"]
    old = bank.lora_lambda.detach()[:2].clone()

    other = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1)  # another optimizer in the process
    trains = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    handle = added.freeze_old_rows(trains)
    assert not other._optimizer_step_post_hooks and len(trains._optimizer_step_post_hooks) == 1

    with torch.no_grad():
        bank.lora_lambda.mul_(0.5)  # what weight decay does to every row
    other.step()
    assert not torch.equal(bank.lora_lambda[:2], old)  # the other optimizer's step restores nothing
    trains.step()
    assert torch.equal(bank.lora_lambda[:2], old)  # the registered one's does
    handle.remove()
    assert not trains._optimizer_step_post_hooks


def test_adding_two_tasks_trains_both():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["vqa"], r=4))
    _randomize(model)  # B = 0 at init would give Λ no gradient
    mlv.add_task(model, "a")
    mlv.add_task(model, "b")
    bank = model._mtl_lora.layers["visual.transformer.resblocks.0.mlp.c_fc"]
    assert bank.frozen_task_rows == 1
    img = torch.randn(3, 3, 32, 32)
    with mlv.route(model, torch.tensor([0, 1, 2])):
        model.encode_image(img).square().sum().backward()
    grad = bank.lora_lambda.grad
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5)
    freeze_old_rows(model, opt)
    before = bank.lora_lambda.detach().clone()
    opt.step()
    assert torch.equal(bank.lora_lambda[0], before[0]) and not torch.equal(bank.lora_lambda[1:], before[1:])


def test_merge_backup_is_registered_state_and_unmerge_is_bit_exact():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    _randomize(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()
               if n.rpartition(".")[2] not in ADAPTER_PARAM_NAMES}
    keys = set(model.state_dict())
    mlv.merge(model, "cls")
    backups = {n: b for n, b in model.named_buffers() if n.endswith("merge_backup")}
    assert len(backups) == len(model._mtl_lora.layers)
    assert set(model.state_dict()) == keys  # non-persistent: not in checkpoints
    bank = model._mtl_lora.layers["transformer.resblocks.0.mlp.c_fc"]
    assert torch.equal(bank.merge_backup, weights["transformer.resblocks.0.mlp.c_fc.weight"])
    attn = model._mtl_lora.layers["transformer.resblocks.0.attn.in_proj"]
    assert torch.equal(attn.merge_backup, weights["transformer.resblocks.0.attn.in_proj_weight"])
    assert not torch.equal(bank.weight, bank.merge_backup)
    mlv.merge(model, "vqa")  # merging another task goes back through the exact base first
    mlv.unmerge(model)
    for n, p in model.named_parameters():
        if n in weights:
            assert torch.equal(p, weights[n]), n
    assert not any(n.endswith("merge_backup") for n, _ in model.named_buffers())
    assert bank.merge_backup is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ids", [IDS, "cls"])
def test_autocast_backward_through_mixed_and_one_task_routes(dtype, ids):
    net = _net()
    with torch.autocast("cpu", dtype=dtype), mlv.route(net, ids):
        loss = net(torch.randn(4, 8)).float().square().sum()
    loss.backward()
    grads = _grads(net)
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())


def test_a_wrapper_routes_to_the_adapters_attached_now():
    """A wrapper remembered the router it found first: after unload and a new attach on the inner model it
    kept routing the old router, which no layer reads any more."""
    from mtl_lora_vl.mtl_lora_model import unload

    inner = nn.Sequential(nn.Linear(6, 6))
    wrapper = nn.Sequential(inner)
    mlv.attach(inner, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, targets={"image": [r"^0$"]}))
    x = torch.randn(2, 6)
    with torch.no_grad(), mlv.route(wrapper, "a"):
        wrapper(x)
    unload(inner)
    mlv.attach(inner, mlv.MTLLoRAConfig(tasks=["c"], r=2, targets={"image": [r"^0$"]}))
    with torch.no_grad(), mlv.route(wrapper, "c"):   # was: unknown task 'c' (the old router's tasks a, b)
        wrapper(x)


def test_scopes_closed_out_of_order_are_refused_not_leaked():
    """Two interleaved generators (or threads) routing one model: the first to close restored the other's
    outer route, so a later forward without a route ran as a task instead of raising."""
    model = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]}))

    def stream(task):
        with mlv.route(model, task):
            yield 1
            yield 2

    a, b = stream("a"), stream("b")
    next(a), next(b), next(a), next(b)
    for stream_ in (a, b):
        with pytest.raises(mlv.RoutingError, match="scopes on one model closed out of order"):
            next(stream_)
    with pytest.raises(mlv.RoutingError, match="no task was given"):   # nothing left behind
        model(torch.randn(1, 4))
    a, b = stream("a"), stream("b")   # closed generators (GeneratorExit) report it too
    next(a), next(b)
    for stream_ in (a, b):
        with pytest.raises(mlv.RoutingError, match="closed out of order"):
            stream_.close()


def test_a_model_routed_from_two_threads_at_once_is_refused():
    """Thread 1 opened route("a"), thread 2 route("b"): thread 1's forward ran task b, and closing in order raised
    nothing. A scope opened while another thread's is open is now refused; thread 1 keeps its task."""
    import threading

    model, x, want = _two_task_linear(1)
    opened, tried = threading.Event(), threading.Event()
    out, errors = {}, []

    def first():
        with torch.no_grad(), mlv.route(model, "a"):
            opened.set()
            tried.wait(10)
            out["a"] = model(x)

    def second():
        opened.wait(10)
        for scope in (lambda: mlv.route(model, "b"), lambda: mlv.disabled(model)):
            try:
                with scope():
                    pass
            except mlv.RoutingError as e:
                errors.append(str(e))
        tried.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(errors) == 2 and all("must not be routed from several threads at once" in e and "copy.deepcopy" in e
                                    for e in errors)
    torch.testing.assert_close(out["a"], want)
    router = model._mtl_lora.router
    assert router.current is None and router.thread is None and not router.disabled
    seen = []

    def later():   # free again once thread 1 closed its scope
        with mlv.route(model, "b"):
            seen.append(router.current.task)

    t = threading.Thread(target=later)
    t.start(), t.join()
    assert seen == [1]


@pytest.mark.parametrize("reentrant", [True, False])
def test_backward_on_another_thread_may_reenter_a_route_while_the_forwards_thread_holds_one(reentrant):
    """On CUDA the autograd engine runs backward on its own device threads: a recomputation that re-enters a route
    there, while the thread that called backward holds a scope on the same model, is not another thread routing."""
    import threading

    a, b = _net(), _net(tasks=["x", "y"])

    def run(thread: bool):
        ma, mb = copy.deepcopy(a), copy.deepcopy(b)
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

        def inner(h):
            with mlv.route(mb, ["y", "x", "x", "y"]):
                return mb(h)

        with mlv.route(ma, IDS):
            out = checkpoint(inner, ma(x), use_reentrant=reentrant)
        loss, errors = out.square().sum(), []

        def backward():
            try:
                loss.backward()
            except Exception as e:   # noqa: BLE001 - reported below
                errors.append(e)

        with mlv.route(mb, "x"):
            if thread:
                t = threading.Thread(target=backward)
                t.start(), t.join()
            else:
                backward()
        assert not errors, errors
        return {**_grads(ma), **{"b." + k: v for k, v in _grads(mb).items()}}

    _assert_same_grads(run(False), run(True))


def test_a_2d_input_of_a_sequence_first_layer_is_batch_first():
    """A pooled (B, C) input in a sequence-first block was checked on its feature size (dim 1)."""
    layer = _layer("mtl_lora", batch_dim=1)
    x = torch.randn(3, 12)
    with torch.no_grad(), mlv.route(layer.router, [0, 1, 2]):
        y = layer(x)
    with torch.no_grad():
        rows = []
        for i in range(3):
            with mlv.route(layer.router, [i]):
                rows.append(layer(x[i:i + 1]))
    torch.testing.assert_close(y, torch.cat(rows))


def test_a_wrapper_follows_its_inner_model_when_replaced():
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]})
    wrapper = nn.Sequential(mlv.attach(nn.Sequential(nn.Linear(4, 4)), cfg))
    with mlv.route(wrapper, "a"):
        wrapper(torch.randn(1, 4))
    wrapper[0] = mlv.attach(nn.Sequential(nn.Linear(4, 4)),
                            mlv.MTLLoRAConfig(tasks=["x", "y"], targets={"image": [r"^0$"]}))
    with mlv.route(wrapper, "y"):   # it routed the old model's router ("unknown task 'y'")
        wrapper(torch.randn(1, 4))


def _two_task_linear(rows: int):
    """One Linear adapted for tasks a and b (B random, so they differ), an input of ``rows`` rows, task a's output."""
    model = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]}))
    with torch.no_grad():
        model[0].lora_B.normal_()
    x = torch.randn(rows, 4)
    with torch.no_grad(), mlv.route(model, "a"):
        return model, x, model(x)


def test_an_error_in_flight_is_not_replaced_by_the_scope_order_error():
    """A scope left by an exception while an inner scope is still open raised RoutingError instead, hiding the
    error (a KeyboardInterrupt or a shape error) that actually stopped the code."""
    model = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]}))
    outer, inner = mlv.route(model, "a"), mlv.route(model, "b")
    outer.__enter__()
    inner.__enter__()
    err = ValueError("the real error")
    assert outer.__exit__(ValueError, err, None) is False   # re-raised as itself, not as a RoutingError
    with pytest.raises(mlv.RoutingError, match="no task was given"):   # nothing left behind
        model(torch.randn(1, 4))
    with pytest.raises(mlv.RoutingError, match="closed out of order"):   # the inner scope, closed last (else its
        inner.__exit__(None, None, None)                                # generator raised this when collected)


def test_a_copy_made_inside_a_scope_holds_no_open_scope():
    """deepcopy / pickle copied the router's live state: a copy made inside disabled() ran as the base model for
    good (route() on it was silently ignored), one made inside route(ids) stayed routed with no scope open."""
    import pickle

    model, x, want = _two_task_linear(3)
    with mlv.disabled(model):
        copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    with mlv.route(model, [0, 1, 0]):
        copies.append(copy.deepcopy(model))
    for c in copies:
        with torch.no_grad(), mlv.route(c, "a"):
            torch.testing.assert_close(c(x), want)
        with pytest.raises(mlv.RoutingError, match="no task was given"):
            c(x)


def test_numpy_ids_route_and_a_task_id_where_a_name_is_needed_says_so():
    import numpy as np

    model = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]}))
    x = torch.randn(3, 4)
    with torch.no_grad():
        with mlv.route(model, [0, 1, 0]):
            want = model(x)
        with mlv.route(model, np.array([0, 1, 0])):   # was: "expected a task name, an id, ... got array([0, 1, 0])"
            torch.testing.assert_close(model(x), want)
    with pytest.raises(KeyError, match="pass the task's name: id 1 is 'b'") as info:
        mlv.merge(model, 1)
    assert str(info.value).startswith("unknown task 1;")   # KeyError's own str() wrapped it in quotes


def test_data_parallel_replicas_refuse_routes_they_would_mix():
    """nn.DataParallel copies modules shallowly: its replicas (one thread each) share one Router, so routes
    opened in them mixed -- rows silently got another replica's task. A replica now refuses to route; a
    per-sample route opened outside, which a replica sees a chunk of, says why the sizes differ."""
    import mtl_lora_vl as mlv

    model = tiny_hf_clip()
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    replica = mlv.MTLLoRAModel(model)._replicate_for_data_parallel()   # what nn.parallel.replicate makes per GPU
    with pytest.raises(mlv.RoutingError, match="nn.DataParallel replica; the replicas share one router"):
        with mlv.route(replica, ["a", "b"]):
            pass
    layer = next(m for m in model.modules() if type(m).__name__ == "LoRALinear")
    layer_replica = layer._replicate_for_data_parallel()
    layer_replica._parameters = dict(layer._parameters)   # replicate() then fills in the parameters
    x = torch.randn(2, layer.in_features)
    with mlv.route(model, ["a", "b", "a", "b"]):
        with pytest.raises(mlv.RoutingError, match="is an nn.DataParallel replica, which sees its chunk"):
            layer_replica(x)
    # a chunk as long as the route (4 ids routed around 8 rows on 2 GPUs; a VLM chunk of 2 rows holding 2 images
    # each, in its tower) passed the size check: each replica ran rows 0-3's tasks on its own rows, without a word
    with mlv.route(model, ["a", "b", "b", "a"]):
        with pytest.raises(mlv.RoutingError, match="is an nn.DataParallel replica, which sees its chunk"):
            layer_replica(torch.randn(4, layer.in_features))
    with mlv.route(model, "b"):   # one task for the whole batch: any chunk runs it
        layer_replica(torch.randn(4, layer.in_features))


@pytest.mark.parametrize("ids", ["a", [0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2]],
                         ids=["one_task", "grouped", "interleaved"])
def test_torch_compile_under_a_route_opened_outside_compiles_once(ids):
    """The public form with a compiled model -- ``with mlv.route(model, ids): loss = compiled(x)`` -- compiled a
    one-task route twice: its first traced call filled the route's per-device index cache, which that graph's
    guard said was empty (an H100 bench's compiled one-task case recompiled its ViT-B-32 in the timed rounds)."""
    from torch._dynamo.utils import counters

    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    mlv.attach(net, mlv.MTLLoRAConfig(tasks=["a", "b", "c"], r=2, n_up=2, targets={"image": [r"^(0|2)$"]}))
    step = torch.compile(lambda x: net(x).square().mean(), backend="eager")
    x = torch.randn(6, 8)
    torch._dynamo.reset()
    counters.clear()
    for _ in range(3):
        with mlv.route(net, ids):
            loss = step(x)
        loss.backward()
    assert counters["frames"]["total"] == 1


@pytest.mark.parametrize("empty", [[], (), torch.tensor([], dtype=torch.long)])
def test_an_empty_list_of_ids_says_a_batch_needs_a_sample(empty):
    """route(model, []) said 'expected a task name, an id, a list of names or a LongTensor of ids, got []' (an empty
    tensor already got the clearer message); both say the batch needs one id per row (review 233)."""
    model = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2,
                                                                         targets={"image": [r"^0$"]}))
    with pytest.raises(mlv.RoutingError, match="empty; a batch needs at least one sample"):
        with mlv.route(model, empty):
            pass


@pytest.mark.parametrize("second_scope", ["route", "disabled"])
def test_two_threads_opening_scopes_at_the_same_instant_cannot_both_pass(monkeypatch, second_scope):
    """The one-thread check read the router's thread and current route, and the scope set them a moment later: a
    second thread opening a scope in between passed the check too, and both threads' forwards ran one task. The
    check and the entry are one step now: thread 1 is held inside that step until thread 2 has tried."""
    import threading

    from mtl_lora_vl.adapters import scopes

    model, _, _ = _two_task_linear(1)
    first_in, second_done = threading.Event(), threading.Event()
    real = threading.get_ident
    first_ident = []

    def slow_ident() -> int:   # called inside the check: hold thread 1 there until thread 2 tried (or 1 s passed)
        me = real()
        if first_ident and me == first_ident[0] and not first_in.is_set():
            first_in.set()
            second_done.wait(1)
        return me

    monkeypatch.setattr(scopes.threading, "get_ident", slow_ident)
    errors, inside = [], []

    def first():
        first_ident.append(real())
        with mlv.route(model, "a"):
            inside.append("a")
            second_done.wait(5)

    def second():
        first_in.wait(5)
        try:
            with mlv.route(model, "b") if second_scope == "route" else mlv.disabled(model):
                inside.append("b")
        except mlv.RoutingError as e:
            errors.append(str(e))
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert inside == ["a"] and len(errors) == 1 and "several threads at once" in errors[0]
    router = model._mtl_lora.router
    assert router.current is None and router.thread is None and not router.disabled


def test_a_copied_router_has_a_lock_of_its_own():
    """deepcopy and pickle of an adapted model give its router a fresh lock (a lock cannot be copied)."""
    import pickle

    model, x, want = _two_task_linear(1)
    for copy_ in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        router = copy_._mtl_lora.router
        assert router.claim_lock is not model._mtl_lora.router.claim_lock and not router.claim_lock.locked()
        with torch.no_grad(), mlv.route(copy_, "a"):
            torch.testing.assert_close(copy_(x), want)


def test_a_scope_closing_on_one_thread_keeps_the_claim_of_a_scope_opened_meanwhile(monkeypatch):
    """A closing scope restored its route and then, a moment later, the thread record: a scope another thread opened in
    between was claimed, then lost its claim (the record went back to None), so a third thread's scope would pass the
    check. Leaving is one step under the lock now, as entering is (disabled() leaves so too)."""
    import threading

    from mtl_lora_vl.adapters import scopes

    model, _, _ = _two_task_linear(1)
    router = model._mtl_lora.router
    left, second_in, first_done = threading.Event(), threading.Event(), threading.Event()
    real_close = scopes._close

    def slow_close(*args) -> None:   # hold the first scope's exit between its route and its thread record
        real_close(*args)
        left.set()
        second_in.wait(1)

    monkeypatch.setattr(scopes, "_close", slow_close)
    seen = []

    def first():
        with mlv.route(model, "a"):
            pass
        first_done.set()

    def second():
        left.wait(5)
        with mlv.route(model, "b"):
            second_in.set()
            first_done.wait(5)
            seen.append(router.thread)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == [threads[1].ident]
    assert router.current is None and router.thread is None and not router.disabled


def test_torch_compile_under_mixed_routes_opened_outside_does_not_recompile_for_each_mix():
    """A mixed route made outside the compiled code (``with mlv.route(model, ids): compiled(x)``; in training, the
    frames dynamo compiles after a graph break inside the route scope, as in transformers' LLaVA) had its segments'
    ints guarded as constants: a graph per mix of rows, 7 for 7 mixes, then past dynamo's limit the frame ran
    eagerly. Each mix's gradients stay its own."""
    from torch._dynamo.utils import counters

    def run(compiled: bool) -> list[dict]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        mlv.attach(net, mlv.MTLLoRAConfig(tasks=["a", "b", "c"], r=2, n_up=2, targets={"image": [r"^(0|2)$"]}))
        _randomize(net)
        loss_of = (lambda x: net(x).square().mean())   # noqa: E731
        step = torch.compile(loss_of, backend="eager") if compiled else loss_of
        grads = []
        for k in (2, 3, 4, 5, 6, 7, 1, 3):
            net.zero_grad(set_to_none=True)
            with mlv.route(net, Route.from_segments(((0, 0, k), (2, k, 8)))):
                loss = step(x)
            loss.backward()
            grads.append(_grads(net))
        return grads

    x = torch.randn(8, 8)
    torch._dynamo.reset()
    counters.clear()
    grads = run(compiled=True)
    assert counters["frames"]["total"] == 1, f"{counters['frames']['total']} compilations for 8 mixes of rows"
    for r, g in zip(run(compiled=False), grads):
        _assert_same_grads(r, g)


class _RoutedInsideStep(nn.Module):
    """What MultiTaskModel's generative path does under ``--compile``: the route made by a helper of the compiled
    forward (which dynamo compiles as a frame of its own), then a graph break inside the route scope (transformers'
    LLaVA reads its image-token counts with ``.item()``): the scope runs eagerly, the model's frames compile apart."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def _route(self, segments):
        return Route.from_segments(segments)

    def forward(self, x, segments):
        with mlv.route(self.net, self._route(segments)):
            torch._dynamo.graph_break()
            y = self.net(x)
        return y.square().sum()


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora", "moe_lora"])
def test_torch_compile_route_made_in_a_traced_frame_and_entered_eagerly_does_not_recompile_for_each_mix(method):
    """The route's host positions (Route._host) were made in Route(), inside the helper's traced frame, so there were
    none: the model's frames traced the segments' ints as constants, a graph per mix of rows (6 graphs for 6 mixes;
    the LLaVA job compiled ~20 s more at each new mix). The route scope, which runs eagerly, now makes them. task_lora
    and moe_lora layers read them too once compiled (5 graphs for 5 mixes before): the first call's graph has none."""
    from torch._dynamo.utils import counters

    kw = {"n_up": 2} if method == "moe_lora" else {}
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]}, **kw))
    _randomize(net)
    net.double()   # other methods' compiled layers sum per sample: fp32 would differ by more than the tolerance
    x = torch.randn(6, 3, 8, dtype=torch.float64)
    mixes = [((0, 0, k), (1, k, 6)) for k in (2, 3, 4, 1, 5, 2, 3)]
    _, grads = _compiles(torch.compile(_RoutedInsideStep(copy.deepcopy(net)), backend="eager"), x, mixes)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs <= (1 if method == "mtl_lora" else 2), f"{graphs} graphs for {len(set(mixes))} mixes of rows"
    _, ref = _compiles(_RoutedInsideStep(copy.deepcopy(net)), x, mixes)   # eager
    for r, g in zip(ref, grads):
        _assert_same_grads(r, g)


def test_a_packed_route_makes_no_host_positions():
    """Every mixed route made its rows' host positions in Route(), also a packed one, which mtl_lora layers apply
    per run of rows and never read: 8.8 ms (CPU) per route of 65,536 patches (16 images of 4,096), per packed_at too."""
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"fc\d$"]}))
    r = Route.from_ids([0, 1, 0]).packed_images([16, 32, 24])
    assert r._host is None and r.packed_at(9)._host is None
    with mlv.route(net, r):
        assert r._host is None
    mixed = Route.from_ids([0, 1, 0])
    assert mixed._host is None   # made by the scope that enters it (a compiled layer takes it as a graph input)
    with mlv.route(net, mixed):
        assert mixed._host.tolist() == [0, 1, 0]


@pytest.mark.parametrize("method", ["task_lora", "moe_lora"])
def test_a_route_of_layers_that_apply_runs_of_rows_makes_no_host_positions(method):
    """task_lora / moe_lora layers apply each task's rows (Route.plan) and never read the rows' positions; their
    scopes made them anyway (+11 us of a 23 us scope on the CPU, B = 16)."""
    kw = {"n_up": 2} if method == "moe_lora" else {}
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]}, **kw))
    with mlv.route(net, [0, 1, 0]) as r:
        net(torch.randn(3, 3, 8))
    assert r._host is None


def test_a_mixed_route_made_under_another_default_device_keeps_its_positions_on_the_host():
    # Route._host, made at construction (14248c6 to h303), was a meta tensor under `with torch.device("meta")`, and the
    # route's first CPU forward raised "Cannot copy out of meta tensor"; the host positions are made on the CPU
    with torch.device("meta"):
        r = Route.from_ids([0, 1, 0])
    assert r.sample_positions(torch.device("cpu")).tolist() == [0, 1, 0]
    assert r.sample_positions(torch.device("meta")).device.type == "meta"
