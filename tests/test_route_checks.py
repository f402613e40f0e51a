"""A Route built by hand is checked like one built from ids: it must tile its batch, else a clear RoutingError."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.layers import LoRALinear
from mtl_lora_vl.adapters.routing import Route, Router

TASKS = ["a", "b", "c"]


def _layer(method: str) -> LoRALinear:
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=2, alpha=4, n_up=2, method=method)
    layer = LoRALinear(nn.Linear(6, 5), cfg)
    layer.router, layer.layer_name = Router(TASKS), "test.layer"
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
@pytest.mark.parametrize(("route", "why"), [
    (Route(segments=[(0, 0, 2), (1, 3, 4)], batch_size=4), "tile"),     # row 2 in no segment: ran unadapted
    (Route(segments=[(0, 0, 3), (1, 2, 4)], batch_size=4), "tile"),     # row 2 in two
    (Route(segments=[(0, 0, 2), (1, 2, 3)], batch_size=4), "tile"),     # row 3 in none
    (Route(segments=[(0, 0, 2), (1, 2, 4)]), "batch_size"),             # TypeError deep in the layer
    (Route(task=1, segments=[(0, 0, 4)], batch_size=4), "task 1"),     # rows of task 0 ran task 1
])
def test_hand_built_route_that_does_not_tile_its_batch_is_refused(method, route, why):
    layer = _layer(method)
    with pytest.raises(mlv.RoutingError, match=rf"route: .*{why}.*Route\.from_ids"):
        with torch.no_grad(), mlv.route(layer.router, route):
            layer(torch.randn(4, 3, 6))


def test_hand_built_route_that_tiles_its_batch_runs_as_from_ids():
    layer = _layer("task_lora")
    x = torch.randn(4, 3, 6)
    with torch.no_grad():
        with mlv.route(layer.router, Route(segments=[(0, 0, 2), (2, 2, 4)], batch_size=4)):
            y = layer(x)
        with mlv.route(layer.router, [0, 0, 2, 2]):
            ref = layer(x)
        with mlv.route(layer.router, Route(task=1)):   # one task for any batch
            layer(x)
    torch.testing.assert_close(y, ref)
