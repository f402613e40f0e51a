"""A second look at a compiled ``MTLLoRAModel`` given each call's tasks (``model(x, tasks=...)``), whose forward Dynamo
skips at the top of a compiled call (``compiled.skip_top_frame``): where the forward that runs is *not* the skipped
one (a subclass's own ``forward``, or a torch without ``skip_code``), the frame is traced as before the skip, and the
compiled call is noted as it was (a graph per list), not as a route made outside the graph."""

from __future__ import annotations

import types

import pytest
import torch
import torch._dynamo.config as dynamo_config
import torch._dynamo.eval_frame as eval_frame
from test_compile_routes import _all_warnings, _counted, _limit_warnings
from test_compile_tasks_arg import MIXES, _model, _no_graphs
from torch._dynamo.utils import counters

from mtl_lora_vl.adapters.compiled import skip_top_frame
from mtl_lora_vl.mtl_lora_model import MTLLoRAModel


class _Subclass(MTLLoRAModel):
    """A user's subclass with a forward of its own (not the skipped one): Dynamo traces it, inlining the parent's."""

    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs)


def _unskipped_class(monkeypatch) -> type:
    """A class whose forward is MTLLoRAModel's as a torch lacking ``torch._dynamo.eval_frame.skip_code`` leaves it:
    a fresh copy of its code (Dynamo's skip is kept on the code object), given to ``skip_top_frame`` with ``skip_code``
    gone, which must do nothing and say so."""
    monkeypatch.delattr(eval_frame, "skip_code")
    f = MTLLoRAModel.forward
    copy = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    copy.__kwdefaults__ = dict(f.__kwdefaults__)
    assert not skip_top_frame(copy)
    return type("_OldTorch", (MTLLoRAModel,), {"forward": copy})


@pytest.fixture(params=["subclass", "no_skip_code"])
def unskipped(request, monkeypatch) -> type:
    return _Subclass if request.param == "subclass" else _unskipped_class(monkeypatch)


def _limit_3():
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    return dynamo_config.patch({name: 3})


def test_a_traced_forward_given_its_tasks_is_noted_a_graph_per_list(unskipped):
    """The watcher took every MTLLoRAModel (by its class's ``compiled_submodule``) for one whose forward runs eagerly:
    it made each call's route and noted its set of tasks. Where the forward is traced (a subclass's own forward, or
    no ``skip_code``), its lists are constants of the graph, a graph per list: 4 mixes of one set compiled 3 graphs
    (the limit, 3) and were noted as 1 set, with no limit warning (10 mixes: 6 graphs, 1 set noted). They are noted
    a graph per list again, as before the skip: 1 warning as the third list reaches the limit."""
    model, x = _model("mtl_lora")
    model = unskipped(model.base_model)
    router = model.base_model._mtl_lora.router
    with torch.no_grad():
        want = []
        for ids in MIXES[:4]:
            with model.route(ids):
                want.append(model(x))
        _no_graphs()
        model.compile(backend="eager")
        with _limit_3(), _all_warnings() as caught:
            for ids, w in zip(MIXES[:4], want):
                torch.testing.assert_close(model(x, tasks=ids), w, atol=1e-9, rtol=1e-9)
    assert counters["stats"]["unique_graphs"] == 3
    assert len(router.compiled_task_sets) == 4
    assert len(_limit_warnings(caught)) == 1


def test_a_traced_forwards_sets_are_forgotten_after_torch_dynamo_reset(unskipped):
    """The watcher looked for a reset at the base model's forward (``compiled_submodule``), where a traced wrapper's
    forward compiles no graph of its own: no graph was ever seen, no reset told, and the sets noted before
    ``torch._dynamo.reset()`` stayed (2 sets, a reset, one more: warned of the limit, 3, with 1 graph). It looks at
    the forward Dynamo converts, the wrapper's own here."""
    model = unskipped(_counted())
    model.compile(backend="eager")
    x = torch.randn(2, 3, 8)
    torch._dynamo.reset()
    with _limit_3(), _all_warnings() as caught:
        for t in ("vqa", "retrieval"):
            model(x, tasks=t)
        _no_graphs()
        model(x, tasks="cls")
        assert not _limit_warnings(caught)
        for t in ("vqa", "retrieval"):
            model(x, tasks=t)
    assert counters["stats"]["unique_graphs"] == 3
    assert len(_limit_warnings(caught)) == 1


def test_skip_top_frame_says_whether_it_skipped(monkeypatch):
    """MTLLoRAModel's forward is skipped where this torch has ``skip_code``; without it nothing is done, no error."""
    assert getattr(MTLLoRAModel.forward, "_mtl_lora_top_frame_skipped", False)
    monkeypatch.delattr(eval_frame, "skip_code")

    def g():
        return 2

    assert skip_top_frame(g) is False and not hasattr(g, "_mtl_lora_top_frame_skipped")
