"""A compiled ``MTLLoRAModel`` given each call's tasks (``model(x, tasks=...)``): the route is made outside the
compiled region, as a route scope's around the compiled call, so a new mix of rows of one set of tasks (same shapes)
reuses the graph, a tensor of ids breaks no graph, and the ids are read to the host once per call. Graphs are counted
over ten mixes of one set, outputs compared with eager in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch._dynamo.config as dynamo_config
from test_compile_routes import _all_warnings, _counted, _limit_warnings
from test_routing import TASKS, _Net, _randomize
from torch._dynamo.utils import counters

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.routing import Route
from mtl_lora_vl.mtl_lora_model import MTLLoRAModel

#: Ten mixes of the rows of one set of tasks ({vqa, retrieval}), six rows each: past Dynamo's recompile limit (8).
MIXES = [list(p) for p in sorted(set(itertools.permutations([0, 0, 0, 1, 1, 1])))][:10]


def _model(method: str) -> tuple[MTLLoRAModel, torch.Tensor]:
    """A float64 ``_Net`` adapted by ``method`` (perturbed adapters), wrapped, and an input of six rows."""
    torch.manual_seed(0)
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]}))
    _randomize(net)
    net.double()   # compiled layers sum per sample: fp32 would differ from eager by more than the tolerance
    return MTLLoRAModel(net), torch.randn(6, 3, 8, dtype=torch.float64)


def _no_graphs() -> None:
    torch._dynamo.reset()
    counters.clear()


def _as(form: str, ids: list[int]):
    if form == "names":
        return [TASKS[i] for i in ids]
    return torch.tensor(ids) if form == "tensor" else ids


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("form", ["names", "ids", "tensor"])
@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_tasks_given_per_call_compile_one_graph_for_every_mix_of_a_set(method, form, in_place):
    """``torch.compile(model)(x, tasks=[...])`` (or ``model.compile()``) traced the route's set-up inside the compiled
    forward: a list of names or ids was a constant of the graph, one graph per list (10 mixes of one set: 8 graphs,
    Dynamo's recompile limit, the last two run eagerly), and a tensor of ids broke the graph (its ids read on the host).
    The forward's own frame now runs eagerly (Dynamo skips it) and opens the route as a scope around the compiled call
    would: 1 graph for the 10 mixes, no graph break, each output the eager model's."""
    model, x = _model(method)
    with torch.no_grad():
        want = []
        for ids in MIXES:
            with model.route(ids):
                want.append(model(x))
        _no_graphs()
        if in_place:
            model.compile(backend="eager")
        compiled = model if in_place else torch.compile(model, backend="eager")
        for ids, w in zip(MIXES, want):
            torch.testing.assert_close(compiled(x, tasks=_as(form, ids)), w, atol=1e-9, rtol=1e-9)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_a_compiled_call_given_its_tasks_trains_as_eager():
    """The route scope the skipped forward opens installs its saved-tensor hooks eagerly: the compiled call's
    gradients (aot_eager, a backward graph) are the eager model's, over two mixes of one set."""
    model, x = _model("mtl_lora")
    grads = []
    for step in (model, torch.compile(model, backend="aot_eager")):
        model.zero_grad()
        for ids in MIXES[:2]:
            step(x, tasks=ids).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0] and set(grads[0]) == set(grads[1])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-9, rtol=1e-9)


class _Ids(torch.Tensor):
    """Task ids that count their reads to the host (``tolist``: one device sync each on a GPU)."""

    reads = 0

    def tolist(self):
        type(self).reads += 1
        return super().tolist()


def test_a_compiled_calls_tensor_of_ids_is_read_once():
    """A watched compiled call (``model.compile()``) read a tensor of ids to the host twice, once to note its set of
    tasks toward Dynamo's recompile limit and once to route it (two device syncs per call on a GPU). The route made
    for the note is now the call's route: one read per call."""
    model, x = _model("mtl_lora")
    model.compile(backend="eager")
    _no_graphs()
    with torch.no_grad():
        for ids in MIXES[:3]:
            before = _Ids.reads
            model(x, tasks=torch.tensor(ids).as_subclass(_Ids))
            assert _Ids.reads - before == 1


class _Holder(torch.nn.Module):
    """A module that calls an MTLLoRAModel inside its own (compiled) forward."""

    def __init__(self, model: MTLLoRAModel):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).sum(-1) + self.model(x, tasks="vqa").sum(-1)


def test_an_mtl_lora_model_inside_a_compiled_module_is_traced_whole():
    """Only a compiled call's own top frame is skipped: an MTLLoRAModel called from another module's compiled forward
    is traced in it as before, with ``fullgraph=True`` (no graph break at the wrapper), and matches eager."""
    model, x = _model("mtl_lora")
    holder = _Holder(model)
    with torch.no_grad(), model.route("retrieval"):
        want = holder(x)
        _no_graphs()
        got = torch.compile(holder, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    assert counters["stats"]["unique_graphs"] == 1


def test_the_sets_a_compiled_wrapper_noted_are_forgotten_after_torch_dynamo_reset():
    """The reset is told by a graph of the compiled forward seen in Dynamo's cache and gone: the wrapper's own forward
    runs eagerly now, so its base model's forward is the one whose graphs are looked at (looking at the wrapper's, no
    graph is ever seen: 2 sets, a reset, then a third set warned of the limit with 1 graph compiled)."""
    model = MTLLoRAModel(_counted())
    model.compile(backend="eager")
    x = torch.randn(2, 3, 8)
    torch._dynamo.reset()
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    with dynamo_config.patch({limit: 3}), _all_warnings() as caught:
        for t in ("vqa", "retrieval"):
            model(x, tasks=[t, t])
        _no_graphs()
        for t in ("cls", "cls"):
            model(x, tasks=[t, t])
        assert not _limit_warnings(caught)
        for t in ("vqa", "retrieval"):
            model(x, tasks=[t, t])
    assert counters["stats"]["unique_graphs"] == 3
    assert len(_limit_warnings(caught)) == 1
    assert {p for p, _ in model.base_model._mtl_lora.router.compiled_task_sets} == {(0,), (1,), (2,)}


@pytest.mark.parametrize("method", ["task_lora", "mtl_lora"])
def test_a_compiled_call_given_its_tasks_leaves_later_eager_routes_as_they_were(method):
    """The scope a compiled call's skipped forward opens (``scopes.EagerScope``) set the router's layers to read the
    rows' positions for good: every later eager route of the model made them on the host for nothing (a task_lora
    model's mixed routes, +13 % of a scope of 16 rows; an mtl_lora model's packed routes, 0.17 -> 1.0 ms a route of 16
    images of 4,096 patches). They are put back when the call's scope closes, also where its tasks are refused, and
    the compiled calls still take the positions as a graph input (1 graph for 2 mixes)."""
    model, x = _model(method)
    router = model.base_model._mtl_lora.router
    before = (router.reads_positions, router.packed_positions)
    _no_graphs()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        for ids in MIXES[:2]:
            compiled(x, tasks=ids)
        with pytest.raises(mlv.RoutingError, match="unknown task 'nope'"):
            compiled(x, tasks=["nope"] * 6)
    assert counters["stats"]["unique_graphs"] == 1
    assert (router.reads_positions, router.packed_positions) == before
    mixed, packed = Route.from_ids(MIXES[0]), Route.from_ids([0, 1, 0]).packed_images([16, 32, 24])
    for r in (mixed, packed):
        with mlv.route(model.base_model, r):
            pass
    assert packed._host is None
    assert (mixed._host is None) == (method == "task_lora")   # (mtl_lora's eager layers read a mixed route's)


@pytest.mark.parametrize("in_place", [False, True])
def test_a_fullgraph_compiled_call_given_no_task_raises_the_routing_error(in_place):
    """``torch.compile(model, fullgraph=True)(x)`` (or ``model.compile(fullgraph=True)``) with no route raised Dynamo's
    'Observed exception' (``Unsupported``), our message only in its debug context; without fullgraph the frame ran
    eagerly and raised ours. The wrapper's forward, run eagerly at the top of the call, raises ours in its place; a
    routed call after it compiles and runs as eager."""
    model, x = _model("mtl_lora")
    _no_graphs()
    if in_place:
        model.compile(backend="eager", fullgraph=True)
    compiled = model if in_place else torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        with pytest.raises(mlv.RoutingError, match=r"no task was given.*tasks=\[\.\.\.\]") as raised:
            compiled(x)
        # Dynamo's error stays its cause (raised `from None`, the traceback lost which layer and user code it traced)
        assert isinstance(raised.value.__cause__, torch._dynamo.exc.Unsupported)
        assert "blocks.0.fc1" in str(raised.value.__cause__)
        with model.route("vqa"):
            want = model.base_model(x)
            got = compiled(x)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


class _Printing(torch.nn.Module):
    """A model that graph-breaks (``print``) before its adapted layers."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        print("a graph break")
        return self.net(x)


def test_a_fullgraph_compiled_call_that_breaks_for_another_reason_keeps_dynamos_error():
    """Only an exception Dynamo observed as our RoutingError is replaced: a graph break of the model's own (a print
    before any adapted layer), with no route given, stays Dynamo's error, which names it."""
    model, x = _model("mtl_lora")
    wrapped = MTLLoRAModel(_Printing(model.base_model))
    _no_graphs()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="print"):
        torch.compile(wrapped, backend="eager", fullgraph=True)(x)


def test_a_fullgraph_graph_break_of_a_wrapper_whose_adapters_were_taken_out_keeps_dynamos_error():
    """The wrapper looked its router up before asking whether Dynamo's error was our RoutingError: a graph break of
    the model's own (a print) in a wrapper whose adapters ``unload()`` took out raised the look-up's RoutingError
    ('_Printing has no MTL-LoRA adapters; call mtl_lora_vl.attach(model, config) first') in place of Dynamo's error
    naming the print."""
    model, x = _model("mtl_lora")
    wrapped = MTLLoRAModel(_Printing(model.base_model))
    wrapped.unload()
    _no_graphs()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="print"):
        torch.compile(wrapped, backend="eager", fullgraph=True)(x)


class _RoutesItself(torch.nn.Module):
    """A model whose forward opens the route of its adapted net itself, for ``task``."""

    def __init__(self, net: torch.nn.Module, task: str):
        super().__init__()
        self.net, self.task = net, task

    def forward(self, x):
        with mlv.route(self.net, self.task):
            return self.net(x)


def test_a_fullgraph_compiled_call_refused_for_another_routing_error_keeps_it():
    """Any RoutingError Dynamo observed with no route open was replaced by 'no task was given': a model routing
    itself to an unknown task ('nope'), eagerly 'route: unknown task 'nope'', was told to pass tasks=[...]. Only the
    adapted layers' 'no task was given' (``NoTaskGiven``) is replaced; the other stays Dynamo's error, which names
    it."""
    model, x = _model("mtl_lora")
    wrapped = MTLLoRAModel(_RoutesItself(model.base_model, "nope"))
    with pytest.raises(mlv.RoutingError, match="unknown task 'nope'"):
        wrapped(x)
    _no_graphs()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="unknown task 'nope'"):
        torch.compile(wrapped, backend="eager", fullgraph=True)(x)
    wrapped.base_model.task = "vqa"
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(wrapped, backend="eager", fullgraph=True)(x), wrapped(x))
