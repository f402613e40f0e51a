"""A base of another size whose adapted projections are the same (open_clip at another image size or vocabulary) is
named as another size, not taken for "other weights of this architecture" (review 185); check_base_weights=False
still loads it (an adapter trained at one resolution served at another is a use, not an error)."""

from __future__ import annotations

import open_clip
import pytest
import torch

import mtl_lora_vl as mlv


def _clip(image_size: int = 32, vocab: int = 64):
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=image_size, layers=2, width=32, patch_size=8,
                                                        head_width=16),
                          text_cfg=dict(context_length=12, vocab_size=vocab, width=32, heads=2, layers=2)).eval()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    model = mlv.attach(_clip(), mlv.MTLLoRAConfig(tasks=["a"], r=2))
    return mlv.save_adapter(model, tmp_path_factory.mktemp("ad") / "adapter")


@pytest.mark.parametrize("kw, weight", [
    (dict(image_size=64), r"visual.positional_embedding: \(65, 32\) here, \(17, 32\)"),
    (dict(vocab=128), r"token_embedding.weight: \(128, 32\) here, \(64, 32\)")])
def test_another_size_is_named_and_loads_when_asked(adapter, kw, weight):
    with pytest.raises(mlv.AdapterFileError, match=r"trained on a base of another size: .*" + weight) as e:
        mlv.load_adapter(_clip(**kw), adapter)
    assert "other weights of this architecture" not in str(e.value)
    assert mlv.load_adapter(_clip(**kw), adapter, check_base_weights=False) is not None
