"""A training batch on the main process: :func:`to_device` copies what a loader yields (the layout in
:mod:`mtl_lora_vl.data.loader`) to the device, non-blocking, and :func:`to_floats` turns its uint8 images into
normalised floats there (``backbone.preprocess_uint8``); :func:`task_views` gives each task's rows of it, and
:func:`sizes_kwarg` the ``image_sizes`` keyword a canvas of images of their own sizes needs. The loader module
exports them too.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor


def sizes_kwarg(images: Tensor, sizes: Sequence[tuple[int, int]] | None, keep: bool = False) -> dict[str, Any]:
    """``{"image_sizes": sizes}`` when some image does not fill the batch (a canvas of images of their own sizes),
    or always with ``keep`` (``backbone.needs_image_sizes``); else ``{}``: a backbone whose images all fill their
    squares is called as before (its methods need not take ``image_sizes``)."""
    if sizes is None or (not keep and all(tuple(s) == tuple(images.shape[-2:]) for s in sizes)):
        return {}
    return {"image_sizes": [tuple(s) for s in sizes]}


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def to_device(batch: dict[str, Any], device: torch.device | str, dtype: torch.dtype, backbone: Any) -> dict[str, Any]:
    """Copy a batch to ``device`` (non-blocking) and turn its uint8 images into normalised ``dtype`` floats there."""
    device = torch.device(device)
    out = _move(batch, device)
    out["images"] = to_floats(backbone, out["images"], dtype, out.get("image_sizes"))
    return out


def to_floats(backbone: Any, images: Tensor, dtype: torch.dtype, sizes: Sequence[tuple[int, int]] | None) -> Tensor:
    """``backbone.preprocess_uint8``, given the images' sizes where the backbone reads them at their own (a ``native``
    resize) and takes them (an HF VLM's: only each image's region of the canvas is converted)."""
    if sizes is not None and getattr(getattr(backbone, "resize", None), "native", False) and \
            "image_sizes" in inspect.signature(backbone.preprocess_uint8).parameters:
        return backbone.preprocess_uint8(images, dtype, image_sizes=sizes)
    return backbone.preprocess_uint8(images, dtype)


def task_views(batch: dict[str, Any]) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """``(task_name, rows)`` per task of a batch: its images, tokens (when the batch has them) and indices,
    plus its fields and row indices."""
    for name, view in batch["tasks"].items():
        rows = view["rows"]
        sub = {"images": batch["images"][view.get("image_index", rows)], "indices": batch["indices"][rows]}
        if "tokens" in batch:
            sub["tokens"] = batch["tokens"][rows]
        sub.update(view)
        yield name, sub
