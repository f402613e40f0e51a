"""Mixed precision: which autocast dtype a run uses, the one autocast context, and the dtype adapters are made in."""

from __future__ import annotations

import torch

from .log import warn_user

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device, base_dtype: str = "auto",
                      loaded: torch.dtype | None = None) -> torch.dtype:
    """The autocast dtype: bf16 / fp16 / fp32. ``auto`` = the base weights' dtype when they are bf16 or fp16 --
    as ``base_dtype`` asks, or as ``loaded`` (the dtype they were loaded in) says: ``--base-dtype auto`` loads a
    language model in fp16 on a GPU without bf16 -- since fp32 activations would not meet them; else bf16 on a
    capable GPU, else fp32."""
    if precision == "auto":
        if base_dtype in ("bf16", "fp16"):
            return _DTYPES[base_dtype]
        if loaded in (torch.bfloat16, torch.float16):
            return loaded
        if device.type == "cuda" and cuda_has_bf16(device):
            return torch.bfloat16
        return torch.float32
    if precision == "bf16" and device.type == "cuda" and not cuda_has_bf16(device):
        warn_user(f"--precision bf16 on {device} ({torch.cuda.get_device_name(device)}), which only emulates bf16: "
                  "every step runs slowly; use --precision fp16 (loss scaling, on its tensor cores) or auto")
    return _DTYPES[precision]


def dtype_flag(dtype: torch.dtype | None) -> str | None:
    """The ``--precision`` / ``--base-dtype`` value naming ``dtype`` (fp32, bf16, fp16); None for None."""
    if dtype is None:
        return None
    return next((k for k, v in _DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def check_base_precision(precision: str, autocast_dtype: torch.dtype, loaded: torch.dtype | None,
                         casts_inputs: bool) -> None:
    """Refuse an explicit ``--precision`` the half-precision base weights cannot run in: any other autocast dtype on
    a model that does not cast its inputs to its weights' dtype (open_clip), and the other half dtype on any model
    (bf16 weights under fp16 autocast meet in ops such as ``torch.cat`` that autocast does not reconcile). Both
    failed at the first step with torch's dtype error."""
    halves = (torch.bfloat16, torch.float16)
    if precision == "auto" or loaded not in halves or autocast_dtype == loaded:
        return
    if casts_inputs and autocast_dtype not in halves:
        return
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[loaded]
    why = ("this model does not cast its inputs to its weights' dtype" if not casts_inputs else
           f"{name} weights and {precision} autocast meet in operations that take one dtype")
    raise ValueError(f"--precision {precision} with {name} base weights (--base-dtype): {why}, so every step would "
                     f"fail; use --precision {name} (or auto), or --base-dtype fp32")


def cuda_has_bf16(device: torch.device | str | int | None = None) -> bool:
    """Whether the CUDA ``device`` computes bf16 natively (compute capability 8.0 and later, or ROCm's).
    ``torch.cuda.is_bf16_supported()`` alone also says yes for a V100 or T4, which only emulate it (slowly,
    where fp16 with loss scaling runs on tensor cores), and asks the current device, not ``device``."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast(device: torch.device | str, dtype: torch.dtype) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``; a no-op for float32 (the one autocast of the package)."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)


# The dtype of a task head's parameters (nlvr's pair MLP, VQA's fusion and answer weights, the classifier, retrieval's
# temperature), whatever torch's default dtype and the base's: every head's forward reads the base's features cast to
# fp32 with autocast off, and scores as the zero-shot rule does (``tasks.embeddings.prompt_scores``, fp32), so its
# parameters are fp32 on a float64 base too. Under ``torch.set_default_dtype(torch.float64)`` heads made by default
# were float64: nlvr's refused its fp32 features ("mat1 and mat2 must have the same dtype"), VQA's and the
# classifier's mixed fp32 and float64 parameters and gave float64 logits.
HEAD_DTYPE = torch.float32


def base_weights_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s frozen floating-point weights (the base model under the adapters); None if none. Scalar
    parameters are passed over where the model has others: open_clip's logit scale (and bias) stays fp32 under a bf16
    / fp16 base, and is the first parameter of a CoCa or a ``CustomTextCLIP`` (its only own ones)."""
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    return next((p.dtype for p in frozen if p.numel() > 1), frozen[0].dtype if frozen else None)


def adapter_dtype(base: torch.dtype | None) -> torch.dtype:
    """The dtype ``attach`` makes a layer's adapter tensors in, given its base weight's: fp32 on an fp32, bf16, fp16,
    float8 or integer base (or none) -- adapters train in fp32 under half-precision weights and autocast --, the
    base's own on a wider floating-point one: a float64 base gets float64 adapters, so gradient checks and exactness
    tests in fp64 meet no fp32 rounding (they were made in fp32: an fp64 forward was exact to ~1e-7 only, and
    ``torch.autograd.gradcheck`` of the adapters could not run). fp32 whatever torch's default dtype: under
    ``torch.set_default_dtype(torch.float64)`` a bf16 or fp32 base got float64 adapters."""
    if base is not None and base.is_floating_point and base.itemsize > torch.float32.itemsize:
        return base
    return torch.float32
