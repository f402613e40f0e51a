"""The adapter math (DESIGN §2): here, and in :mod:`.rows` (the in-place row updates; MTL-LoRA's M_t with its gradient).

For a frozen projection ``y = W x + b`` and tasks t = 1..T, MTL-LoRA adds

    ΔW_t = s · (Σ_i softmax(w_t / τ)_i · B_i) · Λ_t · A          s = α / r

Every method is computed the same way: ``z = A x`` once for the whole batch, a small matrix
``M_t`` (d_out × R) per task formed once per forward, and ``y += M_t z`` per sample. A batch of one
task is therefore one LoRA's cost (one fused addmm). ``mtl_lora`` forms its M_t (the formula above:
:func:`.rows.mtl_matrices`) together with the other attached layers of its shape, in one autograd node for all of
them (:mod:`.formation`), and adds its rows in a node of its own (:func:`.rows.update_formed_rows`); a layer
outside an attached model, compiled or in an ``nn.DataParallel`` replica forms its own inside its row update
(:func:`.rows.update_mtl_rows`). A mixed batch gathers each sample's M_t and adds every sample's update in one
batched product, whatever the order of the rows. The other task-dependent methods add each present task's ``M_t z`` to
that task's rows in place -- one matrix product per run of rows when the rows are grouped by task, one gathered index
set per task when they are finely interleaved (see :meth:`Route.plan` and :func:`.rows.update_rows`).
No path masks the output; the only per-sample copy is the mixed ``mtl_lora`` batch's gathered M_t.

=============  ===================  ==================  =================  ========
method         lora_A               lora_B              lora_lambda        lora_w
=============  ===================  ==================  =================  ========
mtl_lora       r × d_in             n × d_out × r       T × r × r (or T×r)  T × n
lora           r × d_in             1 × d_out × r       –                  –
multi_lora     n × r × d_in         n × d_out × r       –                  –
moe_lora       n × r × d_in         n × d_out × r       –                  T × n (gate)
task_lora      T × r × d_in         T × d_out × r       –                  –
=============  ===================  ==================  =================  ========
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MTLLoRAConfig
from ..precision import adapter_dtype
from .formation import Formation
from .routing import Route, Router, RoutingError
from .rows import (
    WHOLE_BATCH,
    autocast_off,
    mixture,
    mtl_matrices,
    update_formed_rows,
    update_mtl_rows,
    update_rows,
)
from .task_growth import TaskGrowth

ADAPTER_PARAM_NAMES = ("lora_A", "lora_B", "lora_lambda", "lora_w")


def _kaiming(rows: int, cols: int, device: torch.device | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    w = torch.empty(rows, cols, device=device, dtype=dtype)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's init
    return w


class AdapterBank(TaskGrowth, nn.Module):
    """The adapter tensors of one projection ``d_in -> d_out`` and how they act on activations.

    ``out_slices`` (for packed q/k/v projections) marks which of the equal slices of the base
    output adapt; the adapter's own output covers only those, and zero rows fill the others. ``dtype``: the adapter
    tensors' (None: fp32; a layer passes :func:`~mtl_lora_vl.precision.adapter_dtype` of its base weight's).
    Growing the task dimension (``grow_tasks``, the old rows kept exact) is :class:`.task_growth.TaskGrowth`'s.
    """

    ADAPTER_PARAM_NAMES = ADAPTER_PARAM_NAMES   # (the tensors grow_tasks freezes but the task rows)

    def __init__(
        self,
        d_in: int,
        d_out: int,
        cfg: MTLLoRAConfig,
        out_slices: tuple[bool, ...] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if out_slices is not None:
            if d_out % len(out_slices):
                raise ValueError(f"d_out={d_out} does not split into {len(out_slices)} equal slices")
            if not any(out_slices):
                raise ValueError("out_slices: at least one slice must adapt")
        self.out_slices = out_slices
        self.d_in, self.d_out_full = d_in, d_out
        d_ad = d_out if out_slices is None else d_out // len(out_slices) * sum(out_slices)
        self.method, self.lambda_type = cfg.method, cfg.lambda_type
        self.r, self.scaling, self.temperature = cfg.r, cfg.scaling, cfg.temperature
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        T, r, n = cfg.num_tasks, cfg.r, cfg.n_up
        n_a = {"mtl_lora": 0, "lora": 0, "multi_lora": n, "moe_lora": n, "task_lora": T}[self.method]
        n_b = {"mtl_lora": n, "lora": 1, "multi_lora": n, "moe_lora": n, "task_lora": T}[self.method]
        dd = {"device": device, "dtype": adapter_dtype(None) if dtype is None else dtype}
        if n_a:
            self.lora_A = nn.Parameter(torch.stack([_kaiming(r, d_in, **dd) for _ in range(n_a)]))
        else:
            self.lora_A = nn.Parameter(_kaiming(r, d_in, **dd))
        self.lora_B = nn.Parameter(torch.zeros(n_b, d_ad, r, **dd))
        if self.method == "mtl_lora" and self.lambda_type == "full":
            self.lora_lambda = nn.Parameter(torch.eye(r, **dd).repeat(T, 1, 1))
        elif self.method == "mtl_lora" and self.lambda_type == "diagonal":
            self.lora_lambda = nn.Parameter(torch.ones(T, r, **dd))
        if self.method in ("mtl_lora", "moe_lora"):
            bound = 1.0 / math.sqrt(n)
            self.lora_w = nn.Parameter(torch.empty(T, n, **dd).uniform_(-bound, bound))
        self.router: Router | None = None
        self.formation: Formation | None = None   # set by attach: this layer's M_t formed with others'
        self.layer_name = ""
        self.batch_dim = 0
        # 2-D inputs holding several rows per sample, sample after sample (a tower that packs every image's
        # patches into one sequence; adapters/packed.py checks the images): k rows per routed sample are accepted.
        self.packed_rows = False
        self._n_frozen = 0
        self._frozen_names: tuple[str, ...] = ()
        # The exact base weight while a task is merged into it (see attach.merge); None otherwise.
        # A non-persistent buffer: it moves with .to(), stays out of state_dict, shows in named_buffers.
        self.register_buffer("merge_backup", None, persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        if self.formation is not None:   # the held M_t and storages are of the tensors before the conversion
            self.formation.release()
        return super()._apply(fn, recurse)

    @property
    def task_dependent(self) -> bool:
        """Whether rows of different tasks get different updates (False: one update serves every row, as one LoRA)."""
        return self.method in ("mtl_lora", "moe_lora", "task_lora")

    @property
    def num_tasks(self) -> int:
        """How many tasks the bank holds rows for (1 for the methods without per-task tensors)."""
        for name in ("lora_w", "lora_lambda"):
            if hasattr(self, name):
                return getattr(self, name).shape[0]
        return self.lora_A.shape[0] if self.method == "task_lora" else 1

    # Growing the task dimension (add_task) ------------------------------------------------------
    def task_tensor_names(self) -> tuple[str, ...]:
        """Names of the tensors that hold one row per task (empty for lora / multi_lora)."""
        if self.method == "task_lora":
            return ("lora_A", "lora_B")
        return tuple(n for n in ("lora_lambda", "lora_w") if hasattr(self, n))

    def _new_task_rows(self, name: str, n_new: int, old: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """``n_new`` new task rows of the task tensor ``name`` (``old``: its rows now) on ``dev``, initialised as at
        construction (Λ = I, w ~ U(±1/√n), task_lora: new A, B = 0); ``grow_tasks`` appends them."""
        r = self.r
        dd = {"device": dev, "dtype": adapter_dtype(old.dtype)}   # drawn as attach draws them: float64 ones too
        if name == "lora_lambda":
            row = torch.eye(r, **dd) if self.lambda_type == "full" else torch.ones(r, **dd)
            rows = row.expand(n_new, *row.shape)
        elif name == "lora_w":
            bound = 1.0 / math.sqrt(old.shape[1])
            rows = torch.empty(n_new, old.shape[1], **dd).uniform_(-bound, bound)
        elif name == "lora_A":
            rows = torch.stack([_kaiming(r, self.d_in, **dd) for _ in range(n_new)])
        else:  # task_lora's lora_B
            rows = torch.zeros(n_new, *old.shape[1:], **dd)
        return rows

    # The small per-task matrices ------------------------------------------------------------
    def mixing_weights(self, tasks: torch.Tensor | slice | None = None) -> torch.Tensor:
        """softmax(w_t / τ) for the given task indices (all tasks by default): (len, n)."""
        w = self.lora_w if tasks is None else _task_rows(self.lora_w, tasks)
        return mixture(w, self.temperature)

    def a_matrix(self, task: int | None = None) -> torch.Tensor:
        """The down-projection as one (R, d_in) matrix; ``task`` only matters for task_lora."""
        A = self._parameters.get("lora_A")   # (read on every forward: nn.Module.__getattr__ costs ~1 us a name)
        if A is None:   # held as a plain attribute
            A = self.lora_A
        if self.method == "task_lora":
            return A[task]
        return A if A.dim() == 2 else A.reshape(-1, self.d_in)

    def task_matrices(self, tasks: tuple[int, ...], index: slice | torch.Tensor | None = None,
                      scaled: bool = True) -> torch.Tensor:
        """M_t for each task in ``tasks``: (len(tasks), d_out_adapted, R), the scaling s included unless
        ``scaled=False`` (the forward pass lets the GEMM apply it).

        ``index`` indexes the task rows (a slice, or a LongTensor a Route keeps on the device).
        """
        B = self.lora_B
        s = self.scaling if scaled else 1.0
        idx = _task_index(tasks, B.device) if index is None else index
        if self.method == "mtl_lora":
            lam = _task_rows(self.lora_lambda, idx) if self.lambda_type != "none" else None
            M = mtl_matrices(self.mixing_weights(idx).to(B.dtype), B, lam)
            return M if s == 1.0 else s * M
        if self.method == "moe_lora":
            g = self.mixing_weights(idx)  # (P, n)
            M = (g[:, :, None, None] * B[None]).permute(0, 2, 1, 3).reshape(len(tasks), B.shape[1], -1)
            return M if s == 1.0 else s * M
        if self.method == "task_lora":
            M = _task_rows(B, idx)
            return M if s == 1.0 else s * M
        # lora / multi_lora: one matrix for every task, the B_i side by side.
        M = B.permute(1, 0, 2).reshape(B.shape[1], -1)
        M = M if s == 1.0 else s * M
        return M.expand(len(tasks), *M.shape)

    def _full_rows(self, M: torch.Tensor) -> torch.Tensor:
        """Zero rows for the output slices that do not adapt: (..., d_ad, R) -> (..., d_out, R)."""
        if self.out_slices is None or all(self.out_slices):
            return M
        chunks = M.chunk(sum(self.out_slices), dim=-2)
        zero = torch.zeros_like(chunks[0])
        it = iter(chunks)
        return torch.cat([next(it) if on else zero for on in self.out_slices], dim=-2)

    @torch.no_grad()
    def lora_pair(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``task``'s update as a plain LoRA ``(B, A)`` with ΔW_t = B @ A, scaling folded into B.

        B is (d_out, R) over the full base output (zero rows for slices that do not adapt), A is
        (R, d_in); R = r for mtl_lora, lora and task_lora, n·r for multi_lora and moe_lora. fp32, or fp64 for a
        float64 adapter: the pair :meth:`delta_weight` multiplies (rounded to fp32, a float64 adapter's export was
        folded ~1e-8 off ``merge``).
        """
        return self._pair(task, torch.promote_types(self.lora_B.dtype, torch.float32))

    def _pair(self, task: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        self.restore_frozen_rows()
        with autocast_off(self.lora_B.device.type):   # the asked dtype under an active autocast too
            return self._full_rows(self.task_matrices((task,))[0]).to(dtype), self.a_matrix(task).to(dtype)

    @torch.no_grad()
    def delta_weight(self, task: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """ΔW_t = M_t A_t as a dense (d_out, d_in) matrix, for merging: fp32, or fp64 for a float64 adapter or
        ``dtype`` (the base weight's: fp32 adapters on a float64 base multiply in fp64, as the routed forward does,
        not in fp32, whose rounding left merged outputs off routed ones by that much)."""
        wide = torch.promote_types(self.lora_B.dtype, torch.float32)
        B, A = self._pair(task, wide if dtype is None or not dtype.is_floating_point
                          else torch.promote_types(wide, dtype))
        with autocast_off(B.device.type):
            return B @ A

    # Acting on activations ------------------------------------------------------------------
    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               rows: slice | None = None) -> torch.Tensor:
        """``F.linear(x, weight, bias) + ΔW x`` for the routed task(s); ``rows`` selects part of ΔW's
        output (one part of a packed q/k/v projection). The base product is taken over 2-D rows so that
        its output is a fresh tensor the adapter term is added to in place."""
        out = F.linear(x.reshape(-1, x.shape[-1]), weight, bias)
        return self.add_delta(x, out, rows).view(*x.shape[:-1], out.shape[-1])

    def _formed_matrix(self, route: Route, index: slice | torch.Tensor,
                       dtype: torch.dtype) -> tuple[torch.Tensor, Callable[[bool], torch.Tensor] | None] | None:
        """This layer's M_t of the route's present tasks as its group formed them, and what forms them again for
        backward (:meth:`.formation.Formation.matrix`); None on the per-layer path (not attached; compiled -- the
        compiler fuses that path --; an ``nn.DataParallel`` replica, which holds copies of the tensors)."""
        # (``__dict__``: a missing name read through nn.Module.__getattr__ raises, ~3 us a layer on every forward)
        if self.formation is None or torch.compiler.is_compiling() or self.__dict__.get("_is_replica", False):
            return None
        if torch._C._functorch.peek_interpreter_stack() is not None:   # inside torch.func.grad / vjp / jacrev:
            return None   # its tensors have no storage to key the group on; the per-layer path names the limit
        return self.formation.matrix(self, route.present, index, dtype)

    def add_delta(self, x: torch.Tensor, out: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """``out + ΔW x`` for the routed task(s), ``out`` being the base output as (rows of x, d_out).

        Updates ``out`` in place when it is a fresh tensor (see :meth:`linear`), else works on a copy.
        """
        router = self.router
        if router is None:
            return out
        route = router.resolve(self.layer_name)
        if route is None:
            return out
        if self.packed_rows and x.dim() == 3 and x.shape[0] == 1:
            x = x[0]   # a packed tower's one sequence as a batch of one (Pixtral's): its rows
        bd = self.batch_dim if x.dim() > 2 else 0   # 2-D rows (pooled features) are batch-first
        if route.task is None and self.__dict__.get("_is_replica", False):   # its chunk's rows are not the route's
            raise RoutingError(
                f"{self.layer_name} is an nn.DataParallel replica, which sees its chunk of the batch, not the "
                f"{route.batch_size} rows the per-sample route was made for (a chunk the route's size or a row's "
                "images ran other rows' tasks): per-sample routes need DistributedDataParallel (torchrun), or "
                "route one task for the whole batch around the DataParallel call")
        if route.batch_size is not None:
            got = x.shape[bd] if x.dim() > 1 else 1
            if got != route.batch_size and route.wide is not None and got == route.wide.batch_size:
                route = route.wide  # generation: k rows per routed row (adapters/generation.py)
            elif got != route.batch_size and route.packed:   # the merger of a packed tower: k patches a row
                route = route.packed_at(got, router)
            elif got != route.batch_size and not (self.packed_rows and x.dim() == 2
                                                    and (route.task is not None or got % route.batch_size == 0)):
                replica = (" -- this layer is an nn.DataParallel replica, which sees its chunk of the batch: "
                           "per-sample routes need DistributedDataParallel (torchrun)"
                           if getattr(self, "_is_replica", False) else "")
                raise RoutingError(
                    f"{self.layer_name}: routed {route.batch_size} task ids but the batch here has {got} "
                    f"samples (dim {bd} of input shape {tuple(x.shape)}); route one id per sample{replica}"
                )
        xd = self._modules["dropout"](x.reshape(-1, x.shape[-1]))   # (nn.Module.__getattr__: ~1 us a name)
        if self.method == "mtl_lora":  # one task or several: see update_mtl_rows
            z = F.linear(xd, self.a_matrix().to(xd.dtype))
            if route.task is not None:
                tasks, n_batch = route.task, 1
            elif route.packed and not torch.compiler.is_compiling():   # images of different sizes: each image's run
                tasks, n_batch = route.plan(x.device), route.batch_size   # of rows (compiled: each row's position)
            else:  # the present tasks' M_t only; each sample's position among them
                if route.packed:   # compiled: route scopes make a packed route's positions from here on
                    router.packed_positions = True
                tasks, n_batch = route.sample_positions(x.device), route.batch_size
            present = route.present_index(x.device)
            formed = self._formed_matrix(route, present, z.dtype)
            if formed is not None:   # formed with the other layers' (adapters/formation.py)
                M, again = formed
                if again is not None and (rows is not None or not all(self.out_slices or ())):
                    again = partial(_packed_again, again, self._full_rows, rows)
                update, args = update_formed_rows, (_packed(M, self._full_rows, rows),
                                                    0 if route.task is not None else tasks, n_batch, self.scaling,
                                                    again)
            else:
                B = self._full_rows(self.lora_B)
                if rows is not None:
                    B = B[:, rows]
                lam = self.lora_lambda if self.lambda_type != "none" else None
                update, args = update_mtl_rows, (self.lora_w, lam, B, tasks, n_batch, self.scaling, self.temperature,
                                                 None if route.task is not None else present)
        else:
            if route.task is not None or not self.task_dependent:  # one matrix for every row: one LoRA
                t = route.task if route.task is not None else 0
                z = F.linear(xd, self.a_matrix(t).to(x.dtype))
                M = self._full_rows(self.task_matrices((t,), scaled=False))
                plan, cols, n_batch = WHOLE_BATCH, 0, 1  # the rows' layout does not matter here
            else:
                index = route.present_index(x.device)
                M = self._full_rows(self.task_matrices(route.present, index, scaled=False))  # (P, d_out, R): once
                if self.method == "task_lora":  # one A_t per task: z holds each present task's block of columns
                    z = F.linear(xd, _task_rows(self.lora_A, index).reshape(-1, self.d_in).to(xd.dtype))
                    cols = self.r
                else:
                    z = F.linear(xd, self.a_matrix().to(xd.dtype))
                    cols = 0
                if torch.compiler.is_compiling():
                    # Each sample's position in M (rows.update_rows): a graph input where the plan's slices would
                    # be constants (a graph per mix of rows); from here on, route scopes make it on the host.
                    router.reads_positions = True
                    if route.packed:
                        router.packed_positions = True
                    plan = route.sample_positions(x.device)
                else:
                    plan = route.plan(x.device)
                n_batch = route.batch_size
            if rows is not None:
                M = M[:, rows]
            update, args = update_rows, (M.to(z.dtype), plan, cols, n_batch, self.scaling)
        if n_batch > 1 and bd and x.dim() > 2:  # sequence-first rows: work batch-first on a copy
            lead = x.shape[:-1]
            out3 = out.view(*lead, -1).movedim(bd, 0).contiguous()
            res = update(out3, z.view(*lead, -1).movedim(bd, 0), *args)
            return res.movedim(0, bd).reshape(out.shape)
        return update(out, z, *args)   # (no partial built per call: ~1 us a layer)


def _packed(M: torch.Tensor, full_rows: Callable[[torch.Tensor], torch.Tensor], rows: slice | None) -> torch.Tensor:
    """M over the layer's whole output (zero rows for slices of a packed projection that do not adapt), or the
    ``rows`` one part of it uses."""
    M = full_rows(M)
    return M if rows is None else M[:, rows]


def _packed_again(again: Callable[[bool], torch.Tensor], full_rows: Callable[[torch.Tensor], torch.Tensor],
                  rows: slice | None, graph: bool) -> torch.Tensor:
    return _packed(again(graph), full_rows, rows)


def _task_rows(t: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    """``t[index]``, or ``t`` itself when the index covers every row (no index op in the graph)."""
    if isinstance(index, slice) and index.start in (0, None) and index.stop in (t.shape[0], None) \
            and index.step in (1, None):
        return t
    return t[index]


def _task_index(tasks: tuple[int, ...], device: torch.device) -> slice | torch.Tensor:
    """Index of the task rows: a slice when they are consecutive (the usual case: no host-to-device
    copy in the forward pass), else an index tensor."""
    if all(b == a + 1 for a, b in zip(tasks, tasks[1:])):
        return slice(tasks[0], tasks[-1] + 1)
    return torch.tensor(tasks, device=device)


class KeepsReplaced(nn.Module):
    """A module that replaced another, kept as ``original`` (in ``__dict__``, not a submodule) for ``unload`` and
    sharing its parameters: one replaced here (``load_state_dict(assign=True)``, a ``.to()`` that makes new
    parameters) is replaced there too, so the kept module holds no tensor the model no longer uses."""

    def share_parameters(self) -> None:
        """Point ``original``'s parameters at this module's of the same names."""
        original = self.__dict__.get("original")
        for name in original._parameters if original is not None else ():
            if name in self._parameters:
                original._parameters[name] = self._parameters[name]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        out = super()._apply(fn, recurse)
        self.share_parameters()
        return out

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.share_parameters()


class LoRALinear(KeepsReplaced, AdapterBank):
    """An ``nn.Linear`` plus adapters. Keeps the base ``weight``/``bias`` under their original names."""

    def __init__(self, base: nn.Linear, cfg: MTLLoRAConfig, out_slices: tuple[bool, ...] | None = None):
        super().__init__(base.in_features, base.out_features, cfg, out_slices, device=base.weight.device,
                         dtype=adapter_dtype(base.weight.dtype))
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.__dict__["original"] = base   # (not a submodule) what ``unload`` puts back: its class and hooks kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.weight, self.bias)

    def adapted_weights(self) -> list[tuple[AdapterBank, nn.Parameter]]:
        """(bank, base weight it updates) pairs, for merging: this layer and its ``weight``."""
        return [(self, self.weight)]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}, r={self.r}"
