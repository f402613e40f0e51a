"""Counting the graphs that routes make of a compiled model, toward Dynamo's recompile limit.

Compiled adapted layers specialize on the set of tasks present in the route and on the mode the call runs in
(train / eval, grad, inference mode, autocast): a graph per set and mode of every frame. Past
``torch._dynamo.config.recompile_limit`` a frame runs eagerly from then on, which Dynamo only logs, so a route
scope given a compiled model (and the trainer's ``--compile``) watches it: the compiled model's call notes the set
and the mode as the forward runs (a scope opened around ``torch.no_grad()`` runs no-grad forwards); a call under
``disabled`` runs no task's adapters (the empty set), and a model that routes each batch itself compiles another
graph of a batch's set under a scope opened around it (a mode more). The sets are counted on the model's router.
After ``torch._dynamo.reset()`` (or ``reset_code_caches``) the next call forgets them: a graph of the forward seen in
Dynamo's cache is gone (:func:`_forget_if_reset`), also where another model of the class compiled it again since.
Dynamo keeps the graphs per code object, which every model of one class shares (its ``forward``): two compiled
models of one class routed to different sets reach the limit sooner than either's count says. Counting them right
needs state for the whole process, which this package does not keep.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
import torch._dynamo
from torch import nn

from ..log import warn_user
from .routing import NoTaskGiven, Route, Router, RoutingError, find_router

#: The attribute of a router holding the (present tasks, mode) pairs its compiled models' calls ran.
_NOTED = "compiled_task_sets"
#: The attribute of a torch.compile wrapper holding the router it notes for and its forward pre-hook's handle.
_WATCHED = "_mtl_lora_watched"
#: The attribute of a router holding the compiled modules that note for it (:class:`_Watches`).
_WATCHES = "compiled_watches"
#: Dynamo's cache entries (graphs) of a code object, where this torch has the (private) function.
_CACHE_ENTRIES = getattr(getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None),
                         "_debug_get_cache_entry_list", None)
#: Dynamo's frame callback now: set (truthy) in the frames a compiled call runs eagerly, None in eager code; always
#: None where this torch lacks the (private) function. A C call: no frame of its own for Dynamo to convert.
#: The mark :func:`skip_top_frame` leaves on a function whose frame Dynamo skips at the top of a compiled call.
_SKIPPED = "_mtl_lora_top_frame_skipped"
compiled_call_running = getattr(getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None),
                                "get_eval_frame_callback", lambda: None)


def skip_top_frame(function: Any) -> bool:
    """Make Dynamo run ``function``'s frame eagerly where it is the top frame of a compiled call (``torch.compile(m)``
    / ``m.compile()`` of a module whose ``forward`` it is), converting the frames it calls as frames of their own;
    inlined into a frame Dynamo traces (another module's compiled forward) it is traced as any function, with no
    graph break (``torch.compiler.disable(recursive=False)`` would break there). ``MTLLoRAModel.forward``: a call's own
    tasks are routed outside the graph, as by a scope around the compiled call. Whether it did: the function is marked
    (:func:`_top_frame_skipped`). Nothing where this torch lacks the (private) ``torch._dynamo.eval_frame.skip_code``:
    the frame is traced, a graph per list of tasks, and its calls are noted so, as before."""
    skip = getattr(getattr(getattr(torch, "_dynamo", None), "eval_frame", None), "skip_code", None)
    if skip is None:
        return False
    skip(function.__code__)
    setattr(function, _SKIPPED, True)
    return True


def traced_routing_error(error: BaseException, model: nn.Module, call: str) -> RoutingError | None:
    """The RoutingError to raise in place of Dynamo's ``error`` where a compiled call of ``model`` with
    ``fullgraph=True`` that no task was given for (its router without a route, a scope's or the call's own) failed as
    Dynamo traced it: the adapted layers' 'no task was given' (:class:`.routing.NoTaskGiven`) became Dynamo's
    'Observed exception' (``Unsupported``, which names our error only in its debug context), where a call without
    ``fullgraph`` runs the frame eagerly and raises ours. ``call`` names the call in the message. None where ``error``
    is anything else (another RoutingError, e.g. a refused task of a route the model opens itself, keeps Dynamo's,
    which names it), where the router cannot be found (adapters taken out, several models adapted: looked up only
    once the cause is ours), where it has a route, or where this torch does not tell which exception it observed (the
    private ``torch._dynamo.exc.observed_exception_map``): the caller re-raises ``error``."""
    observed = getattr(getattr(torch._dynamo, "exc", None), "observed_exception_map", {}).get(NoTaskGiven)
    if observed is None or not isinstance(error.__cause__, observed):
        return None
    try:
        router = find_router(model)
    except RoutingError:
        return None
    if router.current is not None or router.disabled or router.merged_task is not None or len(router.tasks) < 2:
        return None
    return NoTaskGiven(f"{call}: the adapters serve {len(router.tasks)} tasks {router.tasks} but no task was given "
                       "(Dynamo, tracing the compiled call with fullgraph=True, calls this an 'Observed exception'); "
                       "pass each row's task, model(..., tasks=[...]), or call it inside `with model.route(tasks):`")


def _top_frame_skipped(model: nn.Module) -> bool:
    """Whether the ``forward`` that ``model``'s compiled call runs is one :func:`skip_top_frame` skipped (not a
    subclass's own forward, which Dynamo traces, nor one of a torch lacking ``skip_code``)."""
    return getattr(getattr(type(model), "forward", None), _SKIPPED, False)


def compiled_entry(model: nn.Module | Router) -> tuple[nn.Module, nn.Module] | None:
    """(The module whose call enters compiled code, the module whose ``forward`` Dynamo compiles) of ``model``: a
    ``torch.compile`` wrapper (``_orig_mod``, a DDP it wraps looked through) or a module compiled in place
    (``model.compile()``); a DDP / DataParallel wrapper around either is looked through (``module``). None where
    ``model`` is not compiled."""
    while isinstance(model, nn.Module):
        d = model.__dict__
        mods = d.get("_modules", {})
        inner = mods.get("_orig_mod")
        if isinstance(inner, nn.Module):
            while isinstance(inner.__dict__.get("_modules", {}).get("module"), nn.Module):   # torch.compile(DDP(m))
                inner = inner.__dict__["_modules"]["module"]
            return model, inner
        if d.get("_compiled_call_impl") is not None:
            return model, model
        model = mods.get("module")
    return None


def watch_compiled(model: nn.Module | Router, router: Router) -> bool:
    """Whether ``model`` is compiled (:func:`compiled_entry`); if so, make its calls note the set of present tasks
    and the mode they run in (once per model: a forward pre-hook on a ``torch.compile`` wrapper, a wrapper around a
    module's own compiled call). The set is that of a batch's ``segments`` where the call is given a batch (the
    trainer's: its scopes are inside the compiled forward, from the batch), else the router's current route's."""
    found = compiled_entry(model)
    if found is None:
        return False
    entry, inner = found
    d = entry.__dict__
    impl = d.get("_compiled_call_impl")
    if impl is not None:   # compiled in place: the module's own hooks run inside the compiled call
        if not isinstance(impl, _WatchedCall) or impl.router is not router:
            d["_compiled_call_impl"] = _WatchedCall(getattr(impl, "impl", impl), router, inner)
            _watches(router).add(entry)
    elif d.get(_WATCHED, (None,))[0] is not router:   # a torch.compile wrapper: its hooks run before the compiled call
        if _WATCHED in d:
            d[_WATCHED][1].remove()
        d[_WATCHED] = (router, entry.register_forward_pre_hook(_WatchedCall(None, router, inner).before,
                                                                with_kwargs=True))
        _watches(router).add(entry)
    return True


def watch_routed(model: nn.Module | Router, router: Router) -> bool:
    """:func:`watch_compiled` for a ``route`` scope: where ``model`` is compiled, its layers also read the rows'
    positions from the first call (a graph input): were they to note it only as the first call is traced, after the
    scope, the second call would compile a graph more."""
    if not watch_compiled(model, router):
        return False
    router.reads_positions = router.packed_positions = True
    return True


def watch_in_place(module: nn.Module, router: Router, routed: bool = False) -> bool:
    """:func:`watch_routed` (``routed``: for a ``route`` scope) or :func:`watch_compiled` of ``module`` compiled in
    place (``module.compile()``), with nothing looked up where its compiled call already notes for ``router``: the
    watched call on the module is the record. A caller that may hold an uncompiled module asks
    ``_compiled_call_impl`` first (``MTLLoRAModel``'s scopes: an uncompiled wrapper pays one dict read)."""
    impl = module.__dict__.get("_compiled_call_impl")
    if not (isinstance(impl, _WatchedCall) and impl.router is router) and not watch_compiled(module, router):
        return False
    if routed:
        router.reads_positions = router.packed_positions = True
    return True


def unwatch_compiled(router: Router) -> None:
    """Take :func:`watch_compiled`'s note-taking for ``router`` off every compiled module it is on (``unload``): the
    forward pre-hook of a ``torch.compile`` wrapper, the wrapper around a module's own compiled call."""
    for entry in router.__dict__.pop(_WATCHES, _Watches()).alive():
        d = entry.__dict__
        impl = d.get("_compiled_call_impl")
        if isinstance(impl, _WatchedCall) and impl.router is router:
            d["_compiled_call_impl"] = impl.impl
        if d.get(_WATCHED, (None,))[0] is router:
            d.pop(_WATCHED)[1].remove()


class _Watches:
    """The compiled modules that note for a router, held weakly (the router must not keep a wrapper alive), and, for
    each compiled forward's code (by id), a weak reference to the code of a graph Dynamo compiled of it, once one
    was seen (:func:`_forget_if_reset`). A copy (deepcopy, pickle) holds none: the wrappers watch the original's
    router."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref] = []
        self.seen: dict[int, weakref.ref] = {}

    def add(self, entry: nn.Module) -> None:
        self.refs = [r for r in self.refs if r() is not None and r() is not entry] + [weakref.ref(entry)]

    def alive(self) -> list[nn.Module]:
        return [m for m in (r() for r in self.refs) if m is not None]

    def __reduce__(self) -> tuple:
        return _Watches, ()

    def __deepcopy__(self, memo: dict) -> _Watches:
        return _Watches()


def _watches(router: Router) -> _Watches:
    return router.__dict__.setdefault(_WATCHES, _Watches())


class _WatchedCall:
    """A compiled call (``impl``) that first notes its set of present tasks and mode (:func:`watch_compiled`)."""

    def __init__(self, impl: Any, router: Router, model: nn.Module):
        self.impl, self.router, self.model = impl, router, model
        self.skipped = _top_frame_skipped(model)   # (MTLLoRAModel's: its base model's forward is the one compiled)
        traced = model._modules.get(getattr(type(model), "compiled_submodule", ""), model) if self.skipped else model
        self.code = getattr(getattr(traced, "forward", None), "__code__", None)   # the frame Dynamo converts
        self.seen = _watches(router).seen
        self.keywords = getattr(type(model), "route_keywords", ())   # a call's own tasks (MTLLoRAModel's tasks=)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self.before(None, args, kwargs) or (args, kwargs)
        return self.impl(*args, **kwargs)

    def before(self, _module: nn.Module | None, args: tuple, kwargs: dict | None = None) -> tuple[tuple, dict] | None:
        """Note the set of present tasks this call routes, in the mode it runs in (a forward pre-hook). Under
        ``disabled`` no task's adapters run: the empty set, in a mode of each depth of nested ``disabled`` scopes (the
        router's count, which Dynamo guards on). A model that routes each batch itself compiles a graph
        per batch's set with a scope open around it or not (its scope restores the outer route, or runs disabled):
        the scopes open around it (route, disabled, both) count as a mode more. A call given its tasks
        (``model(x, tasks=[...])``, one of the model's ``route_keywords``) is routed as a scope around it would be
        (the model's forward, which opens its route, runs eagerly: :func:`skip_top_frame`): its route is made here
        and given to the call in their place (:func:`_call_route`), the ids read to the host once. Where the
        forward that runs is traced (a subclass's own, or no ``skip_code``): a graph per value (:func:`_call_tasks`)."""
        if torch.compiler.is_compiling():
            return None
        router = self.router
        if self.code is not None:
            _forget_if_reset(router, self.code, self.seen)
        called = _call_route(kwargs, self.keywords, router) if kwargs and self.keywords and self.skipped else None
        if called is not None:
            key, r = called
            if router.disabled:   # (the call's own route is ignored, as under a disabled scope)
                note_compiled_tasks(router, (), compiled_mode(self.model) + ("disabled",) * router.disabled)
            else:
                note_compiled_tasks(router, r.present, compiled_mode(self.model))
            return args, {**kwargs, key: r}
        present = _call_tasks(kwargs, self.keywords) if kwargs and self.keywords and not self.skipped else None
        if present is None and args and isinstance(args[0], dict) and args[0].get("segments"):   # a batch
            present = tuple(sorted({int(t) for t, _, _ in args[0]["segments"]}))
        if present is not None:   # the model routes this call itself
            outer = ("disabled",) * router.disabled + ("routed",) * (router.current is not None)
            note_compiled_tasks(router, present, compiled_mode(self.model) + outer)
        elif router.disabled:   # Dynamo guards on the depth of nested disabled scopes: a graph per depth
            note_compiled_tasks(router, (), compiled_mode(self.model) + ("disabled",) * router.disabled)
        elif router.current is not None:
            note_compiled_tasks(router, router.current.present, compiled_mode(self.model))
        return None


def _call_tasks(kwargs: dict, keywords: tuple[str, ...]) -> tuple | None:
    """What a compiled call given its own tasks (``keywords``) compiles a graph per where its forward is traced (not
    skipped: a subclass's own, or a torch lacking ``skip_code``), or None where it was given none. Names, ids and
    lists of them are constants of the graph, which Dynamo guards on one by one: a graph per value (``["a", "b"]``
    and ``["b", "a"]`` two), the value tagged ``tasks=``. Per-row ids in a tensor break the graph before the route
    (its ids are read on the host): the frames after it compile a graph per set of present tasks, as a route scope's
    (read here, a host copy of the ids)."""
    for key in keywords:
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            return tuple(sorted({int(t) for t in value.reshape(-1).tolist()}))
        if isinstance(value, Route):
            return value.present
        return ("tasks=", *value) if isinstance(value, (list, tuple)) else ("tasks=", value)
    return None


def _call_route(kwargs: dict, keywords: tuple[str, ...], router: Router) -> tuple[str, Route] | None:
    """(The keyword, the route) of a compiled call given its own tasks by one of ``keywords`` (``tasks=`` /
    ``adapter_names=``): names, ids, a tensor of ids (read to the host here, once) or a Route, made a Route as a scope
    makes it (a bad value raises the scope's RoutingError). None where the call was given none, or what the call
    itself refuses with its own message (both keywords, a meta tensor, bytes)."""
    given = [k for k in keywords if kwargs.get(k) is not None]
    if len(given) != 1:
        return None
    value = kwargs[given[0]]
    if isinstance(value, (bytes, bytearray)) or (isinstance(value, torch.Tensor) and value.is_meta):
        return None
    return given[0], router.make_route(value)


def _forget_if_reset(router: Router, code: Any, seen: dict[int, weakref.ref]) -> None:
    """Forget the sets ``router`` noted where ``torch._dynamo.reset()`` (or ``reset_code_caches``) dropped their
    graphs: a graph Dynamo compiled of the forward's ``code`` was seen (``seen``, the router's: a weak reference to
    the graph's own code, which Dynamo's cache entry held) and is gone. Told so also where another model of the class
    compiled its forward again since the reset (Dynamo's record of the code it converted, which an earlier count read,
    then held the code again). A graph whose guarded object died (the class of another model of the forward, an
    object it matched by id) is invalidated, not dropped: Dynamo keeps its entry, code None (counted toward the
    limit), and the others; such a seen graph gone is no reset (the sets stayed, their limit warning missed: 2 sets
    over another class's graph, the class freed, a third set run eagerly at the limit, 3, unwarned), and a live graph
    is seen instead. (A reset followed by a graph compiled and invalidated before this model's next call is taken
    for that: the count stays, higher than the graphs.) The cache entries are read through a private function
    (``torch._C._dynamo.eval_frame._debug_get_cache_entry_list``): where it is missing, nothing is forgotten (the
    count stays, higher than the graphs)."""
    ref = seen.get(id(code))
    if ref is not None and ref() is not None:
        return
    entries = _CACHE_ENTRIES(code) if _CACHE_ENTRIES is not None else ()
    if ref is not None and all(e.code is not None for e in entries):   # gone with no invalidated entry: a reset
        seen.clear()
        router.__dict__.pop(_NOTED, None)
    live = next((e.code for e in entries if e.code is not None), None)
    if live is not None:
        seen[id(code)] = weakref.ref(live)


def compiled_mode(model: nn.Module) -> tuple[bool, ...]:
    """What Dynamo guards on besides the route, as a compiled call runs now: the model's train / eval mode and
    grad mode, inference mode and autocast (CPU, CUDA). A set of tasks run in two of them is two graphs a frame.
    Train / eval is a graph more only where the traced forward reads a module's ``training`` (any ``nn.Dropout``,
    even p=0; the adapters with dropout > 0; Hugging Face attention): one adapted Linear compiled 1 graph for both
    (2 with dropout 0.1), a tiny Qwen2-VL tower 12 for 6. Counted always: a model that reads none is warned early."""
    return (model.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda"))


def note_compiled_tasks(router: Router, present: tuple[int, ...], mode: tuple[bool, ...]) -> None:
    """Note a set of present tasks run by a compiled model of ``router`` in ``mode`` (:func:`compiled_mode`), and
    warn once, as the pairs noted reach Dynamo's recompile limit, naming the setting to raise. Nothing where Dynamo
    was never imported."""
    cfg = sys.modules.get("torch._dynamo.config")
    sets = router.__dict__.setdefault(_NOTED, set())
    if cfg is None or (present, mode) in sets:
        return
    sets.add((present, mode))
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"   # (its name before 2.6)
    limit = getattr(cfg, name)
    if len(sets) == limit:
        n, modes = len(router.tasks), len({m for _, m in sets})
        per_mode = (f" (counted once per mode they ran in, {modes} here: train / eval, grad, autocast, the depth "
                    "of nested disabled scopes, a scope around a model that routes its batches)") * (modes > 1)
        warn_user(f"route: {len(sets)} sets of present tasks have been routed to this compiled model{per_mode}, "
                  f"and each compiles a graph of its own of every adapted frame: past torch._dynamo.config.{name} "
                  f"({limit}) Dynamo runs such a frame eagerly from then on (its log says 'hit config." + name + "'). "
                  f"Raise it before the first compiled call, to the sets your batches hold plus 2 (at most 2**{n} - "
                  f"1 = {2 ** n - 1} for {n} tasks; {n} with one task per batch), times the modes: "
                  f"torch._dynamo.config.{name} = {max(2 * limit, modes * (min(n, 2 ** n - 1) + 2))}")
