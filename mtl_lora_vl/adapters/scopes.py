"""Route scopes: ``route`` and ``disabled`` set a model's current :class:`~.routing.Route` for a block of code,
and the route travels with the autograd graph into activation recomputation.

Routes and activation recomputation
-----------------------------------
Activation checkpointing runs a region's forward a second time inside ``loss.backward()``, which users
(and the training loop) call *after* the ``route`` scope has closed. The recomputation must see the
route of the forward it repeats. Both kinds of ``torch.utils.checkpoint`` save the region's inputs for
backward when the region is first run (reentrant: ``ctx.save_for_backward`` in
``CheckpointFunction.forward``; non-reentrant: ``_CheckpointFrame.save_inputs``) and unpack them in
backward immediately before recomputing (``ctx.saved_tensors``; ``frame.get_inputs()``). Saving and
unpacking go through the saved-tensor hooks active at the time (``torch.autograd.graph.saved_tensors_hooks``,
thread-local), so a route scope installs a pair (unless opened with ``recompute=False``, which installs none:
the caller knows nothing in its forward is checkpointed, as the trainer decides by :func:`may_recompute`; an
outer scope's hooks on the same router still serve it): pack is ``Tensor.detach`` (or the user's own outer pack
hook, composed), and its unpack hook re-arms the router's *replay* route -- the route of the scope that
saved the tensor -- before returning it. The recomputation that follows reads the replay route when it
runs inside the backward pass that armed it (``torch._C._current_graph_task_id()``, recorded with the
route: a route armed by an earlier backward is never reused). The route thus travels with the
autograd graph itself: it lives exactly as long as the graph's saved tensors, nothing is stored per
forward, inference forwards store nothing, and it holds for nested or interleaved forwards, reentrant
and non-reentrant checkpointing alike, open_clip's ``set_grad_checkpointing`` and Hugging Face's
``gradient_checkpointing_enable``.

Why this and not the alternatives: ``checkpoint(context_fn=...)`` would need every call site (open_clip
and transformers own theirs) and is non-reentrant only; a per-bank log of forwards consumed by
recomputations has to guess which forward a recomputation repeats (the autograd engine orders them, not
the user), must bound itself against inference forwards, and cannot tell a reentrant checkpoint's
no-grad forward from inference. The costs here: one C-level ``detach`` per saved tensor in a scope (a
few hundred per step) and one small Python call per unpack in backward. A user's own saved-tensor hooks
active when the scope opens (``save_on_cpu``, ...) are composed, found the way torch's checkpoint finds
them (``torch._C._autograd._top_saved_tensors_default_hooks``). Limits: torch allows one pair of hooks,
so hooks a user opens *inside* a route scope shadow the route's (open them outside it); a route scope
opened inside a checkpointed function installs no hooks (the recomputation re-enters that scope
itself); the replay slot is per router, so two backward passes of one model running concurrently on
different threads are not supported; inside ``torch.compile``d code the hooks are skipped (the compiled
backward recomputes from traced values and does not ask the router), but a scope that dynamo runs eagerly (a frame
that graph-breaks inside the scope falls back to eager, e.g. transformers' LLaVA) installs them as in eager code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ContextDecorator, contextmanager
from typing import Any

import torch
from torch import nn

from ..log import warn_user
from .compiled import watch_compiled, watch_routed
from .routing import ADAPTERS_OFF, Route, Router, RoutingError, check_module, find_router


class _ReplayHooks(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks of a route scope: unpacking re-arms each router's replay route (module docstring)."""

    def __init__(self, routes: tuple[tuple[Router, Route], ...], outer: tuple | None):
        self.routes, self.outer = routes, outer
        if outer is None:
            super().__init__(torch.Tensor.detach, self._unpack)
        else:
            super().__init__(outer[0], self._unpack_outer)

    def _arm(self) -> None:
        graph = torch._C._current_graph_task_id()
        for router, r in self.routes:
            router.replay, router.replay_graph = r, graph

    def _unpack(self, t: torch.Tensor) -> torch.Tensor:
        self._arm()
        return t

    def _unpack_outer(self, packed):
        self._arm()
        return self.outer[1](packed)


@torch.compiler.disable   # called only where the scope really runs (_scope), never traced: see _scope
def _replay_hooks(router: Router, r: Route, recompute: bool = True) -> _ReplayHooks | None:
    """The hooks to install for a scope routing ``router`` to ``r``, or None where none are needed. Without
    ``recompute`` (the caller knows its forward is not checkpointed) none, unless an outer scope's hooks route this
    router: tensors saved here would go through them and replay the outer route, so this scope takes its own."""
    if not torch._C._autograd._saved_tensors_hooks_is_enabled():
        return None
    top_fn = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    top = top_fn(False) if top_fn is not None else None
    owner = getattr(top[1], "__self__", None) if top is not None else None
    if not recompute and not (isinstance(owner, _ReplayHooks) and any(ro is router for ro, _ in owner.routes)):
        return None
    if top is None:
        return _ReplayHooks(((router, r),), None)
    if getattr(top[0], "_checkpoint_internal", False) or "_checkpoint" in getattr(top[0], "__qualname__", ""):
        return None  # inside a checkpointed region: its recomputation re-enters this scope itself
    if isinstance(owner, _ReplayHooks):
        routes = tuple((ro, rr) for ro, rr in owner.routes if ro is not router) + ((router, r),)
        return _ReplayHooks(routes, owner.outer)
    return _ReplayHooks(((router, r),), top)


#: Module attributes that switch activation checkpointing on: Hugging Face's layers and encoders; open_clip's and
#: timm's.
CHECKPOINT_FLAGS = ("gradient_checkpointing", "grad_checkpointing")


def may_recompute(model: nn.Module) -> bool:
    """Whether any module of ``model`` has activation checkpointing switched on (one of :data:`CHECKPOINT_FLAGS`
    set, or torch's ``checkpoint_wrapper``): its forward may be recomputed in backward, so its route scopes need
    their hooks (``route(..., recompute=...)``). A walk over every module: ask once (the trainer asks when it puts
    the model in training mode), not per step. A forward that calls ``torch.utils.checkpoint`` itself is not seen."""
    check_module(model, "may_recompute")
    for m in model.modules():
        d = m.__dict__
        if any(d.get(f) for f in CHECKPOINT_FLAGS) or type(m).__name__ == "CheckpointWrapper":
            return True
    return False


@contextmanager
def _scope(router: Router, r: Route, recompute: bool = True) -> Iterator[None]:
    """Arm ``router``'s replay hooks for this scope (see :func:`_replay_hooks` for ``recompute``) and number it (M_t
    formed without gradients are reused only inside the scope that formed them: see formation.py); a scope opened
    inside backward (a recomputation that re-enters a route) hides the replay route so that its own route counts."""
    # A traced forward forms no M_t (and must not guard on a number), and installs no hooks: its checkpoints are in
    # the compiled graph. Asked here, in the generator, which dynamo inlines into a trace or leaves to run eagerly
    # (a frame that graph-breaks inside the scope falls back to eager) -- not in a function called from it, which
    # dynamo compiles as a frame of its own even when the scope runs eagerly: the eager fallback's checkpoints
    # then saved their inputs with no hooks and their recomputation in backward had no route.
    compiling = torch.compiler.is_compiling()
    hooks = None if compiling else _replay_hooks(router, r, recompute)
    in_backward = not compiling and torch._C._current_graph_task_id() != -1
    replay, outer = (router.replay, router.replay_graph), router.scope
    if in_backward:
        router.replay = None
    if not compiling:
        router.scopes_opened += 1
        router.scope = router.scopes_opened
    try:
        if hooks is None:
            yield
        else:
            with hooks:
                yield
    finally:
        if in_backward:
            router.replay, router.replay_graph = replay
        if not compiling:
            router.scope = outer


def _claim(router: Router, what: str, enter: Callable[[], None], compiling: bool) -> int | None:
    """:func:`_claim_now`, or just ``enter`` in a traced forward (``compiling``: asked by the caller's generator, as
    in :func:`_scope`; a function called from a scope that runs eagerly may itself be compiled by dynamo)."""
    if compiling:
        enter()
        return router.thread
    return _claim_now(router, what, enter)


@torch.compiler.disable   # called only where the scope really runs
def _claim_now(router: Router, what: str, enter: Callable[[], None]) -> int | None:
    """Record the calling thread as the one routing ``router`` and ``enter`` the scope (set its route or disabled
    count), refusing a scope while another thread has one open (its forwards would run this scope's task); return
    the record to restore on exit. The check and the entry are one step under the router's lock: two threads opening
    scopes at the same instant cannot both pass. Checked once per scope, never per layer. A scope opened inside
    backward (a recomputation re-entering a route, possibly on the autograd engine's device thread while the
    forward's thread waits) is neither checked nor recorded."""
    if torch._C._current_graph_task_id() != -1:
        enter()
        return router.thread
    with router.claim_lock:
        held = router.thread
        me = threading.get_ident()
        if held is not None and held != me and (router.current is not None or router.disabled):
            raise RoutingError(
                f"{what}: another thread has a route or disabled scope open on this model; a model's route is one "
                "per model, not per thread, so a model must not be routed from several threads at once (that "
                "thread's forward would run this scope's task): give each thread its own copy (copy.deepcopy(model))")
        router.thread = me
        enter()
    return held


def _release(router: Router, held: int | None, leave: Callable[[], None], compiling: bool) -> None:
    """:func:`_release_now`, or just ``leave`` and restore ``held`` in a traced forward (as :func:`_claim`)."""
    if compiling:
        _leave(router, held, leave)
        return
    _release_now(router, held, leave)


@torch.compiler.disable
def _release_now(router: Router, held: int | None, leave: Callable[[], None]) -> None:
    """``leave`` the scope (restore its route or disabled count) and put back the thread record ``held`` as one step
    under the router's lock, as :func:`_claim` entered it: a scope another thread opened between the two was
    claimed, then lost its claim to this restore, and a third thread's scope passed the check."""
    if torch._C._current_graph_task_id() != -1:
        _leave(router, held, leave)
        return
    with router.claim_lock:
        _leave(router, held, leave)


def _leave(router: Router, held: int | None, leave: Callable[[], None]) -> None:
    """``leave`` the scope, then put back the thread record ``held`` even where leaving raised."""
    try:
        leave()
    finally:
        router.thread = held


#: nn.DataParallel copies modules shallowly, so its replicas (one thread each) share one Router.
_REPLICA = ("route: this is an nn.DataParallel replica; the replicas share one router and run in threads, so "
            "routes opened in them mix (rows got another task's adapters); train with DistributedDataParallel "
            "(torchrun, one process per GPU), or route one task for the whole batch around the DataParallel call")


def route(model: nn.Module | Router,
          tasks: str | int | torch.Tensor | Sequence[str] | Sequence[int] | Route, *,
          recompute: bool = True) -> AbstractContextManager[Route]:
    """Route every adapted layer of ``model`` to one task, or each sample to its own task.

    ``model`` is the adapted model, any module wrapping it, or its Router. ``tasks`` is a task name, a
    task index, a list of names, a LongTensor of per-sample ids of batch size, or a :class:`Route`
    (e.g. ``Route.from_segments`` from the loader). Rows may come in any order. The outer scope is
    restored on exit; backward may run after the scope closes (also with activation checkpointing).
    ``recompute=False`` says that no forward in the scope is checkpointed: the scope then installs no
    saved-tensor hooks (the module docstring), which cost ~4 µs per tensor saved for backward -- 5 % of a
    small model's training step. A checkpointed forward of a multi-task model routed so is refused in backward,
    when it is recomputed; :func:`may_recompute` tells whether a model checkpoints.
    Inside :func:`disabled` the route is ignored: the forward, and its recomputation in backward, run without
    adapters. A model is routed from one thread at a time: a scope opened while another thread's is open is refused.
    A context manager: it acts only entered (``with``); called as a statement it would do nothing, so a scope
    dropped without being entered warns (:class:`MustEnter`).
    """
    return _must_enter(_route(model, tasks, recompute), "mtl_lora_vl.route(model, tasks)",
                       "the forwards that should serve those tasks")


@contextmanager
def _route(model: nn.Module | Router, tasks: str | int | torch.Tensor | Sequence[str] | Sequence[int] | Route,
           recompute: bool) -> Iterator[Route]:
    """:func:`route`'s scope."""
    if getattr(model, "_is_replica", False):
        raise RoutingError(_REPLICA)
    router = find_router(model)
    if isinstance(tasks, (bytes, bytearray)):   # a sequence of ints to make_route: 'task id 118 is out of range'
        raise RoutingError(f"route: task names are str, got bytes {tasks!r}; pass {tasks.decode(errors='replace')!r}")
    if isinstance(tasks, torch.Tensor) and tasks.is_meta:   # (torch's 'Cannot copy out of meta tensor; no data!')
        raise RoutingError("route: the task ids are a tensor on the meta device, which holds no values; make them on "
                           "the CPU or the model's device")
    new = router.make_route(tasks)
    if router.merged_task is not None and new.task != router.merged_task:
        merged = router.tasks[router.merged_task]
        raise RoutingError(
            f"route: the adapters are merged into the weights for task {merged!r}; call "
            "mtl_lora_vl.unmerge(model) before routing to another task"
        )
    outer, compiling = router.current, torch.compiler.is_compiling()
    if not compiling:   # a compiled model's calls note their sets of tasks toward Dynamo's recompile limit
        watch_routed(model, router)
    positions = router.reads_positions and (router.packed_positions or not new.packed)
    if positions and not compiling and len(new.segments) > 1:
        new.host_positions()   # made here, not in Route(): a route made in a traced frame (LLaVA's) is entered eagerly
        if new.packed:
            _scaled_positions(router, new)
    held = _claim(router, "route", lambda: setattr(router, "current", new), compiling)
    failed = True
    try:
        # under disabled() the forward runs unadapted (resolve ignores `new`), so its recomputation must too
        with _scope(router, ADAPTERS_OFF if router.disabled else new, recompute):
            yield new
        failed = False
    except GeneratorExit:   # a generator holding the scope was closed: an exit like any other
        failed = False
        raise
    finally:
        if failed:   # the error in flight is the one to see, not the scope order it may have caused
            _release(router, held, lambda: setattr(router, "current", outer if router.current is new else None),
                     compiling)
        else:
            _release(router, held, lambda: _close(router, new, outer), compiling)


class EagerScope(AbstractContextManager):
    """``scope`` (a :func:`route`'s) entered and left with Dynamo off, for the top frame of a compiled call that Dynamo
    runs eagerly (``MTLLoRAModel.forward`` given its tasks: :func:`~.compiled.skip_top_frame`), where each function
    called is converted as a frame of its own: the route's set-up (the ids read to the host, the rows' positions) stays
    outside every graph, as a scope's around the compiled call. While it is open the router's layers read the rows'
    positions (a graph input), as :func:`~.compiled.watch_routed` makes them for a scope given a compiled model; on
    exit the router reads them as before (an eager route after a compiled call made them on the host for nothing:
    a task_lora model's every mixed route, an mtl_lora model's packed ones, +0.8 ms a route of 65,536 patches)."""

    def __init__(self, scope: AbstractContextManager, router: Router):
        self.scope, self.router = scope, router
        self.reads: tuple[bool, bool] | None = None

    @torch.compiler.disable
    def __enter__(self) -> Any:
        router = self.router
        self.reads = router.reads_positions, router.packed_positions
        router.reads_positions = router.packed_positions = True
        try:
            return self.scope.__enter__()
        except BaseException:
            self._restore()
            raise

    @torch.compiler.disable
    def __exit__(self, *exc: Any) -> bool | None:
        try:
            return self.scope.__exit__(*exc)
        finally:
            self._restore()

    def _restore(self) -> None:
        """Put back what the router's layers read before the scope (the compiled layers set them again as they ran)."""
        self.router.reads_positions, self.router.packed_positions = self.reads


@torch.compiler.disable   # called only where the scope really runs (as _claim_now)
def _scaled_positions(router: Router, r: Route) -> None:
    """Make ahead, on the host, the packed route ``r`` over the rows of each layer that read such a route over other
    rows before (Qwen2-VL's merger: 4 patches a row; :meth:`Route.packed_at`), with its rows' positions (every k-th
    of ``r``'s): a compiled merger takes them as a graph input, where it read the scaled segments' ints as constants
    (a graph per mix of images' tasks). Where an image's rows do not land on whole rows, none: the layer refuses it."""
    for num, den in router.packed_scales:
        n, part = divmod(r.batch_size * num, den)
        if n and not part and not any(a * n % r.batch_size for _, a, _ in r.segments):
            r.packed_at(n).host_positions()


@contextmanager
def widened(router: Router, r: Route) -> Iterator[None]:
    """Run this block under ``r``, the router's current route re-opened with more rows per id (generation's beams,
    :func:`~.generation.expanded_rows`). Not a new routing decision, so not claimed (:func:`_claim`): a ``generate``
    on a worker thread inside the caller's ``route`` scope is routed by that scope, with beams as without."""
    outer = router.current
    if not torch.compiler.is_compiling():   # (as route() makes them for its route) a compiled layer takes the rows'
        for each in (r, r.wide):            # positions as a graph input, not the segments' ints as constants
            if router.reads_positions and each is not None and len(each.segments) > 1 and not each.packed:
                each.host_positions()
    router.current = r
    try:
        with _scope(router, ADAPTERS_OFF if router.disabled else r):
            yield
    finally:
        if router.current is r:   # else the caller's scope was closed meanwhile (on its thread): leave its result
            router.current = outer


def _close(router: Router, new: Route, outer: Route | None) -> None:
    """Restore the route outside the closing scope ``new``, refusing scopes closed out of order."""
    if router.current is not new:   # another scope opened inside this one is still open
        router.current = None
        raise RoutingError(
            "route: scopes on one model closed out of order (two threads, or interleaved generators, routing "
            "the same model); a model's route is one per model, not per thread: give each thread its own copy "
            "(copy.deepcopy(model)), or nest the scopes")
    router.current = outer


def disabled(model: nn.Module | Router, *, recompute: bool = True) -> AbstractContextManager[None]:
    """Run ``model`` as the unadapted base model (zero-shot) inside this scope, also where a ``route`` is opened
    inside it (disabled wins, in backward's recomputation too). Refused while a task is merged into the weights
    (the base model is not what would run). ``recompute=False``: as for :func:`route`, no saved-tensor hooks (which
    ``torch.func`` transforms refuse) where no forward in the scope is checkpointed. A context manager, as
    :func:`route`: dropped without being entered it warns."""
    return _must_enter(_disabled(model, recompute), "mtl_lora_vl.disabled(model)",
                       "the calls that should run without adapters")


@contextmanager
def _disabled(model: nn.Module | Router, recompute: bool) -> Iterator[None]:
    """:func:`disabled`'s scope."""
    router = find_router(model)
    if router.merged_task is not None:
        raise RoutingError(
            f"disabled: the adapters are merged into the weights for task {router.tasks[router.merged_task]!r}, so "
            "the model cannot run as its base model; call mtl_lora_vl.unmerge(model) first (and merge again after)"
        )
    compiling = torch.compiler.is_compiling()
    if not compiling:
        watch_compiled(model, router)   # (its calls under this scope note the empty set, as route()'s note theirs)
    held = _claim(router, "disabled", lambda: setattr(router, "disabled", router.disabled + 1), compiling)
    try:
        with _scope(router, ADAPTERS_OFF, recompute):
            yield
    finally:
        _release(router, held, lambda: setattr(router, "disabled", router.disabled - 1), compiling)


class MustEnter(ContextDecorator, AbstractContextManager):
    """A scope that acts only entered (``with``, ``ExitStack.enter_context``, or as a decorator): one dropped without
    being entered -- the call written as a statement, as if it switched the model in place (transformers'
    ``disable_adapters()``) -- warns, naming the call (``call``) and where to put it. Not made in a traced forward
    (:func:`_must_enter`)."""

    def __init__(self, scope: AbstractContextManager, call: str, around: str) -> None:
        self.scope, self.call, self.around, self.entered = scope, call, around, False

    def __enter__(self) -> Any:
        self._check_fresh()
        self.entered = self.opened = True
        return self.scope.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self.scope.__exit__(*exc)

    def __call__(self, func: Callable) -> Callable:
        """As a decorator: each call of ``func`` runs in a fresh scope."""
        self.entered = True
        return super().__call__(func)

    def _recreate_cm(self) -> AbstractContextManager:
        self._check_fresh()
        return self.scope._recreate_cm()

    def _check_fresh(self) -> None:
        """A scope is entered once (contextlib's scope then said only ``... has no attribute 'args'``)."""
        if self.__dict__.get("opened"):
            raise RoutingError(f"{self.call}: this scope was entered already, and a scope is entered once: call "
                               f"{self.call} again for each `with`")

    def __del__(self) -> None:
        if not self.__dict__.get("entered", True) and warn_user is not None:   # (None at interpreter shutdown)
            warn_user(f"{self.call} returns a context manager and did nothing (it was never entered): use "
                      f"`with {self.call}:` around {self.around}")


def named(scope: AbstractContextManager, call: str) -> AbstractContextManager:
    """``scope`` (from ``route`` / ``disabled``), its warning when dropped unentered naming ``call`` (a method's)."""
    if isinstance(scope, MustEnter):
        scope.call = call
    return scope


def _must_enter(scope: AbstractContextManager, call: str, around: str) -> AbstractContextManager:
    """``scope`` as a :class:`MustEnter`, or as it is in a traced forward: there dynamo inlines the scope's generator
    (a forward pre-hook's scope, a compiled ``MultiTaskModel.forward``'s), and a dropped scope could not warn."""
    return scope if torch.compiler.is_compiling() else MustEnter(scope, call, around)
