"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``) from a local
directory: the language-model API of :mod:`.hf_vlm` on the family's own image layout.

* **Each image split as the processor splits it** (the default where the processor splits, as released:
  ``do_image_splitting``). The longest edge resized to ``size["longest_edge"]``, a grid of crops of
  ``max_image_size["longest_edge"]`` (M) plus the global image (:mod:`mtl_lora_vl.data.splits`): the loader worker
  makes the views with the processor's own calls on the 8-bit image and ships them as one ``(3, V·M, M)`` strip
  with the image's original size; the collator writes each image's ids from its size (per crop
  ``<fake_token_around_image><row_r_col_c>`` and the image tokens, a newline after each row, then the global
  image's); on the device the strips are cut back into the model's ``(N, V, 3, M, M)`` crops, those past an image's
  own zero (the model drops all-zero crops as padding; every crop is M x M, so no ``pixel_attention_mask``). Ids,
  pixel values and logits equal the processor's and the model's on its inputs, so a merged model used with its own
  processor (its files as the source's: splitting on) reads pictures as its task was trained on them.
* **Each image unsplit** (:meth:`Idefics3Backbone.native_aspect` False, the default where the processor does not
  split; images given as ``(B, 3, M, M)`` squares without sizes). The loader squashes the image to the M x M
  square (the processor's resampling filter), and the prompt holds ``<fake_token_around_image><global-img>``, the
  ``image_seq_len`` image tokens and ``<fake_token_around_image>``, as the processor writes one image with
  ``do_image_splitting=False``; the backbone's own copy of the processor (``backbone.processor``) is set so, and
  gives the same ids. (With splitting off, the processor first scales the longest edge to ``size["longest_edge"]``
  and then squashes to the square: the same picture, resampled twice instead of once.)
* **Rows of several images** (NLVR2's pair): each image split as alone, its ids where its placeholder stands, as
  the processor does for a sample of several images; the model reads all crops as one sequence either way.
* **Images.** Idefics3 drops an image (crop) whose normalised pixels are all 0 as padding; a real one (no loader
  makes one: the processors' mean, 0.5, is no 8-bit level) leaves its row's image tokens without features, refused
  with that reason.
* **Positions.** A Llama-style language model: 1-D positions, as for LLaVA.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.resize import ImageResize, size_fields
from ..data.splits import SplitGeometry, most_grid
from .base import BackboneError, register_backbone
from .hf_processor import edit_image_processor_files
from .hf_vlm import HFVLMBackbone
from .image_reading import NativeImageReading
from .image_record import image_record

__all__ = ["Idefics3Backbone"]

logger = logging.getLogger(__name__)

_CROP_TAG = re.compile(r"<row_\d+_col_\d+>")   # a crop's tag, as the processors write it


@register_backbone("idefics3")
@dataclass(eq=False)
class Idefics3Backbone(NativeImageReading, HFVLMBackbone):
    """``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration`` (see the module doc)."""

    geometry: SplitGeometry | None = None      # the processor's splitting (None: it cannot be written exactly)
    square_resize: ImageResize | None = None    # the squash to the M x M square (native_aspect(False))

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> Idefics3Backbone:
        """As :meth:`HFVLMBackbone.from_model`, on a copy of the processor (the caller's is left as it is), its
        one-view count checked; images split as the processor splits them where it does (see the module doc), or as
        the adapter loaded onto the bare model was trained (its :func:`~.image_record.image_record`)."""
        image_processor = getattr(processor, "image_processor", None)
        splits = bool(getattr(image_processor, "do_image_splitting", False))
        if image_processor is not None:
            processor = copy.deepcopy(processor)
            processor.image_processor.do_image_splitting = False   # (the count check reads one view)
        bb = super().from_model(model, processor, name)
        bb.square_resize = bb.resize
        bb.geometry = _split_geometry(bb, image_processor, name) if image_processor is not None else None
        recorded = image_record(model).reading   # (a loaded adapter's record)
        bb.native_aspect((splits if recorded is None else recorded == "native") and bb.geometry is not None)
        return bb

    @classmethod
    def fit_processor_files(cls, folder: Path, max_pixels: int | None = None, reading: str | None = None,
                            min_pixels: int | None = None, shown_as: Path | None = None) -> None:
        """A merged export's processor reads images as the adapter's were (``reading``): unsplit ("square",
        ``native_aspect(False)``: ``do_image_splitting`` off) or split ("native": on, whatever the source's files
        said); as the source's files say otherwise."""
        if reading in ("square", "native"):
            edit_image_processor_files(folder, lambda fields: fields.update(do_image_splitting=reading == "native"))

    def native_aspect(self, on: bool = True) -> None:
        """Split each image as the processor does (on: :mod:`mtl_lora_vl.data.splits`, the loader ships its views
        and original size) or read it unsplit, squashed to the square (off: every image fills ``num_image_tokens``);
        the backbone's processor copy is set to match."""
        if on and self.geometry is None:
            raise BackboneError(f"{self.name}: the image processor's splitting cannot be followed exactly (see the "
                                "warning given when the backbone was loaded), so images can be read unsplit only")
        super().native_aspect(on)
        self.hf_processor.image_processor.do_image_splitting = bool(on)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def _image_side(cls, config: Any, image_processor: Any, name: str) -> int:
        """``max_image_size["longest_edge"]`` (the square the processor makes of an unsplit image, and each crop's
        side), else the vision tower's ``image_size``. Its patches per side (the convolution drops a remainder:
        384 px in 14-px patches are 27) must fold into whole ``scale_factor`` blocks (the connector's pixel
        shuffle)."""
        side = size_fields(getattr(image_processor, "max_image_size", None)).get("longest_edge")
        side = int(side or config.vision_config.image_size)
        patch, scale = int(config.vision_config.patch_size), int(config.scale_factor)
        if (side // patch) % scale:
            raise BackboneError(f"{name}: the image processor's max_image_size ({side}) gives {side // patch} patches "
                                f"of {patch} px per side, not a multiple of scale_factor ({scale}), which the "
                                "connector needs; save the processor with max_image_size={'longest_edge': "
                                f"{config.vision_config.image_size}}} (the vision tower's image_size)")
        return side

    @classmethod
    def _image_tokens(cls, model: nn.Module, image_size: int) -> int:
        """``(S / patch)² / scale_factor²``: the connector folds each ``scale x scale`` block of patches into one."""
        cfg = model.config
        return (image_size // int(cfg.vision_config.patch_size)) ** 2 // int(cfg.scale_factor) ** 2

    @classmethod
    def _image_resize(cls, config: Any, image_size: int, image_processor: Any, label: str) -> ImageResize:
        """A squash to the square, with the processor's resampling filter (Lanczos in the released ones)."""
        return ImageResize.from_hf(image_size, {"size": {"height": image_size, "width": image_size},
                                                "resample": getattr(image_processor, "resample", None)}, label)

    @classmethod
    def _image_wrap(cls, config: Any, processor: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``<fake_token_around_image><global-img>`` before the image tokens, ``<fake_token_around_image>`` after
        (each as the tokenizer writes it, from the processor's own strings)."""
        tok = processor.tokenizer
        fake = getattr(processor, "fake_image_token", "<fake_token_around_image>")
        glob = getattr(processor, "global_image_tag", None) or getattr(processor, "global_image_token", "<global-img>")
        open_ids, close_ids = (_ids(tok, t) for t in (fake + glob, fake))
        if not close_ids or tok.unk_token_id is not None and tok.unk_token_id in (*open_ids, *close_ids):
            raise BackboneError(f"{type(processor).__name__}: the tokenizer does not know {fake!r} / {glob!r} (ids "
                                f"{list(open_ids)}); save the tokenizer the model was trained with")
        return open_ids, close_ids

    # ------------------------------------------------------------------------------------------ inputs
    def _vision_inputs(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                       ) -> dict[str, Tensor]:
        """Strips of views with their images' original sizes (under splitting) as the model's ``(N, V, 3, M, M)``
        crops, those past an image's own zero; ``(N, 3, M, M)`` squares as one view each."""
        m, geo = self.image_size, self.resize.anyres
        shape = tuple(pixel_values.shape)
        if geo is not None and pixel_values.dim() == 4 and shape[-1] == m and shape[-2] % m == 0:
            b, n = shape[0], shape[-2] // m
            sizes = image_sizes if image_sizes is not None else [shape[-2:]] * b
            counts = [geo.views(size) for size in sizes]
            if max(counts) > n or image_sizes is None and (n > 1 or counts[0] != n):   # (a strip says no size)
                raise ValueError(f"{self.name}: images {shape} are not the views of images of sizes {sizes} as the "
                                 f"processor splits them ({counts} views of {m} px); give the loader's strips "
                                 "(mtl_lora_vl.data.splits) with image_sizes=[(h, w), ...] (pad_images gives both), "
                                 f"or call backbone.native_aspect(False) to read {m}x{m} squares unsplit")
            views = pixel_values.reshape(b, 3, n, m, m).transpose(1, 2)[:, :max(counts)]
            # (non_blocking: torch.tensor(counts, device=...) copies with a stream synchronise, a wait for the device)
            own = torch.tensor(counts).to(views.device, non_blocking=True)
            keep = torch.arange(views.shape[1], device=views.device)[None] < own[:, None]
            return {"pixel_values": (views * keep[:, :, None, None, None].to(views.dtype)).contiguous()}
        if pixel_values.dim() != 4 or pixel_values.shape[-2:] != (m, m):
            raise ValueError(f"{self.name}: expected images (B, 3, {m}, {m}) (the backbone's image_size), got {shape}")
        return {"pixel_values": super()._vision_inputs(pixel_values, image_sizes)["pixel_values"].unsqueeze(1)}

    def _banned_ids(self) -> list[int]:
        """Beside the image markers (:meth:`.GenerationIds._banned_ids`), the crop tags (``<row_r_col_c>``): the
        processor writes them, so a model leaning to one wrote it as its caption (split or not)."""
        stop = set(self._stop_ids())
        tags = (i for i in self._crop_tag_ids if 0 <= i < self.vocab_size and i not in stop)
        return list(dict.fromkeys([*super()._banned_ids(), *tags]))

    def _wrap_marker_ids(self) -> tuple[int, ...]:
        """The ids of ``<fake_token_around_image>`` / ``<global-img>`` where each is a token of its own: a marker the
        tokenizer splits into text (``<``, ``global``, ``-``, ``img``, ``>``) bans none of its pieces (ordinary
        text the model must still write)."""
        tok = self.hf_processor.tokenizer
        fake = getattr(self.hf_processor, "fake_image_token", "<fake_token_around_image>")
        glob = (getattr(self.hf_processor, "global_image_tag", None)
                or getattr(self.hf_processor, "global_image_token", "<global-img>"))
        whole = {_ids(tok, m) for m in (fake, glob)}
        return tuple(i for i in super()._wrap_marker_ids() if (i,) in whole)

    @functools.cached_property
    def _crop_tag_ids(self) -> tuple[int, ...]:
        """The tokenizer's own tokens in the processor's text for its largest grid (transformers' prompt string,
        with no image tokens; the newlines between rows are text and kept), the tags Idefics3's processor lists
        (``row_col_ids``: 6 x 6), and every other ``<row_r_col_c>`` the tokenizer holds as a token (SmolVLM's
        processor lists none: a tag past its grid, ``<row_6_col_6>`` of a 4 x 4 one, was written and accepted in
        texts as the crop marker it reads as); read once."""
        from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

        processor, tok = self.hf_processor, self.hf_processor.tokenizer
        longest = size_fields(getattr(processor.image_processor, "size", None)).get("longest_edge")
        grid = most_grid(self.image_size, int(longest)) if longest else 1
        fake = getattr(processor, "fake_image_token", "<fake_token_around_image>")
        glob = getattr(processor, "global_image_tag", None) or getattr(processor, "global_image_token", "<global-img>")
        added = {int(i) for i in tok.get_added_vocab().values()}
        ids = [i for i in _ids(tok, get_image_prompt_string(grid, grid, 0, fake, "", glob)) if i in added]
        listed = [int(i) for i in getattr(processor, "row_col_ids", None) or () if isinstance(i, int)]
        held = [int(i) for t, i in tok.get_added_vocab().items() if _CROP_TAG.fullmatch(t)]
        ids = [i for i in dict.fromkeys([*ids, *listed, *held]) if i != tok.unk_token_id]
        return tuple(i for i in ids if tok.decode([i]).strip())

    def _hf_call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return super()._hf_call(fn, **kwargs)
        except BackboneError as e:
            if "image tokens do not match" not in str(e):
                raise
            raise BackboneError(f"{e}. Idefics3 also drops an image whose normalised pixels are all 0 (it takes it "
                                "for padding): give every row a real image") from e


def _ids(tok: Any, text: str) -> tuple[int, ...]:
    """``text``'s ids, no special ids added."""
    return tuple(int(i) for i in tok(text, add_special_tokens=False)["input_ids"])


def _split_geometry(bb: Idefics3Backbone, image_processor: Any, name: str) -> SplitGeometry | None:
    """The processor's splitting as a :class:`SplitGeometry`, checked against the processor's own text for a
    2 x 3 grid (or the largest it makes); None (with a warning: images are then read unsplit) where it cannot be
    followed exactly."""
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    processor, m = bb.hf_processor, bb.image_size
    longest = size_fields(getattr(image_processor, "size", None)).get("longest_edge")
    why = ""
    if getattr(image_processor, "do_resize", True) is False or not longest:
        why = "it does not resize the longest edge (do_resize, size['longest_edge'])"
    elif bb.square_resize.interpolation not in ("lanczos", "bicubic", "bilinear", "nearest"):
        why = f"its resample ({bb.square_resize.interpolation}) has no torchvision mode"
    if why:
        logger.warning("%s: the image processor's splitting is not followed: %s; images are read unsplit", name, why)
        return None
    tok = processor.tokenizer
    fake = getattr(processor, "fake_image_token", "<fake_token_around_image>")
    glob = getattr(processor, "global_image_tag", None) or getattr(processor, "global_image_token", "<global-img>")
    grid = most_grid(m, int(longest))
    geo = SplitGeometry(m, int(longest), bb.num_image_tokens, bb.image_token_id, bb.image_open, bb.image_close,
                        tuple(_ids(tok, f"{fake}<row_{r + 1}_col_{c + 1}>") for r in range(grid) for c in range(grid)),
                        _ids(tok, "\n"), _ids(tok, "\n\n"), bb.square_resize.interpolation)
    rows, cols = (min(2, grid), min(3, grid)) if grid > 1 else (0, 0)
    text = get_image_prompt_string(rows, cols, bb.num_image_tokens, fake, bb.image_token_str, glob)
    if list(_ids(tok, text)) != geo.grid_ids(rows, cols):
        logger.warning("%s: the processor's text for an image split %d x %d is not tokenised as the backbone writes "
                       "it; images are read unsplit", name, rows, cols)
        return None
    return geo
