"""Adding each task's small matrix to that task's rows of a batch: ``out[rows_t] += z[rows_t] M_tᵀ``.

The layers (:mod:`.layers`) form z = A x and the per-task M_t; this module applies them to the rows a
:class:`~mtl_lora_vl.adapters.routing.Route` plan names, in place on the fresh base output, so that a
batch of one task costs one LoRA's fused addmm (without the copy of the output an out-of-place addmm
makes) and a mixed batch costs the same: no mask, no spread of z over tasks, no copy of the output in
forward or backward. A plan is ``((p, rows), ...)``: ``p`` indexes M, ``rows`` is a slice of samples
(one run of rows) or a LongTensor of sample indices (gathered). ``mtl_lora`` takes no plan:
:func:`update_formed_rows` adds rows from the M_t that :mod:`.formation` formed for the layer's group (an
attached model), and :func:`update_mtl_rows` forms M_t with the update in one autograd node (the per-layer
path: a layer outside an attached model, a compiled forward, an ``nn.DataParallel`` replica); either way a
mixed batch applies every sample's own M_t in one batched product.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.nn import functional as F

#: The plan of a batch whose rows all use the same matrix.
WHOLE_BATCH = ((0, slice(None)),)


def update_rows(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor, plan: tuple | torch.Tensor, cols: int,
                n_batch: int, scale: float = 1.0) -> torch.Tensor:
    """``out + scale · z M_pᵀ`` on each plan entry's rows of the ``n_batch`` samples (batch-first), in place.

    In place it is one LoRA's fused addmm without the copy of ``out`` that an out-of-place addmm makes;
    ``scale`` rides on the GEMM (no kernel of its own). ``out`` must be batch-first and a fresh tensor
    (not a view), else a copy is updated. Under torch.compile the out-of-place form is traced instead
    (the compiler fuses it), and ``plan`` may be each sample's position in M instead (a LongTensor, as
    :meth:`.routing.Route.sample_positions` gives it): one graph for every mix of rows.
    """
    if torch.compiler.is_compiling():
        if isinstance(plan, torch.Tensor):
            return _rows_by_position(out, z, M, plan, cols, n_batch, scale)
        return _rows_out_of_place(out, z, M, plan, cols, n_batch, scale)
    if not out.is_contiguous() or out._is_view():
        out = out.clone(memory_format=torch.contiguous_format)
    if torch.is_grad_enabled() and (out.requires_grad or z.requires_grad or M.requires_grad):
        if plan is WHOLE_BATCH and not cols and out.dim() == 2:
            # One matrix for every row: autograd's own in-place addmm_, which keeps what the node below keeps (z, M)
            # without a Python node's cost in forward and backward (~30 us a layer: a tenth of a host-bound step).
            return out.addmm_(z.reshape(-1, z.shape[-1]), M[0].t(), alpha=scale)
        return _TaskRowsUpdate.apply(out, z, M, plan, cols, n_batch, scale)
    return _rows_add_(out, z, M, plan, cols, n_batch, scale)


def _rows3(t: torch.Tensor, n_batch: int) -> torch.Tensor:
    """A batch-first tensor as (n_batch, rows per sample, C): a view when the layout allows."""
    return t.reshape(n_batch, -1, t.shape[-1])


def _span(rows: slice, per: int, total: int) -> slice | None:
    """A run of samples as a run of 2-D rows (``per`` rows per sample); None when it is every row."""
    a = 0 if rows.start is None else rows.start * per
    b = total if rows.stop is None else rows.stop * per
    return None if a == 0 and b == total else slice(a, b)


def _part(t2: torch.Tensor, span: slice | None) -> torch.Tensor:
    return t2 if span is None else t2[span]


def _zcols(z: torch.Tensor, p: int, cols: int) -> torch.Tensor:
    """The columns of z that task position ``p`` uses: all of them, or its own block (task_lora)."""
    return z if not cols else z[..., p * cols:(p + 1) * cols]


def _rows_add_(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor, plan: tuple, cols: int, n_batch: int,
               scale: float) -> torch.Tensor:
    """``out[rows_p] += scale · z[rows_p] M_pᵀ`` for every plan entry, in place (``out`` contiguous).

    A run of samples is a run of rows of the 2-D ``out`` and ``z``: one slice of each and one addmm_."""
    d = out.shape[-1]
    o2, z2 = out.view(-1, d), z.reshape(-1, z.shape[-1])
    per = o2.shape[0] // n_batch
    Mt = M.transpose(1, 2)  # (P, R, d_out): one view for every run
    for p, rows in plan:
        if isinstance(rows, slice):
            span = _span(rows, per, o2.shape[0])
            _part(o2, span).addmm_(_zcols(_part(z2, span), p, cols), Mt[p], alpha=scale)
        else:
            zs = _zcols(z2.view(n_batch, per, -1).index_select(0, rows), p, cols)
            o2.view(n_batch, per, d).index_add_(0, rows, torch.matmul(zs, Mt[p]), alpha=scale)
    return out


class _TaskRowsUpdate(torch.autograd.Function):
    """:func:`_rows_add_` with autograd: out's gradient passes through untouched (no copy), and z's and
    each M_p's gradients come from that task's own rows only, written in place where they belong (one
    GEMM each per run of rows). The cost is one LoRA's."""

    @staticmethod
    def forward(ctx, out, z, M, plan, cols, n_batch, scale):
        _rows_add_(out, z, M, plan, cols, n_batch, scale)
        ctx.mark_dirty(out)
        ctx.save_for_backward(z, M)
        ctx.plan, ctx.cols, ctx.n_batch, ctx.scale = plan, cols, n_batch, scale
        return out

    @staticmethod
    def backward(ctx, g):
        with autocast_off(g.device.type):   # the same GEMMs as forward's, in the same dtypes
            return _TaskRowsUpdate._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        z, M = ctx.saved_tensors
        gz, gM = _rows_grads(g, z, M, ctx.plan, ctx.cols, ctx.n_batch, ctx.scale, *ctx.needs_input_grad[1:3])
        return g, gz, gM, None, None, None, None


#: Below this many elements of out's gradient (rows x d_out) a transposed GEMM and its copy back cost more than the
#: slow R-wide form on a CPU (1 thread: neutral at 64 x 64, x0.6 at 162 x 64, x0.2 at 100 x 768).
_SMALL_TRANSPOSED_GEMM = 4096


def _rows_grads(g, z, M, plan, cols, n_batch, scale, need_z: bool, need_M: bool):
    """The gradients of z and M (None where not needed) of :func:`_rows_add_` given out's gradient ``g``: each
    from its plan entry's rows only, written in place where they belong (one GEMM each per run of rows)."""
    d = g.shape[-1]
    g2, z2 = g.reshape(-1, d), z.reshape(-1, z.shape[-1])
    per = g2.shape[0] // n_batch
    gz = gM = None
    if need_z:  # task_lora: other tasks' columns get no gradient, so start at zero
        gz = (torch.zeros if cols else torch.empty)(z2.shape, dtype=z.dtype, device=z.device)
    if need_M:
        gM = torch.empty_like(M, memory_format=torch.contiguous_format)
    wide_last = g.device.type == "cpu"   # M_p's gradient as its (R, d_out) transpose: see _m_grad_
    small = _SMALL_TRANSPOSED_GEMM // d   # (fewer rows than this: the copy back costs more than it saves)
    started: set[int] = set()
    for p, rows in plan:
        if isinstance(rows, slice):
            span = _span(rows, per, g2.shape[0])
            gs, zs = _part(g2, span), _zcols(_part(z2, span), p, cols)
            if gz is not None and not cols:
                _part(gz, span).addmm_(gs, M[p], beta=0, alpha=scale)
            elif gz is not None:
                _zcols(_part(gz, span), p, cols).copy_(_z_grad(gs, M[p], scale, wide_last and gs.shape[0] > small))
        else:
            gs = g2.view(n_batch, per, d).index_select(0, rows).view(-1, d)
            zs = _zcols(z2.view(n_batch, per, -1).index_select(0, rows), p, cols).reshape(-1, M.shape[-1])
            if gz is not None:
                part = _z_grad(gs, M[p], scale, wide_last and gs.shape[0] > small).view(-1, per, zs.shape[-1])
                _zcols(gz.view(n_batch, per, -1), p, cols).index_copy_(0, rows, part)
        if gM is not None:
            _m_grad_(gM[p], gs, zs, p in started, scale, wide_last and gs.shape[0] > small)
            started.add(p)
    if gM is not None and len(started) < gM.shape[0]:   # a matrix no row used
        for p in set(range(gM.shape[0])) - started:
            gM[p].zero_()
    return (gz.view(z.shape) if gz is not None else None), gM


def _z_grad(gs: torch.Tensor, Mp: torch.Tensor, scale: float, wide_last: bool) -> torch.Tensor:
    """``scale · gs M_p`` (rows x R), a new tensor; ``wide_last`` (a CPU): formed as its (R, rows) transpose."""
    return torch.mm(Mp.t(), gs.t()).mul_(scale).t() if wide_last else torch.mm(gs, Mp).mul_(scale)


def _m_grad_(gMp: torch.Tensor, gs: torch.Tensor, zs: torch.Tensor, add: bool, scale: float, wide_last: bool) -> None:
    """``gMp (+)= scale · gsᵀ zs`` (d_out x R), added when ``add``, else written (its memory ignored). ``wide_last``
    (a CPU): formed as its (R, d_out) transpose and copied back; MKL's GEMM with an R-wide output runs 2-7x slower."""
    if not wide_last:   # beta=0 the first time: the empty memory is ignored, not added
        gMp.addmm_(gs.t(), zs, beta=1 if add else 0, alpha=scale)
        return
    part = torch.addmm(gMp.t(), zs.t(), gs, beta=0, alpha=scale)   # (beta=0: gMpᵀ only gives the shape)
    if add:
        gMp.add_(part.t())
    else:
        gMp.copy_(part.t())


def _rows_out_of_place(out, z, M, plan, cols, n_batch, scale) -> torch.Tensor:
    """What :func:`_rows_add_` computes, out of place (for torch.compile, which fuses it anyway)."""
    if isinstance(plan[0][1], slice) and plan[0][1].stop is None:   # WHOLE_BATCH (`is` would compare the bounds)
        d_out = out.shape[-1]
        return torch.addmm(out.reshape(-1, d_out), z.reshape(-1, z.shape[-1]), M[0].t(), alpha=scale).view(out.shape)
    o3, z3 = _rows3(out, n_batch), _rows3(z, n_batch)
    for p, rows in plan:
        zs = _zcols(z3[rows] if isinstance(rows, slice) else z3.index_select(0, rows), p, cols)
        idx = torch.arange(rows.start, rows.stop, device=out.device) if isinstance(rows, slice) else rows
        o3 = o3.index_add(0, idx, torch.matmul(zs, M[p].t()), alpha=scale)
    return o3.reshape(out.shape)


def _rows_by_position(out, z, M, positions, cols, n_batch, scale) -> torch.Tensor:
    """What :func:`_rows_add_` computes, out of place, each sample's M_p gathered by its position ``p`` (a tensor:
    the slices of a plan have host bounds, which the compiler bakes into the graph) and added in one batched
    product, as a mixed ``mtl_lora`` batch is; with ``cols`` (task_lora) each sample takes its own block of z."""
    if z.numel() // z.shape[-1] == n_batch:   # one row per sample (a packed tower's patches): no copy of M per row
        return _rows_by_mask(out, z, M, positions, cols, scale)
    z3 = _rows3(z, n_batch)
    if cols:
        z4 = z3.unflatten(-1, (-1, cols))   # (n_batch, rows per sample, P, cols)
        z3 = z4.gather(2, positions.view(-1, 1, 1, 1).expand(-1, z4.shape[1], 1, cols)).squeeze(2)
    return torch.baddbmm(_rows3(out, n_batch), z3, M.index_select(0, positions).mT, alpha=scale).view(out.shape)


def _rows_by_mask(out, z, M, positions, cols, scale) -> torch.Tensor:
    """:func:`_rows_by_position` for one row per sample: each row's z in its task's block of columns (zeros in the
    others), then one product with every present M_p side by side (inner size P·r; no (rows, d_out, r) gather)."""
    P, d_out, r = M.shape
    z3 = z.reshape(-1, P if cols else 1, r) * F.one_hot(positions, P).to(z.dtype)[:, :, None]
    return torch.addmm(out.reshape(-1, d_out), z3.reshape(-1, P * r), M.permute(1, 0, 2).reshape(d_out, P * r).t(),
                       alpha=scale).view(out.shape)


# ---------------------------------------------------------------------------------------- MTL-LoRA rows

def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off for a small computation in explicit dtypes; no context at all when it is off
    already (entering one costs more than the math of a per-layer adapter matrix)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def mixture(w: torch.Tensor, tau: float) -> torch.Tensor:
    """MTL-LoRA's mixing weights π_t = softmax(w_t / τ) over the n up-projections (the last dimension), formed in
    float32 at least (w_t / τ of a float16 w_t passes 65504 at small τ) and given in ``w``'s dtype."""
    return torch.softmax(w.to(torch.promote_types(w.dtype, torch.float32)) / tau, dim=-1).to(w.dtype)


def mtl_matrices(pi: torch.Tensor, B: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
    """M_t = (Σ_i π_ti B_i) Λ_t for each row t of π, unscaled: (P, d_out, r) from π (P, n), B (n, d_out, r) and
    Λ (P, r, r), (P, r) for a diagonal Λ_t, or None for Λ_t = I."""
    return _mtl_parts(pi, B, lam)[1]


def _mtl_parts(pi, B, lam) -> tuple[torch.Tensor, torch.Tensor]:
    """(B̄_t = Σ_i π_ti B_i, M_t = B̄_t Λ_t) for each row t of π."""
    Bbar = torch.mm(pi, B.reshape(B.shape[0], -1)).view(pi.shape[0], *B.shape[1:])
    if lam is None:
        return Bbar, Bbar
    return Bbar, (Bbar * lam[:, None, :] if lam.dim() == 2 else torch.bmm(Bbar, lam))


def update_mtl_rows(out: torch.Tensor, z: torch.Tensor, w: torch.Tensor, lam: torch.Tensor | None, B: torch.Tensor,
                    tasks: int | torch.Tensor, n_batch: int, scale: float, tau: float,
                    present: slice | torch.Tensor | None = None) -> torch.Tensor:
    """``out + scale · z M_tᵀ`` with MTL-LoRA's ``M_t = (Σ_i softmax(w_t / τ)_i B_i) Λ_t``, in place.

    ``tasks`` is one task index (every row is that task's: its M_t alone is formed, and one LoRA's addmm_
    adds it) or each of the ``n_batch`` samples' task as a LongTensor on out's device (batch-first rows; the
    M_t of the tasks in ``present`` -- a slice or LongTensor of task rows, None for all -- are formed, each
    sample gathers its own by its position in ``present``, and one batched product adds every sample's
    update: the arithmetic of one LoRA whatever the order of the rows), or a plan of runs of rows as
    :func:`update_rows` takes (a packed tower's images: many rows per sample, each run one addmm_, where
    gathering an M_t per row would copy it thousands of times). The small matrices (π, M_t) and their
    gradients are formed inside one autograd node, in the parameters' dtype and outside autocast, and
    recomputed in backward rather than saved: where each operator's dispatch costs more than its arithmetic
    (a CPU; small layers) this is what keeps an ``mtl_lora`` layer near a ``lora`` layer's cost. ``w`` (T, n),
    ``lam`` (T, r, r), (T, r) or None and ``B`` (n, d_out, r) are the parameters (B with zero or selected
    rows for packed projections); tasks without rows in the batch get zero gradients.
    """
    if torch.compiler.is_compiling():
        w, lam, tasks, _ = _formed(w, lam, tasks, present)
        M = mtl_matrices(mixture(w, tau), B, lam).to(z.dtype)
        if isinstance(tasks, tuple):
            return _rows_out_of_place(out, z, M, tasks, 0, n_batch, scale)
        if isinstance(tasks, int):
            return torch.addmm(out.reshape(-1, out.shape[-1]), z.reshape(-1, z.shape[-1]), M[tasks].t(),
                               alpha=scale).view(out.shape)
        return _rows_by_position(out, z, M, tasks, 0, n_batch, scale)
    if not out.is_contiguous() or out._is_view():
        out = out.clone(memory_format=torch.contiguous_format)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (out, z, w, lam, B)):
        return _MTLRowsUpdate.apply(out, z, w, lam, B, tasks, n_batch, scale, tau, present)
    w, lam, tasks, _ = _formed(w, lam, tasks, present)
    with autocast_off(out.device.type):
        _mtl_add_(out, z, mtl_matrices(mixture(w, tau), B, lam).to(z.dtype), tasks, n_batch, scale)
    return out


def _formed(w, lam, tasks, present):
    """The task rows of w and Λ whose M_t the batch needs, the rows' tasks as positions among them, and the
    index of those rows (None: all of them). One task: its own row alone."""
    if isinstance(tasks, int):
        present, tasks = slice(tasks, tasks + 1), 0
    elif isinstance(present, slice) and present.start in (0, None) and present.stop in (w.shape[0], None):
        present = None
    if present is None:
        return w, lam, tasks, None
    return _pick(w, present), (None if lam is None else _pick(lam, present)), tasks, present


def _pick(x: torch.Tensor, present: slice | torch.Tensor | None) -> torch.Tensor:
    if present is None:
        return x
    return x[present] if isinstance(present, slice) else x.index_select(0, present)


def _unformed(x: torch.Tensor, shape: torch.Size, present: slice | torch.Tensor) -> torch.Tensor:
    """A gradient of ``shape`` that holds ``x`` in the ``present`` task rows and zeros elsewhere."""
    full = x.new_zeros(shape)
    if isinstance(present, slice):
        full[present] = x
        return full
    return full.index_copy_(0, present, x)


def _mtl_add_(out, z, M, tasks, n_batch, scale) -> None:
    if isinstance(tasks, tuple):
        _rows_add_(out, z, M, tasks, 0, n_batch, scale)
    elif isinstance(tasks, int):
        out.view(-1, out.shape[-1]).addmm_(z.reshape(-1, z.shape[-1]), M[tasks].t(), alpha=scale)
    else:
        _rows3(out, n_batch).baddbmm_(_rows3(z, n_batch), M.index_select(0, tasks).mT, alpha=scale)


def _mtl_rows_grads(g, z, M, tasks, n_batch, scale, need_z: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The gradients of z (None unless ``need_z``) and of M (P, d_out, R) of :func:`_mtl_add_` given out's gradient
    ``g``; ``tasks`` as :func:`_mtl_add_` takes it (M's row, a plan, or each sample's row of M)."""
    gz = None
    if isinstance(tasks, int):  # every row is one task's, whose M_t is M's only row
        g2, z2 = g.reshape(-1, g.shape[-1]), z.reshape(-1, z.shape[-1])
        if need_z:   # beta=0: the input only gives the shape (ignored, as an empty one was), no allocation op
            gz = torch.addmm(z2, g2, M[0], beta=0, alpha=scale).view(z.shape)
        return gz, torch.addmm(M[0], g2.t(), z2, beta=0, alpha=scale)[None]
    if isinstance(tasks, tuple):
        return _rows_grads(g, z, M, tasks, 0, n_batch, scale, need_z, True)
    g3, z3 = _rows3(g, n_batch), _rows3(z, n_batch)
    if need_z:
        gz = torch.baddbmm(z3, g3, M.index_select(0, tasks), beta=0, alpha=scale).view(z.shape)
    # each sample's g_bᵀ z_b; on a CPU as its transpose, (r, d_out): MKL's bmm with an r-wide output runs 3-10x slower
    gzz = torch.bmm(z3.mT, g3).mT if g.device.type == "cpu" else torch.bmm(g3.mT, z3)
    return gz, torch.zeros_like(M).index_add_(0, tasks, gzz, alpha=scale)


def update_formed_rows(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor, tasks: int | tuple | torch.Tensor,
                       n_batch: int, scale: float,
                       again: Callable[[bool], torch.Tensor] | None = None) -> torch.Tensor:
    """``out + scale · z M_tᵀ`` in place, as :func:`update_mtl_rows` adds it, from M_t formed already (one row of
    ``M`` per present task, in z's dtype: :mod:`.formation` forms a group of layers' M_t together); ``tasks``
    as :func:`update_mtl_rows` takes it, with one task as its row of M. One node, which saves z; M too unless
    ``again`` forms it for backward (given whether backward builds a graph: create_graph)."""
    if not out.is_contiguous() or out._is_view():
        out = out.clone(memory_format=torch.contiguous_format)
    if torch.is_grad_enabled() and (out.requires_grad or z.requires_grad or M.requires_grad):
        if isinstance(tasks, int) and out.dim() == 2:
            # One task: autograd's own in-place addmm_, as a lora layer's (update_rows), without a Python node's
            # cost forward and backward (~70 us a layer on the host); it keeps its M_t (d_out x r) for backward
            # instead of forming it again: +0.03 % of a CLIP ViT-L step's activations. Its gradients scale after the
            # product (the node's inside it): the same bits where the scale is a power of two, as by default.
            return out.addmm_(z.reshape(-1, z.shape[-1]), M[tasks].t(), alpha=scale)
        return _FormedRowsUpdate.apply(out, z, M, tasks, n_batch, scale, again)
    _mtl_add_(out, z, M, tasks, n_batch, scale)
    return out


class _FormedRowsUpdate(torch.autograd.Function):
    """:func:`update_formed_rows` with autograd: out's gradient passes through untouched (no copy); z's and M's
    gradients are the ones the per-layer node forms (:func:`_mtl_rows_grads`)."""

    @staticmethod
    def forward(ctx, out, z, M, tasks, n_batch, scale, again):
        _mtl_add_(out, z, M, tasks, n_batch, scale)
        ctx.mark_dirty(out)
        per_sample = isinstance(tasks, torch.Tensor)
        ctx.save_for_backward(z, tasks if per_sample else None, M if again is None else None)
        ctx.tasks, ctx.again = (None if per_sample else tasks), again
        ctx.n_batch, ctx.scale = n_batch, scale
        return out

    @staticmethod
    def backward(ctx, g):
        z, per_sample, M = ctx.saved_tensors
        with autocast_off(g.device.type):
            if M is None:
                M = ctx.again(torch.is_grad_enabled())
            gz, gM = _mtl_rows_grads(g, z, M, per_sample if ctx.tasks is None else ctx.tasks, ctx.n_batch, ctx.scale,
                                     ctx.needs_input_grad[1])
        return g, gz, gM if ctx.needs_input_grad[2] else None, None, None, None, None


class _MTLRowsUpdate(torch.autograd.Function):
    """:func:`update_mtl_rows` as one autograd node: out's gradient passes through untouched (no copy);
    saves z, π and the parameters (M_t is recomputed in backward: one mm and one bmm of tiny matrices)."""

    @staticmethod
    def forward(ctx, out, z, w, lam, B, tasks, n_batch, scale, tau, present):
        shapes = w.shape, (None if lam is None else lam.shape)
        w_all, lam_all = w, lam
        w, lam, tasks, present = _formed(w, lam, tasks, present)
        with autocast_off(out.device.type):
            pi = mixture(w, tau)
            _mtl_add_(out, z, mtl_matrices(pi, B, lam).to(z.dtype), tasks, n_batch, scale)
        ctx.mark_dirty(out)
        per_sample = isinstance(tasks, torch.Tensor)   # else one task's row (int) or a plan (tuple): host values
        ctx.save_for_backward(z, pi, lam, B, tasks if per_sample else None, w_all, lam_all)
        ctx.tasks = None if per_sample else tasks
        ctx.present = present  # None, a slice or an index tensor of task rows (never written to)
        ctx.n_batch, ctx.scale, ctx.tau, ctx.shapes = n_batch, scale, tau, shapes
        return out

    @staticmethod
    def backward(ctx, g):
        with autocast_off(g.device.type):   # a backward called inside autocast inherits it (forward turned it off)
            return _MTLRowsUpdate._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        z, pi, lam, B, per_sample, w_all, lam_all = ctx.saved_tensors
        tasks = per_sample if ctx.tasks is None else ctx.tasks
        n_batch, scale, present = ctx.n_batch, ctx.scale, ctx.present
        if torch.is_grad_enabled():  # create_graph: π and Λ formed again from the parameters, so that a second
            lam = None if lam is None else _pick(lam_all, present)  # derivative reaches w and Λ through them
            pi = mixture(_pick(w_all, present), ctx.tau)
        need_z, need_w, need_lam, need_b = (ctx.needs_input_grad[i] for i in (1, 2, 3, 4))
        Bbar, M = _mtl_parts(pi, B, lam)
        gz, gM = _mtl_rows_grads(g, z, M.to(z.dtype), tasks, n_batch, scale, need_z)
        gM = gM.to(B.dtype)
        glam = None
        if lam is None:
            gBbar = gM
        elif lam.dim() == 2:
            gBbar = gM * lam[:, None, :]
            glam = (gM * Bbar).sum(1) if need_lam else None
        else:
            gBbar = torch.bmm(gM, lam.mT)
            glam = torch.bmm(Bbar.mT, gM) if need_lam else None
        gflat = gBbar.reshape(pi.shape[0], -1)
        gB = torch.mm(pi.t(), gflat).view(B.shape) if need_b else None
        gw = None
        if need_w:  # gπ_ti = <gB̄_t, B_i>, then softmax(w / τ)'s backward
            gpi = torch.mm(gflat, B.reshape(B.shape[0], -1).t())
            gw = torch._softmax_backward_data(gpi, pi, -1, pi.dtype).div_(ctx.tau)
        if present is not None:  # tasks without rows in the batch get zero gradients
            gw, glam = (None if x is None else _unformed(x, shape, present) for x, shape in zip((gw, glam), ctx.shapes))
        return g, gz, gw, glam, gB, None, None, None, None, None
