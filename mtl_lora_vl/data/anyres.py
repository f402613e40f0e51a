"""Native-aspect anyres images (LLaVA-NeXT, LLaVA-OneVision), read as their Hugging Face image processor reads them.

The processor picks the pinpoint of ``image_grid_pinpoints`` that best fits the image's own size
(``select_best_resolution``), resizes the image into it keeping its aspect (``get_patch_output_size``: one side the
pinpoint's, the other rounded up), pads it centred with black (0) to the pinpoint, cuts that into tiles of the tower's
side S, and puts first a base view: the whole image squashed to S x S. ``image_sizes`` is the image's original
``(h, w)``, and the model unpads the tiles' features to that aspect, so the token count depends on the size.

:func:`anyres_views` does the same in a loader worker, with the processor's own calls (torchvision's antialiased
resize of the uint8 image, its pad): the views stacked top to bottom, a ``(3, V·S, S)`` uint8 strip (V = 1 + tiles),
the original size attached (a :class:`SizedStrip`). A batch puts strips on one canvas (:func:`pad_images`, shorter
strips zero below), its ``image_sizes`` the originals; the backbone cuts the views back out on the device
(a reshape). :func:`anyres_tokens` is the model's count for a size, by its arithmetic (``unpad_image``, and
OneVision's ``anyres_max_N`` shrink), in plain Python so the collator can run it in workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["AnyresGeometry", "SizedStrip", "anyres_tokens", "anyres_views", "carries_size", "image_size_of",
           "pad_images", "with_size"]

_SIZE_ATTR = "mtl_image_size"   # the original (h, w) a strip carries from the worker's decode to the collate


@dataclass(frozen=True)
class AnyresGeometry:
    """An anyres model's image facts (plain data, picklable): ``tile`` (S, the tower's side), ``pinpoints``
    (``(h, w)`` pairs, the model's), ``grid`` (features per tile side), ``view_tokens`` (features of one view, a CLS
    dropped or not as the strategy says), ``max_tiles`` (OneVision's N of ``"anyres_max_N"``; 0: LLaVA-NeXT, no
    shrink), ``interpolation`` (the processor's resampling filter: a key of ``resize.INTERPOLATIONS``), ``several_fill``
    (OneVision: an image of a row of several is padded square with this colour, the image mean's 8-bit levels, and
    read as that one view; None: tiled as alone, LLaVA-NeXT)."""

    tile: int
    pinpoints: tuple[tuple[int, int], ...]
    grid: int
    view_tokens: int
    max_tiles: int = 0
    interpolation: str = "bicubic"
    several_fill: tuple[int, int, int] | None = None

    def pinpoint(self, size: Sequence[int]) -> tuple[int, int]:
        """The processor's (and the model's) best pinpoint ``(h, w)`` for an image of ``size`` ``(h, w)``."""
        from transformers.image_processing_utils import select_best_resolution

        h, w = select_best_resolution((int(size[0]), int(size[1])), [list(p) for p in self.pinpoints])
        return int(h), int(w)

    def views(self, size: Sequence[int]) -> int:
        """Base view plus tiles of an image of ``size``."""
        h, w = self.pinpoint(size)
        return 1 + (h // self.tile) * (w // self.tile)

    @property
    def most_views(self) -> int:
        """The most views any image has (the largest pinpoint's tiles and the base view)."""
        return 1 + max((h // self.tile) * (w // self.tile) for h, w in self.pinpoints)

    def resized(self, w: int, h: int) -> tuple[int, int]:
        """``(width, height)`` of a ``w`` x ``h`` image inside its best pinpoint (``get_patch_output_size``)."""
        ph, pw = self.pinpoint((h, w))
        scale_w, scale_h = pw / w, ph / h
        if scale_w < scale_h:
            return pw, min(math.ceil(h * scale_w), ph)
        return min(math.ceil(w * scale_h), pw), ph

    def tokens(self, size: Sequence[int]) -> int:
        """:func:`anyres_tokens` of an image of ``size`` (tiled)."""
        return anyres_tokens(self, size)

    def image_ids(self, size: Sequence[int]) -> None:
        """None: an image's ids are its image tokens alone (the layout wraps them)."""
        return None

    def strip(self, img: Any, several: bool = False) -> Tensor:
        """:func:`anyres_views`."""
        return anyres_views(img, self, several)


def anyres_tokens(geo: AnyresGeometry, size: Sequence[int], tiled: bool = True) -> int:
    """The language-model tokens an image of ``size`` (its original ``(h, w)``) fills, by the model's arithmetic:
    the base view's features, then the tile grid's unpadded to the image's aspect (``unpad_image``; OneVision
    shrunk past ``1.1·√N`` tiles a side as its ``pack_image_features``), a newline per row; ``tiled`` False: the
    base view and one newline (an image of a row of several, OneVision)."""
    if not tiled:
        return geo.view_tokens + 1
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    ph, pw = geo.pinpoint(size)
    rows, cols = ph // geo.tile * geo.grid, pw // geo.tile * geo.grid
    _, uh, uw = unpad_image(torch.empty(0, rows, cols, device="meta"), [int(size[0]), int(size[1])]).shape
    if geo.max_tiles:
        ratio = math.sqrt(uh * uw / (geo.max_tiles * geo.grid ** 2))
        if ratio > 1.1:
            uh, uw = int(uh // ratio), int(uw // ratio)
    return geo.view_tokens + uh * (uw + 1)


def anyres_views(img: Any, geo: AnyresGeometry, several: bool = False) -> Tensor:
    """An RGB PIL image as the processor's views, a ``(3, V·S, S)`` uint8 strip (base view, then the tiles row by
    row), carrying the image's ``(h, w)`` (:func:`image_size_of`): the processor's own torchvision calls on the
    uint8 image, so the pixels are its, bit for bit. ``several``: an image of a row of several, which OneVision's
    processor pads square (``several_fill``) and reads as that one view (a ``(3, S, S)`` strip)."""
    import torchvision.transforms.v2.functional as tvF
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_utils import ChannelDimension

    mode = getattr(tvF.InterpolationMode, geo.interpolation.upper())
    x = tvF.pil_to_tensor(img)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    s = geo.tile
    if several and geo.several_fill is not None:   # (its pad_to_square: the odd pixel after)
        side = max(h, w)
        left, top = (side - w) // 2, (side - h) // 2
        square = tvF.pad(x, padding=[left, top, side - w - left, side - h - top], fill=list(geo.several_fill))
        strip = tvF.resize(square, [s, s], interpolation=mode, antialias=True).contiguous()
        return with_size(strip, (h, w))
    ph, pw = geo.pinpoint((h, w))
    nh, nw = get_patch_output_size(x, (ph, pw), ChannelDimension.FIRST)
    content = tvF.resize(x, [nh, nw], interpolation=mode, antialias=True)
    (left, lr), (top, tb) = divmod(pw - nw, 2), divmod(ph - nh, 2)
    canvas = tvF.pad(content, padding=[left, top, left + lr, top + tb])
    tiles = canvas.unfold(1, s, s).unfold(2, s, s).permute(1, 2, 0, 3, 4).reshape(-1, 3, s, s)
    base = tvF.resize(x, [s, s], interpolation=mode, antialias=True)
    return with_size(torch.cat([base[None], tiles]).transpose(0, 1).reshape(3, -1, s).contiguous(), (h, w))


class SizedStrip(Tensor):
    """A strip (:func:`anyres_views`, :func:`mtl_lora_vl.data.splits.split_views`) that keeps its image's original
    ``(h, w)`` (``mtl_image_size``) through whatever gives a tensor of its own shape (``.clone()``, ``.to(dtype)``,
    ``.contiguous()``, ``.pin_memory()``, ``.float() / 255``, pickling to and from loader workers, ``deepcopy``).
    A tensor made from it of another shape (``torch.stack``, ``unbind``, ``x[None]``) stays a strip without its
    size, which :func:`image_size_of` refuses rather than read as a picture of the strip's own shape."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = super().__torch_function__(func, types, args, kwargs or {})
        src = args[0] if args else None
        if isinstance(out, SizedStrip) and isinstance(src, SizedStrip) and out is not src and out.shape == src.shape:
            size = getattr(src, _SIZE_ATTR, None)
            if size is not None:
                setattr(out, _SIZE_ATTR, size)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> SizedStrip:
        out = memo[id(self)] = self.clone()
        return out


def with_size(strip: Tensor, size: tuple[int, int]) -> SizedStrip:
    """``strip`` (the same storage) as a :class:`SizedStrip` carrying its image's original ``(h, w)``."""
    out = strip.as_subclass(SizedStrip)
    setattr(out, _SIZE_ATTR, (int(size[0]), int(size[1])))
    return out


def image_size_of(x: Tensor) -> tuple[int, int]:
    """The ``(h, w)`` an image tensor stands for: a strip's original size, else its own; a strip that lost its size
    (see :class:`SizedStrip`) is refused."""
    size = getattr(x, _SIZE_ATTR, None)
    if size is None and isinstance(x, SizedStrip):
        raise ValueError(f"a strip of views {tuple(x.shape)} lost its picture's original size (a torch.stack, "
                         "unbind or indexing made a new tensor of another shape), and read as a picture of its own "
                         "shape it would be wrong: give pad_images the strips as to_uint8_tensor / anyres_views "
                         "returned them (.clone(), .to(), pin_memory and pickling keep the size), or re-attach it "
                         "with mtl_lora_vl.data.anyres.with_size(strip, (h, w))")
    return tuple(size) if size is not None else (int(x.shape[-2]), int(x.shape[-1]))


def carries_size(x: Any) -> bool:
    """Whether ``x`` is a strip carrying its image's original size (so it cannot be stacked with others as is)."""
    return getattr(x, _SIZE_ATTR, None) is not None


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
    """Images ``(C, h, w)`` of one batch as one tensor, with each image's ``(h, w)``: stacked when they share a size,
    else each at the top left of a zero canvas of the largest height and width (``native`` resizes keep each
    image's own size; the backbone reads each image's part back by its size). An anyres strip's size is its
    image's original one (:func:`image_size_of`), the canvas as tall as the longest strip."""
    shapes = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
    sizes = tuple(image_size_of(x) for x in images)
    images = [x.as_subclass(Tensor) for x in images]   # (the batch: a plain tensor)
    if len(set(shapes)) <= 1:
        return torch.stack(list(images)), sizes
    out = images[0].new_zeros((len(images), images[0].shape[0], max(h for h, _ in shapes), max(w for _, w in shapes)))
    for canvas, x, (h, w) in zip(out, images, shapes):
        canvas[:, :h, :w] = x
    return out, sizes


def normalise_regions(canvas: Tensor, sizes: Sequence[tuple[int, int]], mean: Tensor, std: Tensor,
                      dtype: torch.dtype) -> Tensor:
    """A uint8 canvas ``(B, 3, H, W)`` of images at their own sizes (:func:`pad_images`, each at its top left) ->
    ``(x / 255 - mean) / std`` in ``dtype`` (``mean``, ``std``: fp32 ``(1, 3, 1, 1)``), converted image by image over
    its own ``(h, w)`` only, the rest a black pixel's value (what the canvas's zero padding gives): the values of the
    whole canvas's conversion, without its fp32 copies (4x the images' pixels for 1600 x 400 beside 400 x 1600)."""
    B, _, H, W = canvas.shape
    if len(sizes) != B or any(not (0 < h <= H and 0 < w <= W) for h, w in sizes):
        raise ValueError(f"normalise_regions: image_sizes {list(sizes)} do not fit a canvas of {tuple(canvas.shape)} "
                         "(one (h, w) per image, within the canvas); pass the sizes pad_images gave with it")
    canvas = canvas.as_subclass(Tensor)
    black = ((torch.zeros((1, 3, 1, 1), device=canvas.device) - mean) / std).to(dtype)
    out = black.expand(B, 3, H, W).contiguous()
    for i, (h, w) in enumerate(sizes):
        out[i, :, :h, :w] = ((canvas[i : i + 1, :, :h, :w].float().div_(255.0) - mean) / std).to(dtype)
    return out
