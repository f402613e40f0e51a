"""Adapters inside a tower that packs every image's rows into one sequence (Qwen2-VL's vision tower).

Such a tower takes ``(total rows, dim)``: image after image, each image's rows (patches) together, no batch
dimension. Under a per-sample route the :class:`PackedImages` hook on the tower maps its images to the routed rows:
by the model's count of each row's images (a :class:`~.row_images.RowImagesCheck`, where a row holds other than
one), else one image per routed sample (or per beam), and refuses a mixed-task route whose images are otherwise,
before any row is routed to the wrong task. When the images are all of one size, the adapter banks inside the
tower read k rows per routed image, image-major (``AdapterBank.packed_rows``); when they differ, the hook routes the
tower's forward by each image's own rows (:meth:`Route.packed_images`, a route scope that closes with the forward).
A one-task route (by name, index or ids all equal) needs neither: every row gets that task. The images' patch rows
come from the host where the backbone gave their sizes there (:meth:`RowImagesCheck.host_inputs`, taken by
``image_rows`` where they agree with its call's shapes), else from the call's own size tensor (one read).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

from torch import nn
from torch.utils.hooks import RemovableHandle

from .layers import AdapterBank
from .routing import Router, RoutingError
from .row_images import RowImagesCheck, ScopeHooks
from .scopes import route as route_scope

__all__ = ["PackedImages", "pack_towers"]


class PackedImages(ScopeHooks):
    """Forward hooks on a packing tower: before it, under a mixed-task route, each image's rows of patches get its
    row's task, the images counted per row by ``check`` (:mod:`.row_images`), or else one image per routed sample
    (or per beam); otherwise the route is refused. The route scope is closed after the forward (also when it
    fails)."""

    def __init__(self, router: Router, image_rows: Callable[..., list[int]], name: str,
                 check: RowImagesCheck | None = None) -> None:
        super().__init__()
        self.router, self.image_rows, self.name, self.check = router, image_rows, name, check
        self._takes_host = "host" in inspect.signature(image_rows).parameters

    def __setstate__(self, state: dict) -> None:
        """As pickled; one pickled before ``image_rows`` took host sizes learns whether it does."""
        self.__dict__.update(state)
        self.__dict__.setdefault("_takes_host", "host" in inspect.signature(self.image_rows).parameters)

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: open the scope routing this call's packed patches by their images' rows (mixed routes)."""
        scope = self._opened()
        route = self.router.resolve(self.name)
        if route is not None and route.task is None:   # one task for every row needs nothing
            if getattr(module, "_is_replica", False):
                raise RoutingError(f"{self.name} is an nn.DataParallel replica, which sees its chunk of the packed "
                                   "patches, not whole images: per-sample routes need DistributedDataParallel "
                                   "(torchrun, one process per GPU), or route one task for the whole batch")
            host = self.check.host_inputs() if self.check is not None and self._takes_host else {}
            rows = self.image_rows(args, kwargs, module, **({"host": host} if host else {}))
            counts = None if self.check is None else self.check.next_call(rows, self.name)
            for r in (route, route.wide):   # (wide: k rows per routed id, expanded_rows)
                if counts is not None and r is not None and len(counts) == r.batch_size and sum(counts) == len(rows):
                    r = r.per_image(counts)   # the rows' images, as the model counted them
                    scope.enter_context(route_scope(self.router, r.packed_images(rows) if len(set(rows)) > 1 else r,
                                                    recompute=False))
                    return
            for r in (route, route.wide):
                if r is not None and len(rows) == r.batch_size:
                    if len(set(rows)) > 1:
                        scope.enter_context(route_scope(self.router, r.packed_images(rows), recompute=False))
                    break
            else:
                raise RoutingError(
                    f"{self.name} packs every image's patches into one sequence, so a mixed-task route needs one "
                    f"image per routed row; it got {len(rows)} image(s) for {route.batch_size} routed rows. Give "
                    "each row one image, or route each task's rows in a call of their own (through the model's "
                    "forward, which counts each row's images and videos, the tower takes any number per row)"
                )


def pack_towers(model: nn.Module, tower: str, image_rows: Callable[..., list[int]], router: Router,
                layers: dict[str, AdapterBank], check: RowImagesCheck | None = None) -> list[RemovableHandle]:
    """Mark the banks inside every module of ``model`` whose name matches ``tower`` as reading packed rows and
    put :class:`PackedImages` hooks on each such module (reading ``check``'s counts); returns the hooks' handles."""
    handles = []
    for name, module in model.named_modules():
        if not re.search(tower, name):
            continue
        inside = [bank for bname, bank in layers.items() if bname.startswith(name + ".")]
        if not inside:
            continue
        for bank in inside:
            bank.packed_rows = True
        handles += PackedImages(router, image_rows, name, check).register(module)
    return handles
