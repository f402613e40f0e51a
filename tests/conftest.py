"""Shared fixtures: tiny models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
from stop_signals import pytest_configure, pytest_unconfigure  # noqa: F401  (the session's stop signals)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Same random init in every test; one intra-op thread (tiny models gain nothing from more, and
    spin badly when other jobs hold the cores)."""
    torch.manual_seed(0)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _close_loaders(monkeypatch):
    """Stop the workers of every MultiTaskLoader a test made. They ignore SIGTERM, and a failed assertion keeps
    its iterator alive in the traceback: the test run then waited for them forever at exit instead of failing."""
    from mtl_lora_vl.data.loader import MultiTaskLoader

    made = []
    init = MultiTaskLoader.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(MultiTaskLoader, "__init__", recording_init)
    yield
    for loader in made:
        loader.close()


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for one test, put back after it."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """A tiny LLaVA directory with its processor (``llava_tiny.save_tiny_llava``), made once per test module."""
    from llava_tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture
def llava(llava_dir):
    """A fresh backbone loaded from ``llava_dir`` (adapters a test attaches stay in that test)."""
    from mtl_lora_vl.backbones import load_backbone

    return load_backbone(f"hf:{llava_dir}", device="cpu")


def tiny_open_clip(kind: str = "clip"):
    import open_clip

    vision = dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16)
    text = dict(context_length=12, vocab_size=64, width=32, heads=2, layers=2)
    if kind == "clip":
        return open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    if kind == "custom":
        return open_clip.CustomTextCLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    if kind == "coca":
        from open_clip.coca_model import CoCa

        mm = dict(context_length=12, vocab_size=64, width=32, heads=2, layers=2)
        vision = dict(vision, output_tokens=True, attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2)
        model = CoCa(embed_dim=32, multimodal_cfg=mm, text_cfg=dict(text, embed_cls=True, output_tokens=True),
                     vision_cfg=vision)
        torch.nn.init.normal_(model.text_decoder.text_projection, std=32**-0.5)  # open_clip leaves it torch.empty
        return model
    raise ValueError(kind)


def tiny_hf_clip():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(cfg)


def tiny_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=95, vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(cfg)


def tiny_paligemma():
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        SiglipVisionConfig,
    )

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8, projection_dim=32)
    text = GemmaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    cfg = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_id=95, projection_dim=32)
    return PaliGemmaForConditionalGeneration(cfg)


def llava_inputs(batch: int = 3, seq: int = 24):
    """Inputs for tiny_llava: each sample has 16 image tokens (32/8)^2 then text."""
    ids = torch.randint(0, 90, (batch, seq))
    ids[:, :16] = 95
    return dict(input_ids=ids, pixel_values=torch.randn(batch, 3, 32, 32), attention_mask=torch.ones_like(ids))


def tiny_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
