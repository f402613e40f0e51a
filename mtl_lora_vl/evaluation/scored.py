"""What an evaluation scored, for eval.json and the report: the base model as given and as its weights loaded,
and, for an adapter, the options that made ``eval`` score it otherwise than the adapter records."""

from __future__ import annotations

from typing import Any

import torch

from ..io.base_record import absolute_base, base_paths


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def scored_base(backbone: str, pretrained: str | None, base_dtype: str, loaded: torch.dtype | None) -> dict[str, Any]:
    """A base model scored without an adapter: the options as given, the local files they named (absolute: a relative
    ``hf:DIR`` is found again from anywhere) and the dtype the base weights loaded in."""
    files = {what: str(path.expanduser().absolute()) for what, path in base_paths({}, backbone, pretrained)}
    return {"backbone": backbone, "pretrained": pretrained, "base_dtype": base_dtype,
            "folder": files.get("the base model's folder"), "weights_file": files.get("the base weights"),
            "weights_dtype": _dtype_name(loaded)}


def run_base(backbone: str, pretrained: str | None, loaded: torch.dtype | None,
             computed: torch.dtype | None) -> dict[str, Any]:
    """The base model a training run scored at its end: as given, with the dtypes its weights loaded and its scores
    were computed in (``--precision auto`` is recorded as what it chose, so that a later ``eval`` of the adapter in
    another dtype can be told apart from the run's scores)."""
    return {"backbone": backbone, "pretrained": pretrained, "weights_dtype": _dtype_name(loaded),
            "computed_in": _dtype_name(computed or torch.float32)}


def adapter_base(recorded: dict[str, Any], backbone: str | None, pretrained: str | None, base_dtype: str,
                 precision: str, loaded: torch.dtype | None, computed: torch.dtype) -> dict[str, Any]:
    """The base model an adapter was scored on (``recorded``: the adapter's ``base``; ``backbone`` / ``pretrained`` /
    ``base_dtype`` as ``eval`` was given them), the dtypes its weights loaded and its scores were computed in, and
    ``overrides``: the options given that score it otherwise than the adapter records (``--precision`` other than
    auto: the adapter records none), e.g. ``["--base-dtype bf16", "--precision bf16"]``."""
    given = {"backbone": backbone, "pretrained": pretrained, "base_dtype": None if base_dtype == "auto" else base_dtype}
    same = {**given, **absolute_base({"backbone": backbone, "pretrained": pretrained})}   # (./w.pt: the file recorded)
    overrides = [f"--{k.replace('_', '-')} {v}" for k, v in given.items()
                 if v is not None and same[k] != recorded.get(k, "auto" if k == "base_dtype" else None)]
    if precision != "auto":
        overrides.append(f"--precision {precision}")
    return {"backbone": backbone or recorded.get("backbone"),
            "pretrained": pretrained if pretrained is not None else recorded.get("pretrained"),
            "weights_dtype": _dtype_name(loaded), "computed_in": _dtype_name(computed), "overrides": overrides}
