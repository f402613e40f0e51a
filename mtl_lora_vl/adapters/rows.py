"""Adding each task's small matrix to that task's rows of a batch: ``out[rows_t] += z[rows_t] M_tᵀ``.

The layers (:mod:`.layers`) form z = A x and the per-task M_t; this module applies them to the rows a
:class:`~mtl_lora_vl.adapters.routing.Route` plan names, in place on the fresh base output, so that a
batch of one task costs one LoRA's fused addmm (without the copy of the output an out-of-place addmm
makes) and a mixed batch costs the same: no mask, no spread of z over tasks, no copy of the output in
forward or backward. A plan is ``((p, rows), ...)``: ``p`` indexes M, ``rows`` is a slice of samples
(one run of rows) or a LongTensor of sample indices (gathered). A mixed batch of ``mtl_lora`` takes no
plan: :func:`update_mixed_rows` applies every sample's task in one batched product and one GEMM.
"""

from __future__ import annotations

import contextlib

import torch

#: The plan of a batch whose rows all use the same matrix.
WHOLE_BATCH = ((0, slice(None)),)


def update_rows(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor, plan: tuple, cols: int, n_batch: int,
                scale: float = 1.0) -> torch.Tensor:
    """``out + scale · z M_pᵀ`` on each plan entry's rows of the ``n_batch`` samples (batch-first), in place.

    In place it is one LoRA's fused addmm without the copy of ``out`` that an out-of-place addmm makes;
    ``scale`` rides on the GEMM (no kernel of its own). ``out`` must be batch-first and a fresh tensor
    (not a view), else a copy is updated. Under torch.compile the out-of-place form is traced instead
    (the compiler fuses it).
    """
    if torch.compiler.is_compiling():
        return _rows_out_of_place(out, z, M, plan, cols, n_batch, scale)
    if not out.is_contiguous() or out._is_view():
        out = out.clone(memory_format=torch.contiguous_format)
    if torch.is_grad_enabled() and (out.requires_grad or z.requires_grad or M.requires_grad):
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
        z, M = ctx.saved_tensors
        plan, cols, n_batch, scale = ctx.plan, ctx.cols, ctx.n_batch, ctx.scale
        d = g.shape[-1]
        g2, z2 = g.reshape(-1, d), z.reshape(-1, z.shape[-1])
        per = g2.shape[0] // n_batch
        gz = gM = None
        if ctx.needs_input_grad[1]:  # task_lora: other tasks' columns get no gradient, so start at zero
            gz = (torch.zeros if cols else torch.empty)(z2.shape, dtype=z.dtype, device=z.device)
        if ctx.needs_input_grad[2]:
            gM = torch.empty_like(M, memory_format=torch.contiguous_format)
        started: set[int] = set()
        for p, rows in plan:
            if isinstance(rows, slice):
                span = _span(rows, per, g2.shape[0])
                gs, zs = _part(g2, span), _zcols(_part(z2, span), p, cols)
                if gz is not None and not cols:
                    _part(gz, span).addmm_(gs, M[p], beta=0, alpha=scale)
                elif gz is not None:
                    _zcols(_part(gz, span), p, cols).copy_(torch.mm(gs, M[p]).mul_(scale))
            else:
                gs = g2.view(n_batch, per, d).index_select(0, rows).view(-1, d)
                zs = _zcols(z2.view(n_batch, per, -1).index_select(0, rows), p, cols).reshape(-1, M.shape[-1])
                if gz is not None:
                    part = torch.mm(gs, M[p]).mul_(scale).view(-1, per, zs.shape[-1])
                    _zcols(gz.view(n_batch, per, -1), p, cols).index_copy_(0, rows, part)
            if gM is not None:  # beta=0 the first time: the empty memory is ignored, not added
                gM[p].addmm_(gs.t(), zs, beta=1 if p in started else 0, alpha=scale)
                started.add(p)
        return g, (gz.view(z.shape) if gz is not None else None), gM, None, None, None, None


def _rows_out_of_place(out, z, M, plan, cols, n_batch, scale) -> torch.Tensor:
    """What :func:`_rows_add_` computes, out of place (for torch.compile, which fuses it anyway)."""
    if plan is WHOLE_BATCH:
        d_out = out.shape[-1]
        return torch.addmm(out.reshape(-1, d_out), z.reshape(-1, z.shape[-1]), M[0].t(), alpha=scale).view(out.shape)
    o3, z3 = _rows3(out, n_batch), _rows3(z, n_batch)
    for p, rows in plan:
        zs = _zcols(z3[rows] if isinstance(rows, slice) else z3.index_select(0, rows), p, cols)
        idx = torch.arange(rows.start, rows.stop, device=out.device) if isinstance(rows, slice) else rows
        o3 = o3.index_add(0, idx, torch.matmul(zs, M[p].t()), alpha=scale)
    return o3.reshape(out.shape)


# ---------------------------------------------------------------------------------------- mixed MTL-LoRA rows

def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off for a small computation in explicit dtypes; no context at all when it is off
    already (entering one costs more than the math of a per-layer adapter matrix)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def update_mixed_rows(out: torch.Tensor, z: torch.Tensor, w: torch.Tensor, lam: torch.Tensor, Bc: torch.Tensor,
                      tasks: torch.Tensor, n_batch: int, scale: float, tau: float) -> torch.Tensor:
    """``out + scale · Bc K_{t(i)} z_i`` for each sample i of a batch of several tasks, in place.

    MTL-LoRA's update ``Σ_k π_tk B_k Λ_t z`` (π_t = softmax(w_t / τ)) split so that nothing d_out-sized is
    formed per task: ``K_t = [π_t1 Λ_t; …; π_tn Λ_t]`` (n·r × r) is tiny, ``v = z K_tᵀ`` (n·r columns per
    row) is one batched product over the samples, and ``v Bcᵀ`` with ``Bc = [B_1 | … | B_n]`` (d_out × n·r)
    is one GEMM into the whole output. A mixed batch in any row order thus costs a fixed handful of
    operators per layer (no loop over runs of rows, no gather of the output), and π, K and their gradients
    are formed inside one autograd node: this matters where each operator's dispatch costs more than its
    arithmetic (a CPU; LLaVA's few long rows). ``w`` (T, n) and ``lam`` (T, r, r) are in the parameters'
    dtype, ``Bc`` in the activations'; ``tasks`` is each of the ``n_batch`` samples' task index (a
    LongTensor on out's device).
    """
    if torch.compiler.is_compiling():
        v = torch.bmm(z.reshape(n_batch, -1, z.shape[-1]), _mix(w, lam, tau).index_select(0, tasks).to(z.dtype).mT)
        return torch.addmm(out.reshape(-1, out.shape[-1]), v.reshape(-1, v.shape[-1]), Bc.t(),
                           alpha=scale).view(out.shape)
    if not out.is_contiguous() or out._is_view():
        out = out.clone(memory_format=torch.contiguous_format)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (out, z, w, lam, Bc)):
        return _MixedRowsUpdate.apply(out, z, w, lam, Bc, tasks, n_batch, scale, tau)
    _mixed_add_(out, z, _mix(w, lam, tau).index_select(0, tasks).to(z.dtype), Bc, n_batch, scale)
    return out


def _mix(w: torch.Tensor, lam: torch.Tensor, tau: float, pi: torch.Tensor | None = None) -> torch.Tensor:
    """K_t = [π_t1 Λ_t; …; π_tn Λ_t] for every task: (T, n·r, r)."""
    pi = torch.softmax(w / tau, dim=-1) if pi is None else pi
    return (pi[:, :, None, None] * lam[:, None]).view(w.shape[0], -1, lam.shape[-1])


def _mixed_add_(out, z, Ks, Bc, n_batch, scale) -> None:
    v = torch.bmm(z.reshape(n_batch, -1, z.shape[-1]), Ks.mT)  # (n_batch, rows per sample, n·r)
    out.view(-1, out.shape[-1]).addmm_(v.view(-1, v.shape[-1]), Bc.t(), alpha=scale)


class _MixedRowsUpdate(torch.autograd.Function):
    """:func:`update_mixed_rows` as one autograd node: out's gradient passes through untouched (no copy);
    saves z, π, Λ, the samples' K rows and Bc (no n·r-wide activation: v is recomputed in backward, one
    batched product). Computed outside autocast in the dtypes given (the layer casts Bc), so backward
    sees the dtypes forward used."""

    @staticmethod
    def forward(ctx, out, z, w, lam, Bc, tasks, n_batch, scale, tau):
        with autocast_off(out.device.type):
            pi = torch.softmax(w / tau, dim=-1)
            Ks = _mix(w, lam, tau, pi).index_select(0, tasks).to(z.dtype)  # (n_batch, n·r, r)
            _mixed_add_(out, z, Ks, Bc, n_batch, scale)
        ctx.mark_dirty(out)
        ctx.save_for_backward(z, pi, lam, Ks, Bc, tasks)
        ctx.n_batch, ctx.scale, ctx.tau = n_batch, scale, tau
        return out

    @staticmethod
    def backward(ctx, g):
        z, pi, lam, Ks, Bc, tasks = ctx.saved_tensors
        n_batch, scale = ctx.n_batch, ctx.scale
        need_z, need_w, need_lam, need_b = (ctx.needs_input_grad[i] for i in (1, 2, 3, 4))
        g2 = g.reshape(-1, g.shape[-1])
        z3 = z.reshape(n_batch, -1, z.shape[-1])
        gz = gw = glam = gBc = None
        if need_z or need_w or need_lam:
            gv = torch.addmm(g2.new_empty(g2.shape[0], Bc.shape[1]), g2, Bc, beta=0, alpha=scale)
            gv3 = gv.view(n_batch, -1, gv.shape[-1])
            if need_z:
                gz = torch.bmm(gv3, Ks).view(z.shape)
            if need_w or need_lam:
                T, n, r = pi.shape[0], pi.shape[1], lam.shape[-1]
                gKs = torch.bmm(gv3.mT, z3).to(pi.dtype)  # (n_batch, n·r, r)
                gK = gKs.new_zeros(T, n, r * r).index_add_(0, tasks, gKs.view(n_batch, n, r * r))
                if need_lam:  # Σ_i π_ti gK_ti
                    glam = torch.bmm(pi[:, None, :], gK).view(lam.shape)
                if need_w:  # gπ_ti = <gK_ti, Λ_t>, then softmax(w / τ)'s backward
                    gpi = torch.bmm(gK, lam.reshape(T, r * r, 1)).view(T, n)
                    gw = torch._softmax_backward_data(gpi, pi, -1, pi.dtype).div_(ctx.tau)
        if need_b:
            v = torch.bmm(z3, Ks.mT)
            gBc = torch.addmm(g2.new_empty(g2.shape[1], v.shape[-1]), g2.t(), v.view(-1, v.shape[-1]),
                              beta=0, alpha=scale)
        return g, gz, gw, glam, gBc, None, None, None, None
