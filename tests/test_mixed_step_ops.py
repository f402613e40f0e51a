"""The aten operators an ``mtl_lora`` layer's row update dispatches in backward (adapters/rows.py): on a launch-bound
GPU each one is a kernel launch a ``lora`` layer does not pay, so one that comes back fails here; the gradients stay
those of the plain formula (float64)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtl_lora_vl.adapters.rows import update_formed_rows, update_mtl_rows, update_rows


class _Ops(TorchDispatchMode):
    """The aten operators dispatched inside the context, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _tensors(n_batch: int = 4, per: int = 3, d_in: int = 6, d_out: int = 5, r: int = 2, P: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batch * per, d_in, generator=g, dtype=torch.float64)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    M = torch.randn(P, d_out, r, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    return x, A, M, W, torch.randn(n_batch * per, d_out, generator=g, dtype=torch.float64)


def test_a_mixed_batch_backward_allocates_no_empty_gradient_and_keeps_its_gradients():
    """z's gradient of a mixed batch is one baddbmm (beta=0 on z itself: no ``new_empty`` launched first)."""
    x, A, M, W, gout = _tensors()
    positions = torch.tensor([2, 0, 1, 0])
    scale = 2.0
    out = update_formed_rows(x @ W.t(), x @ A.t(), M, positions, 4, scale)
    with _Ops() as counted:
        got = torch.autograd.grad(out, (A, M, W), gout)
    assert counted.ops["new_empty"] == 0 and counted.ops["empty"] == 0, counted.ops
    assert sum(counted.ops.values()) <= 18, counted.ops
    z3 = (x @ A.t()).view(4, 3, -1)
    want_out = x @ W.t() + scale * torch.einsum("bkr,bdr->bkd", z3, M[positions]).reshape(12, -1)
    want = torch.autograd.grad(want_out, (A, M, W), gout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_one_task_per_layer_backward_allocates_no_empty_gradient_and_keeps_its_gradients():
    """The per-layer node's one-task backward: z's and M's gradients are one addmm each, no ``new_empty`` before."""
    x, A, _, W, gout = _tensors()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    scale, tau = 2.0, 0.5
    out = update_mtl_rows(x @ W.t(), x @ A.t(), w, lam, B, 1, 1, scale, tau)
    with _Ops() as counted:
        got = torch.autograd.grad(out, (A, w, lam, B, W), gout)
    assert counted.ops["new_empty"] == 0 and counted.ops["empty"] == 0, counted.ops
    Mt = torch.einsum("i,idr->dr", torch.softmax(w[1] / tau, -1), B) @ lam[1]
    want_out = x @ W.t() + scale * (x @ A.t()) @ Mt.t()
    want = torch.autograd.grad(want_out, (A, w, lam, B, W), gout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_mixed_batch_forms_m_gradients_with_the_wide_side_last_on_a_cpu():
    """Each sample's gᵀz (d_out x r) is one bmm; as (r, d_out), transposed back, MKL runs it 3-10x faster on a CPU
    (4 x 81 rows of width 64: ~27 -> ~9 us; 16 x 50 of 768: ~2.4 -> ~0.2 ms); the gradients stay the formula's."""
    x, A, M, W, gout = _tensors()
    positions = torch.tensor([2, 0, 1, 0])
    out = update_formed_rows(x @ W.t(), x @ A.t(), M, positions, 4, 2.0)
    shapes: list[tuple[int, ...]] = []

    class _Bmm(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            res = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ in ("bmm", "baddbmm"):
                shapes.append(tuple(res.shape))
            return res

    with _Bmm():
        got = torch.autograd.grad(out, M, gout)[0]
    assert (4, 5, 2) not in shapes and (4, 2, 5) in shapes, shapes
    z3 = (x @ A.t()).view(4, 3, -1)
    want_out = 2.0 * torch.einsum("bkr,bdr->bkd", z3, M[positions]).reshape(12, -1)
    torch.testing.assert_close(got, torch.autograd.grad(want_out, M, gout)[0], atol=1e-12, rtol=0)


def _result_shapes(names: tuple[str, ...]):
    """A dispatch mode that records the shapes of the results of the named aten operators."""
    class _Shapes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[tuple[int, ...]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            res = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ in names:
                self.shapes.append(tuple(res.shape))
            return res
    return _Shapes()


def test_a_per_row_plan_forms_m_gradients_with_the_wide_side_last_on_a_cpu():
    """task_lora's / moe_lora's plans (runs of samples, gathered samples): each M_p's gradient gᵀz (d_out x r) as
    (r, d_out), transposed back on a CPU, where MKL's r-wide GEMM runs 2-7x slower (16 x 50 rows of width 768, r=8,
    the node's backward: x0.63-0.74); a small one (rows x d_out <= 4096) keeps the direct form; the gradients stay
    the formula's, a task's two runs added and an unused task's zero."""
    g = torch.Generator().manual_seed(0)
    n_batch, per, d, r, P = 4, 96, 48, 2, 3
    z0 = torch.randn(n_batch * per, P * r, generator=g, dtype=torch.float64)
    M = torch.randn(P, d, r, generator=g, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(n_batch * per, d, generator=g, dtype=torch.float64)
    task = [0, 0, 1, 0]
    for plan, cols in [(((0, slice(0, 2)), (1, slice(2, 3)), (0, slice(3, 4))), r),
                       (((0, torch.tensor([0, 1, 3])), (1, torch.tensor([2]))), 0)]:
        z = (z0 if cols else z0[:, :r]).clone().requires_grad_()
        out = update_rows(torch.zeros(n_batch * per, d, dtype=torch.float64), z, M, plan, cols, n_batch, 2.0)
        with _result_shapes(("mm", "addmm", "addmm_")) as seen:
            got = torch.autograd.grad(out, (z, M), gout)
        assert (d, r) not in seen.shapes and (r, d) in seen.shapes, seen.shapes
        assert not any(s[1] == r and s[0] >= per for s in seen.shapes), seen.shapes   # z's gradient: (r, rows) too
        z3 = z.view(n_batch, per, -1)
        zt = torch.stack([z3[b, :, task[b] * cols:task[b] * cols + r] for b in range(n_batch)])
        want_out = 2.0 * torch.einsum("bkr,bdr->bkd", zt, M[task]).reshape(n_batch * per, d)
        want = torch.autograd.grad(want_out, (z, M), gout)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        assert not got[1][2].any()
    small = update_rows(torch.zeros(8, d), torch.randn(8, r), M.float(), ((0, slice(0, 1)), (1, slice(1, 2))), 0, 2)
    with _result_shapes(("mm", "addmm", "addmm_")) as seen:
        torch.autograd.grad(small, M, torch.randn(8, d))
    assert (r, d) not in seen.shapes, seen.shapes
