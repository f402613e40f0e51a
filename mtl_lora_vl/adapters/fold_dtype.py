"""Which base weights a LoRA update may be folded into: a float8 weight is refused (``merge``,
``merged_state_dict``, ``save_merged``, ``apply_plain_lora``), by name, with what to do; and the fold itself, summed
wide and cast back. A leaf, so both the adapters and ``io`` use the one check and the one sum."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["folded", "refuse_float8"]


def refuse_float8(weights: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse to fold a LoRA update into a float8 base weight (``weights``: name -> the base weights to be updated).
    Summed wide and cast back, the sum is rounded to float8's 2-3 mantissa bits: an update 1% the size of the
    weights leaves every one of them as it was (and a float8 checkpoint's weights are often scaled by factors kept
    apart, which the update does not know)."""
    low = sorted((n, w.dtype) for n, w in weights.items() if w.dtype.is_floating_point and w.dtype.itemsize == 1)
    if low:
        raise TypeError(f"{what}: the base weight {low[0][0]} is {str(low[0][1]).removeprefix('torch.')}"
                        f"{f' (and {len(low) - 1} more)' if len(low) > 1 else ''}: a LoRA update folded into it is "
                        "rounded to float8's 2-3 mantissa bits, so most of it is lost (an update 1% the size of the "
                        "weights changes none of them); load the base model in bfloat16 or float32 (e.g. "
                        "from_pretrained(..., torch_dtype=torch.bfloat16), or model.to(torch.bfloat16)), fold the "
                        "update in, then quantise the result to float8 if you need it")


def folded(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight + delta`` in ``weight``'s dtype and on its device, summed in the widest of fp32 and the two dtypes (fp32
    for a bf16 base, fp64 for a float64 one)."""
    acc = torch.promote_types(torch.promote_types(weight.dtype, delta.dtype), torch.float32)
    return (weight.to(acc) + delta.to(weight.device, acc)).to(weight.dtype)
