"""A CoCa whose text tower attends both ways (``text_cfg.no_causal_mask``) captions with the KV cache as without it.

The cached stepper runs each new token alone over the keys and values of the earlier ones, which is exact only for
a causal tower; with no causal mask every earlier position reads the new token too, and the cached captions were
other words than the full forward's (all 3 captions of this tiny model, greedy and with 2 beams)."""

import json
from pathlib import Path

import torch

from mtl_lora_vl.backbones import build_open_clip, build_word_tokenizer
from mtl_lora_vl.backbones.coca_decoding import supports_kv_cache

WORDS = ["a", "red", "blue", "green", "cube", "ball", "small", "large", "left", "of", "the", "two", "three"]


def _coca(tmp_path: Path, causal: bool):
    tok = build_word_tokenizer(WORDS, tmp_path / "tok", context_length=12)
    vocab = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"])
    text = {"context_length": 12, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 2, "embed_cls": True,
            "output_tokens": True, "no_causal_mask": not causal}
    vision = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
              "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True}
    mm = {"context_length": 12, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    bb = build_open_clip({"embed_dim": 32, "vision_cfg": vision, "text_cfg": text, "multimodal_cfg": mm},
                         tokenizer_dir=tok, name="tiny-coca")
    bb.model.eval()
    return bb


def test_a_bidirectional_text_tower_decodes_without_the_cache(tmp_path):
    bb = _coca(tmp_path, causal=False)
    assert bb.model.text.attn_mask is None
    images = torch.randn(3, 3, 32, 32)
    for beams in (1, 2):
        cached = bb.generate(images, max_len=10, beam_size=beams)
        assert cached == bb.generate(images, max_len=10, beam_size=beams, use_cache=False), beams
    assert not supports_kv_cache(bb.model)


def test_a_causal_text_tower_keeps_the_cache(tmp_path):
    assert supports_kv_cache(_coca(tmp_path, causal=True).model)
