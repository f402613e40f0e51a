"""Comparing two fp32 computations of one result that take different GEMM shapes: a mixed-task route against each
task alone, the image path image by image against the batch, a PEFT / merged export against the routed forward.

MKL picks its kernel (and so its order of accumulation) by the GEMM's shape and the CPU: on an AVX-512 machine one
row computed alone (a GEMV) and the same row inside a batch differ by ~1e-7 relatively, where an AVX2 machine gave the
same bits. The tiny random models of these tests carry activations of 1e3-1e4 inside their language models, which
turns that into up to ~3e-4 of the compared tensor's largest value -- while a row on the wrong task is off by about
the tensor's scale. So such comparisons are made at a fraction of that scale (:func:`assert_close_at_scale`), and each
test keeps its own check that the tasks' results differ.
"""

from __future__ import annotations

import torch

#: The fraction of the compared tensor's largest magnitude two GEMM shapes may differ by (worst seen: 3e-4).
SCALE_FRACTION = 2e-3


def assert_close_at_scale(actual: torch.Tensor, expected: torch.Tensor, fraction: float = SCALE_FRACTION,
                          msg: str | None = None) -> None:
    """``actual`` equals ``expected`` to ``fraction`` of ``expected``'s largest magnitude, element by element."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=fraction * max(scale, 1e-6), msg=msg)
