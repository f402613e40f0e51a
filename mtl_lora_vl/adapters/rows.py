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


def update_rows(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor, plan: tuple, cols: int,
                n_batch: int) -> torch.Tensor:
    """``out + z M_pᵀ`` on each plan entry's rows of the ``n_batch`` samples (batch-first), in place.

    In place it is one LoRA's fused addmm without the copy of ``out`` that an out-of-place addmm makes.
    ``out`` must be batch-first and a fresh tensor (not a view), else a copy is updated. Under
    torch.compile the out-of-place form is traced instead (the compiler fuses it).
    """
    if torch.compiler.is_compiling():
        if plan is WHOLE_BATCH:
            return _add_matmul(out, z, M[0])
        return _rows_out_of_place(out, z, M, plan, cols, n_batch)
    if not out.is_contiguous() or out._is_view():
        out = out.clone(memory_format=torch.contiguous_format)
    if torch.is_grad_enabled() and (out.requires_grad or z.requires_grad or M.requires_grad):
        return _TaskRowsUpdate.apply(out, z, M, plan, cols, n_batch)
    return _rows_add_(out, z, M, plan, cols, n_batch)


def _rows3(t: torch.Tensor, n_batch: int) -> torch.Tensor:
    """A batch-first tensor as (n_batch, rows per sample, C): a view when the layout allows."""
    return t.reshape(n_batch, -1, t.shape[-1])


def _take(t3: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    return t3[rows] if isinstance(rows, slice) else t3.index_select(0, rows)


def _zcols(z: torch.Tensor, p: int, cols: int) -> torch.Tensor:
    """The columns of z that task position ``p`` uses: all of them, or its own block (task_lora)."""
    return z if not cols else z[..., p * cols:(p + 1) * cols]


def _rows_add_(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor, plan: tuple, cols: int,
               n_batch: int) -> torch.Tensor:
    """``out[rows_p] += z[rows_p] M_pᵀ`` for every plan entry, in place (``out`` contiguous)."""
    o3, z3 = _rows3(out, n_batch), _rows3(z, n_batch)
    d = o3.shape[-1]
    for p, rows in plan:
        zs = _zcols(_take(z3, rows), p, cols)
        if isinstance(rows, slice):
            o3[rows].view(-1, d).addmm_(zs.reshape(-1, zs.shape[-1]), M[p].t())
        else:
            o3.index_add_(0, rows, torch.matmul(zs, M[p].t()))
    return out


class _TaskRowsUpdate(torch.autograd.Function):
    """:func:`_rows_add_` with autograd: out's gradient passes through untouched (no copy), and z's and
    each M_p's gradients come from that task's own rows only. The cost is one LoRA's."""

    @staticmethod
    def forward(ctx, out, z, M, plan, cols, n_batch):
        _rows_add_(out, z, M, plan, cols, n_batch)
        ctx.mark_dirty(out)
        ctx.save_for_backward(z, M)
        ctx.plan, ctx.cols, ctx.n_batch = plan, cols, n_batch
        return out

    @staticmethod
    def backward(ctx, g):
        z, M = ctx.saved_tensors
        plan, cols, n_batch = ctx.plan, ctx.cols, ctx.n_batch
        g3, z3 = _rows3(g, n_batch), _rows3(z, n_batch)
        d = g3.shape[-1]
        gz = gM = None
        if ctx.needs_input_grad[1]:
            make = torch.zeros if cols else torch.empty  # task_lora: other tasks' columns get no gradient
            gz = make(z3.shape, dtype=z.dtype, device=z.device)
        if ctx.needs_input_grad[2]:
            gM = torch.zeros_like(M)
        for p, rows in plan:
            gs = _take(g3, rows).reshape(-1, d)
            if gz is not None:
                part = torch.mm(gs, M[p])
                if isinstance(rows, slice):
                    _zcols(gz[rows], p, cols).copy_(part.view(-1, gz.shape[1], part.shape[-1]))
                else:
                    _zcols(gz, p, cols).index_copy_(0, rows, part.view(-1, gz.shape[1], part.shape[-1]))
            if gM is not None:
                zs = _zcols(_take(z3, rows), p, cols)
                gM[p].addmm_(gs.t(), zs.reshape(-1, zs.shape[-1]))
        return g, (gz.view(z.shape) if gz is not None else None), gM, None, None, None


def _rows_out_of_place(out, z, M, plan, cols, n_batch) -> torch.Tensor:
    """What :func:`_rows_add_` computes, out of place (for torch.compile, which fuses it anyway)."""
    o3, z3 = _rows3(out, n_batch), _rows3(z, n_batch)
    for p, rows in plan:
        zs = _zcols(_take(z3, rows), p, cols)
        idx = torch.arange(rows.start, rows.stop, device=out.device) if isinstance(rows, slice) else rows
        o3 = o3.index_add(0, idx, torch.matmul(zs, M[p].t()))
    return o3.reshape(out.shape)


def _add_matmul(out: torch.Tensor, z: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """out + z Mᵀ as one fused GEMM (addmm), keeping out's shape."""
    d_out = out.shape[-1]
    return torch.addmm(out.reshape(-1, d_out), z.reshape(-1, z.shape[-1]), M.t()).view(out.shape)
