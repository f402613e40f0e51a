"""Helper 477: open_clip's ``get_tokenizer(NAME)`` tokenizes a model whose registry name says SigLIP and whose config
names no ``text_cfg.hf_tokenizer_name`` with its SigLIP sentencepiece tokenizer (c4-en, mc4 for an i18n name, gemma
for SigLIP2), downloaded from storage.googleapis.com. ``open_clip:NAME`` of such a config (one a user registered:
open_clip's own SigLIP configs all name their tokenizer) was refused with the missing-tokenizer message, which told
to put tokenizer files "in its directory" (an open_clip:NAME has none) and never said which tokenizer open_clip
would use; one with a 49408-token vocabulary loaded silently with open_clip's BPE, other ids. Both are refused naming
open_clip's SigLIP tokenizer and the hf_tokenizer_name to set."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip import factory

from mtl_lora_vl.backbones import load_backbone


def _register(monkeypatch, name: str, vocab: int) -> dict:
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16},
           "text_cfg": {"context_length": 12, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 1}}
    monkeypatch.setitem(factory._MODEL_CONFIGS, name, cfg)   # (as open_clip.add_model_config registers a file)
    return cfg


@pytest.mark.parametrize(("name", "vocab", "variant", "size", "hub"), [
    ("Tiny-SigLIP-test", 32000, "c4-en", 32000, "timm/ViT-B-16-SigLIP"),
    ("tiny-siglip-i18n-test", 250000, "mc4", 250000, "timm/ViT-B-16-SigLIP-i18n-256"),
    ("Tiny-SigLIP2-test", 256000, "gemma", 256000, "timm/ViT-B-16-SigLIP2"),
    ("Tiny-SigLIP-bpe-size", 49408, "c4-en", 32000, "timm/ViT-B-16-SigLIP"),   # (loaded with the BPE, silently)
])
def test_a_siglip_name_whose_config_names_no_tokenizer_is_refused_naming_open_clips(tmp_path, monkeypatch, name,
                                                                                     vocab, variant, size, hub):
    _register(monkeypatch, name, vocab)
    weights = tmp_path / "w.pt"
    torch.save(open_clip.create_model(name).state_dict() if vocab == 49408 else {}, weights)
    with pytest.raises(ValueError, match=rf"open_clip model open_clip:{name}: its config names no "
                                         rf"text_cfg.hf_tokenizer_name, and for a SigLIP model name open_clip then "
                                         rf"tokenizes with its SigLIP sentencepiece tokenizer '{variant}' \({size} "
                                         rf"tokens\), .* Set text_cfg.hf_tokenizer_name to .* '{hub}' .*"
                                         rf"tokenizer_kwargs to {{\"clean\": \"canonicalize\"}}"):
        load_backbone(f"open_clip:{name}", pretrained=str(weights))


def test_a_registry_name_without_a_tokenizer_for_its_vocabulary_is_told_to_load_from_a_folder(tmp_path, monkeypatch):
    """The message told an open_clip:NAME to put tokenizer files "in its directory", which it has none of."""
    _register(monkeypatch, "Tiny-T5-text", 32000)
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"open_clip model open_clip:Tiny-T5-text has a 32000-token vocabulary but no "
                                         r"tokenizer was found .*; load it from a folder \(--backbone open_clip:DIR\) "
                                         r"holding its open_clip_config.json, weights and the model's Hugging Face "
                                         r"tokenizer files") as e:
        load_backbone("open_clip:Tiny-T5-text", pretrained=str(tmp_path / "w.pt"))
    assert "in its directory" not in str(e.value)
