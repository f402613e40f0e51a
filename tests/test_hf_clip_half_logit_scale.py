"""``--base-dtype bf16/fp16`` on a Hugging Face CLIP keeps its logit scale fp32 at the checkpoint's value, as the
open_clip path does: transformers cast it with the rest, and bf16 rounded CLIP's trained log-scale ln 100 to 4.594
(a scale of 99.0), which the retrieval head starts its temperature from and the prompt-matching heads multiply every
score by."""

import math

import pytest
import torch

from mtl_lora_vl.backbones import WordTokenizer, build_word_tokenizer, load_backbone

CTX = 12


def _save(folder, **save) -> None:
    from transformers import CLIPConfig, CLIPModel

    tok = WordTokenizer(build_word_tokenizer("a red blue cube circle".split(), folder / "tok", context_length=CTX), CTX)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CTX, pad_token_id=tok.pad_id,
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, logit_scale_init_value=math.log(100.0),   # CLIP's trained value
    )
    CLIPModel(cfg).save_pretrained(folder / "clip", **save)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / "clip" / name).write_bytes((folder / "tok" / name).read_bytes())


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("save", [{}, {"max_shard_size": "20KB"}], ids=["one file", "shards"])
def test_the_logit_scale_stays_fp32_under_a_half_base(tmp_path, dtype, save):
    _save(tmp_path, **save)
    assert any((tmp_path / "clip").glob("*.index.json")) == bool(save)
    bb = load_backbone(f"hf:{tmp_path / 'clip'}", base_dtype=dtype)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert bb.model.logit_scale.dtype == torch.float32
    assert float(bb.logit_scale.detach()) == pytest.approx(100.0, rel=1e-6)
    assert bb.model.text_projection.weight.dtype == half
    assert bb.model.vision_model.embeddings.patch_embedding.weight.dtype == half
    with torch.no_grad():   # the towers still run in the base's dtype
        assert bb.encode_text(bb.tokenizer(["a red cube"])).dtype == half
