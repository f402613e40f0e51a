"""Routing: which task's adapters each row of a batch uses, from the loader to every adapted layer.

``attach`` gives the model one :class:`Router`; every adapted layer holds a reference to it. A
``route(model_or_router, tasks)`` scope sets the router's current :class:`Route`; both towers read it,
and the scope restores the outer route on exit, so scopes nest.

A :class:`Route` is host-side data: the tasks of the batch as *segments* ``(task, start, stop)`` of
consecutive rows, computed once per scope (by the loader's collate for training batches, so nothing
syncs with the device). ``mtl_lora`` layers take each sample's task from it (its position among the
present tasks: one small LongTensor per route and device, :meth:`Route.sample_positions`), whatever the
order of the rows; the other methods apply
each present task's matrix to its own rows: a slice per segment when the rows are grouped by task (what
the loader makes), one gathered index set per task when an API user's rows are finely interleaved (see
:meth:`Route.plan`). Nothing is done per layer that walks modules or reads device memory.

The scopes that set a model's route (``route``, ``disabled``) and carry it through activation recomputation
are in :mod:`.scopes`.
"""


from __future__ import annotations

import array
import itertools
import math
import operator
import threading
from collections.abc import Sequence

import torch
from torch import nn

from ..config import unknown_task_hint
from .runs import MAX_RUNS_PER_TASK, MAX_RUNS_PER_TASK_DEFAULT, PlanEntry, Segment, id_runs


class RoutingError(RuntimeError):
    """A forward pass could not tell which task's adapters to use, or was told inconsistently."""


class NoTaskGiven(RoutingError):
    """The RoutingError of an adapted layer run with no route while the adapters serve several tasks (its own type:
    a compiled call's is told from any other RoutingError Dynamo observed, :func:`.compiled.traced_routing_error`)."""


class Route:
    """What one forward pass is routed to (immutable; host-side ints, plus an optional ids tensor).

    ``task`` is set when every row has the same task (one LoRA's cost); ``batch_size`` is None for a
    route given by task name or index, which fits any batch. ``segments`` are the maximal runs of
    consecutive rows with the same task, in row order, covering ``[0, batch_size)``. ``ids`` is the
    per-row id tensor when the caller gave one (kept for callers; layers only read the segments).
    ``packed`` marks a route over the rows of a tower that packs every image's patches into one sequence
    (:meth:`packed_images`): its segments count patches, and layers apply each task's matrix per run of rows.
    """

    __slots__ = ("task", "segments", "batch_size", "ids", "present", "_run", "_plans", "_index", "_positions", "wide",
                 "packed", "_at", "_host")

    def __init__(self, task: int | None = None, segments: Sequence[Segment] = (), batch_size: int | None = None,
                 ids: torch.Tensor | None = None):
        self.task = task
        self.segments = tuple(segments)
        self.batch_size = batch_size
        self.ids = ids
        self.present: tuple[int, ...] = (task,) if task is not None else tuple(sorted({s[0] for s in self.segments}))
        p = self.present   # consecutive present tasks: their rows of a per-task tensor are a slice
        self._run = slice(p[0], p[0] + len(p)) if p and p == tuple(range(p[0], p[0] + len(p))) else None
        self._plans: dict[torch.device, tuple[PlanEntry, ...]] = {}
        self._index: dict[torch.device, slice | torch.Tensor] = {}
        self._positions: dict[torch.device, torch.Tensor] = {}
        self.wide: Route | None = None  # see allowing()
        self.packed = False
        self._at: dict[int, Route] = {}   # packed_at(n), made once per row count
        self._host: torch.Tensor | None = None   # see host_positions

    @classmethod
    def from_segments(cls, segments: Sequence[Segment], ids: torch.Tensor | None = None) -> Route:
        """A route from ``(task, start, stop)`` row runs that tile ``[0, B)`` (adjacent equal tasks are merged)."""
        merged: list[list[int]] = []
        pos = 0
        for t, a, b in segments:
            t, a, b = int(t), int(a), int(b)
            if a != pos or b <= a:
                raise RoutingError(f"route: segments must tile the batch in order without gaps or empty runs; "
                                   f"got {tuple(segments)}")
            if merged and merged[-1][0] == t:
                merged[-1][2] = b
            else:
                merged.append([t, a, b])
            pos = b
        if not merged:
            raise RoutingError("route: a batch needs at least one sample (no segments given)")
        segs = tuple((t, a, b) for t, a, b in merged)
        task = segs[0][0] if len(segs) == 1 else None
        return cls(task=task, segments=segs, batch_size=pos, ids=ids)

    @classmethod
    def from_ids(cls, ids: Sequence[int], tensor: torch.Tensor | None = None) -> Route:
        """A route from per-row task ids given on the host (a list of ints)."""
        return cls.from_segments(id_runs(ids), tensor)

    @property
    def grouped(self) -> bool:
        """True when each present task's rows are contiguous (at most one segment per task)."""
        return len(self.segments) <= len(self.present)

    def plan(self, device: torch.device) -> tuple[PlanEntry, ...]:
        """How a layer applies the present tasks' matrices: ``(position in present, rows)`` entries.

        Rows are slices (one matrix product per run; no copy) unless the runs are many per task, then
        one LongTensor index per task on ``device`` (gather / index_add). Built once per route and device.
        """
        plan = self._plans.get(device)
        if plan is None:
            pos = {t: p for p, t in enumerate(self.present)}
            per_task = MAX_RUNS_PER_TASK.get(device.type, MAX_RUNS_PER_TASK_DEFAULT)
            if len(self.segments) <= per_task * len(self.present):
                plan = tuple((pos[t], slice(a, b)) for t, a, b in self.segments)
            else:
                rows: dict[int, list[int]] = {t: [] for t in self.present}
                for t, a, b in self.segments:
                    rows[t].extend(range(a, b))
                with torch.inference_mode(False):  # cached: a later training forward may reuse it
                    plan = tuple((pos[t], torch.tensor(rows[t]).to(device, non_blocking=True)) for t in self.present)
            self._plans[device] = plan
        return plan

    def present_index(self, device: torch.device) -> slice | torch.Tensor:
        """Index of the present tasks' rows in per-task tensors: a slice when they are consecutive, else a
        LongTensor on ``device`` made once per route (no host-to-device copy per layer)."""
        if self._run is not None:   # not cached per device: under torch.compile a cache filled by the first call
            return self._run         # fails its guard at the second (one recompilation per route)
        if torch.compiler.is_compiling():   # a constant of the graph (present is guarded anyway): a cache written
            return torch.tensor(self.present, device=device)   # by a trace held an inference_mode call's tensor
        index = self._index.get(device)
        if index is None:
            with torch.inference_mode(False):
                index = torch.tensor(self.present).to(device, non_blocking=True)
            self._index[device] = index
        return index

    def sample_positions(self, device: torch.device) -> torch.Tensor:
        """Each row's task as its position in :attr:`present` (the row of the present tasks' matrices it uses),
        a LongTensor on ``device``; from the segments, made once per route and device."""
        if torch.compiler.is_compiling():   # traced: a graph input, or from the segments' bounds as graph values,
            if self._host is not None:      # not a list of constants (which torch.compile specializes on: a
                return self._host.to(device)   # recompile for every new mix of rows)
            return self._traced_positions(device)
        positions = self._positions.get(device)
        if positions is None:
            with torch.inference_mode(False):
                positions = self.host_positions().to(device, non_blocking=True)
            self._positions[device] = positions
        return positions

    @torch.compiler.disable   # dynamo compiles a call made from a frame it runs eagerly as a frame of its own
    def host_positions(self) -> torch.Tensor:
        """Each row's position in :attr:`present`, a LongTensor on the host made once (whatever the default device: a
        route made under ``with torch.device("meta")`` must still serve the CPU). A route scope opened outside compiled
        code makes it for a mixed route read by ``mtl_lora`` layers (:func:`.scopes.route`), and a compiled layer takes
        it as a graph input: the segments' ints, read from outside the trace, would be guarded as constants."""
        if self._host is None:
            pos = {t: p for p, t in enumerate(self.present)}
            rows = array.array("q")   # each run's rows as one C-level repeat, read in place: 4 us for a mixed
            for t, a, b in self.segments:   # route of 6 rows, where torch.tensor + repeat_interleave took 34 us
                rows.extend(array.array("q", (pos[t],)) * (b - a))
            if torch.is_inference_mode_enabled():   # not an inference tensor: a later training forward reuses it
                with torch.inference_mode(False):
                    self._host = torch.frombuffer(rows, dtype=torch.long)
            else:
                self._host = torch.frombuffer(rows, dtype=torch.long)
        return self._host

    def _traced_positions(self, device: torch.device) -> torch.Tensor:
        """:meth:`sample_positions` under torch.compile: each segment's rows found by comparing an arange with its
        bounds, so that the bounds stay symbolic (a dynamic batch mix) instead of being baked into the graph."""
        pos = {t: p for p, t in enumerate(self.present)}
        rows = torch.arange(self.batch_size, device=device)
        positions = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        for t, a, b in self.segments:
            if pos[t]:
                positions = torch.where((rows >= a) & (rows < b), pos[t], positions)
        return positions

    def expand(self, k: int) -> Route:
        """Each row repeated ``k`` times in place (Hugging Face's ``repeat_interleave`` convention for beams
        and ``num_return_sequences``): host arithmetic on the segments; the ids tensor, if any, repeated."""
        if k < 1:
            raise ValueError(f"Route.expand: k must be >= 1, got {k}")
        if k == 1 or self.batch_size is None:
            return self
        ids = self.ids.repeat_interleave(k) if self.ids is not None else None
        return Route.from_segments([(t, a * k, b * k) for t, a, b in self.segments], ids)

    def allowing(self, k: int) -> Route:
        """This route, whose layers also take a batch of exactly k rows per routed row (generation: beams,
        returned sequences, scored candidates), routed as :meth:`expand` ``(k)`` (kept in ``wide``)."""
        if k == 1 or self.batch_size is None:
            return self
        r = Route(self.task, self.segments, self.batch_size, self.ids)
        r._plans, r._index, r._positions, r._host = self._plans, self._index, self._positions, self._host
        r.wide = self.expand(k)
        return r

    def per_image(self, counts: Sequence[int]) -> Route:
        """The route over a batch of images, ``counts[i]`` of them for routed row i, in row order (a row's images
        together, as the models' processors lay them out): each segment of rows becomes one of images, and a row
        without images drops out (host arithmetic)."""
        if self.batch_size is None or len(counts) != self.batch_size or any(int(n) != n or n < 0 for n in counts):
            raise RoutingError(f"route: image counts {list(counts)} for a route of {self.batch_size} rows; one "
                               "whole number of images per routed row is needed")
        segments = self._spread(counts)
        if not segments:
            raise RoutingError("route: image counts of a batch without images")
        return Route.from_segments(segments)

    def _spread(self, sizes: Sequence[int]) -> list[Segment]:
        """Each segment of rows as one of items, row i having ``sizes[i]`` items in a row of them (empty ones left
        out)."""
        start = [0, *itertools.accumulate(int(n) for n in sizes)]
        return [(t, start[a], start[b]) for t, a, b in self.segments if start[b] > start[a]]

    def packed_images(self, rows: Sequence[int]) -> Route:
        """The route over a packed sequence of images, ``rows[i]`` rows (patches) for image i, image i being
        routed row i's: each segment of rows becomes one of patches (host arithmetic; :attr:`packed` set)."""
        if self.batch_size is None or len(rows) != self.batch_size:
            raise RoutingError(f"route: {len(rows)} images for a route of {self.batch_size} rows; "
                               "one image per routed row is needed")
        r = Route.from_segments(self._spread(rows))
        r.packed = True
        return r

    def packed_at(self, n: int, router: Router | None = None) -> Route:
        """A :attr:`packed` route over ``n`` rows instead of :attr:`batch_size` (a layer after the tower merged
        every k patches into one row, or before it split them): segments scaled by n / batch_size, each
        image's boundary landing on a whole row; RoutingError where one does not. The scale is noted in
        ``router``'s :attr:`~Router.packed_scales` (route scopes make its route ahead: see :mod:`.scopes`)."""
        r = self._at.get(n)
        if r is None:
            scale = (n // math.gcd(n, self.batch_size), self.batch_size // math.gcd(n, self.batch_size))
            if router is not None and scale not in router.packed_scales:
                router.packed_scales = router.packed_scales | {scale}
            segs = [(t, a * n // self.batch_size, b * n // self.batch_size) for t, a, b in self.segments]
            if any(a * n % self.batch_size or b * n % self.batch_size for _, a, b in self.segments):
                raise RoutingError(
                    f"route: a layer inside the packed tower has {n} rows for the tower's {self.batch_size}, and an "
                    f"image's rows {[(a, b) for _, a, b in self.segments]} do not map onto whole rows of it")
            r = Route.from_segments(segs)
            r.packed = True
            self._at[n] = r
        return r

    def __repr__(self) -> str:
        if self.batch_size is None:
            return f"Route(task={self.task})"
        return f"Route(segments={self.segments}, batch_size={self.batch_size})"


#: The replay route of a forward that ran with adapters switched off (``disabled``).
ADAPTERS_OFF = Route()


class Router:
    """Routing state shared by all adapted layers of one model."""

    #: Whether its layers read the rows' task positions (:meth:`Route.host_positions`): attach sets it for
    #: ``mtl_lora``; a route scope given a compiled model, or a compiled ``task_lora`` / ``moe_lora`` layer as it
    #: reads them, for the others (scopes.route).
    reads_positions = True
    packed_positions = False   # and a packed route's: set by a compiled layer that reads them (layers.add_delta)
    #: n / batch_size (reduced) of the layers that read a packed route over n rows, not its own (Route.packed_at)
    packed_scales: frozenset[tuple[int, int]] = frozenset()

    def __init__(self, tasks: Sequence[str]):
        self.tasks = list(tasks)
        self.current: Route | None = None
        self.replay: Route | None = None  # set by backward's unpack hooks; read by recomputation
        self.replay_graph = -1            # the backward pass (autograd graph task) that set it
        self.merged_task: int | None = None
        self.disabled = 0
        self.thread: int | None = None    # the thread whose route scopes are open (scopes.py refuses others)
        self.claim_lock = threading.Lock()  # makes scopes.py's check of `thread` and the scope's entry one step
        self.scope = 0                    # the number of the innermost open scope (0: none), of scopes_opened
        self.scopes_opened = 0
        self._one: dict[int, Route] = {}

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) holds no open scope: the scopes are the caller's, around the original. The
        merged task stays (the copied weights are merged)."""
        state = {**self.__dict__, "current": None, "replay": None, "replay_graph": -1, "disabled": 0, "thread": None,
                 "scope": 0}
        del state["claim_lock"]   # a lock cannot be copied; the copy gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        """Restore a copy made through :meth:`__getstate__`, with a lock of its own."""
        self.__dict__.update(state)
        self.claim_lock = threading.Lock()

    @property
    def active(self) -> bool:
        """False while adapters are switched off: disabled, or already merged into the weights."""
        return self.disabled == 0 and self.merged_task is None

    def task_route(self, task: int) -> Route:
        """The (cached) route of task index ``task`` for a whole batch of any size."""
        if torch.compiler.is_compiling():   # no cache read or write in a traced forward: a guard on the cache's
            self._check_host([task])         # contents would fail once the first call has filled it (a recompile)
            return Route(task=task)
        r = self._one.get(task)
        if r is None:
            self._check_host([task])
            r = self._one[task] = Route(task=task)
        return r

    def make_route(self, tasks: str | int | torch.Tensor | Sequence[str] | Sequence[int] | Route) -> Route:
        """Turn a task name, index, name list, id tensor or Route into a validated Route.

        A device id tensor is copied to the host once here (one sync per scope, not per layer); the
        training loop avoids even that by passing the loader's segments (``Route.from_segments``).
        """
        if type(tasks).__module__ == "numpy":   # an array or scalar of ids or names: as the Python values
            tasks = tasks.tolist()
        if isinstance(tasks, Route):
            if tasks is ADAPTERS_OFF:
                return tasks
            if not tasks.present:
                raise RoutingError(
                    "route: this Route names no task (Route() with no arguments); build one with "
                    "Route.from_ids(ids) or Route.from_segments(segments), or pass the ids themselves. To run "
                    "the base model without adapters, use `with mtl_lora_vl.disabled(model):`"
                )
            _check_tiling(tasks)
            self._check_host(tasks.present)
            return tasks
        if isinstance(tasks, str):
            return self.task_route(self._index(tasks))
        if isinstance(tasks, int) and not isinstance(tasks, bool):
            return self.task_route(tasks)
        if isinstance(tasks, torch.Tensor):
            if tasks.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                raise RoutingError(f"route: task ids must be an integer tensor, got dtype {tasks.dtype}")
            if tasks.dim() == 0:
                return self.task_route(int(tasks))
            if tasks.dim() != 1:
                raise RoutingError(f"route: task ids must have shape (batch,), got {tuple(tasks.shape)}")
            host = tasks.tolist()
            tensor: torch.Tensor | None = tasks
        elif isinstance(tasks, Sequence) and not isinstance(tasks, str) and len(tasks) == 0:
            raise RoutingError("route: the list of task ids is empty; a batch needs at least one sample (one id or "
                               "task name per input row)")
        elif isinstance(tasks, Sequence) and len(tasks) > 0:
            if all(isinstance(t, str) for t in tasks):
                host = [self._index(t) for t in tasks]
            elif all(hasattr(t, "__index__") and not isinstance(t, bool) for t in tasks):
                host = [operator.index(t) for t in tasks]   # ints, NumPy integers
            else:
                raise RoutingError("route: a list of tasks must hold only task names or only integer ids")
            tensor = None
        else:
            raise RoutingError(
                f"route: expected a task name, an id, a list of names or a LongTensor of ids, got {tasks!r}"
            )
        if not host:
            raise RoutingError("route: the task id tensor is empty; a batch needs at least one sample")
        self._check_host(host)
        return Route.from_ids(host, tensor)

    def resolve(self, layer_name: str) -> Route | None:
        """The route for a forward pass through ``layer_name``; None when the adapters are off.

        Inside backward (activation recomputation) the replay route armed by the unpack hooks wins.
        """
        if self.merged_task is not None:
            return None
        in_backward = not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1
        if in_backward and self.replaying():
            return None if self.replay is ADAPTERS_OFF else self.replay
        if self.disabled:
            return None
        route = self.current
        if route is None:
            if len(self.tasks) == 1:
                return self.task_route(0)
            if in_backward:
                raise RoutingError(
                    f"{layer_name}: backward is recomputing a checkpointed forward, but no route scope saw that "
                    f"forward's tensors, so the task of its rows is unknown (the adapters serve {self.tasks}). "
                    "Saved-tensor hooks opened inside a `with mtl_lora_vl.route(...)` block (save_on_cpu, ...) "
                    "hide the route's: open them outside it, or run the checkpointed forward inside a route scope "
                    "(one opened with recompute=True, the default)"
                )
            raise NoTaskGiven(
                f"{layer_name}: the adapters serve {len(self.tasks)} tasks {self.tasks} but no task was "
                "given; wrap the forward pass in `with mtl_lora_vl.route(model, task_or_ids):`"
            )
        return route

    def replaying(self) -> bool:
        """True inside the backward pass whose unpack hooks armed the replay route: a recomputation of a checkpointed
        forward, whose route scope may have closed (``current`` is then None) and is replayed instead."""
        return self.replay is not None and self.replay_graph == torch._C._current_graph_task_id() != -1

    def _index(self, name: str) -> int:
        try:
            return self.tasks.index(name)
        except ValueError:
            hint = unknown_task_hint(name, self.tasks)
            raise RoutingError(f"route: unknown task {name!r}; this model's adapters know {self.tasks}{hint}") from None

    def _check_host(self, ids: Sequence[int]) -> None:
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi >= len(self.tasks):
            bad = lo if lo < 0 else hi
            raise RoutingError(
                f"route: task id {bad} is out of range; ids must be in [0, {len(self.tasks) - 1}] "
                f"for the tasks {self.tasks}"
            )


def _check_tiling(r: Route) -> None:
    """RoutingError unless a Route (one built by hand too) is what ``from_segments`` makes: one task for any batch, or
    segments that tile ``[0, batch_size)`` in order, all of ``task``'s when it is set (once per scope, never per layer).
    A gap left its rows unadapted, silently."""
    if r.batch_size is None and not r.segments:
        return
    pos, why = 0, None
    for t, a, b in r.segments:
        if a != pos or b <= a:
            why = f"its segments do not tile the batch in order without gaps, overlaps or empty runs ({a} after {pos})"
            break
        if r.task is not None and t != r.task:
            why = f"it says every row is task {r.task} but a segment is task {t}"
            break
        pos = b
    if why is None and r.batch_size is None:
        why = "it has segments but no batch_size"
    elif why is None and pos != r.batch_size:
        why = f"its segments cover {pos} of its batch_size {r.batch_size} rows (they must tile the batch)"
    if why is not None:
        raise RoutingError(f"route: {r!r} cannot route a batch: {why}; build routes with Route.from_ids(ids) or "
                           "Route.from_segments(segments)")


def check_module(model: object, what: str = "the model") -> None:
    """TypeError unless ``model`` is an ``nn.Module``; a package Backbone is named with its fix (``.model``)."""
    if isinstance(model, nn.Module):
        return
    if isinstance(getattr(model, "model", None), nn.Module):
        raise TypeError(f"{what}: got a {type(model).__name__}, which holds the model; pass its .model "
                        f"(e.g. backbone.model)")
    raise TypeError(f"{what}: expected a torch nn.Module, got {type(model).__name__}")


def find_router(model: nn.Module | Router) -> Router:
    """The Router that ``attach`` gave ``model`` (also found through DDP or any wrapping module); see
    :func:`find_adapted`."""
    if isinstance(model, Router):
        return model
    info = getattr(model, "_mtl_lora", None)
    return info.router if info is not None else find_adapted(model)._mtl_lora.router


def find_adapted(model: nn.Module) -> nn.Module:
    """The module that ``attach`` adapted: ``model`` itself, or the one inside a wrapper (DDP, torch.compile,
    MTLLoRAModel, MultiTaskModel).

    O(1) for the attached model; a wrapper is searched each time (a walk over its modules: 1.2 ms for a
    7B LLaVA's 1,087 on one CPU core), so a model added to it anywhere, or replaced, is always seen. A
    wrapper holding several adapted models (a student and a teacher) is refused, not resolved to the first
    one found; one model reachable under several paths, or replicas sharing its router, count once.
    """
    check_module(model)   # first: a str / None / Backbone gets its TypeError, not an AttributeError on __dict__
    if model.__dict__.get("_mtl_lora") is not None:   # its own (torch.compile's wrapper forwards the attribute)
        return model
    found: dict[int, tuple[str, nn.Module]] = {}   # id(router) -> the first path and module that carry it
    for name, m in model.named_modules():
        info = m.__dict__.get("_mtl_lora")
        if info is not None:
            found.setdefault(id(info.router), (name, m))
    if len(found) > 1:
        paths = [n for n, _ in found.values()]
        raise RoutingError(
            f"{type(model).__name__} holds {len(paths)} separately adapted models, at {paths}, and which one to route, "
            f"merge, save or report on is ambiguous; pass one of them (e.g. its .{paths[0]}) instead"
        )
    if not found:
        raise RoutingError(
            f"{type(model).__name__} has no MTL-LoRA adapters; call mtl_lora_vl.attach(model, config) first"
        )
    ((_, m),) = found.values()
    return m
