"""The per-sample task-id scope that carries a batch's tasks from the loader to every adapted layer.

``attach`` gives the model one :class:`Router`; every adapted layer holds a reference to it. A
``route(model, ...)`` scope sets the router's current :class:`Route`, both towers read it, and the
scope restores the outer route on exit, so scopes nest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


class RoutingError(RuntimeError):
    """A forward pass could not tell which task's adapters to use, or was told inconsistently."""


@dataclass
class Route:
    """What one forward pass is routed to.

    ``task`` is set when the whole batch is one task (one LoRA's cost). Otherwise ``present`` lists
    the task indices in the batch and ``ids`` gives each sample's task; layers use ``mask(...)``,
    a (batch, len(present)) one-hot matrix, to apply each task's matrix to its own rows.
    """

    task: int | None
    ids: torch.Tensor | None = None
    present: tuple[int, ...] = ()
    batch_size: int | None = None
    _masks: dict = field(default_factory=dict, repr=False)

    def mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        m = self._masks.get(key)
        if m is None:
            ids = self.ids.to(device)
            present = torch.tensor(self.present, device=device)
            m = (ids[:, None] == present[None, :]).to(dtype)
            self._masks[key] = m
        return m


    def expand(self, k: int) -> Route:
        """This route for a batch of k consecutive rows per routed row (beams, candidates): ids repeated k times
        (``repeat_interleave``), cached on the route."""
        if k == 1:
            return self
        key = ("expand", k)
        got = self._masks.get(key)
        if got is None:
            size = None if self.batch_size is None else self.batch_size * k
            if self.task is not None:
                got = Route(task=self.task, batch_size=size)
            else:
                got = Route(task=None, ids=self.ids.repeat_interleave(k), present=self.present, batch_size=size)
            self._masks[key] = got
        return got


class Router:
    """Routing state shared by all adapted layers of one model."""

    def __init__(self, tasks: Sequence[str]):
        self.tasks = list(tasks)
        self.current: Route | None = None
        self.merged_task: int | None = None
        self.disabled = 0
        self.expansion = 1  # > 1 only inside adapters.generation.expanded_rows (generate, candidate scoring)

    @property
    def active(self) -> bool:
        """False while adapters are switched off: disabled, or already merged into the weights."""
        return self.disabled == 0 and self.merged_task is None

    def make_route(self, tasks: str | int | torch.Tensor | Sequence[str] | Sequence[int]) -> Route:
        """Turn a task name, index, name list or id tensor into a validated Route."""
        if isinstance(tasks, str):
            return Route(task=self._index(tasks))
        if isinstance(tasks, int) and not isinstance(tasks, bool):
            self._check_range(torch.tensor([tasks]))
            return Route(task=tasks)
        if isinstance(tasks, torch.Tensor):
            if tasks.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                raise RoutingError(f"route: task ids must be an integer tensor, got dtype {tasks.dtype}")
            if tasks.dim() == 0:
                self._check_range(tasks.view(1))
                return Route(task=int(tasks))
            if tasks.dim() != 1:
                raise RoutingError(f"route: task ids must have shape (batch,), got {tuple(tasks.shape)}")
            ids = tasks.long()
        elif isinstance(tasks, Sequence) and len(tasks) > 0:
            if all(isinstance(t, str) for t in tasks):
                ids = torch.tensor([self._index(t) for t in tasks])
            elif all(isinstance(t, int) and not isinstance(t, bool) for t in tasks):
                ids = torch.tensor(list(tasks))
            else:
                raise RoutingError("route: a list of tasks must hold only task names or only integer ids")
        else:
            raise RoutingError(
                f"route: expected a task name, an id, a list of names or a LongTensor of ids, got {tasks!r}"
            )
        if ids.numel() == 0:
            raise RoutingError("route: the task id tensor is empty; a batch needs at least one sample")
        self._check_range(ids)
        present = tuple(int(t) for t in torch.unique(ids.cpu()).tolist())
        if len(present) == 1:
            return Route(task=present[0], batch_size=ids.numel())
        return Route(task=None, ids=ids, present=present, batch_size=ids.numel())

    def resolve(self, layer_name: str) -> Route:
        """The route for a forward pass through ``layer_name``; errors say what to do instead."""
        route = self.current
        if route is None:
            if len(self.tasks) == 1:
                return Route(task=0)
            raise RoutingError(
                f"{layer_name}: the adapters serve {len(self.tasks)} tasks {self.tasks} but no task was "
                "given; wrap the forward pass in `with mtl_lora_vl.route(model, task_or_ids):`"
            )
        return route

    def _index(self, name: str) -> int:
        try:
            return self.tasks.index(name)
        except ValueError:
            raise RoutingError(f"route: unknown task {name!r}; this model's adapters know {self.tasks}") from None

    def _check_range(self, ids: torch.Tensor) -> None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= len(self.tasks):
            bad = lo if lo < 0 else hi
            raise RoutingError(
                f"route: task id {bad} is out of range; ids must be in [0, {len(self.tasks) - 1}] "
                f"for the tasks {self.tasks}"
            )


def find_router(model: nn.Module) -> Router:
    """The Router that ``attach`` gave ``model`` (also found through DDP or any wrapping module)."""
    for m in model.modules():
        info = getattr(m, "_mtl_lora", None)
        if info is not None:
            return info.router
    raise RoutingError(
        f"{type(model).__name__} has no MTL-LoRA adapters; call mtl_lora_vl.attach(model, config) first"
    )


@contextmanager
def route(model: nn.Module, tasks: str | int | torch.Tensor | Sequence[str] | Sequence[int]) -> Iterator[Route]:
    """Route every adapted layer of ``model`` to one task, or each sample to its own task.

    ``tasks`` is a task name, a task index, a list of names, or a LongTensor of per-sample ids of
    batch size. The outer scope is restored on exit.
    """
    router = find_router(model)
    new = router.make_route(tasks)
    if router.merged_task is not None and new.task != router.merged_task:
        merged = router.tasks[router.merged_task]
        raise RoutingError(
            f"route: the adapters are merged into the weights for task {merged!r}; call "
            "mtl_lora_vl.unmerge(model) before routing to another task"
        )
    outer = router.current
    router.current = new
    try:
        yield new
    finally:
        router.current = outer


@contextmanager
def disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as the unadapted base model (zero-shot) inside this scope."""
    router = find_router(model)
    router.disabled += 1
    try:
        yield
    finally:
        router.disabled -= 1
