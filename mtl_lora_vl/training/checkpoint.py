"""Training checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint holds only what training changes (adapter tensors, heads, optimizer, scheduler, grad
scaler, sampler and RNG state), not the frozen base model. It is one ``torch.save`` file of tensors
and plain Python values, loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.loader import MultiTaskLoader
from ..io.atomic import atomic_file
from ..multitask import MultiTaskModel
from .optim import Optimization

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit this run."""


def save_checkpoint(state: dict[str, Any], run_dir: str | Path) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` via a temporary file and an atomic rename."""
    final = Path(run_dir) / CHECKPOINT_NAME
    with atomic_file(final, overwrite=True, what="save_checkpoint") as tmp:
        torch.save(state, tmp)
    return final


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/checkpoint.pt`` (tensors and plain values only)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint to resume from; the run saves one every --save-every steps and on Ctrl-C"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e}); it may be truncated") from None


def training_state(step: int, model: MultiTaskModel, optim: Optimization, loader: MultiTaskLoader,
                   log_window: dict[str, list[float]]) -> dict[str, Any]:
    """Everything ``--resume`` needs to continue exactly: trained tensors, optimizer side, sampler, RNG."""
    return {"step": step, "trainable": model.trainable_state(), **optim.state_dict(),
            "sampler": loader.state_dict(), "rng": torch.get_rng_state(), "log_window": log_window}


def restore_training_state(state: dict[str, Any], model: MultiTaskModel, optim: Optimization,
                           loader: MultiTaskLoader) -> tuple[int, dict[str, list[float]]]:
    """Put a :func:`training_state` back; returns the step and the log window to continue from."""
    model.load_trainable_state(state["trainable"])
    optim.load_state_dict(state)
    loader.load_state_dict(state["sampler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), state.get("log_window", {})
