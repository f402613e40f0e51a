"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``) from a local
directory: the language-model API of :mod:`.hf_vlm` on the family's own image layout.

* **Each image unsplit** (a row may hold several: NLVR2's pair). The released processors split each image into
  ``max_image_size`` crops plus the whole image (``rows x cols + 1`` times ``image_seq_len`` tokens, a count that
  varies with each image's size). The backbone reads each image once, whole: the loader squashes it to the square of side
  ``max_image_size["longest_edge"]`` (the processor's resampling filter), and the prompt holds
  ``<fake_token_around_image><global-img>``, the ``image_seq_len`` image tokens and ``<fake_token_around_image>``,
  as the processor writes one image with ``do_image_splitting=False``. So that the processor (``backbone.processor``)
  gives the same ids, the backbone sets ``do_image_splitting = False`` on its own copy of the processor. (With splitting
  off, the processor first scales the longest edge to ``size["longest_edge"]`` and then squashes to the square:
  the same picture, resampled twice instead of once.)
* **Images.** The model takes ``(B, images, 3, S, S)``; the backbone gives ``(N, 1, 3, S, S)`` for N images (rows'
  images in order; the model reads them as one sequence of images either way). Idefics3 drops
  an image whose normalised pixels are all 0 as padding; such an image (no loader makes one: the processors'
  mean, 0.5, is no 8-bit level) leaves its row's image tokens without features, refused with that reason.
* **Positions.** A Llama-style language model: 1-D positions, as for LLaVA.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..data.resize import ImageResize, size_fields
from .base import BackboneError, register_backbone
from .hf_processor import edit_image_processor_files
from .hf_vlm import HFVLMBackbone

__all__ = ["Idefics3Backbone"]


@register_backbone("idefics3")
class Idefics3Backbone(HFVLMBackbone):
    """``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration`` (see the module doc)."""


    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> Idefics3Backbone:
        """As :meth:`HFVLMBackbone.from_model`, with the processor's image splitting turned off (see the module doc)."""
        image_processor = getattr(processor, "image_processor", None)
        if getattr(image_processor, "do_image_splitting", False):   # on a copy: the caller's processor splits still
            processor = copy.deepcopy(processor)
            processor.image_processor.do_image_splitting = False
        return super().from_model(model, processor, name)

    @classmethod
    def fit_processor_files(cls, folder: Path, max_pixels: int | None = None) -> None:
        """``do_image_splitting`` off, as the backbone reads images (one unsplit image per row): with the source's
        processor a merged model got a tiny model's image as 147 ids where its task was trained on 19."""
        def unsplit(fields: dict) -> None:
            if fields.get("do_image_splitting") is not False:   # absent: the processor's default is on
                fields["do_image_splitting"] = False

        edit_image_processor_files(folder, unsplit)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def _image_side(cls, config: Any, image_processor: Any, name: str) -> int:
        """``max_image_size["longest_edge"]`` (the square the processor makes of an unsplit image), else the vision
        tower's ``image_size``. Its patches per side (the convolution drops a remainder: 384 px in 14-px patches are
        27) must fold into whole ``scale_factor`` blocks (the connector's pixel shuffle)."""
        side = size_fields(getattr(image_processor, "max_image_size", None)).get("longest_edge")
        side = int(side or config.vision_config.image_size)
        patch, scale = int(config.vision_config.patch_size), int(config.scale_factor)
        if (side // patch) % scale:
            raise BackboneError(f"{name}: the image processor's max_image_size ({side}) gives {side // patch} patches "
                                f"of {patch} px per side, not a multiple of scale_factor ({scale}), which the connector "
                                "needs; save the processor with max_image_size={'longest_edge': "
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
        open_ids, close_ids = (tuple(int(i) for i in tok(t, add_special_tokens=False)["input_ids"])
                               for t in (fake + glob, fake))
        if not close_ids or tok.unk_token_id is not None and tok.unk_token_id in (*open_ids, *close_ids):
            raise BackboneError(f"{type(processor).__name__}: the tokenizer does not know {fake!r} / {glob!r} (ids "
                                f"{list(open_ids)}); save the tokenizer the model was trained with")
        return open_ids, close_ids

    # ------------------------------------------------------------------------------------------ inputs
    def _vision_inputs(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                       ) -> dict[str, Tensor]:
        if pixel_values.dim() != 4 or pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"{self.name}: expected images (B, 3, {self.image_size}, {self.image_size}) (the "
                             f"backbone's image_size), got {tuple(pixel_values.shape)}")
        return {"pixel_values": super()._vision_inputs(pixel_values, image_sizes)["pixel_values"].unsqueeze(1)}

    def _hf_call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return super()._hf_call(fn, **kwargs)
        except BackboneError as e:
            if "image tokens do not match" not in str(e):
                raise
            raise BackboneError(f"{e}. Idefics3 also drops an image whose normalised pixels are all 0 (it takes it "
                                "for padding): give every row a real image") from e
