"""Tiny LLaVA and PaliGemma directories (model + processor, ``save_pretrained``) for the generative tests.

Built from configs on a word-level tokenizer over the built-in world's words plus the ``<image>`` token, so
prompts and answers of the world's tasks tokenize without unknown words. CPU, no downloads, ~100 k params.
"""

from __future__ import annotations

from pathlib import Path

import torch
from vl_tiny import world_words

from mtl_lora_vl.backbones import build_word_tokenizer, load_backbone

IMAGE = 32   # pixels; patch 8 -> 16 patches (+ CLS for LLaVA's CLIP tower, dropped by the "default" strategy)
PATCH = 8
EXTRA_WORDS = ["question", "answer", "caption", "describe", "what", "colour", "color", "shape", "how", "many",
               "is", "there", "which", "left", "right", "above", "below", "of", "the", "?", ":", "class"]


def _word_tokenizer(out: Path, words: list[str] | None):
    from transformers import PreTrainedTokenizerFast

    tok_dir = out / "_tok"
    build_word_tokenizer([*(words if words is not None else world_words()), *EXTRA_WORDS], tok_dir, context_length=64)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def _text_ids(tok) -> dict:
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)


def tiny_llava_model(tok, layers: int = 2, width: int = 32):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                              num_attention_heads=2, image_size=IMAGE, patch_size=PATCH)
    text = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=2,
                       num_key_value_heads=2, max_position_embeddings=128, **_text_ids(tok))
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(cfg)


def save_tiny_llava(out: str | Path, words: list[str] | None = None, seed: int = 0) -> Path:
    """A tiny LLaVA directory at ``out``: config, weights, generation config, tokenizer and processor."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    out = Path(out)
    tok = _word_tokenizer(out, words)
    torch.manual_seed(seed)
    model = tiny_llava_model(tok)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def save_tiny_paligemma(out: str | Path, words: list[str] | None = None, seed: int = 0) -> Path:
    """A tiny PaliGemma directory (SigLIP vision tower, Gemma language model) at ``out``."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    out = Path(out)
    tok = _word_tokenizer(out, words)
    n = (IMAGE // PATCH) ** 2
    processor = PaliGemmaProcessor(image_processor=SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE},
                                                                        image_seq_length=n), tokenizer=tok)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE, patch_size=PATCH, projection_dim=32)
    text = GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, max_position_embeddings=128, **_text_ids(tok))
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(PaliGemmaConfig(vision_config=vision, text_config=text,
                                                              image_token_id=processor.image_token_id,
                                                              projection_dim=32))
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def tiny_llava_backbone(tmp: str | Path, family: str = "llava"):
    """A loaded tiny LLaVA (or ``family="paligemma"``) backbone from a directory under ``tmp`` (built once)."""
    folder = Path(tmp) / f"tiny_{family}"
    if not (folder / "config.json").is_file():
        (save_tiny_llava if family == "llava" else save_tiny_paligemma)(folder)
    return load_backbone(f"hf:{folder}")
