"""helper 164: Qwen2-VL caption_logits ignores the images' own size (hf_vlm.py caption_logits builds the prompt with
`collate.prompt_rows([self.image_token])`, no image_sizes -> the nominal square's count).
The loader gives Qwen2-VL native-size (non-square) images, and generate / lm_loss / sequence_scores take them;
caption_logits raises BackboneError "image tokens do not match the image features (tokens: 8, features: 16)"."""

from __future__ import annotations

import pytest
import torch
from qwen_tiny import tiny_qwen2vl_backbone


@pytest.mark.parametrize("side", [(32, 64), (64, 32), (64, 64)])
def test_caption_logits_takes_a_native_size_batch(tmp_path, side):
    bb = tiny_qwen2vl_backbone(tmp_path)
    assert bb.resize.native and bb.image_size == 32
    torch.manual_seed(0)
    images = torch.randn(2, 3, *side)
    tokens = bb.tokenizer(["red circle", "blue square"])[:, :6]
    with torch.no_grad():
        logits = bb.caption_logits(images, tokens)
        assert logits.shape == (2, 5, bb.vocab_size)
        # the same numbers as lm_loss's layout: prompt "<image>" with the images' own size
        b = bb.lm_collator()([bb.image_token] * 2, image_sizes=[side] * 2)
        ids = torch.cat([b["input_ids"], tokens[:, 1:]], 1)
        full = bb._forward(images, ids, torch.ones_like(ids), use_cache=False).logits
    torch.testing.assert_close(logits, full[:, -6:-1], rtol=1e-4, atol=1e-4)
