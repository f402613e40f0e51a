"""open_clip models whose image tower is a timm ViT (``visual.trunk``: the SigLIP family, ViT-*-SigLIP) get the
family's default adapters on both towers; they were refused ("default targets ... match nothing in the image
tower") though the trunk's blocks are timm's attn.qkv / attn.proj / mlp.fc1 / mlp.fc2."""

import pytest
import torch

import mtl_lora_vl as mlv

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("timm")


def _siglip_like():
    vision = dict(timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, timm_pool="map",
                  timm_proj="none", image_size=224, patch_size=16)
    text = dict(context_length=12, vocab_size=64, width=32, heads=2, layers=2, no_causal_mask=True, pool_type="last",
                proj_bias=True)
    return open_clip.CustomTextCLIP(embed_dim=192, vision_cfg=vision, text_cfg=text).eval()


def test_default_targets_adapt_the_timm_trunk_and_the_text_tower():
    torch.manual_seed(0)
    model = _siglip_like()
    depth = len(model.visual.trunk.blocks)
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, qkv_slices="qv"))
    layers = model._mtl_lora.layers
    image = sorted(n for n in layers if n.startswith("visual."))
    assert len(image) == 4 * depth and "visual.trunk.blocks.0.attn.qkv" in image
    assert sum(n.startswith("text.") for n in layers) == 4 * 2   # attn (in-proj, out_proj), mlp.c_fc, mlp.c_proj
    assert layers["visual.trunk.blocks.0.attn.qkv"].out_slices == (True, False, True)   # packed: q and v only
    with torch.no_grad():
        for bank in layers.values():
            bank.lora_B.normal_(std=0.3)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad(), mlv.route(model, ["a", "b", "a"]):
        mixed = model.encode_image(images)
    for i, task in enumerate(["a", "b", "a"]):
        with torch.no_grad(), mlv.route(model, task):
            torch.testing.assert_close(model.encode_image(images[i:i + 1])[0], mixed[i], rtol=1e-5, atol=1e-5)
    with torch.no_grad(), mlv.route(model, "a"):
        adapted = model.encode_image(images)
    with torch.no_grad(), mlv.disabled(model):
        plain = model.encode_image(images)
    assert (adapted - plain).abs().max() > 1e-3   # the image tower's adapters act
