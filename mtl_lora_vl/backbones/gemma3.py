"""Gemma 3 (``Gemma3ForConditionalGeneration``) from a local directory: the language-model API of :mod:`.hf_vlm`
on the family's image layout.

* **Prompts.** The Gemma 3 processor takes ``<start_of_image>`` in the text and writes ``"\\n\\n<start_of_image>"``,
  ``mm_tokens_per_image`` ``<image_soft_token>`` and ``"<end_of_image>\\n\\n"`` in its place. The backbone's
  placeholder is the image token itself, ``<image_soft_token>`` (the collator expands a placeholder of the image
  token's id), and the text around the image tokens is the processor's own ``full_image_sequence`` around them,
  put into the prompt's text and tokenised with it, as the processor does: Gemma's vocabulary has newline runs as
  single tokens, so a chat turn's ``"user\\n"`` and the image's ``"\\n\\n"`` are one ``"\\n\\n\\n"``.
* **Attention.** ``token_type_ids`` are 1 on image tokens, on every forward: an image's tokens attend to each
  other both ways, as the model was trained (without them a forward is causal over the image; Hugging Face
  ``generate`` passes them to the prefill only).
* **Images.** A squash to the vision tower's square (896 px for the released models: ``Gemma3ImageProcessor``'s
  ``size``), without pan-and-scan crops (the loader reads each image whole; a row may hold several, NLVR2's pair).
* **Positions.** 1-D, as for LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .base import BackboneError, register_backbone
from .hf_processor import edit_image_processor_files
from .hf_vlm import HFVLMBackbone

__all__ = ["Gemma3Backbone"]


@register_backbone("gemma3")
@dataclass(eq=False)
class Gemma3Backbone(HFVLMBackbone):
    """``Gemma3ForConditionalGeneration`` (see the module doc)."""

    fp16_overflows = True   # (transformers#36822: its activations pass 65504; bf16 or fp32 only)

    @classmethod
    def _placeholder(cls, processor: Any) -> str:
        """``<image_soft_token>``: the image token (the processor's own placeholder, ``<start_of_image>``, is the
        token it puts before them)."""
        token = getattr(processor.tokenizer, "image_token", None)
        if not token:
            raise BackboneError(f"{type(processor).__name__}: its tokenizer names no image_token "
                                "('<image_soft_token>'); save the tokenizer the model was trained with")
        return token

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> Gemma3Backbone:
        """As :meth:`HFVLMBackbone.from_model`, with the text of the processor's ``full_image_sequence`` before and
        after its image tokens as ``image_text`` (tokenised with each prompt)."""
        full, token = getattr(processor, "full_image_sequence", None), getattr(processor.tokenizer, "image_token", None)
        if not full or not token or token not in full:
            raise BackboneError(f"{type(processor).__name__}: no full_image_sequence holding {token!r}; load the "
                                "model's Gemma3Processor")
        bb = super().from_model(model, processor, name)
        bb.image_text = (full[:full.index(token)], full[full.rindex(token) + len(token):])
        return bb

    @classmethod
    def fit_processor_files(cls, folder: Path, max_pixels: int | None = None, reading: str | None = None,
                            min_pixels: int | None = None, shown_as: Path | None = None) -> None:
        """``do_pan_and_scan`` off, as the backbone reads images (each whole, one view): a saved True does not take
        effect in transformers 5.25 (only a call's own argument does), but a release that honoured it would give a
        merged model's wide pictures crops its task never trained on."""
        def whole(fields: dict) -> None:
            if fields.get("do_pan_and_scan"):
                fields["do_pan_and_scan"] = False

        edit_image_processor_files(folder, whole)

    def _extra_inputs(self, input_ids: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """``token_type_ids``: 1 on image tokens (bidirectional attention within an image)."""
        return {"token_type_ids": (input_ids == self.image_token_id).long()}
