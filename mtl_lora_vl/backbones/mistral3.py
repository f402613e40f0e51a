"""Mistral 3 (``Mistral3ForConditionalGeneration``: Mistral Small 3.1's Pixtral vision tower, patch merger and
Mistral decoder) from a local directory: the language-model API of :mod:`.hf_vlm`, each image at its own size.

* **Prompts.** The processor writes an image of h x w image tokens as h rows of w ``[IMG]`` each ended by
  ``[IMG_BREAK]``, the last by ``[IMG_END]`` instead; the model scatters the image's features over its ``[IMG]``
  tokens only. The backbone's placeholder is ``[IMG]`` (the processor's own), expanded so
  (:class:`~.lm_collate.PromptLayout`'s ``image_breaks``); the break and end ids are never generated.
* **Images at their own size** (the default, ``--image-reading native``): the loader resizes each image as the
  Pixtral image processor does (shrunk to fit the ``size["longest_edge"]`` square ``S``, aspect kept, each side
  rounded up to a multiple of patch x spatial merge; its resampling filter): a ``native``, ``longest``
  :class:`~mtl_lora_vl.data.resize.ImageResize`. A batch's images share one canvas, each at its top left (as the
  processor pads them) with its ``(h, w)`` in ``image_sizes``; an image of ``h x w`` pixels fills ``h/u`` rows of
  ``w/u`` ``[IMG]`` tokens (``u`` = patch x merge). ``S`` is ``image_size``, its ``(S/u)²`` tokens the most one
  image fills (``num_image_tokens``).
* **On one square** (``--image-reading square``, :meth:`Mistral3Backbone.native_aspect` False): each image squashed
  to the ``S`` square (as the processor reads a square picture of that side), ``(S/u)²`` tokens every one. No
  Pixtral processor squashes a picture so: a merged export of an adapter trained so is warned about
  (:meth:`Mistral3Backbone.fit_processor_files`).
* **Positions.** 1-D, as for LLaVA.
* **One image token in all.** transformers' ``get_image_features`` squeezes the projector's ``(N, D)`` features
  to ``(D,)`` when the batch's images make one token in all (one image of at most ``u x u`` pixels alone: the
  processor gives it one token), then fails to split them (``split_with_sizes expects split_sizes to sum exactly
  to D``); the family table's hook on the projector (:func:`~mtl_lora_vl.family_images.pixtral_keep_one_row`,
  the family's ``mends``) gives that one row a leading axis to lose: the backbone installs it at load (and keeps
  one ``attach`` put on the bare model before: unload leaves it), ``attach`` on a bare model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data.resize import ImageResize, size_fields
from ..families import family_named
from ..family_images import keep_mends, pixtral_keep_one_row
from .base import BackboneError, register_backbone
from .hf_vlm import HFVLMBackbone
from .image_reading import NativeImageReading
from .image_record import image_record, set_reading
from .lm_collate import PromptLayout

__all__ = ["Mistral3Backbone"]


@register_backbone("mistral3")
@dataclass(eq=False)
class Mistral3Backbone(NativeImageReading, HFVLMBackbone):
    """``Mistral3ForConditionalGeneration``, each image at its own size or on one square (see the module doc)."""

    image_breaks: tuple[int, ...] = ()   # ([IMG_BREAK], [IMG_END]) ids
    square_resize: ImageResize | None = None   # the squash to the S square (native_aspect(False))
    # (no Pixtral processor squashes a picture: an export of a square adapter is warned about, fit_processor_files)
    square_words: ClassVar[str] = "squashed to one square (--image-reading square, native_aspect(False))"
    processor_words: ClassVar[str | None] = "Mistral3 (Pixtral)"

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
        bb.square_resize = bb.resize
        keep_mends(model, family_named("mistral3").mends)   # (for good: not attach's, which unload removes)
        bb.native_aspect(image_record(model).reading != "square")   # (a loaded adapter's record)
        return bb

    @property
    def needs_image_sizes(self) -> bool:
        """No: an image without its size fills the canvas (one view per image, no strips)."""
        return False

    def native_aspect(self, on: bool = True) -> None:
        """Read each image at its own size, as the Pixtral processor does (on), or squashed to the square (off:
        every image fills ``num_image_tokens``)."""
        self.resize = (replace(self.square_resize, mode="native", factor=self._token_unit(), longest=True)
                       if on else self.square_resize)
        self._collators.clear()   # their layouts hold the token side
        set_reading(self.model, "native" if on else "square")   # what save_adapter records

    def _token_unit(self) -> int:
        """Pixels per ``[IMG]`` token along each side: patch x spatial merge."""
        cfg = self.model.config
        return int(cfg.vision_config.patch_size) * int(cfg.spatial_merge_size)

    def _token_side(self) -> int:
        return self._token_unit() if self.resize.native else 0

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
        """The canvas (each image at its top left) with each image's ``image_sizes`` (None: every image fills it); on
        one square, the squares."""
        sizes = self._host_vision(pixel_values, image_sizes)["image_sizes"]
        # (on the host, as the processor gives them: transformers only reads them there, per image, in the tower's
        # slices and the merger's split; on the device each read waited for it)
        if not self.resize.native:
            return {**super()._vision_inputs(pixel_values, image_sizes), "image_sizes": torch.tensor(sizes)}
        unit = self._token_unit()
        odd = [s for s in sizes if s[0] % unit or s[1] % unit]
        if odd:
            raise ValueError(f"{self.name}: expected images whose sides are multiples of {unit} (patch x spatial "
                             f"merge), got {odd[0][0]}x{odd[0][1]} in {tuple(pixel_values.shape)}; resize them with "
                             "backbone.resize (the loader does)")
        return {"pixel_values": pixel_values, "image_sizes": torch.tensor(sizes)}

    def _host_vision(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                     ) -> dict[str, list]:
        """Each image's ``image_sizes`` row on the host (on one square: the canvas), which the packed tower's hook
        takes."""
        if not self.resize.native:
            return {"image_sizes": [tuple(pixel_values.shape[-2:])] * pixel_values.shape[0]}
        return {"image_sizes": self._sizes_of(pixel_values, image_sizes)}


_keep_one_row = pixtral_keep_one_row   # (its name before the family table held it: models pickled so still load)
