"""The image placeholder and its markers are never generated (a caption of image tokens decoded as ""); a count
mismatch names the family's own processor fields; caption_logits lays the image out as the family's processor
does (helper 161)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from gemma3_tiny import tiny_gemma3_backbone
from idefics3_tiny import tiny_idefics3_backbone
from llava_tiny import tiny_llava_backbone
from qwen_tiny import tiny_qwen2vl_backbone
from vlm_checks import bias_head, spy_generate

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.base import BackboneError


def _unsplit(bb):
    """These tests give square images without sizes: read unsplit (split ones: test_idefics3_split.py)."""
    bb.native_aspect(False)
    return bb


def _anyres_backbone(family: str):
    def make(d):
        build = importlib.import_module(f"test_{family}").build
        folder = d / family
        if not (folder / "config.json").is_file():
            build(folder)
        return load_backbone(f"hf:{folder}")
    return make


MAKERS = {
    "llava": lambda d: tiny_llava_backbone(d),
    "paligemma": lambda d: tiny_llava_backbone(d, "paligemma"),
    "gemma3": tiny_gemma3_backbone,
    "qwen2vl": tiny_qwen2vl_backbone,
    "idefics3": lambda d: _unsplit(tiny_idefics3_backbone(d)),
    "llava_next": _anyres_backbone("llava_next"),
    "llava_onevision": _anyres_backbone("llava_onevision"),
}
# The placeholder and the marker tokens around / beside it, as each family's tokenizer names them
MARKERS = {
    "llava": ["<image>"],
    "paligemma": ["<image>"],
    "gemma3": ["<image_soft_token>", "<start_of_image>", "<end_of_image>"],
    "qwen2vl": ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>"],
    "llava_next": ["<image>"],
    "llava_onevision": ["<image>", "<video>"],
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("h161")


@pytest.mark.parametrize("family", list(MAKERS))
def test_generate_never_writes_image_tokens(dirs, family):
    """Before: a model leaning to its image token generated it at every step and every caption decoded as ''
    (the token is special and stripped), beams too. After: the marker ids are suppressed, and greedy decoding
    chooses what the unbiased model chooses."""
    bb = MAKERS[family](dirs)
    torch.manual_seed(0)
    images = torch.randn(2, 3, bb.image_size, bb.image_size)
    prompts = [bb.image_token + " caption:"] * 2
    seen = spy_generate(bb)
    plain = bb.generate(images, max_len=5, prompts=prompts)
    tok = bb.processor.tokenizer
    marker_ids = [tok.convert_tokens_to_ids(t) for t in MARKERS[family]]
    assert bb.image_token_id in marker_ids
    for tid in marker_ids:
        h = bias_head(bb, tid)
        try:
            got = bb.generate(images, max_len=5, prompts=prompts)
            assert not torch.isin(seen["new"], torch.tensor(marker_ids)).any(), (family, tid, seen["new"])
            assert got == plain, (family, tok.convert_ids_to_tokens(tid))
            beams = bb.generate(images, max_len=5, beam_size=3, prompts=prompts)
            assert not torch.isin(seen["new"], torch.tensor(marker_ids)).any(), (family, tid, seen["new"])
            assert all(beams), beams
        finally:
            h.remove()


@pytest.mark.parametrize("family,want", [
    ("gemma3", "image_seq_length to 4, the model's config.mm_tokens_per_image"),
    ("paligemma", "image processor's image_seq_length to 16"),
    ("idefics3", "image_seq_len to 4 and its image processor's do_image_splitting as the backbone's"),
    ("llava", "patch_size, num_additional_image_tokens and vision_feature_select_strategy"),
    ("llava_next", "patch_size, num_additional_image_tokens and vision_feature_select_strategy"),
])
def test_mismatch_message_names_the_family_fields(dirs, family, want):
    """Before: every square-image family's message named LLaVA's processor fields."""
    bb = MAKERS[family](dirs)
    b = bb.lm_collator()([bb.image_token + " caption:"] * 2, ["red", "blue"])
    ids = b["input_ids"].clone()
    ids[0, (ids[0] == bb.image_token_id).nonzero()[0]] = 5
    with pytest.raises(BackboneError, match="image tokens do not match the image features.*lm_collator") as e:
        bb._forward(torch.randn(2, 3, bb.image_size, bb.image_size), ids, b["attention_mask"])
    assert want in str(e.value)
    if family not in ("llava", "llava_next"):
        assert "vision_feature_select_strategy" not in str(e.value)


_PROCESSOR_TEXT = {
    "llava": ("<image>red circle", {}),
    "paligemma": ("", {"suffix": "red circle"}),
    "gemma3": ("<start_of_image>red circle", {}),
    "qwen2vl": ("<|vision_start|><|image_pad|><|vision_end|>red circle", {}),
    "idefics3": ("<image>red circle", {}),
    "llava_next": ("<image>red circle", {}),
    "llava_onevision": ("<image>red circle", {}),
}


@pytest.mark.parametrize("family", list(MAKERS))
def test_caption_logits_reads_the_processors_layout(dirs, family):
    """Before: the image ids went first and the tokens after them (Gemma 3: [soft x 4, bos, red, ...] where its
    processor gives [bos, '\\n\\n', boi, soft x 4, eoi, '\\n\\n', red, ...]; PaliGemma lost its bos). After: the ids
    the model reads begin with the processor's own ids for the image and the caption, and logits position i still
    predicts tokens[:, i + 1]."""
    from PIL import Image

    bb = MAKERS[family](dirs)
    seen = {}
    h = bb.model.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("ids", k["input_ids"]), with_kwargs=True)
    tokens = bb.tokenizer(["red circle", "red circle"])[:, :6]
    images = torch.randn(2, 3, bb.image_size, bb.image_size)
    try:
        logits = bb.caption_logits(images, tokens)
    finally:
        h.remove()
    assert logits.shape == (2, 5, bb.vocab_size)
    text, kw = _PROCESSOR_TEXT[family]
    blank = Image.fromarray(np.zeros((bb.image_size, bb.image_size, 3), np.uint8))
    want = bb.processor(text=[text], images=[blank], return_tensors="pt", **kw)["input_ids"][0].tolist()
    got = seen["ids"][0].tolist()
    conv = bb.processor.tokenizer.convert_ids_to_tokens
    assert got[:len(want)] == want, (conv(got), conv(want))
    # position i predicts tokens[:, i + 1]: the logits over the processor's ids agree at the caption's positions
    if family == "paligemma":
        return   # a prefix LM: its caption part is marked by token_type_ids (checked by the causal test in test_hf_vlm)
    full = bb._forward(images, seen["ids"], torch.ones_like(seen["ids"]), use_cache=False).logits
    L = tokens.shape[1]
    torch.testing.assert_close(logits, full[:, -L:-1], rtol=1e-4, atol=1e-4)
    first = int(bool(bb.prefix_ids) and int(tokens[0, 0]) == bb.prefix_ids[0])
    assert seen["ids"][0, -L + first:].tolist() == tokens[0, first:].tolist()
