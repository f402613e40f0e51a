"""Mixed precision: which autocast dtype a run uses, and the one autocast context."""

from __future__ import annotations

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device, base_dtype: str = "auto") -> torch.dtype:
    """The autocast dtype: bf16 / fp16 / fp32. ``auto`` = the base weights' dtype when ``base_dtype`` asks for
    bf16 or fp16 (fp32 activations would not meet them), else bf16 on a capable GPU, else fp32."""
    if precision == "auto":
        if base_dtype in ("bf16", "fp16"):
            return _DTYPES[base_dtype]
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _DTYPES[precision]


def autocast(device: torch.device | str, dtype: torch.dtype) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``; a no-op for float32 (the one autocast of the package)."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)

