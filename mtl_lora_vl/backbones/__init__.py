"""Base vision-language models behind one interface (:class:`Backbone`), loaded from local files.

One module per concept: ``base`` (the interface, capabilities, registry), ``spec`` (backbone strings), ``tokenizers``,
``offline`` (the no-download scope), ``cache`` (models already in the local Hugging Face or open_clip cache),
``builtin`` (where the built-in backbone lives), ``open_clip`` (CLIP and CoCa; CoCa's KV-cached caption step in
``coca_decoding``; open_clip's ``CoCa.generate`` call run by it in ``coca_generate``), ``hf_clip`` (Hugging Face CLIP),
``hf_vlm`` (Hugging Face LLaVA, and the language-model API every VLM family shares; their prompt collation in
``lm_collate``, their processor and its image-token count check in ``hf_processor``), ``paligemma`` (its prefix-LM
prompt), ``gemma3`` (Gemma 3: its image wrap and attention), ``qwen2_vl`` (Qwen2-VL and Qwen2.5-VL: their image patches
and M-RoPE positions), ``idefics3`` (Idefics3 and SmolVLM: each image split into crops and its global image, as their
processor), ``llava_next`` (LLaVA-NeXT and LLaVA-OneVision: each image's views at its own aspect, as their processor),
``image_reading`` (the switch both share), ``mistral3`` (Mistral 3: its ``[IMG_BREAK]`` / ``[IMG_END]`` image rows),
``hf`` (Hugging Face directories), ``beam`` (beam search) and ``loading`` (:func:`load_backbone`)."""

from .base import CAPABILITIES, Backbone, BackboneError, backbone_class, backbone_class_for
from .builtin import builtin_dir
from .gemma3 import Gemma3Backbone
from .hf_clip import HFClipBackbone
from .hf_vlm import HFVLMBackbone
from .idefics3 import Idefics3Backbone
from .llava_next import LlavaNextBackbone, LlavaOnevisionBackbone
from .loading import load_backbone
from .mistral3 import Mistral3Backbone
from .open_clip import CoCaBackbone, OpenClipBackbone, build_open_clip
from .paligemma import PaliGemmaBackbone
from .qwen2_vl import Qwen2VLBackbone
from .spec import SPEC_FORMS, BackboneSpec, parse_spec
from .tokenizers import WordTokenizer, build_word_tokenizer

__all__ = [
    "CAPABILITIES",
    "SPEC_FORMS",
    "Backbone",
    "BackboneError",
    "BackboneSpec",
    "CoCaBackbone",
    "Gemma3Backbone",
    "HFClipBackbone",
    "HFVLMBackbone",
    "Idefics3Backbone",
    "LlavaNextBackbone",
    "LlavaOnevisionBackbone",
    "Mistral3Backbone",
    "OpenClipBackbone",
    "PaliGemmaBackbone",
    "Qwen2VLBackbone",
    "WordTokenizer",
    "backbone_class",
    "backbone_class_for",
    "build_open_clip",
    "build_word_tokenizer",
    "builtin_dir",
    "load_backbone",
    "parse_spec",
]
