"""``mlv.route`` / ``mlv.disabled`` are context managers: written as a statement (as transformers' in-place
``disable_adapters()``) they did nothing and said nothing, and the model ran as before. A scope dropped without being
entered now warns; every way of entering one (``with``, ``ExitStack``, lazily built, as a decorator, traced by
``torch.compile``) does not."""

from __future__ import annotations

import warnings
from contextlib import ExitStack

import pytest
import torch
from test_routing import TASKS, _Net, _randomize

import mtl_lora_vl as mlv


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = mlv.attach(_Net(), mlv.MTLLoRAConfig(tasks=TASKS, r=2, targets={"image": [r"fc\d$"]}))
    _randomize(net)
    return net


def test_a_scope_written_as_a_statement_warns_at_the_users_line():
    net, x = _net(), torch.randn(2, 3, 8)
    with mlv.route(net, "vqa"):
        vqa = net(x)
        with pytest.warns(UserWarning, match=r"mtl_lora_vl\.disabled\(model\) returns a context manager and did "
                                             r"nothing .*`with mtl_lora_vl\.disabled\(model\):`") as got:
            mlv.disabled(net)   # meant: zero-shot from here on; the model still runs adapted
        assert got[0].filename == __file__
        torch.testing.assert_close(net(x), vqa)
    with mlv.route(net, "retrieval"), pytest.warns(UserWarning, match=r"`with mtl_lora_vl\.route\(model, tasks\):`"):
        mlv.route(net, "vqa")
    wrapped = mlv.MTLLoRAModel(net)
    with pytest.warns(UserWarning, match=r"model\.route\(tasks\) returns a context manager and did nothing"):
        wrapped.route("vqa")
    with pytest.warns(UserWarning, match=r"model\.disable_adapters\(\) returns a context manager and did nothing"):
        wrapped.disable_adapters()


def test_every_way_of_entering_a_scope_is_silent():
    net, x = _net(), torch.randn(2, 3, 8)
    with mlv.disabled(net):
        base = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mlv.route(net, "vqa") as r:
            assert r.task == 0
        with ExitStack() as stack:
            stack.enter_context(mlv.disabled(net))
            torch.testing.assert_close(net(x), base)
        for scope in (mlv.route(net, t) for t in TASKS):   # built lazily, each entered
            with scope:
                net(x)
        with pytest.raises(mlv.RoutingError):   # refused on entering: the error, not a warning besides
            with mlv.route(net, "nope"):
                pass

        @mlv.disabled(net)   # as a decorator (contextmanager's scopes are ContextDecorators): a fresh scope a call
        def zero_shot(x: torch.Tensor) -> torch.Tensor:
            return net(x)

        for _ in range(2):
            torch.testing.assert_close(zero_shot(x), base)

        def step(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with mlv.route(net, "vqa"):
                a = net(x)
            with mlv.disabled(net):
                return a, net(x)

        torch._dynamo.reset()
        a, b = torch.compile(step, backend="eager", fullgraph=True)(x)   # scopes traced: no graph break
    want = step(x)
    torch.testing.assert_close(a, want[0])
    torch.testing.assert_close(b, base)


def test_from_pretrained_and_save_pretrained_name_a_directory_that_is_not_a_path():
    """``from_pretrained(model, None)`` / ``save_pretrained(None)`` failed in pathlib: 'expected str, bytes or
    os.PathLike object, not NoneType', naming no argument."""
    net = _net()
    for call, name in ((lambda: mlv.MTLLoRAModel.from_pretrained(_Net(), None), "adapter_dir"),
                       (lambda: mlv.MTLLoRAModel(net).save_pretrained(None), "save_directory"),
                       (lambda: mlv.MTLLoRAModel(net).save_pretrained(b"out"), "save_directory")):
        with pytest.raises(TypeError, match=rf"_pretrained\(.*{name}\): {name} must be the adapter directory's path "
                                            r"\(a str or pathlib\.Path\), got (None|a bytes)"):
            call()


def test_a_scope_entered_a_second_time_is_refused_by_name():
    # (contextlib's generator scope said only "'_GeneratorContextManager' object has no attribute 'args'")
    net, x = _net(), torch.randn(2, 3, 8)
    scope = mlv.route(net, "vqa")
    with scope:
        vqa = net(x)
    with pytest.raises(mlv.RoutingError, match=r"route\(model, tasks\): this scope was entered already.*call "
                                               r"mtl_lora_vl\.route\(model, tasks\) again for each `with`"):
        with scope:
            pass
    off = mlv.disabled(net)
    with pytest.raises(mlv.RoutingError, match=r"disabled\(model\): this scope was entered already"):
        with off, off:
            pass
    with pytest.raises(mlv.RoutingError, match="entered already"):
        scope(lambda: None)()   # as a decorator after a `with`: the scope to copy is spent
    with mlv.route(net, "vqa"):   # the refused entries left the router as it was (not disabled, not routed)
        torch.testing.assert_close(net(x), vqa)
