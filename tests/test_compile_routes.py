"""torch.compile under the routes that layers make from the route scope's: generation's wide route (k rows per routed
row, ``expanded_rows``) and a packed tower's route (each image's patches). Graphs are counted over several mixes of
rows, and outputs compared with eager in float64."""

from __future__ import annotations

import contextlib
import copy
import gc
import pickle
import warnings

import pytest
import torch
from test_routing import TASKS, _Net, _randomize
from torch._dynamo.utils import counters

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.compiled import _WatchedCall, watch_compiled
from mtl_lora_vl.adapters.generation import expanded_rows
from mtl_lora_vl.adapters.routing import Route
from mtl_lora_vl.families import family_named
from mtl_lora_vl.mtl_lora_model import MTLLoRAModel, unload


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora", "moe_lora"])
def test_a_wide_route_does_not_recompile_for_each_mix_of_rows(method):
    """``with mlv.route(model, ids): model.generate(..., num_beams=k)`` runs the layers on B·k rows under the route's
    wide route, made by expanded_rows with no host positions: compiled layers traced its segments' ints as constants,
    a graph per mix of rows (4 graphs for 4 mixes over 2 sets of tasks). The wide scope now makes them."""
    kw = {"n_up": 2} if method == "moe_lora" else {}
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]}, **kw))
    _randomize(net)
    net.double()   # compiled layers sum per sample: fp32 would differ from eager by more than the tolerance
    k = 3
    x = torch.randn(4 * k, 3, 8, dtype=torch.float64)
    mixes = [((0, 0, j), (1, j, 4)) for j in (1, 2, 3, 1)] + [((0, 0, 1), (2, 1, 2), (0, 2, 3), (1, 3, 4))]

    def run(step) -> list[torch.Tensor]:
        outs = []
        for segs in mixes:
            with mlv.route(net, Route.from_segments(segs)), expanded_rows(net, k):
                outs.append(step(x).detach())
        return outs

    _no_graphs()
    got = run(torch.compile(lambda x: net(x).square().sum(dim=(1, 2)), backend="eager"))
    graphs = counters["stats"]["unique_graphs"]   # one per set of tasks; task_lora's first call one more
    assert graphs <= (2 if method == "mtl_lora" else 3), f"{graphs} graphs for {len(set(mixes))} mixes of rows"
    for want, out in zip(run(lambda x: net(x).square().sum(dim=(1, 2))), got):
        torch.testing.assert_close(out, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_packed_towers_route_does_not_recompile_for_each_mix_of_images(method):
    """A packed tower (Qwen2-VL's) under a mixed route takes each image's patches as a route made by its forward
    pre-hook (images of different sizes: Route.packed_images); compiled layers applied its plan, whose slices have
    host bounds, so every new mix of the images' tasks compiled the tower's 5 adapted frames again (5 graphs a mix).
    A compiled layer now reads each patch's position (a graph input the route scope makes once a compiled layer has
    read one), with one product of every present task's matrix side by side: no graph after the second mix."""
    from qwen_tiny import tiny_qwen2vl

    torch.manual_seed(0)
    m = tiny_qwen2vl().eval()
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b", "c"], method=method, r=4))
    graphs = _tower_graphs_over_mixes(m)
    assert graphs[1:] == [graphs[1]] * (len(graphs) - 1), f"graphs after each mix of images' tasks: {graphs}"


def _tower_graphs_over_mixes(m) -> list[int]:
    """The graphs compiled after each of five mixes of three images' tasks (16, 32 and 24 patches) through the
    compiled vision tower of ``m`` (a tiny Qwen2-VL, attached), its outputs checked against eager in float64."""
    from qwen_tiny import inputs
    from vlm_checks import perturb_adapters

    perturb_adapters(m).double()
    x = inputs(sizes=[(32, 32), (32, 64), (48, 32)], ragged=True)
    pv, grid = x["pixel_values"].double(), x["image_grid_thw"]
    mixes = [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]]

    def run(step) -> list[tuple[torch.Tensor, int]]:
        outs = []
        with torch.no_grad():
            for ids in mixes:
                with mlv.route(m, ids):
                    outs.append((step(pv, grid), counters["stats"]["unique_graphs"]))
        return outs

    _no_graphs()
    got = run(torch.compile(lambda pv, grid: m.model.visual(pv, grid_thw=grid).pooler_output, backend="eager"))
    for (want, _), (out, _) in zip(run(lambda pv, grid: m.model.visual(pv, grid_thw=grid).pooler_output), got):
        torch.testing.assert_close(out, want, atol=1e-9, rtol=1e-9)
    return [n for _, n in got]

def test_an_adapted_merger_does_not_recompile_for_each_mix_of_images():
    """Qwen2-VL's patch merger in the targets reads the packed route over 4 patches a row (Route.packed_at): compiled,
    it mapped the route's segments onto its rows as ints, constants of its graph, so every new mix of the images'
    tasks compiled the merger's frame again (18 graphs for 5 mixes, one more per mix). The route scope now makes the
    merger's route ahead on the host, with its rows' positions (a graph input): no graph after the second mix."""
    from qwen_tiny import MERGER, tiny_qwen2vl

    torch.manual_seed(0)
    m = tiny_qwen2vl().eval()
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b", "c"], r=4,
                                    targets={"image": [*family_named("qwen2_vl").targets["image"], MERGER]}))
    graphs = _tower_graphs_over_mixes(m)   # (the merger's rows: 4, 8 and 6)
    assert graphs[1:] == [graphs[1]] * (len(graphs) - 1), f"graphs after each mix of images' tasks: {graphs}"
    assert m._mtl_lora.router.packed_scales == {(1, 4)}   # the merger's 4 patches a row, noted as it read them


def _mixes_routed_eagerly(method):
    """A float64 ``_Net`` adapted by ``method``, an input, four mixes of two tasks' rows, each mix's eager output."""
    kw = {"n_up": 2} if method == "moe_lora" else {}
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]}, **kw))
    _randomize(net)
    net.double()
    x = torch.randn(6, 3, 8, dtype=torch.float64)
    mixes = [((0, 0, k), (1, k, 6)) for k in (2, 3, 4, 1)]
    with torch.no_grad():
        want = []
        for segs in mixes:
            with mlv.route(net, Route.from_segments(segs)):
                want.append(net(x))
    return net, x, mixes, want


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("method", ["task_lora", "moe_lora"])
def test_a_compiled_model_routed_mixed_compiles_one_graph(method, in_place):
    """A task_lora / moe_lora router learned that its layers read the rows' positions only as the first compiled call
    traced them, after that call's route scope had made none: the second call compiled a graph more (2 graphs for 4
    mixes of rows). A scope given a compiled model (``torch.compile(model)``, ``model.compile()``) now knows."""
    net, x, mixes, want = _mixes_routed_eagerly(method)
    with torch.no_grad():
        _no_graphs()
        if in_place:
            net.compile(backend="eager")
        compiled = net if in_place else torch.compile(net, backend="eager")
        for segs, w in zip(mixes, want):
            with mlv.route(compiled, Route.from_segments(segs)):
                torch.testing.assert_close(compiled(x), w, atol=1e-9, rtol=1e-9)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora", "moe_lora", "lora"])
def test_a_route_scopes_ids_as_a_list_or_a_tensor_compile_one_graph_for_every_mix_of_a_set(method):
    """``with mlv.route(torch.compile(model), ids): compiled(x)``, the batches of one shape and one set of present
    tasks in different mixes of rows, the ids given as a list or as a LongTensor in turn: the scope reads a tensor's
    ids on the host as it opens, outside the compiled call, so the compiled forward sees the same route either way:
    one graph for all of them, no graph break, each output the eager model's (float64). (Checked at 0bf61d5: 1 graph,
    0 breaks, for each method; a call given its ids in a tensor by ``tasks=`` breaks its graph instead.)"""
    net, x, mixes, want = _mixes_routed_eagerly(method)
    ids = [[t for t, a, b in segs for _ in range(a, b)] for segs in mixes]
    ids += [[0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 1, 0]]   # interleaved rows too
    with torch.no_grad():
        for row_ids in ids[len(mixes):]:
            with mlv.route(net, row_ids):
                want.append(net(x))
        compiled = torch.compile(net, backend="eager")
        _no_graphs()
        for as_tensor in (False, True):
            for row_ids, w in zip(ids, want):
                with mlv.route(compiled, torch.tensor(row_ids) if as_tensor else row_ids):
                    torch.testing.assert_close(compiled(x), w, atol=1e-9, rtol=1e-9)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_compiled_inference_call_leaves_no_inference_tensor_for_training(method):
    """Route.present_index cached the index of non-consecutive present tasks ({0, 2}) from inside the trace: a compiled
    call under torch.inference_mode (aot_eager, as inductor) stored an inference tensor, and a training call under the
    same route then failed ('Inference tensors cannot be saved for backward'). Compiled: a graph constant."""
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method=method, targets={"image": [r"fc\d$"]}))
    _randomize(net)
    net.double()
    x = torch.randn(6, 3, 8, dtype=torch.float64)
    segs = ((2, 0, 2), (0, 2, 6))
    with mlv.route(net, Route.from_segments(segs)):   # (a Route of its own: its eager cache would serve the trace)
        net(x).square().sum().backward()
    want = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager")
    with mlv.route(compiled, Route.from_segments(segs)):
        with torch.inference_mode():
            compiled(x)
        compiled(x).square().sum().backward()
    got = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("wrap", ["ddp_of_compiled", "ddp_of_compiled_in_place"])
def test_a_ddp_wrapped_compiled_model_routed_mixed_compiles_one_graph(wrap, tmp_path):
    """The route scope's check for a compiled model did not look inside DDP: ``DDP(torch.compile(net))`` and
    ``net.compile(); DDP(net)`` (task_lora) compiled 2 graphs for 4 mixes of rows; torch.compile(net) compiles 1."""
    import torch.distributed as dist

    net, x, mixes, want = _mixes_routed_eagerly("task_lora")
    _no_graphs()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        if wrap == "ddp_of_compiled":
            model = torch.nn.parallel.DistributedDataParallel(torch.compile(net, backend="eager"))
        else:
            net.compile(backend="eager")
            model = torch.nn.parallel.DistributedDataParallel(net)
        with torch.no_grad():
            for segs, w in zip(mixes, want):
                with mlv.route(model, Route.from_segments(segs)):
                    torch.testing.assert_close(model(x), w, atol=1e-9, rtol=1e-9)
    finally:
        dist.destroy_process_group()
    assert counters["stats"]["unique_graphs"] == 1


def test_eager_scopes_after_a_compiled_call_make_positions_without_torch_ops():
    """Once a compiled call set the router's flags, every eager scope makes its route's host positions (a compiled
    lambda's scope cannot be told from an eager one): torch.tensor + repeat_interleave, 4 dispatched ops per route and
    2 more per packed_at slice, took a mixed scope from 11.6 to 34.7 us and a packed one from 21.1 to 83.4 us. They are
    now one C-level repeat per run of rows read in place (torch.frombuffer): no op dispatched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, method="task_lora", targets={"image": [r"fc\d$"]}))
    router = net._mtl_lora.router
    router.reads_positions = router.packed_positions = True   # as a compiled layer leaves them
    router.packed_scales = frozenset({(1, 4)})                # (a compiled merger: 4 patches a row)
    mixed = Route.from_segments(((2, 0, 2), (0, 2, 5), (2, 5, 6)))
    packed = Route.from_ids([0, 1, 0]).packed_images([8, 16, 4])
    with torch.inference_mode(), Count() as count:
        for r in (mixed, packed):
            with mlv.route(net, r):
                pass
    assert count.ops == []
    assert mixed._host.tolist() == [1, 1, 0, 0, 0, 1] and not mixed._host.is_inference()
    assert packed._host.tolist() == [0] * 8 + [1] * 16 + [0] * 4
    assert packed.packed_at(7)._host.tolist() == [0, 0, 1, 1, 1, 1, 0]


@pytest.fixture
def recompile_limit_3():
    """Dynamo's recompile limit (its name) at 3 for the test, set back by Dynamo's own config.patch: pytest's
    monkeypatch deletes a config entry as it undoes (torch's config module hides a deleted one), and every later
    torch.compile in the process failed: 'torch._dynamo.config.recompile_limit does not exist'."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    before = getattr(dynamo_config, name)
    with dynamo_config.patch({name: 3}):
        yield name
    assert getattr(dynamo_config, name) == before


def _counted(tasks=TASKS):
    """A model of one adapted Linear (fast to compile), of a class of its own: Dynamo keeps a frame's graphs on its
    code object, shared by every model of the class (which one model's router does not count)."""
    model = type("_Counted", (torch.nn.Module,), {"forward": lambda self, x: self.fc1(x)})()
    torch.nn.Module.__setattr__(model, "fc1", torch.nn.Linear(8, 8))
    return mlv.attach(model, mlv.MTLLoRAConfig(tasks=tasks, r=2, targets={"image": [r"fc1$"]}))


def _no_graphs() -> None:
    """Dynamo's graphs dropped and its counters cleared: ``counters["stats"]["unique_graphs"]`` counts from 0."""
    torch._dynamo.reset()
    counters.clear()


def _compiled_counted(tasks=TASKS):
    """A ``_counted`` model, its ``torch.compile`` wrapper (eager backend) and an input, with no graphs yet."""
    net = _counted(tasks)
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 8)
    _no_graphs()
    return net, compiled, x


def _compiled_batched():
    """A ``_Batched`` model, its ``torch.compile`` wrapper watched by its router and an input, with no graphs yet."""
    model = _Batched()
    net = torch.compile(model, backend="eager")
    watch_compiled(net, model.router)
    x = torch.randn(2, 3, 8)
    _no_graphs()
    return model, net, x


@contextlib.contextmanager
def _all_warnings():
    """Every warning raised inside, recorded (none filtered out)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _limit_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "present tasks" in str(w.message)]


def test_task_sets_routed_to_a_compiled_model_warn_once_as_they_reach_dynamos_recompile_limit(recompile_limit_3):
    """Compiled layers specialize on the set of present tasks: a graph per set, per frame. Past Dynamo's recompile
    limit (8) a frame ran eagerly from then on, which Dynamo only logged (10 one-task routes of a 10-task model: 8
    graphs, the last 2 calls eager). A compiled model's calls, routed by a scope given it, now warn once as the sets
    reach it, naming the setting to raise; a scope whose model is not called notes nothing, nor an eager model's."""
    name = recompile_limit_3
    net, compiled, x = _compiled_counted([f"t{i}" for i in range(5)])
    with _all_warnings() as caught:
        for ids in ([2, 3], [4, 4]):   # scopes with no call: no graph
            with mlv.route(compiled, ids):
                pass
        with mlv.route(net, [1, 2]):   # an eager model's
            net(x)
        for ids in ([0, 0], [1, 1], [0, 0], [0, 1], [2, 2]):   # sets {0}, {1}, {0, 1}: the third reaches 3
            with mlv.route(compiled, ids):
                compiled(x)
    msgs = _limit_warnings(caught)
    assert len(msgs) == 1 and f"torch._dynamo.config.{name} (3)" in msgs[0], msgs
    assert {p for p, _ in net._mtl_lora.router.compiled_task_sets} == {(0,), (1,), (0, 1), (2,)}
    assert counters["stats"]["unique_graphs"] == 3   # (the 4th set's call ran eagerly: 'hit config.recompile_limit')


def test_task_sets_routed_to_a_compiled_model_in_another_mode_count_as_graphs_of_their_own(recompile_limit_3):
    """Dynamo guards on grad mode (inference mode, autocast, a module's training flag): a set of tasks routed under
    torch.no_grad after training is a graph more of the same frame. The mode was read as the scope opened, so
    ``with route(m, ids): with torch.no_grad(): m(x)`` counted a grad-mode graph: 2 one-task sets trained, then one
    of them run under no_grad inside its scope, were 3 graphs (the limit) and 2 counted. Now read as the call runs."""
    net, compiled, x = _compiled_counted()
    for t in (0, 1):
        with mlv.route(compiled, [t, t]):
            compiled(x)
    with mlv.route(compiled, [0, 0]), pytest.warns(UserWarning, match=rf"2 here.*config\.{recompile_limit_3} = 10"):
        with torch.no_grad():
            compiled(x)
    assert counters["stats"]["unique_graphs"] == 3


def test_the_trainers_compiled_calls_count_their_batches_sets_in_the_mode_they_run(recompile_limit_3):
    """The trainer's --compile routes inside the compiled forward (MultiTaskModel's, from the batch's segments): its
    loader's batches were noted with an empty mode, which no call runs in (a scope around the compiled model in
    training mode counted a mode more: warned early), and its evaluation's mode not at all. The call now notes the
    batch's set in the mode it runs in: 2 sets trained and one evaluated are 3 graphs, as counted."""
    model, net, x = _compiled_batched()
    with _all_warnings() as caught:
        for t in (0, 1, 0):
            net({"segments": ((t, 0, 2),), "x": x})
        assert not _limit_warnings(caught)
        train_grad = (True, True, False, False, False)
        assert model.router.compiled_task_sets == {((0,), train_grad), ((1,), train_grad)}
        model.eval()
        with torch.no_grad():
            net({"segments": ((0, 0, 2),), "x": x})
    assert len(_limit_warnings(caught)) == 1 and "2 here" in _limit_warnings(caught)[0]
    assert counters["stats"]["unique_graphs"] == 3


class _Batched(torch.nn.Module):
    """Routes each batch by its segments inside its forward, as MultiTaskModel."""

    def __init__(self):
        super().__init__()
        self.net = _counted()
        self.router = self.net._mtl_lora.router

    def forward(self, batch):
        with mlv.route(self.router, Route.from_segments(batch["segments"])):
            return self.net(batch["x"])


def test_calls_under_disabled_count_as_a_set_of_their_own(recompile_limit_3):
    """A compiled call under ``disabled`` runs no task's adapters, a graph of its own (Dynamo guards on the router's
    disabled count), and was not noted: 2 one-task sets and a disabled call were 3 graphs (the limit), 2 counted, no
    warning. A disabled call now notes the empty set (one graph whatever route is open inside it)."""
    net, compiled, x = _compiled_counted()
    with _all_warnings() as caught:
        for t in (0, 1):
            with mlv.route(compiled, [t, t]):
                compiled(x)
        with mlv.disabled(compiled):
            compiled(x)
            with mlv.route(compiled, [0, 1]):
                compiled(x)
    assert counters["stats"]["unique_graphs"] == 3
    assert {p for p, _ in net._mtl_lora.router.compiled_task_sets} == {(0,), (1,), ()}
    assert len(_limit_warnings(caught)) == 1


@pytest.mark.parametrize("outer", ["route", "disabled"])
def test_a_scope_around_a_model_that_routes_its_batches_counts_as_a_mode(recompile_limit_3, outer):
    """A model that routes each batch itself (the trainer's) compiles a graph per batch's set with a scope open around
    it or not: its own scope restores the outer route (None or a route), or runs disabled. Both were noted as one: 2
    sets, then one of them under ``route(model, ids)`` (or ``disabled``), were 3 graphs and 2 counted. Now a mode."""
    model, net, x = _compiled_batched()
    with _all_warnings() as caught:
        for t in (0, 1):
            net({"segments": ((t, 0, 2),), "x": x})
        assert not _limit_warnings(caught)
        with mlv.route(net, [1, 1]) if outer == "route" else mlv.disabled(net):
            net({"segments": ((0, 0, 2),), "x": x})
    assert counters["stats"]["unique_graphs"] == 3
    assert len(_limit_warnings(caught)) == 1 and "2 here" in _limit_warnings(caught)[0]



def test_a_route_and_a_disabled_scope_both_around_a_model_that_routes_its_batches_are_a_mode_of_their_own(
        recompile_limit_3):
    """A batch's set run under ``disabled`` alone and under ``route`` then ``disabled`` are two graphs (the model's
    scope restores the outer route, None or not, and Dynamo guards on it), and were noted as one mode ('disabled'):
    a set run plain, under disabled, and under route + disabled compiled 3 graphs (the limit) with 2 counted, no
    warning. The scopes open around such a call now make its mode together."""
    model, net, x = _compiled_batched()
    batch = {"segments": ((0, 0, 2),), "x": x}
    with _all_warnings() as caught:
        net(batch)
        with mlv.disabled(net):
            net(batch)
        assert not _limit_warnings(caught)
        with mlv.route(net, [1, 1]), mlv.disabled(net):
            net(batch)
    assert counters["stats"]["unique_graphs"] == 3
    assert len(model.router.compiled_task_sets) == 3
    assert len(_limit_warnings(caught)) == 1 and "3 here" in _limit_warnings(caught)[0]

@pytest.mark.parametrize("in_place", [False, True])
def test_unload_takes_the_compiled_models_note_taking_off(in_place):
    """A scope given a compiled model makes its calls note their sets (a forward pre-hook on a torch.compile wrapper, a
    wrapper around a model's own compiled call), holding the router: ``unload(model)`` left both on, so the unloaded
    model's compiled calls kept a router no model has. Unload now takes them off; the compiled model still runs, and
    a copy of the routed model (deepcopy, pickle) is made as before."""
    net = _counted()
    if in_place:
        net.compile(backend="eager")
    compiled = net if in_place else torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 8)
    with mlv.route(compiled, [0, 0]):
        compiled(x)
    router = net._mtl_lora.router
    copies = [copy.deepcopy(net)._mtl_lora.router, pickle.loads(pickle.dumps(router))]
    unload(net)
    if in_place:
        assert not isinstance(net._compiled_call_impl, _WatchedCall)
    else:
        assert not compiled._forward_pre_hooks and "_mtl_lora_watched" not in compiled.__dict__
    assert "compiled_watches" not in router.__dict__
    compiled(x)
    assert [c.compiled_watches.alive() for c in copies] == [[], []]   # a copy's router: no wrapper notes for it


@pytest.mark.parametrize("in_place", [False, True])
def test_the_sets_noted_before_torch_dynamo_reset_are_forgotten(recompile_limit_3, in_place):
    """``torch._dynamo.reset()`` drops every graph, but the sets noted before it stayed: 2 one-task sets, a reset, then
    a third set warned of the limit (3) with one graph compiled. The next call after a reset now forgets them (Dynamo
    converted the model's forward before and no longer has it): the warning comes as 3 sets are compiled again."""
    net = _counted()
    if in_place:
        net.compile(backend="eager")
    compiled = net if in_place else torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 8)

    def run(t):
        with mlv.route(compiled, [t, t]):
            compiled(x)

    torch._dynamo.reset()
    with _all_warnings() as caught:
        run(0)
        run(1)
        _no_graphs()
        run(2)
        run(2)
        assert not _limit_warnings(caught)
        run(0)
        run(1)
    assert counters["stats"]["unique_graphs"] == 3
    assert len(_limit_warnings(caught)) == 1
    assert {p for p, _ in net._mtl_lora.router.compiled_task_sets} == {(0,), (1,), (2,)}


def test_a_reset_is_seen_after_another_model_of_the_class_compiled_its_forward(recompile_limit_3):
    """The reset was told by Dynamo's record of the code it converted: a model of the same class compiled after the
    reset put the forward's code back in it, so the sets noted before the reset stayed (2 sets, a reset, another
    model's call, a third set: the limit (3) warned of with 2 graphs). A graph of the forward seen in Dynamo's cache
    and gone now tells it: the 2 sets are forgotten, no warning."""
    net = _counted()
    compiled = torch.compile(net, backend="eager")
    other = _counted()
    other.__class__ = type(net)   # (one class: one forward's code, Dynamo's graphs shared)
    x = torch.randn(2, 3, 8)
    torch._dynamo.reset()
    with _all_warnings() as caught:
        for t in (0, 1):
            with mlv.route(compiled, [t, t]):
                compiled(x)
        _no_graphs()
        with mlv.route(other, [0, 0]):
            torch.compile(other, backend="eager")(x)
        with mlv.route(compiled, [2, 2]):
            compiled(x)
    assert counters["stats"]["unique_graphs"] == 2
    assert not _limit_warnings(caught)
    assert {p for p, _ in net._mtl_lora.router.compiled_task_sets} == {(2,)}


def test_a_graph_invalidated_by_dynamo_is_no_reset(recompile_limit_3):
    """A seen graph of the forward gone was taken for a reset. Dynamo also invalidates a graph whose guarded object
    died (here the class of another model of the same forward's code): its entry stays (code None, counted toward
    the limit) and the other graphs with it. A model's 2 sets compiled after such a graph, the other model freed: the
    2 sets were forgotten, and a third set ran eagerly at the limit (3) with no warning. Now it warns, the 3 counted."""
    net, other = _counted(), _counted()   # (classes of their own: one forward's code, a graph per class)
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 8)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mlv.route(other, [0, 0]):
            torch.compile(other, backend="eager")(x)
        for t in (0, 1):
            with mlv.route(compiled, [t, t]):
                compiled(x)
        del other
        gc.collect()   # (a class is freed by the collector)
        assert not _limit_warnings(caught)
        with mlv.route(compiled, [2, 2]):
            compiled(x)
    assert len(_limit_warnings(caught)) == 1
    assert {p for p, _ in net._mtl_lora.router.compiled_task_sets} == {(0,), (1,), (2,)}


def test_a_disabled_scope_given_a_compiled_model_watches_it(recompile_limit_3):
    """Only ``route`` made a compiled model's calls note their sets: a compiled model run zero-shot first (under
    ``disabled``, a graph of its own) and then routed to 2 one-task sets compiled 3 graphs (the limit), 2 counted, no
    warning. A ``disabled`` scope given a compiled model now watches it as ``route`` does."""
    net, compiled, x = _compiled_counted()
    with _all_warnings() as caught:
        with mlv.disabled(compiled):
            compiled(x)
        for t in (0, 1):
            with mlv.route(compiled, [t, t]):
                compiled(x)
    assert counters["stats"]["unique_graphs"] == 3
    assert len(_limit_warnings(caught)) == 1


@pytest.mark.parametrize("batched", [False, True])
def test_nested_disabled_scopes_count_a_graph_per_depth(recompile_limit_3, batched):
    """Dynamo guards on the router's count of open ``disabled`` scopes, not on whether it is 0: a compiled call under
    ``disabled(disabled(m))`` compiles a graph more than one under ``disabled(m)``, and both were noted as one set
    (depths 1, 2 and 3: 3 graphs, the limit, with 1 counted and no warning; a model that routes its batches: depths
    1 and 2 and a plain call, 3 graphs, 2 counted). Each depth is now a mode of its own."""
    x = torch.randn(2, 3, 8)
    if batched:
        model = _Batched()
        compiled, router = torch.compile(model, backend="eager"), model.router
        watch_compiled(compiled, router)
        args = ({"segments": ((0, 0, 2),), "x": x},)
    else:
        net = _counted()
        compiled, router = torch.compile(net, backend="eager"), net._mtl_lora.router
        args = (x,)
    _no_graphs()
    with _all_warnings() as caught:
        if batched:
            compiled(*args)
        with mlv.disabled(compiled):
            compiled(*args)
            with mlv.disabled(compiled):
                compiled(*args)
                if not batched:
                    with mlv.disabled(compiled):
                        compiled(*args)
    assert counters["stats"]["unique_graphs"] == 3
    assert len(router.compiled_task_sets) == 3
    assert len(_limit_warnings(caught)) == 1



def test_a_model_wrapper_compiled_in_place_is_watched_by_its_own_scopes(recompile_limit_3):
    """``MTLLoRAModel.route`` / ``disable_adapters`` gave their scopes the uncompiled base model, so the wrapper
    compiled in place (``model.compile()``) was never watched: zero-shot, then 2 one-task sets, were 3 graphs (the
    limit) with none counted and no warning. Its scopes now watch the wrapper itself."""
    net = _counted()
    model = MTLLoRAModel(net)
    model.compile(backend="eager")
    x = torch.randn(2, 3, 8)
    _no_graphs()
    with _all_warnings() as caught:
        with model.disable_adapters():
            model(x)
        for t in ("vqa", "retrieval"):
            with model.route([t, t]):
                model(x)
    assert counters["stats"]["unique_graphs"] == 3
    assert {p for p, _ in net._mtl_lora.router.compiled_task_sets} == {(), (0,), (1,)}
    assert len(_limit_warnings(caught)) == 1


@pytest.mark.parametrize("in_place", [False, True])
def test_calls_given_their_tasks_count_a_graph_per_set(recompile_limit_3, in_place):
    """``model(x, tasks=[...])`` routes itself, where no scope watches the model: 3 graphs (the limit) were compiled
    with none counted, no warning (compiled in place; a torch.compile wrapper watched by a scope: its pre-hook did not
    see keywords). Such a call is now noted as its route's set of tasks, the graph it compiles (its forward runs
    eagerly, the route made outside the graph: a graph per set, not per list, test_compile_tasks_arg.py): two lists of
    one set, then two more sets by ``adapter_names=`` and a tensor, are 3 graphs, counted, warned of at the third."""
    net = _counted()
    model = MTLLoRAModel(net)
    if in_place:
        model.compile(backend="eager")
    compiled = model if in_place else torch.compile(model, backend="eager")
    x = torch.randn(2, 3, 8)
    _no_graphs()
    with _all_warnings() as caught:
        if not in_place:   # (a scope given the wrapper watches it)
            with mlv.disabled(compiled):
                pass
        for tasks in (["vqa", "retrieval"], ["vqa", "retrieval"], ["retrieval", "vqa"]):
            compiled(x, tasks=tasks)
        compiled(x, adapter_names=["vqa", "vqa"])
        assert not _limit_warnings(caught)
        compiled(x, tasks=torch.tensor([2, 2]))
    assert counters["stats"]["unique_graphs"] == 3
    assert len(_limit_warnings(caught)) == 1
    assert {p for p, _ in net._mtl_lora.router.compiled_task_sets} == {(0, 1), (0,), (2,)}


def test_compile_of_a_wrapper_whose_adapters_the_function_unload_took_out_compiles():
    """``MTLLoRAModel.compile()`` (a590b6f) looked up the base model's router to watch it: where ``unload(model.
    base_model)`` (the function, not the method) had taken the adapters out, it raised 'has no MTL-LoRA adapters;
    call attach first' after compiling, where ``nn.Module.compile`` returns None. It now compiles unwatched."""
    model = MTLLoRAModel(_counted())
    unload(model.base_model)
    assert model.compile(backend="eager") is None
    assert model.__dict__["_compiled_call_impl"] is not None
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(model(x), model.base_model(x))
