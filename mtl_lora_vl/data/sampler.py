"""Multi-task batch sampling: which task's samples make up each training batch.

:class:`MultiTaskBatchSampler` yields batches as lists of ``(task_id, index)`` pairs, where
``task_id`` is the task's position in the list of sizes given and ``index`` an example of that task.

* **Task probabilities** (``strategy``): ``proportional`` (p ∝ n), ``temperature`` (p ∝ n^(1/T); T = 1
  is proportional, large T tends to uniform) and ``round_robin`` (equal shares, cycled exactly).
* **Batch modes** (``mode``): ``homogeneous`` -- one task per step, drawn from p (round robin: tasks
  0, 1, ..., T-1, 0, ... in turn), a step being ``per_step`` batches (gradient accumulation's micro-batches:
  they all hold the step's task); ``mixed`` -- each batch holds floor or ceil of ``batch_size * p_t``
  samples of task t, the extra rows going to the tasks with the largest remainders carried from batch to
  batch (so long-run shares are exactly p), and -- when ``batch_size >= number of tasks`` and
  ``every_task`` -- at least one sample of every task, so every task's adapter gets a gradient each step
  (DDP-friendly, DESIGN §7). That floor raises a task whose share is below 1/batch_size to 1/batch_size
  and scales the other tasks' shares down in proportion (:func:`floored_shares`); those shares are what the
  remainders carry, so the long-run shares are exactly the floored ones. Rows are grouped by task.
* **Epochs per task**: each task walks a fresh random permutation of its examples (without
  replacement) and starts a new one when it runs out, independently of the other tasks.
* **Determinism**: everything derives from ``seed`` through generators this class owns (never the
  global RNG): the permutation of task t in its epoch e, and the homogeneous draw of step s, are
  functions of (seed, t, e) and (seed, s // per_step). ``state_dict()`` is small JSON-able data; a sampler
  restored with ``load_state_dict`` continues with exactly the same batches.
* **DDP sharding**: ``batch_size`` is per rank. Every rank computes the same global batch of
  ``batch_size * world_size`` samples; for each task, rank r takes the r-th contiguous chunk of that
  task's draws. So all ranks see the same task composition (same tasks, same counts) and disjoint
  samples (within a task's epoch).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from ..wording import tasks_named

STRATEGIES = ("proportional", "temperature", "round_robin")
MODES = ("homogeneous", "mixed")
_HISTORY = 4096      # batches whose starting state is remembered (covers any DataLoader prefetch)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so (seed, task, epoch) streams do not collide."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def task_probabilities(sizes: Sequence[int], strategy: str = "proportional",
                       temperature: float = 2.0) -> list[float]:
    """Per-task sampling probabilities for ``strategy`` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if strategy == "round_robin":
        return [1.0 / len(sizes)] * len(sizes)
    if strategy == "temperature":
        if not temperature > 0:
            raise ValueError(f"sampling temperature must be > 0, got {temperature}")
        try:
            weights = [n ** (1.0 / temperature) for n in sizes]
        except OverflowError:   # a very low temperature: the same weights scaled by the largest, in log space
            logs = [math.log(n) / temperature if n > 0 else -math.inf for n in sizes]
            weights = [math.exp(x - max(logs)) for x in logs]
    else:
        weights = [float(n) for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def floored_shares(probabilities: Sequence[float], batch_size: int) -> list[float]:
    """``probabilities`` with each share below ``1 / batch_size`` raised to it and the others scaled down in
    proportion (repeated until no share is below the floor): a mixed batch's per-task shares under
    ``every_task``. Needs ``batch_size >= len(probabilities)``."""
    floor = 1.0 / batch_size
    low: set[int] = set()
    while True:
        mass = sum(x for i, x in enumerate(probabilities) if i not in low)
        rest = 1.0 - floor * len(low)
        shares = [floor if i in low else (x * rest / mass if mass > 0 else 0.0) for i, x in enumerate(probabilities)]
        below = {i for i, x in enumerate(shares) if i not in low and x < floor}
        if not below:
            return shares if low else list(probabilities)
        low |= below


class MultiTaskBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(task_id, index)`` over several tasks; see the module docstring."""

    def __init__(self, sizes: Sequence[int], batch_size: int, *, strategy: str = "proportional",
                 temperature: float = 2.0, mode: str = "mixed", seed: int = 0, steps: int | None = None,
                 rank: int = 0, world_size: int = 1, every_task: bool = True, per_step: int = 1) -> None:
        sizes = [int(n) for n in sizes]
        if not sizes:
            raise ValueError("MultiTaskBatchSampler needs at least one task")
        empty = [t for t, n in enumerate(sizes) if n <= 0]
        if empty:
            raise ValueError(f"{tasks_named(empty, 'have')} no examples (tasks by their position in sizes); every task "
                             "needs a non-empty training split")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode not in MODES:
            raise ValueError(f"unknown batch mode {mode!r}; choose one of {list(MODES)}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, "
                             f"world_size={world_size}")
        if per_step < 1:
            raise ValueError(f"per_step (batches per optimizer step) must be >= 1, got {per_step}")
        if steps is not None and steps < 0:
            raise ValueError(f"steps must be >= 0 or None (endless), got {steps}")
        self.sizes = sizes
        self.batch_size = int(batch_size)
        self.strategy = strategy
        self.temperature = float(temperature)
        self.mode = mode
        self.seed = int(seed)
        self.steps = steps
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.every_task = bool(every_task)
        self.per_step = int(per_step)
        self.probabilities = task_probabilities(sizes, strategy, temperature)
        self._probs = torch.tensor(self.probabilities, dtype=torch.float64)
        #: Each task's long-run share of a mixed batch: the probabilities, floored under every_task.
        self.shares = (floored_shares(self.probabilities, self.batch_size)
                       if self.every_task and self.batch_size >= len(sizes) else list(self.probabilities))
        self.step = 0
        self._epochs = [0] * len(sizes)
        self._positions = [0] * len(sizes)
        self._credits = [0.0] * len(sizes)
        self._perms: dict[int, tuple[int, torch.Tensor]] = {}
        self._history: OrderedDict[int, dict[str, Any]] = OrderedDict()

    # ------------------------------------------------------------------ sizes

    @property
    def num_tasks(self) -> int:
        """How many tasks the sampler draws from."""
        return len(self.sizes)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("this MultiTaskBatchSampler is endless (steps=None); give steps=N to get a length")
        return max(0, self.steps - self.step)

    # ------------------------------------------------------------------ drawing

    def _perm(self, task: int) -> torch.Tensor:
        epoch = self._epochs[task]
        cached = self._perms.get(task)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, 1, task, epoch))
            cached = (epoch, torch.randperm(self.sizes[task], generator=g))
            self._perms[task] = cached
        return cached[1]

    def _take(self, task: int, k: int) -> list[int]:
        """The next ``k`` indices of ``task``'s stream (starting new epochs as needed)."""
        out: list[int] = []
        while len(out) < k:
            perm = self._perm(task)
            pos = self._positions[task]
            chunk = perm[pos:pos + (k - len(out))].tolist()
            out.extend(chunk)
            self._positions[task] = pos + len(chunk)
            if self._positions[task] >= self.sizes[task]:
                self._epochs[task] += 1
                self._positions[task] = 0
        return out

    def _mixed_counts(self) -> list[int]:
        t, b = self.num_tasks, self.batch_size
        if self.strategy == "round_robin":
            counts = [b // t] * t
            rem = b % t
            for j in range(rem):
                counts[(self.step * rem + j) % t] += 1
            return counts
        # Every task gets floor(b * share) rows, and the rows those floors leave over go to the tasks owed the
        # most (the largest carried credits: rows owed = long-run target - rows given). So a batch holds floor
        # or ceil of b * share rows of each task, the credits stay bounded and the long-run shares are exact.
        # Under every_task (and b >= t) the shares are at least 1/b, so every floor is at least one row.
        counts = [math.floor(b * p + 1e-9) for p in self.shares]
        for i, p in enumerate(self.shares):
            self._credits[i] += b * p - counts[i]
        for i in sorted(range(t), key=lambda i: (-self._credits[i], i))[:b - sum(counts)]:
            counts[i] += 1
            self._credits[i] -= 1
        return counts

    def _homogeneous_task(self) -> int:
        """The task of this batch's optimizer step (every micro-batch of a step holds the same one)."""
        step = self.step // self.per_step
        if self.strategy == "round_robin":
            return step % self.num_tasks
        g = torch.Generator().manual_seed(mix_seed(self.seed, 2, step))
        return int(torch.multinomial(self._probs, 1, generator=g).item())

    def next_batch(self) -> list[tuple[int, int]]:
        """This rank's next batch (advances the state by one step)."""
        self._remember()
        if self.mode == "homogeneous":
            counts = [0] * self.num_tasks
            counts[self._homogeneous_task()] = self.batch_size
        else:
            counts = self._mixed_counts()
        batch: list[tuple[int, int]] = []
        for task, c in enumerate(counts):
            if c:
                drawn = self._take(task, c * self.world_size)
                batch.extend((task, i) for i in drawn[self.rank * c:(self.rank + 1) * c])
        self.step += 1
        return batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while self.steps is None or self.step < self.steps:
            yield self.next_batch()

    # ------------------------------------------------------------------ state

    def _snapshot(self) -> dict[str, Any]:
        return {"step": self.step, "epochs": list(self._epochs), "positions": list(self._positions),
                "credits": list(self._credits)}

    def _remember(self) -> None:
        self._history[self.step] = self._snapshot()
        while len(self._history) > _HISTORY:
            self._history.popitem(last=False)

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """The sampler state (JSON-able); with ``step``, the state just before batch number ``step`` was made.

        A DataLoader draws batches ahead of the training loop; pass the number of batches the loop
        has consumed to save the state a resumed run must continue from.
        """
        if step is None or step == self.step:
            state = self._snapshot()
        elif step in self._history:
            state = dict(self._history[step])
        else:
            raise ValueError(f"sampler state for step {step} is not available (current step {self.step}, "
                             f"remembered {min(self._history, default=self.step)}..{self.step})")
        state.update(seed=self.seed, sizes=list(self.sizes), batch_size=self.batch_size,
                     world_size=self.world_size, mode=self.mode, strategy=self.strategy,
                     temperature=self.temperature, every_task=self.every_task, per_step=self.per_step)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`; the configuration must match."""
        for key in ("seed", "sizes", "batch_size", "world_size", "mode", "strategy", "temperature", "every_task",
                    "per_step"):
            mine = getattr(self, key)
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state was saved with {key}={state[key]!r} but this sampler has "
                                 f"{key}={mine!r}; resume with the same tasks and sampling options")
        if "per_step" not in state and self.mode == "homogeneous" and self.per_step > 1:
            warnings.warn("this sampler state was saved before a homogeneous step held one task for all its "
                          f"{self.per_step} micro-batches (each drew its own); the resumed run draws one per step, so "
                          "it does not repeat the batches the run would have had", stacklevel=2)
        n = self.num_tasks
        if any(len(state[k]) != n for k in ("epochs", "positions", "credits")):
            raise ValueError(f"sampler state is for {len(state['epochs'])} tasks, this sampler has {n}")
        self.step = int(state["step"])
        self._epochs = [int(e) for e in state["epochs"]]
        self._positions = [int(p) for p in state["positions"]]
        self._credits = [float(c) for c in state["credits"]]
        self._history.clear()
