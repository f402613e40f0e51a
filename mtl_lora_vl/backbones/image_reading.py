"""Backbones that read each image as their processor does, at its own aspect (LLaVA-NeXT's anyres tiles, Idefics3's
crops), or on one square: the switch between the two, shared by both families.

At its own aspect the loader ships a strip of the image's views with its original size
(:mod:`mtl_lora_vl.data.anyres`, :mod:`mtl_lora_vl.data.splits`), so every batch carries its sizes
(``needs_image_sizes``), and the collator counts each image's tokens from its size (the layout's ``anyres``). The
reading is set on the model too, where ``save_adapter`` records it (``base.image_reading``) and ``load_pretrained``
reads it back.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from ..data.resize import ImageResize
from .base import Backbone, BackboneError
from .image_record import set_reading
from .lm_collate import PromptLayout

__all__ = ["IMAGE_READING_CHOICES", "NativeImageReading", "read_images"]

#: ``--image-reading``: each image at its own aspect as the processor reads it, or squashed to one square.
IMAGE_READING_CHOICES = ("native", "square")

logger = logging.getLogger(__name__)


class NativeImageReading:
    """Mixin before :class:`~.hf_vlm.HFVLMBackbone` for a backbone with ``geometry`` (its processor's, plain data)
    and ``square_resize`` (the square reading)."""

    geometry: Any
    square_resize: ImageResize
    #: How the square-export warning names the square reading and the processor (None: the class name less Backbone)
    square_words: ClassVar[str] = "read on the square canvas (native_aspect(False))"
    processor_words: ClassVar[str | None] = None

    @classmethod
    def fit_processor_files(cls, folder: Path, max_pixels: int | None = None, reading: str | None = None,
                            min_pixels: int | None = None, shown_as: Path | None = None) -> None:
        """No processor of the family reads pictures on one square: a merged export of an adapter trained so
        (``native_aspect(False)``) is warned about (its processor reads pictures at their own aspect)."""
        if reading == "square":
            logger.warning("%s: the adapter's images were %s, which no %s processor does: used with its processor, "
                           "the merged model reads pictures at their own aspect, not as its task was trained",
                           shown_as or folder, cls.square_words,
                           cls.processor_words or cls.__name__.removesuffix("Backbone"))

    @property
    def needs_image_sizes(self) -> bool:
        """At its own aspect: a strip of views does not say what size its image was (see the base class)."""
        return self.resize.anyres is not None

    def native_aspect(self, on: bool = True) -> None:
        """Read each image as the processor does (on) or squashed to the square (off: every image fills
        ``num_image_tokens``)."""
        self.resize = (replace(self.square_resize, mode="anyres", anyres=self.geometry, size=self.image_size)
                       if on else self.square_resize)
        self._collators.clear()   # their layouts hold the geometry
        set_reading(self.model, "native" if on else "square")   # what save_adapter records

    @property
    def layout(self) -> PromptLayout:
        """The prompt layout; at its own aspect, each image's tokens from its original size."""
        return replace(super().layout, anyres=self.resize.anyres)


def read_images(bb: Backbone, reading: str) -> None:
    """Set how ``bb`` reads images (``--image-reading``): "native" (each at its own aspect, as its processor does) or
    "square" (``native_aspect(False)``); refused for a backbone that reads them one way only."""
    if reading not in IMAGE_READING_CHOICES:
        raise BackboneError(f"image_reading {reading!r} (--image-reading): must be one of "
                            f"{list(IMAGE_READING_CHOICES)}, or left out for the backbone's own default")
    if not isinstance(bb, NativeImageReading):
        raise BackboneError(f"image_reading {reading!r} (--image-reading) applies to backbones that can read each "
                            "image at its own aspect or on one square (LLaVA-NeXT, LLaVA-OneVision, Idefics3 / "
                            f"SmolVLM, Mistral 3); {bb.name} reads images one way only: leave the option out")
    try:
        bb.native_aspect(reading == "native")
    except BackboneError as e:
        raise BackboneError(f"image_reading {reading!r} (--image-reading): {e}; leave the option out, or give "
                            "--image-reading square") from None
