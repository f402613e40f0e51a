"""Each row's images routed to that row's task, under a mixed-task route through a vision-language model.

A VLM's vision tower (and projector) takes the batch's images without the rows they belong to: image i of the
batch is not row i's when a row holds several images (several pictures; Idefics3 / SmolVLM's crops; Gemma 3's
pan-and-scan crops) or none. Routed as row i, a row's second image went through the next row's task, silently
(0.3-0.6 off on tiny LLaVA, Idefics3 and Qwen2-VL models). So the model's forward counts each row's images (the
family table says how: ``Family.row_images``, from the rows' image tokens) and the modules of the image path
(``Family.image_path``; Qwen2-VL's packed tower: :mod:`.packed`) route their batch of images by those counts
(:meth:`Route.per_image`: row r's images, in order, take row r's task). A one-task route (by name, index or ids
all equal) needs neither.

What cannot be routed is refused: a row holding part of an image (its image tokens are not a whole number of
images), and several images per row whose features were made before the call (``mm_encoder_outputs``: encoded
under whatever route the caller had) or counted together with videos (a model that encodes its images and its
videos in tower calls of their own, Qwen2-VL and LLaVA-OneVision, counts each kind apart: a
:class:`~mtl_lora_vl.family_images.PerCall`, whose calls take their own counts in turn, in each module of the image
path). The count takes each row's images from the host where the caller gives them (:func:`host_image_counts`: the
trainer's ``lm_image_counts``, ``lm_loss(image_counts=)``, ``generate``'s prompts) and they add up to the images
given; else it reads the rows' ids: one read of B numbers per forward under a mixed route with images (LLaVA-NeXT /
OneVision read the images' sizes too), where the models' own image-token checks read the device already. A packed
tower (:mod:`.packed`) takes its images' sizes from the host so too, where the backbone gives them (``inputs``).
"""

from __future__ import annotations

import inspect
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..family_images import CountsOnly, PerCall
from .layers import AdapterBank
from .routing import Router, RoutingError
from .scopes import route as route_scope

__all__ = ["ImageRoutes", "RowImagesCheck", "ScopeHooks", "host_image_counts", "route_image_path"]

Counts = Callable[[nn.Module, tuple, dict], list[float] | None]


class RowImagesCheck:
    """A forward pre-hook (and hook) on the adapted VLM's multimodal model (``model.model`` where there is one),
    also run by the routed ``generate`` on its inputs: under a mixed-task route it counts each input row's images
    for the image path's modules to route by (:meth:`current`), and refuses what cannot be routed."""

    def __init__(self, router: Router, row_images: Counts) -> None:
        self.router, self.row_images = router, row_images
        #: Set by the routed ``generate`` around its call, whose inputs it counted: its prefill's forwards get the
        #: images encoded (generate's chunked prefill: one flattened feature item per chunk, not one per image).
        self.checked = False
        self._counts: list[list[int] | None] = []   # per forward in progress (nested: a stack)
        # per forward in progress: each image-path module's calls so far (a PerCall's next), by the module's name
        self._calls: list[dict[str, int]] = []
        self._regions: list[tuple | None] = []   # per forward in progress with counts: its recomputation region
        # each row's images (None: not known) and host copies of vision inputs, per open given() scope (a stack)
        self._given: list[tuple[list[int] | None, dict[str, list]]] = []
        self._takes_given = "image_counts" in inspect.signature(row_images).parameters

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) made inside a routed ``generate`` counts its own forwards: the scope is the
        original's."""
        return {**self.__dict__, "checked": False, "_counts": [], "_calls": [], "_regions": [], "_given": []}

    @contextmanager
    def given(self, counts: Sequence[int] | None, inputs: dict[str, list] | None = None) -> Iterator[None]:
        """Each input row's images as the caller knows them on the host, for the forwards in this scope: passed to
        a ``row_images`` that takes ``image_counts`` (checked there against what is on the host), which then need
        not read the rows' ids from the device. ``inputs``: host copies of the forwards' vision inputs by the
        model's names (Qwen2-VL's ``image_grid_thw``, Mistral 3's ``image_sizes``), for a packed tower's hook
        (:meth:`host_inputs`), which takes them where they agree with the shapes of its call."""
        self._given.append((None if counts is None else [int(k) for k in counts], dict(inputs or {})))
        try:
            yield
        finally:
            self._given.pop()

    def host_inputs(self) -> dict[str, list]:
        """The innermost :meth:`given` scope's host copies of the vision inputs (empty outside one)."""
        return self._given[-1][1] if self._given else {}

    def current(self) -> list[int] | None:
        """Images per routed row of the forward in progress, where a row holds other than one (else None)."""
        return self._counts[-1] if self._counts else None

    def next_call(self, patches: list[int] | None = None, module: str = "tower") -> list[int] | None:
        """Images per routed row of ``module``'s next call in the forward in progress (a vision tower, a projector),
        whose images have ``patches`` each (a packing tower; None: a batch, whose size its hook checks): its kind's
        count where the model encodes each kind in a call of its own (a :class:`PerCall`, its calls in the model's
        order, each module counting its own), else :meth:`current`. A call other than the one expected is refused:
        its images' rows are not known."""
        counts = self.current()
        if counts is not None:
            self.recomputable(counts, module)
        if not isinstance(counts, PerCall):
            return counts
        i = self._calls[-1].get(module, 0)
        self._calls[-1][module] = i + 1
        if i >= len(counts.calls) or patches is not None and counts.calls[i][1] != patches:
            expected = [f"{kind}s" + ("" if p is None else f" of {p} patches") for kind, p, _ in counts.calls]
            got = "a batch of images" if patches is None else f"images of {patches} patches"
            raise RoutingError(f"{module} got {got} as call {i + 1} of a forward whose calls encode "
                               f"{' then '.join(expected)}: their rows are not known. Call the model's forward (or "
                               "generate) with its images and videos, not the tower itself")
        return [int(n) for n in counts.calls[i][2]]

    def recomputable(self, counts: list, module: str = "tower") -> None:
        """Refuse routing an image path's call (``module``'s) by ``counts`` where backward would recompute it apart
        from the forward that counted them (a checkpoint around the tower, not the model): it would find no count."""
        if _region() != self._regions[-1]:
            raise RoutingError(
                f"the image path's {module} runs in a checkpointed region of its own (torch.utils.checkpoint or "
                "checkpoint_wrapper around it, not around the model): backward recomputes it without the "
                f"model's count of each row's images, so the rows holding {list(counts)} images cannot be routed "
                "again. Checkpoint the tower's blocks (model.gradient_checkpointing_enable()) or the whole model, or "
                "route each task's rows in a call of their own")

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.checked:   # inside the routed generate: the images its own count found
            counts = self.current()
            self._counts.append(counts)
            self._calls.append({})
            self._regions.append(None if counts is None else _region())
            return
        self._counts.append(None)   # first: a refusal below still leaves one entry for after() (always_call) to pop
        self._calls.append({})
        self._regions.append(None)   # (where this forward runs: read only for a forward with counts, below)
        # no route given: the first adapted layer that runs says so (if any runs); a recomputation in backward of a
        # checkpointed forward whose scope has closed replays that forward's route, and counts as it did
        if self.router.current is None and not self.router.replaying():
            return
        route = self.router.resolve(type(module).__name__)
        if route is None or route.task is not None:
            return
        host = self._given[-1][0] if self._given else None
        given = {"image_counts": host} if host is not None and self._takes_given else {}
        per_row = self.row_images(module, args, kwargs, **given)
        calls = per_row.calls if isinstance(per_row, PerCall) else [("image", None, per_row)]
        if per_row is None or all(n == 1 for _, _, counts in calls for n in counts):
            return
        for kind, _, counts in calls:
            if isinstance(per_row, CountsOnly) or any(n != int(n) for n in counts):
                why = (per_row.why if isinstance(per_row, CountsOnly) else
                       f"a row's {kind} tokens are not a whole number of {kind}s (a row holding part of one, or "
                       f"other {kind}s than the rows' {kind} tokens)")
                raise RoutingError(
                    f"{type(module).__name__} cannot route the {kind}s of a mixed-task batch to their rows' tasks: "
                    f"the rows hold {list(counts)} {kind}s, and {why}. Route each task's rows in a call of their own")
        self._counts[-1] = per_row if isinstance(per_row, PerCall) else [int(n) for n in per_row]
        self._regions[-1] = _region()

    def after(self, module: nn.Module, args: tuple, output: object) -> None:
        """Forward hook (also after a failed forward): drop the count :meth:`__call__` pushed for this forward."""
        if self._counts:
            self._counts.pop()
            self._calls.pop()
            self._regions.pop()


def host_image_counts(model: nn.Module, counts: Sequence[int] | None,
                      inputs: dict[str, list] | None = None) -> AbstractContextManager[None]:
    """A scope giving ``model``'s row check (where attach put one) each input row's images, known on the host, and
    host copies of vision inputs (``inputs``: a packed tower's image sizes), for the forwards (or the ``generate``)
    run in it (:meth:`RowImagesCheck.given`); a no-op without either, or without a check."""
    check = getattr(model.__dict__.get("_mtl_lora"), "row_check", None)
    return nullcontext() if counts is None and not inputs or check is None else check[1].given(counts, inputs)


def _region() -> tuple:
    """Where a call runs, as activation checkpointing recomputes it: how many reentrant checkpoints (an autograd
    Function's forward, run without gradients and recomputed in backward) hold it, and the innermost non-reentrant
    checkpoint's pack hook (None outside one). Not grad mode itself: a tower a model calls under ``torch.no_grad()``
    is recomputed by nothing."""
    top_fn = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    top = top_fn(False) if top_fn is not None else None
    pack = top[0] if top is not None else None
    inside = pack is not None and (getattr(pack, "_checkpoint_internal", False)
                                   or "_checkpoint" in getattr(pack, "__qualname__", ""))
    reentrant, frame = 0, sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        reentrant += code.co_name == "forward" and "CheckpointFunction" in getattr(code, "co_qualname", "")
        frame = frame.f_back
    return reentrant, pack if inside else None


def _batch_of(args: tuple, kwargs: dict) -> int | None:
    """The batch (images) a module of the image path was called with: its pixel values, else its first tensor."""
    x = kwargs.get("pixel_values")
    if not isinstance(x, torch.Tensor):
        x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 1), None)
    return None if x is None else x.shape[0]


class ScopeHooks(ABC):
    """Forward hooks that open a route scope before a module's forward (``before``, which subclasses define) and close
    it after it (``after``, also after a failed forward); nested forwards stack their scopes."""

    def __init__(self) -> None:
        self._open: list[ExitStack] = []   # the scope of each forward in progress (nested: a stack)

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) holds no open scope: the scopes are the original's forwards'."""
        return {**self.__dict__, "_open": []}

    def _opened(self) -> ExitStack:
        """A new scope for the forward starting (pushed first: a refusal after it still leaves one for after())."""
        scope = ExitStack()
        self._open.append(scope)
        return scope

    @abstractmethod
    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: open this forward's scope (:meth:`_opened`) and enter what it routes."""

    def after(self, module: nn.Module, args: tuple, output: object) -> None:
        """Forward hook (also after a failed forward): close the scope :meth:`before` opened."""
        if self._open:
            self._open.pop().close()

    def register(self, module: nn.Module) -> list[RemovableHandle]:
        """Put :meth:`before` and :meth:`after` on ``module``; returns their handles."""
        return [module.register_forward_pre_hook(self.before, with_kwargs=True),
                module.register_forward_hook(self.after, always_call=True)]


class ImageRoutes(ScopeHooks):
    """Forward hooks on a module of a VLM's image path (its vision tower, its projector) that takes a batch of
    images: under a mixed-task route whose rows hold other than one image each, the module's forward is routed
    image by image; under ids all equal, as that one task for any number of images (the ids' count checks rows, not
    images). A route scope over its batch, closed after the forward, also when it fails; it takes saved-tensor hooks
    only where an outer scope of the model has them (a trainer whose forward is not checkpointed, routing with
    ``recompute=False``, pays nothing for them)."""

    def __init__(self, router: Router, check: RowImagesCheck, name: str) -> None:
        super().__init__()
        self.router, self.check, self.name = router, check, name

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: open the scope routing this call's images (one task for all, or image by image)."""
        scope = self._opened()
        counts = self.check.next_call(module=self.name)   # (this module's call of its kind: images, then videos)
        routed = counts is not None or self.router.current is not None or self.router.replaying()
        route = self.router.resolve(self.name) if routed else None
        if route is not None and route.task is not None and route.batch_size not in (None, _batch_of(args, kwargs)):
            # ids all equal: one task for every image, however many each row holds (not the rows' count of ids)
            scope.enter_context(route_scope(self.router, self.router.task_route(route.task), recompute=False))
            return
        if counts is None:
            return
        if route is not None and route.wide is not None and route.batch_size != len(counts):
            route = route.wide   # k rows per routed id (expanded_rows: candidates scored as full sequences)
        if route is None or route.task is not None or route.batch_size != len(counts):
            return   # (one task; or a route the forward's count was not made for: the layers check the batch)
        images = _batch_of(args, kwargs)
        if images != sum(counts):
            raise RoutingError(f"{self.name} got {images} images for rows holding {counts} images; give the model "
                               "the images of its rows, in row order")
        scope.enter_context(route_scope(self.router, route.per_image(counts), recompute=False))


def route_image_path(model: nn.Module, path: str, check: RowImagesCheck, router: Router,
                     layers: dict[str, AdapterBank]) -> list[RemovableHandle]:
    """Put :class:`ImageRoutes` hooks on every outermost module of ``model`` whose name matches ``path`` and that
    holds adapted layers; returns the hooks' handles."""
    handles, hooked = [], []
    for name, module in model.named_modules():
        if not re.search(path, name) or any(name.startswith(h + ".") for h in hooked):
            continue
        if not any(b.startswith(name + ".") for b in layers):
            continue
        hooked.append(name)
        handles += ImageRoutes(router, check, name).register(module)
    return handles
