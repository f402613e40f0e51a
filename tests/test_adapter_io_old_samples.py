"""helper 164: io/base_check.py `_same_parameters` (b2e52cc) turns off the older-default-targets fallback for the
very files it exists for. Adapter files written before 0e1c4b7 (2026-12-04) record `weight_samples` of the
*adapted* base weights only (identity.py at 0e1c4b7^: `base_weights(inner)`); the llava default-target change
that `_saved_projections` handles is from 08944c4 (2026-12-02), so such a file's samples never equal "every base
parameter" and the load is refused as "another architecture". Same for `_saved_before_separate_qkv` files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import llava_inputs

import mtl_lora_vl as mlv
from mtl_lora_vl import families
from mtl_lora_vl.io.layout import ADAPTER_CONFIG, AdapterFileError

TASKS = ["a", "b"]


def _llava15(layers: int = 2):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    m = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=95,
                                                  vision_feature_layer=-2, vision_feature_select_strategy="default"))
    return m.eval()


def _as_written_before_0e1c4b7(path):
    """weight_samples as model_identity wrote them before 0e1c4b7: the adapted base weights only."""
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    ident = doc["base_model"]
    keep = {f"{p}.weight" for p in ident["projections"]}
    ident["weight_samples"] = {k: v for k, v in ident["weight_samples"].items() if k in keep}
    assert set(ident["weight_samples"]) == keep
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc, indent=2))
    return path


@pytest.fixture
def old_llava_adapter(tmp_path, monkeypatch):
    old = tuple(dataclasses.replace(f, unused=None) if f.name == "llava" else f for f in families.FAMILIES)
    with monkeypatch.context() as m:
        m.setattr(families, "FAMILIES", old)   # the llava defaults before 08944c4
        model = mlv.attach(_llava15(), mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.add_(torch.randn_like(p) * 0.5)
        path = mlv.save_adapter(model, tmp_path / "ad")
    return model, _as_written_before_0e1c4b7(path)


def test_an_adapter_from_before_0e1c4b7_under_older_default_targets_still_loads(old_llava_adapter):
    model, path = old_llava_adapter
    inp = llava_inputs(2)
    loaded = mlv.load_adapter(_llava15(), path)   # HEAD: AdapterFileError "fingerprint mismatch ... architecture"
    with torch.no_grad():
        for t in TASKS:
            with mlv.route(model, t):
                want = model(**inp).logits
            with mlv.route(loaded, t):
                got = loaded(**inp).logits
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_that_old_file_is_still_refused_on_a_deeper_model(old_llava_adapter):
    """The guard b2e52cc added must hold for such files too (passes today; keep it passing after the fix)."""
    _, path = old_llava_adapter
    with pytest.raises(AdapterFileError):
        mlv.load_adapter(_llava15(layers=3), path)
