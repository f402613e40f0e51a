"""Forming the M_t of many ``mtl_lora`` layers at once: the per-layer formula (:func:`.rows.mtl_matrices`), batched.

An ``mtl_lora`` layer's small matrices -- π_t = softmax(w_t / τ), B̄_t = Σ_i π_ti B_i, M_t = B̄_t Λ_t -- and their
gradients cost ~30 tiny operators per layer, forward and backward. Where each operator's dispatch costs
more than its arithmetic (a GPU at LoRA sizes is launch-bound) they made an ``mtl_lora`` training step 1.6x a
``lora`` step. Here the layers whose adapter tensors have the same shapes form theirs together: one autograd node
(:class:`_FormGroup`) stacks their w, Λ and B, forms every layer's M_t of the present tasks in a few batched
operators, and in backward forms all their gradients of w, Λ and B the same way. Each layer then adds its rows
as a ``lora`` layer does (:func:`.rows.update_formed_rows`: one GEMM; it keeps z for backward, and its backward
finds M_t formed again for the whole group, once).

Which layers form together: those that have run under the same present tasks and grad mode before (a layer's
first forward under a new mix of tasks forms its M_t alone, in a node of the same kind, and makes it a member),
grouped by the shapes, dtypes and device of their tensors, τ and Λ's type. A layer that never runs for those
tasks (a decoder that retrieval does not use) is never an input of the node and gets no gradient, as on the
per-layer path; one that ran gets gradients, zero where its output did not reach the loss (as an input of a node
the loss reaches, DDP's search for unused parameters waits for them).

With gradients, the formed M_t are handed to each member once (a layer's next forward forms them again, also where
a member did not run and left the group open) and let go once every member has taken its own (they do not add to
the activations a forward keeps); otherwise (evaluation, a generation's decoding steps) they are kept, one set per
signature, until other tasks are routed, the route scope that formed them closes (outside any scope: the forward
ends), a forward with gradients runs (a fused optimizer step or a write through ``p.data`` counts no version), or a
parameter is written to in place or replaced (version counter, storage, strides, dtype, identity: ``load_state_dict``,
``grow_tasks``, ``p.data = p.data.t()``). A node is never reused after a backward pass went through it: an optimizer
step may follow, and a fused one writes the parameters without counting a version; one formed inside a backward pass
(a checkpointed region's recomputation, whose node's backward never runs) is never used outside that pass. The node
saves no tensors: it reads the parameters back in backward and refuses ones modified in place or replaced since.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from .rows import autocast_off, mixture

__all__ = ["Formation"]


def _params(bank: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(w, Λ or None, B), read from the module's parameter dict (``nn.Module.__getattr__`` costs 0.6 µs a name,
    read here on every forward of every layer); by attribute where they are not registered parameters."""
    ps = bank._parameters
    w, lam, B = ps.get("lora_w"), ps.get("lora_lambda"), ps.get("lora_B")
    if w is None or B is None or (lam is None and bank.lambda_type != "none"):
        return bank.lora_w, getattr(bank, "lora_lambda", None), bank.lora_B
    return w, lam, B


def _versions(params: tuple[torch.Tensor | None, ...]) -> tuple[tuple, ...]:
    """What changes when a tensor is written to in place (its version counter) or given new storage or another view
    of its own (``.data =``: the address, which no other tensor gets while :class:`_Inputs` holds the storage; the
    strides, where a transpose of a square matrix keeps the address; the dtype, where ``p.data.view(torch.float16)``
    of a bfloat16 tensor keeps address, shape and strides)."""
    w, lam, B = params   # always one layer's (w, Λ, B): spelled out (read for every layer, forward and backward)
    return ((w._version, w.data_ptr(), w.stride(), w.dtype),
            (-1, 0, (), None) if lam is None else (lam._version, lam.data_ptr(), lam.stride(), lam.dtype),
            (B._version, B.data_ptr(), B.stride(), B.dtype))


def _signature(bank: Any) -> tuple:
    """What layers forming together share: every adapter tensor's shape, dtype, device and requires_grad; τ; Λ's type.
    (Read on every forward of every layer: spelled out rather than looped.)"""
    w, lam, B = _params(bank)
    return (bank.lambda_type, bank.temperature, w.shape, w.dtype, w.device, w.requires_grad, B.shape, B.dtype,
            B.device, B.requires_grad, None if lam is None else (lam.shape, lam.dtype, lam.requires_grad))


def _flags(bank: Any, w: torch.Tensor, lam: torch.Tensor | None, B: torch.Tensor) -> tuple:
    """The parts of ``bank``'s signature that can change while its tensors (``w``, ``lam``, ``B``) and their storage
    stay: Λ's type, τ, whether they require gradients, and their shapes (``p.data = p.data[:k]`` keeps the storage's
    address) -- taken when a group forms and compared by :meth:`_Group.valid_for`."""
    return (bank.lambda_type, bank.temperature, w.requires_grad, B.requires_grad,
            None if lam is None else lam.requires_grad, w.shape, B.shape, None if lam is None else lam.shape)


class _Inputs:
    """What a group's node reads in backward: the layers' tensors and their versions at forming, the present task
    rows, τ and Λ's type; and what the node and its group tell each other (the layers that took their M, and whether a
    backward pass went through). Kept apart from the group, whose formed M_t hold the node: the node must not hold
    the group back (a reference cycle through the autograd graph, which the garbage collector cannot see, kept every
    step's group and node alive)."""

    __slots__ = ("params", "versions", "storages", "present", "lambda_type", "tau", "handed", "spent", "again",
                 "parts")

    def __init__(self, banks: list[Any], present: slice | torch.Tensor) -> None:
        self.params = [_params(b) for b in banks]
        self.versions = [_versions(p) for p in self.params]
        # the storages formed from, held: data a ``p.data =`` freed could otherwise be handed to the next tensor of
        # its size, whose address, version, shape and strides would then all match
        self.storages = [t.untyped_storage() for ps in self.params for t in ps if t is not None]
        self.present, self.lambda_type, self.tau = present, banks[0].lambda_type, banks[0].temperature
        self.handed: set[int] = set()   # the layers that took their M (ran)
        self.spent = False              # a backward pass went through the node: an optimizer step may follow
        self.again: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}   # every M, formed again for backward
        self.parts: tuple | None = None   # (π, B̄, Λ) of that forming: what the node's backward reads again

    def matrix_again(self, i: int, dtype: torch.dtype, graph: bool = False) -> torch.Tensor:
        """Layer i's M for its backward pass: every layer's formed once more (no graph) on the first call and kept
        until the node's own backward; ``graph`` (create_graph): layer i's alone, with its graph to the parameters."""
        if graph:
            with torch.enable_grad(), autocast_off(self.params[i][2].device.type):
                return _formed(self, [self.params[i]])[3][0].to(dtype)
        Ms = self.again.get(dtype)
        if Ms is None:
            with torch.no_grad(), autocast_off(self.params[i][2].device.type):
                formed = _formed(self, self.params)
                if self.parts is None:
                    # not M or the stacked B: only B̄ (M's size) stays until the node's backward
                    self.parts = formed[:3]
                Ms = self.again[dtype] = formed[3].to(dtype).unbind(0)
        return Ms[i]


class _Group:
    """Some layers' M_t formed together, for one set of present tasks and grad mode, in one or more dtypes.

    With gradients the formed M_t are let go once every layer has taken its own (the row updates do not keep them
    for backward, which forms them again, once per group): they do not add to the activations a forward keeps."""

    def __init__(self, banks: list[Any], present: slice | torch.Tensor) -> None:
        self.inputs = _Inputs(banks, present)
        self.position = {id(b): i for i, b in enumerate(banks)}
        # M_t without a graph (no gradients, or frozen adapters): the route scope it was formed in (0: none); with a
        # graph ``spent`` and ``handed`` guard it instead (frozen adapters under gradients were reused in every later
        # scope)
        graph = torch.is_grad_enabled() and any(t is not None and t.requires_grad for ps in self.inputs.params
                                                for t in ps)
        self.scope = None if graph else banks[0].router.scope
        self.formed: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}
        self.done = False   # every layer took its M: a later forward forms them again
        # formed inside a backward pass (a checkpointed region's recomputation): its node's backward never runs, and
        # its layers outside the region never take their M, so neither ``spent`` nor ``done`` ends it: that pass does
        self.graph = torch._C._current_graph_task_id()
        self.key: tuple | None = None     # while held (Formation._groups): its present tasks and grad mode
        self.flags: tuple | None = None   # and what of its signature a tensor's identity and storage leave open

    def valid_for(self, i: int, bank: Any, flags: tuple | None = None) -> bool:
        """Layer i's tensors are the ones formed from, unmodified. A fused optimizer step (the trainer's AdamW) or a
        write through ``p.data`` changes them without counting a version: so a node is never reused after its
        backward pass, and M_t formed without gradients (an evaluation batch, a ``generate`` call's decoding steps)
        only inside the route scope that formed them -- outside any scope (a one-task adapter runs without one)
        only within one forward -- and never after a forward with gradients (:meth:`Formation.matrix`); the next
        evaluation batch added the old M_t to a fresh A x after such a step. M_t with a graph are handed to each layer
        once: a layer asking again runs a later forward (a member that did not run left the group open, and its next
        forward, with no backward between, reused M_t a ``p.data`` write had made stale). ``flags``: the signature
        must still be the group's (:func:`_flags`; the rest of it is fixed by the tensors' identity and storage)."""
        inputs = self.inputs
        if inputs.spent or self.done or (self.graph != -1 and self.graph != torch._C._current_graph_task_id()):
            return False
        if (not self.scope and i in inputs.handed) or (self.scope is not None and bank.router.scope != self.scope):
            return False   # (a layer asking again under a graph or outside any scope: a later forward)
        (w, lam, B), (w0, lam0, B0) = _params(bank), inputs.params[i]
        if w is not w0 or lam is not lam0 or B is not B0 or _versions((w, lam, B)) != inputs.versions[i]:
            return False
        return flags is None or flags == _flags(bank, w, lam, B)

    def matrix(self, i: int, dtype: torch.dtype) -> tuple[torch.Tensor, _Inputs | None]:
        """Layer i's M in ``dtype`` (every layer's formed on the first call for a dtype), and where its backward
        finds it again (None: M has no graph, nothing to form again)."""
        Ms = self.formed.get(dtype)
        inputs = self.inputs
        if Ms is None:
            flat = [p for params in inputs.params for p in params if p is not None]
            if torch.is_grad_enabled() and any(p.requires_grad for p in flat):
                Ms = _FormGroup.apply(inputs, dtype, *flat)
            else:
                with autocast_off(flat[0].device.type):
                    Ms = _formed(inputs, inputs.params)[3].to(dtype).unbind(0)
            self.formed[dtype] = Ms
        inputs.handed.add(i)
        if Ms[i].grad_fn is None:
            return Ms[i], None
        if len(inputs.handed) == len(self.position):
            self.formed, self.done = {}, True
        return Ms[i], inputs


def _formed(inputs: _Inputs, params: list[tuple]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(π, B̄, Λ, M, B) of the layers whose ``params`` are given: (G, P, n), (G, P, d, r), (G, P, r, r) / (G, P, r) /
    None, (G, P, d, r), in the parameters' dtype, for the present task rows; and their B stacked, (G, n, d, r)."""
    present = inputs.present
    W = torch.stack([w for w, _, _ in params])
    W = W[:, present] if isinstance(present, slice) else W.index_select(1, present)
    pi = mixture(W, inputs.tau)
    B = torch.stack([b for _, _, b in params])
    G, n, d, r = B.shape
    Bbar = torch.bmm(pi, B.view(G, n, d * r)).view(G, pi.shape[1], d, r)
    if inputs.lambda_type == "none":
        return pi, Bbar, None, Bbar, B
    L = torch.stack([lam for _, lam, _ in params])
    L = L[:, present] if isinstance(present, slice) else L.index_select(1, present)
    return pi, Bbar, L, (Bbar * L[:, :, None, :] if L.dim() == 3 else torch.matmul(Bbar, L)), B


class _FormGroup(torch.autograd.Function):
    """Every layer of a group's M (P, d, r) from all their (w, Λ, B), as one node; see the module docstring."""

    @staticmethod
    def forward(ctx, inputs: _Inputs, dtype: torch.dtype, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast_off(flat[0].device.type):
            M = _formed(inputs, inputs.params)[3].to(dtype)
        ctx.inputs = inputs
        ctx.set_materialize_grads(False)
        return tuple(M.unbind(0))

    @staticmethod
    def backward(ctx, *gMs: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        inputs = ctx.inputs
        parts = inputs.parts   # the group formed again by its layers' backward (matrix_again), if it was
        inputs.spent, inputs.again, inputs.parts = True, {}, None
        if [_versions(p) for p in inputs.params] != inputs.versions:
            raise RuntimeError("mtl_lora: an adapter tensor was modified in place between the forward pass that formed "
                               "its M_t and this backward pass (an optimizer step before backward?)")
        # A layer that ran gets gradients, zero where its output did not reach the loss (all of the node's inputs
        # are reachable from the loss, so DDP's search for unused parameters waits for them); one that did not run
        # gets none, as on the per-layer path (a reentrant checkpoint's recomputation hands out a block's only).
        used = [i for i, g in enumerate(gMs) if g is not None or i in inputs.handed]
        grads: list[torch.Tensor | None] = [None] * (2 + sum(p is not None for ps in inputs.params for p in ps))
        some = next((g for g in gMs if g is not None), None)
        if some is None:
            return tuple(grads)
        params = [inputs.params[i] for i in used]
        with autocast_off(some.device.type):
            gM = torch.stack([some.new_zeros(some.shape) if gMs[i] is None else gMs[i] for i in used])
            gM = gM.to(params[0][2].dtype)
            if torch.is_grad_enabled():   # create_graph: the gradients as a graph, for a second derivative
                got = _grads_with_graph(inputs, params, gM)
            else:   # every layer ran: the forming its layers' backward made is this one's (same inputs, same ops)
                got = _grads(inputs, params, gM, parts if len(used) == len(inputs.params) else None)
        rows = [None if g is None else g.unbind(0) for g in got]   # layer j's gradient: rows[k][j] (as g[j])
        where = dict(zip(used, range(len(used))))
        slot = 2
        for i, ps in enumerate(inputs.params):
            j = where.get(i)
            for k, p in enumerate(ps):
                if p is None:
                    continue
                if j is not None and rows[k] is not None and p.requires_grad:
                    grads[slot] = rows[k][j]
                slot += 1
        return tuple(grads)


def _grads(inputs: _Inputs, params: list[tuple], gM: torch.Tensor,
           parts: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The gradients of (w, Λ, B) stacked over ``params``' layers given their M's gradients ``gM`` (G, P, d, r); w's
    and Λ's over every task row (zero for tasks not present). ``parts``: (π, B̄, Λ) of ``_formed(inputs, params)``, if
    formed already."""
    if parts is None:
        pi, Bbar, L, _, B = _formed(inputs, params)
    else:
        (pi, Bbar, L), B = parts, torch.stack([b for _, _, b in params])
    G, P, d, r = gM.shape
    glam_p = None
    if L is None:
        gBbar = gM
    elif L.dim() == 3:   # diagonal Λ
        gBbar = gM * L[:, :, None, :]
        glam_p = (gM * Bbar).sum(2)
    else:
        gBbar = torch.matmul(gM, L.mT)
        glam_p = torch.matmul(Bbar.mT, gM)
    gflat = gBbar.reshape(G, P, d * r)
    gB = torch.bmm(pi.mT, gflat).view(B.shape)
    gpi = torch.bmm(gflat, B.view(G, B.shape[1], d * r).mT)
    gw_p = torch._softmax_backward_data(gpi, pi, -1, pi.dtype).div_(inputs.tau)
    T = params[0][0].shape[0]
    return _all_tasks(gw_p, T, inputs.present), (None if glam_p is None else _all_tasks(glam_p, T, inputs.present)), gB


def _grads_with_graph(inputs: _Inputs, params: list[tuple], gM: torch.Tensor) -> tuple:
    """:func:`_grads` by autograd through the formula, keeping the graph (a gradient penalty's second derivative)."""
    flat = [p for ps in params for p in ps if p is not None and p.requires_grad]
    with torch.enable_grad():
        M = _formed(inputs, params)[3]
        got = iter(torch.autograd.grad(M, flat, gM, create_graph=True, allow_unused=True))
    per_layer = [[next(got) if p is not None and p.requires_grad else None for p in ps] for ps in params]
    return tuple(None if any(g is None for g in col) else torch.stack(col) for col in zip(*per_layer))


def _all_tasks(x: torch.Tensor, T: int, present: slice | torch.Tensor) -> torch.Tensor:
    """(G, P, ...) gradients of the present task rows as (G, T, ...), zero for the other tasks."""
    if isinstance(present, slice) and present.start in (0, None) and present.stop in (T, None):
        return x
    full = x.new_zeros((x.shape[0], T, *x.shape[2:]))
    if isinstance(present, slice):
        full[:, present] = x
        return full
    return full.index_copy_(1, present, x)


class Formation:
    """The M_t-forming state of one attached model (``attach`` gives every ``mtl_lora`` bank a reference to it).

    :meth:`matrix` gives a layer its M_t formed with its group's (alone the first time the layer runs under its
    present tasks and grad mode).
    """

    def __init__(self) -> None:
        # (present tasks, grad mode, inference mode) -> signature -> the layers that ran under them, by id
        self._members: dict[tuple, dict[tuple, dict[int, Any]]] = {}
        # signature -> (key, its formed group): one group per signature, the last formed
        self._groups: dict[tuple, tuple[tuple, _Group]] = {}
        # id of a layer -> the held group it is a member of: found without forming the layer's signature again
        self._hot: dict[int, _Group] = {}

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) starts afresh: members and formed matrices are the original's."""
        return {"_members": {}, "_groups": {}, "_hot": {}}

    def matrix(self, bank: Any, present: tuple[int, ...], index: slice | torch.Tensor,
               dtype: torch.dtype) -> tuple[torch.Tensor, Callable[[bool], torch.Tensor] | None]:
        """``bank``'s M (len(present), d, r) in ``dtype`` for the tasks ``present`` (``index``: their task rows),
        formed with its group's; alone the first time ``bank`` runs under them (it is a member from then on). With
        it, what forms M again for the layer's backward (given create_graph), or None where M has no graph.

        The first time is formed by the same kind of node (a group of one), so that a layer saves the same tensors
        for backward whichever group formed its M_t: a checkpointed forward's recomputation, which may find the
        layer a member when its first forward did not, must save what that forward saved."""
        key = (present, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        group = self._hot.get(id(bank))   # the held group of the layer's signature when it was formed
        if group is not None and group.key == key:
            i = group.position[id(bank)]
            if group.valid_for(i, bank, group.flags):   # (and the signature is still the group's)
                return _with_again(*group.matrix(i, dtype), i, dtype)
        sig = _signature(bank)
        held = self._groups.get(sig)
        if key[1] and held is not None and not held[0][1]:   # a forward with gradients: an optimizer step, which
            self._release(self._groups.pop(sig)[1])            # may write without a version, can follow it
            held = None
        members = self._members.setdefault(key, {}).setdefault(sig, {})
        if id(bank) not in members:
            members[id(bank)] = bank
            return _with_again(*_Group([bank], index).matrix(0, dtype), 0, dtype)
        group = held[1] if held is not None and held[0] == key else None
        i = None if group is None else group.position.get(id(bank))
        if i is None or not group.valid_for(i, bank):
            group = _Group(list(members.values()), index)
            if held is not None:
                self._release(held[1])
            self._groups[sig] = (key, group)
            group.key, group.flags = key, _flags(bank, *_params(bank))
            self._hot.update(dict.fromkeys(group.position, group))
            i = group.position[id(bank)]
        return _with_again(*group.matrix(i, dtype), i, dtype)

    def release(self) -> None:
        """Let go of every held group (their formed M_t and the storages they formed from): the layers' tensors were
        converted (``.to()``, ``.half()``, ``.cpu()``), so a held group, keyed by the old dtype or device, would keep
        the old data alive with the model."""
        self._groups.clear()
        self._hot.clear()

    def _release(self, group: _Group) -> None:
        """``group`` is no longer its signature's held group: its layers no longer find it first."""
        for b in group.position:
            if self._hot.get(b) is group:
                del self._hot[b]


def _with_again(M: torch.Tensor, inputs: _Inputs | None, i: int,
                dtype: torch.dtype) -> tuple[torch.Tensor, Callable[[bool], torch.Tensor] | None]:
    return M, (None if inputs is None else partial(_again, inputs, i, dtype))


def _again(inputs: _Inputs, i: int, dtype: torch.dtype, graph: bool) -> torch.Tensor:
    return inputs.matrix_again(i, dtype, graph)
