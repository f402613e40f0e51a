"""One image per row under a mixed-task route, checked on a vision-language model's forward.

A VLM's vision tower takes the batch's images without the rows they belong to and routes image i as row i, so a
mixed-task route is right only when every input row holds exactly one image: a row with two images beside a row
with none sent the second image through the other row's task, silently (0.3-0.6 off on tiny LLaVA, Idefics3
and Qwen2-VL models). The family table says how to count each row's images (``Family.row_images``); a one-task
route (by name, index or ids all equal) needs no check. The count reads the rows' ids on the host: one read of
B numbers per forward under a mixed route with pixel values (a training step; a generation's prefill), where
the models' own image-token checks read the device already.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .routing import Router, RoutingError

__all__ = ["RowImagesCheck"]


class RowImagesCheck:
    """A forward pre-hook on the adapted VLM's multimodal model (``model.model`` where there is one), also run by
    the routed ``generate`` on its inputs: refuses a mixed-task route unless every input row holds exactly one
    image (what the tower cannot see: it gets the images without the rows they belong to)."""

    def __init__(self, router: Router, row_images: Callable[[nn.Module, tuple, dict], list[int] | None],
                 splits_images: bool = False) -> None:
        self.router, self.row_images, self.splits_images = router, row_images, splits_images
        #: Set by the routed ``generate`` around its call, whose inputs it checked: its prefill's forwards get the
        #: images encoded (generate's chunked prefill: one flattened feature item per chunk, not one per image).
        self.checked = False

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) made inside a routed ``generate`` checks its own forwards: the scope is the
        original's."""
        return {**self.__dict__, "checked": False}

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # no route given: the first adapted layer that runs says so (if any runs)
        if self.checked or self.router.current is None:
            return
        route = self.router.resolve(type(module).__name__)
        if route is None or route.task is not None:
            return
        per_row = self.row_images(module, args, kwargs)
        if per_row is None or all(n == 1 for n in per_row):
            return
        crops = self.splits_images and min(per_row) > 1 and all(n == int(n) for n in per_row)
        hint = (" (a processor that splits each image into crops, as Idefics3 / SmolVLM's do, makes one image per "
                "crop: call it with do_image_splitting=False, or load the model with the package's backbone, which "
                "turns splitting off)" if crops else "")
        raise RoutingError(
            f"{type(module).__name__} routes each image by its place among the batch's images, so a mixed-task "
            f"route needs one image per row; the rows hold {per_row} images{hint}. Give each row one image, or route "
            "each task's rows in a call of their own"
        )
