"""open_clip's image tower on a batch of no images: ``encode_image`` (CLIP and CoCa) and CoCa's ``caption_logits``
are refused naming the call, as ``generate`` is (they failed inside torch's image tower: "cannot reshape tensor of 0
elements into shape [0, 32, -1]")."""

from __future__ import annotations

import pytest
import torch
from vl_tiny import tiny_backbone


@pytest.mark.parametrize("coca", [False, True])
def test_encode_image_refuses_no_images(tmp_path, coca):
    bb = tiny_backbone(tmp_path, coca=coca)
    with pytest.raises(ValueError, match=rf"^encode_image: no images \(a batch of shape \(0, 3, 32, 32\)\); backbone "
                                         rf"'{bb.name}' takes at least one image$"):
        bb.encode_image(torch.randn(0, 3, 32, 32))
    assert bb.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, bb.embed_dim)


def test_caption_logits_refuses_no_images(tmp_path):
    bb = tiny_backbone(tmp_path, coca=True)
    tokens = bb.tokenizer(["a red circle"])
    with pytest.raises(ValueError, match=r"^caption_logits: no images \(a batch of shape \(0, 3, 32, 32\)\); backbone "
                                         r"'tiny-coca' takes at least one image$"):
        bb.caption_logits(torch.randn(0, 3, 32, 32), tokens[:0])
    assert bb.caption_logits(torch.randn(1, 3, 32, 32), tokens).shape[:2] == (1, tokens.shape[1] - 1)
