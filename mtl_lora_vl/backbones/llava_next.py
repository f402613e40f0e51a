"""LLaVA-NeXT (LLaVA-1.6, ``LlavaNextForConditionalGeneration``) and LLaVA-OneVision
(``LlavaOnevisionForConditionalGeneration``) from a local directory: the language-model API of :mod:`.hf_vlm` on
their anyres images.

* **Each image at its own aspect** (the default). The processor reads each image at the pinpoint of
  ``image_grid_pinpoints`` that best fits its own size (a base view of the whole image, plus a grid of tiles of the
  vision tower's side S), so images of different aspects fill different numbers of tokens. The backbone reads it
  so too (:mod:`mtl_lora_vl.data.anyres`): the loader worker makes the processor's views with its own calls on the
  8-bit image and ships them as one ``(3, V·S, S)`` strip with the image's original size; a batch's strips share
  one canvas, ``image_sizes`` the original sizes; the collator counts each image's tokens by the model's
  arithmetic (:func:`~mtl_lora_vl.data.anyres.anyres_tokens`); on the device the strips are cut back into the
  model's ``(B, V, 3, S, S)`` views, the views past an image's own zero, as the processor pads them. Ids, pixel
  values, ``image_sizes`` and logits equal the processor's and the model's on its inputs, so a merged model used
  with its own processor sees pictures as its task was trained on them.
* **One square canvas per image** (:meth:`LlavaNextBackbone.native_aspect` False, and images given as ``C x C``
  canvases without sizes). Every image read at one square pinpoint C: LLaVA-NeXT's largest (672 px, 2 x 2 tiles,
  for LLaVA-1.6's 336-px tower), LLaVA-OneVision's largest whose grid its ``vision_aspect_ratio`` keeps whole (1152
  px, 3 x 3 tiles of 384 px, for ``"anyres_max_9"``). The loader squashes the image to C x C (the processor's
  resampling filter); on the device the canvas is cut into its (C / S)² tiles and resized to S for the base view
  (antialiased and rounded to 8 bits pass by pass, as the processor's torchvision backend resizes): what the
  processor makes of a C x C image, so every image fills the same count, by the model's own arithmetic
  (:mod:`mtl_lora_vl.family_anyres`): 2,928 tokens for LLaVA-1.6 (576 base, a 48 x 48 grid, 48 newlines). The
  aspect is not kept: a merged model used with its own processor sees wide and tall pictures laid out otherwise.
* **Rows of several images** (LLaVA-OneVision). Its model and processor read each image of a sample of several as
  its base view alone (``batch_num_images``; the processor pads it square with the image mean first, and so does
  the loader at the native aspect); the backbone lays such rows out so, beside rows of one tiled image
  (:class:`LlavaOnevisionBackbone`). LLaVA-NeXT tiles every image, as its processor does.
* **Positions.** A Llama / Mistral / Vicuna / Qwen2 language model: 1-D positions, as for LLaVA.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.anyres import AnyresGeometry
from ..data.resize import ImageResize, size_fields
from ..family_anyres import llava_next_image, llava_onevision_image, view_tokens
from .base import OPENAI_MEAN, BackboneError, as_rgb, register_backbone
from .hf_vlm import HFVLMBackbone
from .image_reading import NativeImageReading
from .image_record import image_record
from .lm_collate import PromptLayout

__all__ = ["LlavaNextBackbone", "LlavaOnevisionBackbone"]

logger = logging.getLogger(__name__)

_DEVICE_FILTERS = ("bilinear", "bicubic")   # the resampling filters torch's antialiased interpolate has
_ROWS_SHOWN = 8   # the rows a message lists of a batch's per-row counts


def _per_row(values: Sequence[int]) -> str:
    """A batch's per-row counts for a message: the first rows and how many more (a 1,000-row batch: not all)."""
    shown = ", ".join(str(int(v)) for v in values[:_ROWS_SHOWN])
    more = len(values) - _ROWS_SHOWN
    return f"[{shown}, ... {more} more rows]" if more > 0 else f"[{shown}]"


@register_backbone("llava_next")
@dataclass(eq=False)
class LlavaNextBackbone(NativeImageReading, HFVLMBackbone):
    """``LlavaNextForConditionalGeneration`` (see the module doc): each image's views at its own aspect (the loader's
    strips and original sizes) reach the model as ``(B, V, 3, S, S)`` with ``image_sizes`` the original sizes; under
    ``native_aspect(False)``, canvases of ``image_size`` (C) as ``(B, 1 + tiles, 3, S, S)`` with ``(C, C)``."""

    tile_size: int = 0       # S: the vision tower's side, the base view's and each tile's
    base_filter: str = "bicubic"
    geometry: AnyresGeometry | None = None      # the model's anyres facts (native aspect)
    square_resize: ImageResize | None = None    # the squash to the canvas (native_aspect(False))

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> LlavaNextBackbone:
        """As :meth:`HFVLMBackbone.from_model`, with the tile side and the base view's resampling filter checked
        against the image processor (its crop and its shortest edge must be the tower's side); images at their own
        aspect, or on the square where the adapter loaded onto the bare model was trained so."""
        image_processor = getattr(processor, "image_processor", None)
        side = int(model.config.vision_config.image_size)
        label = f"{name}: {type(image_processor).__name__}"
        crop = size_fields(getattr(image_processor, "crop_size", None))
        short = size_fields(getattr(image_processor, "size", None))
        made = {int(v) for v in (crop.get("height"), crop.get("width"), short.get("shortest_edge"),
                                 short.get("height"), short.get("width")) if v is not None}
        if image_processor is not None and made - {side}:
            raise BackboneError(f"{label}: cuts and resizes images to {sorted(made)} px, but the vision tower takes "
                                f"{side} px (config.vision_config.image_size); save the processor with "
                                f"crop_size={{'height': {side}, 'width': {side}}} and size={{'shortest_edge': {side}}}")
        pins = [list(map(int, p)) for p in (model.config.image_grid_pinpoints or ())]
        theirs = getattr(image_processor, "image_grid_pinpoints", None)
        if image_processor is not None and theirs is not None and [list(map(int, p)) for p in theirs] != pins:
            raise BackboneError(f"{label}: image_grid_pinpoints {[list(p) for p in theirs]} are not the model's "
                                f"(config.image_grid_pinpoints {pins}), so it tiles images otherwise than the model "
                                f"counts them; save the processor with image_grid_pinpoints={pins}")
        try:
            bb = super().from_model(model, processor, name)
        except BackboneError:
            raise
        except ValueError as e:   # the tower / strategy pair the model cannot lay out (family_anyres.view_tokens)
            raise BackboneError(f"{name}: {e}") from e
        bb.tile_size = side
        bb.base_filter = bb.resize.interpolation
        if bb.base_filter not in _DEVICE_FILTERS:
            raise BackboneError(f"{label}: resample={bb.base_filter!r}; the base view is resized on the device, which "
                                f"has {' and '.join(_DEVICE_FILTERS)} only; save the image processor with "
                                "resample=3 (bicubic, LLaVA-NeXT's own)")
        bb.square_resize = bb.resize
        inner = getattr(model, "model", model)
        grid = side // int(model.config.vision_config.patch_size)
        bb.geometry = AnyresGeometry(side, tuple(tuple(p) for p in pins), grid, view_tokens(inner, None),
                                     cls._max_tiles(model.config), bb.base_filter, cls._several_fill(bb))
        bb.native_aspect(image_record(model).reading != "square")   # (a loaded adapter's record)
        return bb

    @classmethod
    def _max_tiles(cls, config: Any) -> int:
        """OneVision's N of ``"anyres_max_N"`` (0 here: LLaVA-NeXT keeps every tile's features)."""
        return 0

    @classmethod
    def _several_fill(cls, bb: LlavaNextBackbone) -> tuple[int, int, int] | None:
        """The square padding of an image of a row of several (None: LLaVA-NeXT tiles it as alone)."""
        return None

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def _image_side(cls, config: Any, image_processor: Any, name: str) -> int:
        """C: the largest square of ``image_grid_pinpoints`` (a whole number of the tower's tiles per side)."""
        return max(cls._squares(config, name))

    @staticmethod
    def _squares(config: Any, name: str) -> list[int]:
        """The sides of the square pinpoints of whole tiles (refused: none)."""
        side = int(config.vision_config.image_size)
        pins = [tuple(int(v) for v in p) for p in (config.image_grid_pinpoints or ())]
        squares = [h for h, w in pins if h == w and h % side == 0]
        if not squares:
            raise BackboneError(f"{name}: config.image_grid_pinpoints {[list(p) for p in pins]} hold no square of "
                                f"whole {side}-px tiles, which the backbone reads every image at; add one (LLaVA-1.6 "
                                f"has [{2 * side}, {2 * side}])")
        return squares

    @classmethod
    def _image_tokens(cls, model: nn.Module, image_size: int) -> int:
        """The tokens a ``C x C`` image fills, by the model's own arithmetic (:func:`llava_next_image`)."""
        return llava_next_image(getattr(model, "model", model), (image_size, image_size))[0]

    @classmethod
    def _image_resize(cls, config: Any, image_size: int, image_processor: Any, label: str) -> ImageResize:
        """A squash to the canvas, with the processor's resampling filter (bicubic in the released ones)."""
        return ImageResize.from_hf(image_size, {"size": {"height": image_size, "width": image_size},
                                                "resample": getattr(image_processor, "resample", None)}, label)

    # ------------------------------------------------------------------------------------------ inputs
    def _vision_inputs(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                       ) -> dict[str, Tensor]:
        """Strips of views ``(B, 3, V·S, S)`` with the images' original ``image_sizes`` (native aspect; the loader's,
        :func:`~mtl_lora_vl.data.anyres.anyres_views`) as the model's ``(B, V, 3, S, S)``, the views past an image's
        own zero, as the processor pads them. Canvases ``(B, 3, C, C)`` (no sizes) as the processor reads C x C
        images: the base view (see :meth:`_base_view`), then the tiles row by row; ``image_sizes`` ``(C, C)``."""
        c, s = self.image_size, self.tile_size
        h = pixel_values.shape[-2]
        # (one view each: OneVision's images of rows of several, whose sizes a batch of S x S pictures leaves out)
        one_view = self.resize.anyres is not None and self.resize.anyres.several_fill is not None
        strips = pixel_values.dim() == 4 and pixel_values.shape[-1] == s != c and h % s == 0 and (h > s or one_view)
        if self.resize.anyres is not None and (image_sizes is not None or strips):
            return self._strip_views(pixel_values, image_sizes)
        if pixel_values.dim() != 4 or pixel_values.shape[-2:] != (c, c):
            raise ValueError(f"{self.name}: expected images (B, 3, {c}, {c}) (the backbone's image_size: the square "
                             f"pinpoint it reads images at), got {tuple(pixel_values.shape)}")
        pixel_values = super()._vision_inputs(pixel_values, image_sizes)["pixel_values"]
        b, g = pixel_values.shape[0], c // s
        base = self._base_view(pixel_values)
        tiles = pixel_values.unfold(2, s, s).unfold(3, s, s)              # (B, 3, g, g, S, S)
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b, g * g, 3, s, s)
        sizes = torch.tensor([[c, c]] * b)   # (on the host: see _strip_views)
        return {"pixel_values": torch.cat([base[:, None], tiles], dim=1), "image_sizes": sizes}

    def _strip_views(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None) -> dict[str, Tensor]:
        """The model's views and ``image_sizes`` from strips (see :meth:`_vision_inputs`; sizes None: every image's
        original size is the canvas's own)."""
        s, geo = self.tile_size, self.resize.anyres
        b, _, h, w = pixel_values.shape if pixel_values.dim() == 4 else (0, 0, 0, 0)
        if pixel_values.dim() != 4 or w != s or h % s or not 1 <= h // s <= geo.most_views:
            raise ValueError(f"{self.name}: expected strips of views (B, 3, V*{s}, {s}), V up to {geo.most_views} "
                             f"(the loader's, mtl_lora_vl.data.anyres.anyres_views), got {tuple(pixel_values.shape)}")
        if image_sizes is None and h > s:   # (a strip does not say its picture's size: read as its own, it was wrong)
            raise ValueError(f"{self.name}: strips of views {tuple(pixel_values.shape)} need their images' original "
                             "sizes, image_sizes=[(h, w), ...] (mtl_lora_vl.data.anyres.pad_images gives both)")
        sizes = image_sizes if image_sizes is not None else [(h, w)] * b   # (one view each: OneVision's pair images)
        views = pixel_values.reshape(b, 3, h // s, s, s).transpose(1, 2)
        # (an image of a row of several, OneVision, holds its one view: the model reads no more of it)
        counts = [min(geo.views(size), h // s) for size in sizes]
        if min(counts) < h // s:   # (the processor pads an image's views with zeros, after normalising)
            # (non_blocking: torch.tensor(counts, device=...) copies with a stream synchronise, a wait for the device)
            own = torch.tensor(counts).to(views.device, non_blocking=True)
            keep = torch.arange(h // s, device=views.device)[None] < own[:, None]
            views = views * keep[:, :, None, None, None].to(views.dtype)
        # on the host, as the processor gives them: the model reads each row (.tolist()) and the row check counts
        # each image's tokens from them; on the device, every forward waited for it
        return {"pixel_values": views, "image_sizes": torch.tensor(sizes)}

    def _base_view(self, pixel_values: Tensor) -> Tensor:
        """The normalised canvases resized to the tile side as the processor's torchvision backend resizes 8-bit
        images: antialiased; bicubic the width first, then the height, each pass rounded to 8 bits (its uint8
        kernel's intermediate); so that a pixel differs from the processor's by at most one level (its fixed-point
        weights)."""
        mean, std = self.normalisers(pixel_values.device)
        levels = (pixel_values.float() * std + mean) * 255
        c, s = self.image_size, self.tile_size
        # (bilinear: one pass comes within one level of it, two rounded passes within two)
        for size in ((c, s), (s, s)) if self.base_filter == "bicubic" else ((s, s),):
            levels = F.interpolate(levels, size=size, mode=self.base_filter, align_corners=False, antialias=True)
            levels = levels.clamp_(0, 255).round_()
        return ((levels / 255 - mean) / std).to(pixel_values.dtype)


@register_backbone("llava_onevision")
@dataclass(eq=False)
class LlavaOnevisionBackbone(LlavaNextBackbone):
    """``LlavaOnevisionForConditionalGeneration``: read as LLaVA-NeXT (see the module doc); its square canvas
    (``native_aspect(False)``) the largest whose tile grid the model keeps whole.

    A row of several images (NLVR2's pair) is laid out as the model and its processor lay out a sample of several:
    each image its base view alone, no tiles (``several_tokens`` tokens each: 730 for the released 1152-px canvas,
    instead of 7,371), the model told each row's image count (``batch_num_images``: the prompts' placeholders,
    the loader's ``lm_image_counts``, or ``image_counts=``; read from the rows' image tokens only where they read one
    way); a row of one image keeps its base view and tiles, so rows of one and of several mix in a batch."""

    several_tokens: int = 0   # the tokens of an image of a row of several: its base view and a newline

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> LlavaOnevisionBackbone:
        """As :meth:`LlavaNextBackbone.from_model`, with the processor's ``vision_aspect_ratio`` the model's (the two
        agree on the canvas's count, and would differ on a larger image's: a merged export copies the processor),
        and its count for an image of a row of several the model's."""
        ours, theirs = model.config.vision_aspect_ratio, getattr(processor, "vision_aspect_ratio", None)
        if theirs is not None and theirs != ours:
            raise BackboneError(f"{name}: the processor's vision_aspect_ratio {theirs!r} is not the model's "
                                f"(config.vision_aspect_ratio {ours!r}), so it counts the tokens of large images "
                                f"otherwise than the model fills them; save the processor with "
                                f"vision_aspect_ratio={ours!r}")
        bb = super().from_model(model, processor, name)
        c = bb.image_size
        bb.several_tokens = llava_onevision_image(getattr(model, "model", model), (c, c), tiled=False)[0]
        bb._collators.clear()   # (none made yet; a collator made before would lack the count)
        one, base = bb.num_image_tokens, bb.several_tokens
        if one % base == 0:   # (not the released model: 7,371 = 10 x 730 + 71) an image alone reads as base views
            logger.info("%s: an image alone fills %d tokens, %d times an image of a row of several (%d): rows of "
                        "one and of several images are told apart by their image counts (the prompts' placeholders, "
                        "the loader's lm_image_counts); in your own loop pass lm_loss(..., image_counts=)",
                        name, one, one // base, base)
        said = _processor_several_tokens(processor)
        if said is not None and said != bb.several_tokens:
            raise BackboneError(f"{name}: the processor expands each image of a sample of several to {said} tokens "
                                f"but the model fills {bb.several_tokens} (its base view and a newline); save the "
                                "processor with the model's num_image_tokens (the tower's features per view, a CLS "
                                "included) and vision_feature_select_strategy")
        return bb

    @property
    def layout(self) -> PromptLayout:
        return replace(super().layout, several_image_tokens=self.several_tokens)

    def _images_per_row(self, counts: list[int], n_images: int, sizes: list[tuple[int, int]] | None = None,
                        image_counts: Sequence[int] | None = None) -> list[int] | None:
        """Each row's image count: ``image_counts`` where the caller knows it (the image placeholders each prompt
        holds), checked against the rows' image-token ``counts``; else read from ``counts`` (on the host: one wait
        for the device): a row holds its next image's whole count (one image, tiled: ``num_image_tokens``, or under
        the native aspect its size's, ``sizes``), a multiple of two or more of ``several_tokens`` (that many base
        views), or none. None where the rows do not split so; a batch that splits into the ``n_images`` images more
        than one way (a 34-token image alone, or two 17-token base views) is refused: only the counts tell."""
        base, lay = self.several_tokens, self.layout
        full = [lay.image_tokens(size) for size in sizes] if sizes is not None else []

        def readings(r: int, at: int) -> list[int]:   # row r's image counts that fit its tokens, from image at
            c, one = counts[r], full[at] if at < len(full) else self.num_image_tokens
            return [k for k in dict.fromkeys([1 if c == one else -1, c // base if c % base == 0 and c // base != 1
                                              else -1]) if k >= 0 and at + k <= n_images]

        if image_counts is not None:
            given = [int(k) for k in image_counts]
            at = [0, *itertools.accumulate(given)]   # the image each row starts at
            return given if len(given) == len(counts) and at[-1] == n_images and all(
                k in readings(r, at[r]) for r, k in enumerate(given)) else None

        reach = [{0}]   # the images each row can start at (in a loop, not a recursion: a batch of 1,000 rows)
        for r in range(len(counts)):
            reach.append({at + k for at in reach[r] for k in readings(r, at)})
        tails = [{n_images: 1} if n_images in reach[-1] else {}]   # splits of rows r.. from an image (2: several)
        for r in range(len(counts) - 1, -1, -1):
            tails.append({at: n for at in reach[r]
                          if (n := min(2, sum(tails[-1].get(at + k, 0) for k in readings(r, at))))})
        tails.reverse()
        total = tails[0].get(0, 0)
        if total > 1:
            raise BackboneError(
                f"{self.name}: rows of {_per_row(counts)} image tokens split into the {n_images} images more than "
                f"one way (an image alone fills as many tokens as base views of a row of several, {base} each), so "
                "each row's image count cannot be read from its ids; pass image_counts=[...] (the image "
                "placeholders each row's prompt holds: backbone.lm_collator().image_counts(prompts)), or call "
                "generate / sequence_scores with the prompts")
        if not total:
            return None
        split, at = [], 0
        for r in range(len(counts)):   # (the one split: each row's one reading that the rest complete)
            split.append(next(k for k in readings(r, at) if at + k in tails[r + 1]))
            at += split[-1]
        return split

    def _row_inputs(self, input_ids: Tensor, n_images: int, image_sizes: Any = None,
                    image_counts: Sequence[int] | None = None) -> dict[str, Tensor]:
        """``batch_num_images``: each row's images (an image of a row of several is its base view alone):
        ``image_counts`` where given (checked on the host against the rows and images only: no wait for the
        device), else read from the ids (:meth:`_images_per_row`)."""
        if image_counts is not None:
            per_row = [int(k) for k in image_counts]
            if len(per_row) != input_ids.shape[0] or sum(per_row) != n_images or min(per_row, default=0) < 0:
                raise BackboneError(f"{self.name}: image_counts {_per_row(per_row)} do not give the "
                                    f"{input_ids.shape[0]} rows of input_ids the {n_images} images given; pass each "
                                    "row's image count (the image placeholders its prompt holds), rows in order")
        else:
            per_row = (self._images_per_row((input_ids == self.image_token_id).sum(dim=1).tolist(), n_images,
                                            image_sizes) if input_ids.dim() == 2 else None)
        # on the host: the model loops over it in Python (on the device every element would be a wait)
        return {} if per_row is None else {"batch_num_images": torch.tensor(per_row)}

    def _check_rows(self, pixel_values: Tensor, input_ids: Tensor, what: str,
                    image_sizes: list[tuple[int, int]] | None = None,
                    image_counts: Sequence[int] | None = None) -> None:
        """Rows of several images hold their base views' tokens; other rows are checked as LLaVA-NeXT's, and rows of
        several tiled images (a layout the model never reads) refused. ``image_counts``: each row's images, known
        to the caller (else read from the ids, :meth:`_images_per_row`)."""
        shaped = input_ids.dim() == 2 and pixel_values.dim() == 4
        counts = (input_ids == self.image_token_id).sum(dim=1).tolist() if shaped else []
        per_row = self._images_per_row(counts, pixel_values.shape[0], image_sizes, image_counts) if shaped else None
        if shaped and image_counts is not None and per_row is None:
            raise BackboneError(
                f"{what}: input_ids hold {_per_row(counts)} image tokens (id {self.image_token_id}) per row, which "
                f"is not image_counts {_per_row(list(image_counts))} of the {pixel_values.shape[0]} images given "
                f"({self.several_tokens} per image of a row of several, an image alone its whole count); build the "
                "ids with backbone.lm_collator() from prompts holding each row's image placeholders")
        if per_row is not None and max(per_row, default=0) > 1:
            return
        base = self.several_tokens
        views = [c // base for c in counts if c != self.num_image_tokens and c % base == 0]
        if shaped and per_row is None and views and min(views) > 1:   # base views, but not of the images given
            raise BackboneError(
                f"{what}: input_ids hold {_per_row(counts)} image tokens (id {self.image_token_id}) per row, "
                f"{self.several_tokens} per image of a row of several (its base view alone) and "
                f"{self.num_image_tokens} for an image alone, which does not add up to the {pixel_values.shape[0]} "
                "images given; give each row one placeholder per image (backbone.lm_collator() expands them)")
        super()._check_rows(pixel_values, input_ids, what, image_sizes)
        if shaped and per_row is None:   # whole images, some rows holding several of them tiled
            raise BackboneError(
                f"{what}: input_ids hold {_per_row(counts)} image tokens (id {self.image_token_id}) per row: rows "
                f"of several images of {self.num_image_tokens} tokens each (base view and tiles), but {self.name} "
                f"reads each image of a row of several as its base view alone, {self.several_tokens} tokens (as its "
                f"processor lays out a sample of several); build the ids with backbone.lm_collator()")

    @classmethod
    def _image_side(cls, config: Any, image_processor: Any, name: str) -> int:
        """C: the largest square of ``image_grid_pinpoints`` whose g x g tile grid the model keeps whole (its
        ``vision_aspect_ratio`` "anyres_max_N" shrinks the features of a grid past 1.1·√N tiles a side: for
        "anyres_max_9", 3 x 3 tiles, 1152 px for the 384-px tower; a larger canvas costs its tower passes for about
        as many tokens), else the smallest square."""
        side = int(config.vision_config.image_size)
        squares = sorted(cls._squares(config, name))
        aspect = str(config.vision_aspect_ratio)
        most = aspect.removeprefix("anyres_max_")
        if not aspect.startswith("anyres_max_") or not most.isdigit() or int(most) < 1:
            raise BackboneError(f"{name}: config.vision_aspect_ratio {aspect!r} is not of the form 'anyres_max_N' "
                                "(N tiles' worth of features at most), which the model's packing of tiles needs; "
                                "LLaVA-OneVision's is 'anyres_max_9'")
        kept = [c for c in squares if math.sqrt((c // side) ** 2 / int(most)) <= 1.1]   # (the model's own test)
        return kept[-1] if kept else squares[0]

    @classmethod
    def _several_fill(cls, bb: LlavaNextBackbone) -> tuple[int, int, int] | None:
        """The processor's ``pad_to_square`` colour: its ``image_mean``'s 8-bit levels (truncated, as it does), whatever
        its ``do_normalize`` and ``rescale_factor`` (the backbone's mean is 0 without normalisation)."""
        mean = getattr(bb.hf_processor.image_processor, "image_mean", None) or OPENAI_MEAN
        return tuple(int(x * 255) for x in as_rgb(mean, f"{bb.name}: image_mean"))   # type: ignore[return-value]

    @classmethod
    def _max_tiles(cls, config: Any) -> int:
        """N of ``"anyres_max_N"`` (read as the model reads it)."""
        return int(str(config.vision_aspect_ratio).removeprefix("anyres_max_"))

    @classmethod
    def _image_tokens(cls, model: nn.Module, image_size: int) -> int:
        """The tokens a ``C x C`` image fills, by the model's own packing (:func:`llava_onevision_image`)."""
        return llava_onevision_image(getattr(model, "model", model), (image_size, image_size))[0]


def _processor_several_tokens(processor: Any) -> int | None:
    """The tokens ``LlavaOnevisionProcessor`` expands an image of a sample of several to (its
    ``replace_image_token``: ``num_image_tokens`` and a newline, a CLS dropped under ``"default"``); None where it
    cannot say (no count, another processor)."""
    replace_token = getattr(processor, "replace_image_token", None)
    if replace_token is None or getattr(processor, "num_image_tokens", None) is None:
        return None
    try:
        text = replace_token({"batch_num_images": [2], "image_sizes": [], "pixel_values": []}, 0)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return text.count(processor.image_token) if isinstance(text, str) else None
