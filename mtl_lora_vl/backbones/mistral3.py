"""Mistral 3 (``Mistral3ForConditionalGeneration``: Mistral Small 3.1's Pixtral vision tower, patch merger and
Mistral decoder) from a local directory: the language-model API of :mod:`.hf_vlm` on square images.

* **Prompts.** The processor writes an image of h x w image tokens as h rows of w ``[IMG]`` each ended by
  ``[IMG_BREAK]``, the last by ``[IMG_END]`` instead; the model scatters the image's features over its ``[IMG]``
  tokens only. The backbone's placeholder is ``[IMG]`` (the processor's own), expanded so
  (:class:`~.lm_collate.PromptLayout`'s ``image_breaks``); the break and end ids are never generated.
* **Images.** Pixtral reads each image at its own size (``image_sizes``); this first version reads square images only:
  each squashed to the processor's ``size["longest_edge"]`` square (with its resampling filter), as the processor
  reads a square picture of that side, and every forward gets ``image_sizes`` of that square.
* **Positions.** 1-D, as for LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..data.resize import ImageResize, size_fields
from .base import BackboneError, register_backbone
from .hf_vlm import HFVLMBackbone
from .lm_collate import PromptLayout

__all__ = ["Mistral3Backbone"]


@register_backbone("mistral3")
@dataclass(eq=False)
class Mistral3Backbone(HFVLMBackbone):
    """``Mistral3ForConditionalGeneration`` on square images (see the module doc)."""

    image_breaks: tuple[int, ...] = ()   # ([IMG_BREAK], [IMG_END]) ids

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> Mistral3Backbone:
        """As :meth:`HFVLMBackbone.from_model`, with the processor's ``[IMG_BREAK]`` / ``[IMG_END]`` ids."""
        tok = getattr(processor, "tokenizer", None)
        marks = [getattr(processor, k, None) for k in ("image_break_token", "image_end_token")]
        ids = [tok.convert_tokens_to_ids(m) if tok is not None and m else None for m in marks]
        if None in ids or (tok.unk_token_id is not None and tok.unk_token_id in ids):
            raise BackboneError(f"{name}: the processor ({type(processor).__name__}) names no image break / end "
                                f"tokens the tokenizer knows ({marks} -> {ids}); load the model's PixtralProcessor")
        bb = super().from_model(model, processor, name)
        bb.image_breaks = tuple(int(i) for i in ids)
        return bb

    @classmethod
    def _image_side(cls, config: Any, image_processor: Any, name: str) -> int:
        """The processor's ``size["longest_edge"]`` (else the tower's ``image_size``): a whole number of merged
        patches (patch x spatial merge) per side."""
        side = size_fields(getattr(image_processor, "size", None)).get("longest_edge")
        side = int(side or config.vision_config.image_size)
        unit = int(config.vision_config.patch_size) * int(config.spatial_merge_size)
        if side % unit:
            raise BackboneError(f"{name}: the image side {side} (the image processor's size['longest_edge']) is not a "
                                f"multiple of patch_size x spatial_merge_size ({unit}); save the processor with "
                                f"size={{'longest_edge': {side // unit * unit}}}")
        return side

    @classmethod
    def _image_tokens(cls, model: nn.Module, image_size: int) -> int:
        """``(S / (patch · merge))²`` ``[IMG]`` tokens (the features the patch merger makes)."""
        cfg = model.config
        return (image_size // (int(cfg.vision_config.patch_size) * int(cfg.spatial_merge_size))) ** 2

    @classmethod
    def _image_resize(cls, config: Any, image_size: int, image_processor: Any, label: str) -> ImageResize:
        """A squash to the square, with the processor's resampling filter."""
        return ImageResize.from_hf(image_size, {"size": {"height": image_size, "width": image_size},
                                                "resample": getattr(image_processor, "resample", None)}, label)

    @property
    def layout(self) -> PromptLayout:
        """The prompt layout, each image's ``[IMG]`` rows ended by ``[IMG_BREAK]`` / ``[IMG_END]``."""
        return replace(super().layout, image_breaks=self.image_breaks)

    def _banned_ids(self) -> list[int]:
        """The base class's, and ``[IMG_BREAK]`` / ``[IMG_END]``."""
        stop = set(self._stop_ids())
        return list(dict.fromkeys([*super()._banned_ids(), *(i for i in self.image_breaks if i not in stop)]))

    def _vision_inputs(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                       ) -> dict[str, Tensor]:
        """The squares, with ``image_sizes`` (each image fills its square; the model needs them)."""
        out = super()._vision_inputs(pixel_values, image_sizes)
        side = tuple(pixel_values.shape[-2:])
        out["image_sizes"] = torch.tensor([side] * pixel_values.shape[0], device=pixel_values.device)
        return out
