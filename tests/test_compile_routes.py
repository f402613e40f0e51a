"""torch.compile under the routes that layers make from the route scope's: generation's wide route (k rows per routed
row, ``expanded_rows``) and a packed tower's route (each image's patches). Graphs are counted over several mixes of
rows, and outputs compared with eager in float64."""

from __future__ import annotations

import pytest
import torch
from test_routing import TASKS, _Net, _randomize

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.generation import expanded_rows
from mtl_lora_vl.adapters.routing import Route


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora", "moe_lora"])
def test_a_wide_route_does_not_recompile_for_each_mix_of_rows(method):
    """``with mlv.route(model, ids): model.generate(..., num_beams=k)`` runs the layers on B·k rows under the route's
    wide route, made by expanded_rows with no host positions: compiled layers traced its segments' ints as constants,
    a graph per mix of rows (4 graphs for 4 mixes over 2 sets of tasks). The wide scope now makes them."""
    from torch._dynamo.utils import counters

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

    torch._dynamo.reset()
    counters.clear()
    got = run(torch.compile(lambda x: net(x).square().sum(dim=(1, 2)), backend="eager"))
    graphs = counters["stats"]["unique_graphs"]   # one per set of tasks; task_lora's first call one more
    assert graphs <= (2 if method == "mtl_lora" else 3), f"{graphs} graphs for {len(set(mixes))} mixes of rows"
    for want, out in zip(run(lambda x: net(x).square().sum(dim=(1, 2))), got):
        torch.testing.assert_close(out, want, atol=1e-9, rtol=1e-9)
