"""Adding each task's small matrix to that task's rows of a batch: ``out[rows_t] += z[rows_t] M_tᵀ``.

The layers (:mod:`.layers`) form z = A x and the per-task M_t; this module applies them to the rows a
:class:`~mtl_lora_vl.adapters.routing.Route` plan names, in place on the fresh base output, so that a
batch of one task costs one LoRA's fused addmm (without the copy of the output an out-of-place addmm
makes) and a mixed batch costs the same: no mask, no spread of z over tasks, no copy of the output in
forward or backward. A plan is ``((p, rows), ...)``: ``p`` indexes M, ``rows`` is a slice of samples
(one run of rows) or a LongTensor of sample indices (gathered).
"""

from __future__ import annotations

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


def _take(t3: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    return t3[rows] if isinstance(rows, slice) else t3.index_select(0, rows)


def _zcols(z: torch.Tensor, p: int, cols: int) -> torch.Tensor:
    """The columns of z that task position ``p`` uses: all of them, or its own block (task_lora)."""
    return z if not cols else z[..., p * cols:(p + 1) * cols]


def _rows_add_(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor, plan: tuple, cols: int, n_batch: int,
               scale: float) -> torch.Tensor:
    """``out[rows_p] += scale · z[rows_p] M_pᵀ`` for every plan entry, in place (``out`` contiguous)."""
    o3, z3 = _rows3(out, n_batch), _rows3(z, n_batch)
    d = o3.shape[-1]
    for p, rows in plan:
        zs = _zcols(_take(z3, rows), p, cols)
        if isinstance(rows, slice):
            o3[rows].view(-1, d).addmm_(zs.reshape(-1, zs.shape[-1]), M[p].t(), alpha=scale)
        else:
            o3.index_add_(0, rows, torch.matmul(zs, M[p].t()), alpha=scale)
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
        g3, z3 = _rows3(g, n_batch), _rows3(z, n_batch)
        d = g3.shape[-1]
        gz = gM = None
        if ctx.needs_input_grad[1]:  # task_lora: other tasks' columns get no gradient, so start at zero
            gz = (torch.zeros if cols else torch.empty)(z3.shape, dtype=z.dtype, device=z.device)
        if ctx.needs_input_grad[2]:
            gM = torch.empty_like(M, memory_format=torch.contiguous_format)
        started: set[int] = set()
        for p, rows in plan:
            gs = _take(g3, rows).reshape(-1, d)
            zs = _zcols(_take(z3, rows), p, cols)
            if gz is not None:
                if isinstance(rows, slice) and not cols:
                    gz[rows].view(-1, gz.shape[-1]).addmm_(gs, M[p], beta=0, alpha=scale)
                else:
                    part = torch.mm(gs, M[p]).mul_(scale).view(-1, gz.shape[1], zs.shape[-1])
                    if isinstance(rows, slice):
                        _zcols(gz[rows], p, cols).copy_(part)
                    else:
                        _zcols(gz, p, cols).index_copy_(0, rows, part)
            if gM is not None:  # beta=0 the first time: the empty memory is ignored, not added
                gM[p].addmm_(gs.t(), zs.reshape(-1, zs.shape[-1]), beta=1 if p in started else 0, alpha=scale)
                started.add(p)
        return g, (gz.view(z.shape) if gz is not None else None), gM, None, None, None, None


def _rows_out_of_place(out, z, M, plan, cols, n_batch, scale) -> torch.Tensor:
    """What :func:`_rows_add_` computes, out of place (for torch.compile, which fuses it anyway)."""
    if plan is WHOLE_BATCH:
        d_out = out.shape[-1]
        return torch.addmm(out.reshape(-1, d_out), z.reshape(-1, z.shape[-1]), M[0].t(), alpha=scale).view(out.shape)
    o3, z3 = _rows3(out, n_batch), _rows3(z, n_batch)
    for p, rows in plan:
        zs = _zcols(_take(z3, rows), p, cols)
        idx = torch.arange(rows.start, rows.stop, device=out.device) if isinstance(rows, slice) else rows
        o3 = o3.index_add(0, idx, torch.matmul(zs, M[p].t()), alpha=scale)
    return o3.reshape(out.shape)
