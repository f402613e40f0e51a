"""Float images of another size than a square-reading Hugging Face VLM takes (PaliGemma, Gemma 3, LLaVA; Mistral 3
read on its square) are refused by name, with the size and the fix: the SigLIP / CLIP tower failed deep inside with
torch's "The size of tensor a (36) must match the size of tensor b (16)" (a 48 px batch for a 32 px model), as
open_clip's towers did (tests/test_contrastive_image_size.py). Tiny models from configs, CPU."""

from __future__ import annotations

import pytest
import torch
from gemma3_tiny import tiny_gemma3_backbone
from llava_tiny import tiny_llava_backbone
from mistral3_tiny import tiny_mistral3_backbone

BUILDERS = {
    "paligemma": lambda tmp: tiny_llava_backbone(tmp, "paligemma"),
    "llava": lambda tmp: tiny_llava_backbone(tmp, "llava"),
    "gemma3": tiny_gemma3_backbone,
    "mistral3_square": tiny_mistral3_backbone,
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("vlm_image_size")


@pytest.fixture(params=list(BUILDERS))
def bb(request, dirs):
    bb = BUILDERS[request.param](dirs)
    if request.param == "mistral3_square":
        bb.native_aspect(False)
    return bb


@pytest.mark.parametrize("shape", [(2, 3, 48, 48), (2, 3, 16, 16), (2, 1, 32, 32)])
def test_images_of_another_size_are_refused_naming_the_size_and_the_fix(bb, shape):
    assert bb.image_size == 32
    images = torch.randn(*shape)
    p = [f"{bb.image_token} caption:"] * 2
    b = bb.lm_collator()(p, ["red", "blue"])
    want = rf"\(B, 3, 32, 32\).*got \({', '.join(map(str, shape))}\).*preprocess_uint8.*32x32"
    with torch.no_grad():
        for call in (lambda: bb.generate(images, max_len=2, prompts=p), lambda: bb.lm_loss(images, **b),
                     lambda: bb.sequence_scores(images, p, ["red", "blue"])):
            with pytest.raises(ValueError, match=want):
                call()


def test_images_of_its_own_size_still_read(bb):
    with torch.no_grad():
        b = bb.lm_collator()([f"{bb.image_token} caption:"] * 2, ["red", "blue"])
        assert torch.isfinite(bb.lm_loss(torch.randn(2, 3, 32, 32), **b)).all()
