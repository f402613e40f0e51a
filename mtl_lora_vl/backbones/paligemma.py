"""PaliGemma (``PaliGemmaForConditionalGeneration``) from a local directory: the language-model API of
:mod:`.hf_vlm` with the family's prompt layout -- image tokens first, then the start token, the prompt and
``"\\n"``; the prompt attends both ways (a prefix-LM: ``token_type_ids`` 0 on the prompt, 1 on the target);
positions count from 1. A row of several images (NLVR2's pair: its prompt holds one placeholder per image) gets
every image's tokens first, in order, then the start token, the text and ``"\\n"`` -- what ``PaliGemmaProcessor``
makes of a sample of several images; the model fills the image tokens in order from the flattened images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .base import register_backbone
from .hf_vlm import HFVLMBackbone

__all__ = ["PaliGemmaBackbone"]


@register_backbone("paligemma")
@dataclass(eq=False)
class PaliGemmaBackbone(HFVLMBackbone):
    """``PaliGemmaForConditionalGeneration`` (see the module doc)."""

    image_first: ClassVar[bool] = True
    prompt_end: ClassVar[str] = "\n"
    prefix_lm: ClassVar[bool] = True
    position_offset: ClassVar[int] = 1

    @classmethod
    def _prefix(cls, tokenizer: Any) -> tuple[int, ...]:
        return () if tokenizer.bos_token_id is None else (int(tokenizer.bos_token_id),)
