"""CoCa's image paths (caption_logits, generate) beside encode_image on a bf16 open_clip base: fp32 images (what
preprocess_uint8 makes by default) run under autocast, as the trainer and evaluation call them, and the dtype check
must not refuse them there; outside autocast each call names both dtypes and the fix, and the fix runs; uint8
pictures are refused by name on each path. A tiny CoCa folder, CPU."""

from __future__ import annotations

import pytest
import torch
from vl_tiny import tiny_backbone_dir

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone

PICTURES = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
TOKENS = torch.randint(3, 20, (2, 6), generator=torch.Generator().manual_seed(1))
CALLS = {"encode_image": lambda bb, x: bb.encode_image(x),
         "caption_logits": lambda bb, x: bb.caption_logits(x, TOKENS),
         "generate": lambda bb, x: bb.generate(x, max_len=3, beam_size=2)}


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    bb = load_backbone(f"open_clip:{tiny_backbone_dir(tmp_path_factory.mktemp('coca') / 'coca', coca=True)}",
                       base_dtype="bf16")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a"], r=2))
    return bb


@pytest.mark.parametrize("call", sorted(CALLS))
def test_fp32_images_on_a_bf16_coca_run_under_autocast_and_are_named_outside(coca, call):
    x = coca.preprocess_uint8(PICTURES)
    assert x.dtype == torch.float32
    with torch.no_grad(), mlv.route(coca.model, "a"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = CALLS[call](coca, x)
        fixed = CALLS[call](coca, coca.preprocess_uint8(PICTURES, dtype=torch.bfloat16))   # the fix it names
        with pytest.raises(ValueError, match=rf"^{call}: the images are torch\.float32 but .* weights are "
                                             r"torch\.bfloat16.*preprocess_uint8\(images, dtype=torch\.bfloat16\)"
                                             r".*torch\.autocast\('cpu', dtype=torch\.bfloat16\)"):
            CALLS[call](coca, x)
    if call == "generate":
        assert len(under) == len(fixed) == 2 and all(isinstance(c, str) for c in under)
    else:
        assert under.shape == fixed.shape and torch.isfinite(under.float()).all()


@pytest.mark.parametrize("call", sorted(CALLS))
def test_uint8_pictures_are_refused_on_each_coca_path(coca, call):
    with torch.no_grad(), mlv.route(coca.model, "a"), pytest.raises(
            ValueError, match=rf"^{call}: images must be normalised float images, got dtype torch\.uint8; give uint8 "
                              r"images to backbone\.preprocess_uint8 first"):
        CALLS[call](coca, PICTURES)
