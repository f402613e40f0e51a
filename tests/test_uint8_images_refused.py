"""uint8 (any integer) images given where normalised float images go are refused by name, with the fix
(``backbone.preprocess_uint8``): a LLaVA-style backbone's ``generate``, ``sequence_scores``, ``lm_loss`` and
``caption_logits`` cast them to the tower's dtype and read 0..255 as normalised values without a word (the README's
first snippet makes uint8 ``pictures``, its language-model API takes ``pixel_values``), and open_clip's
``encode_image`` failed with torch's bare "expected scalar type Byte but found Float". Built-in backbones, CPU."""

from __future__ import annotations

import pytest
import torch

import mtl_lora_vl as mlv

WANT = r"images must be normalised float images, got dtype torch\.(uint8|int64).*backbone\.preprocess_uint8"


@pytest.fixture(scope="module")
def llava():
    return mlv.backbones.load_backbone("builtin-llava")


@pytest.fixture(scope="module")
def clip():
    return mlv.backbones.load_backbone("builtin")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_language_model_calls_refuse_integer_images(llava, dtype):
    pics = torch.randint(0, 256, (2, 3, llava.image_size, llava.image_size), dtype=torch.uint8).to(dtype)
    prompts = [f"{llava.image_token} question: what colour is the cube? answer:"] * 2
    batch = llava.lm_collator()(prompts, ["red", "blue"])
    tokens = torch.ones(2, 3, dtype=torch.long)
    with torch.no_grad():
        for what, call in (("generate", lambda: llava.generate(pics, max_len=2, prompts=prompts)),
                           ("sequence_scores", lambda: llava.sequence_scores(pics, prompts, ["red", "blue"])),
                           ("lm_loss", lambda: llava.lm_loss(pics, **batch)),
                           ("caption_logits", lambda: llava.caption_logits(pics, tokens))):
            with pytest.raises(ValueError, match=f"^{what}: {WANT}"):
                call()


def test_the_same_pictures_preprocessed_still_read(llava):
    pics = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    prompts = [f"{llava.image_token} caption:"] * 2
    with torch.no_grad():
        scores = llava.sequence_scores(llava.preprocess_uint8(pics), prompts, ["red", "blue"])
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()


@pytest.mark.parametrize("side", [None, 32])
def test_encode_image_refuses_integer_images_of_any_size(clip, side):
    side = side or clip.image_size
    pics = torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8)
    with pytest.raises(ValueError, match=f"^encode_image: {WANT}"):
        clip.encode_image(pics)
    assert clip.encode_image(clip.preprocess_uint8(pics)).shape[0] == 2


@pytest.mark.parametrize("call", ["forward", "generate"])
def test_the_peft_style_wrapper_refuses_integer_pixel_values(call):
    """Helper 551: MTLLoRAModel's forward / generate hand pixel_values to the Hugging Face model unchecked, which casts
    uint8 pictures to its tower's dtype and reads 0..255 as normalised values (the built-in LLaVA ran on them without a
    word). Refused by name, under autocast too; the same pictures preprocessed still run."""
    bb = mlv.backbones.load_backbone("builtin-llava")
    model = mlv.MTLLoRAModel(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2)).eval()
    pics = torch.randint(0, 256, (1, 3, bb.image_size, bb.image_size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))
    batch = bb.lm_collator()([f"{bb.image_token} question: what colour is the cube? answer:"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    run = (lambda px: model(**inputs, pixel_values=px, tasks=["vqa"]).logits) if call == "forward" else \
        (lambda px: model.generate(**inputs, pixel_values=px, tasks=["vqa"], max_new_tokens=2, do_sample=False))
    with torch.no_grad():
        for autocast in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), pytest.raises(
                    ValueError, match=rf"^MTLLoRAModel\.{call}: pixel_values must be normalised float images, got "
                                      r"dtype torch\.uint8; give the pictures to the model's image processor"):
                run(pics)
        assert run(bb.preprocess_uint8(pics)).shape[0] == 1
