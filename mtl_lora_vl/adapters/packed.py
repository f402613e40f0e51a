"""Adapters inside a tower that packs every image's rows into one sequence (Qwen2-VL's vision tower).

Such a tower takes ``(total rows, dim)``: image after image, each image's rows (patches) together, no batch
dimension. Under a per-sample route the adapter banks inside it see k rows per routed sample and read
them sample-major (``AdapterBank.packed_rows``). That reading is right only when each routed sample (or
each of its beams) brought exactly one image and all images have the same number of rows, so a
:class:`RowImagesCheck` on the model (one image per input row) and a :class:`PackedImagesCheck` on the tower
(as many images as routed rows, all of one size) refuse a mixed-task route whose images are otherwise, before
any row is routed to the wrong task. A one-task route (by name, index or ids all equal) needs no check: every
row gets that task.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn
from torch.utils.hooks import RemovableHandle

from .layers import AdapterBank
from .routing import Router, RoutingError

__all__ = ["PackedImagesCheck", "RowImagesCheck", "pack_towers"]


class PackedImagesCheck:
    """A forward pre-hook on a packing tower: refuses a mixed-task route unless the tower got one image per
    routed sample (or per beam) and every image has as many rows as the others."""

    def __init__(self, router: Router, image_rows: Callable[[tuple, dict], list[int]], name: str) -> None:
        self.router, self.image_rows, self.name = router, image_rows, name

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        route = self.router.resolve(self.name)
        if route is None or route.task is not None:   # one task for every row
            return
        rows = self.image_rows(args, kwargs)
        samples = {route.batch_size} | ({route.wide.batch_size} if route.wide is not None else set())
        if len(rows) in samples and len(set(rows)) <= 1:
            return
        raise RoutingError(
            f"{self.name} packs every image's patches into one sequence, so a mixed-task route needs one image per "
            f"routed row, all of one size; it got {len(rows)} image(s) for {route.batch_size} routed rows, of "
            f"{sorted(set(rows))} patches each. Resize the images to one size, give each row one image, or route "
            "each task's rows in a call of their own"
        )


class RowImagesCheck:
    """A forward pre-hook on the adapted model: refuses a mixed-task route unless every input row holds exactly
    one image (what the tower cannot see: it gets the images without the rows they belong to)."""

    def __init__(self, router: Router, row_images: Callable[[nn.Module, tuple, dict], list[int] | None]) -> None:
        self.router, self.row_images = router, row_images

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        route = self.router.resolve(type(module).__name__)
        if route is None or route.task is not None:
            return
        per_row = self.row_images(module, args, kwargs)
        if per_row is None or all(n == 1 for n in per_row):
            return
        raise RoutingError(
            f"{type(module).__name__} packs every image's patches into one sequence, so a mixed-task route needs "
            f"one image per row; the rows hold {per_row} images. Give each row one image, or route each task's "
            "rows in a call of their own"
        )


def pack_towers(model: nn.Module, tower: str, image_rows: Callable[[tuple, dict], list[int]],
                row_images: Callable[[nn.Module, tuple, dict], list[int] | None] | None, router: Router,
                layers: dict[str, AdapterBank]) -> list[RemovableHandle]:
    """Mark the banks inside every module of ``model`` whose name matches ``tower`` as reading packed rows,
    put a :class:`PackedImagesCheck` on each such module and (with ``row_images``) a :class:`RowImagesCheck`
    on ``model``; returns the hooks' handles."""
    handles = []
    for name, module in model.named_modules():
        if not re.search(tower, name):
            continue
        inside = [bank for bname, bank in layers.items() if bname.startswith(name + ".")]
        if not inside:
            continue
        for bank in inside:
            bank.packed_rows = True
        handles.append(module.register_forward_pre_hook(PackedImagesCheck(router, image_rows, name), with_kwargs=True))
    if handles and row_images is not None:
        handles.append(model.register_forward_pre_hook(RowImagesCheck(router, row_images), with_kwargs=True))
    return handles
