"""A PEFT export of a model whose inner multimodal model was adapted on its own (family "custom")."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import llava_inputs, tiny_llava
from test_adapter_io import _fresh, _randomize

import mtl_lora_vl as mlv


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
def test_peft_export_of_the_whole_model_loads_onto_the_whole_model(tmp_path):
    from peft import PeftModel

    model = _fresh(tiny_llava)   # adapters on model.model (a LlavaModel) only
    targets = {"text": [r"language_model\.layers\.\d+\.self_attn\.[qv]_proj$"]}
    mlv.attach(model.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, n_up=2, targets=targets))
    _randomize(model)
    x = llava_inputs(2)
    with torch.no_grad(), mlv.route(model, "b"):
        ref = model(**x).logits
    path = mlv.export_lora(model, "b", tmp_path / "peft", format="peft")
    targets = json.loads((path / "adapter_config.json").read_text())["target_modules"]
    assert "model.language_model.layers.0.self_attn.q_proj" in targets
    fresh = _fresh(tiny_llava)
    with torch.no_grad():
        zero_shot = fresh(**x).logits
    peft_model = PeftModel.from_pretrained(fresh, str(path)).eval()
    with torch.no_grad():   # the keys named model.language_model...: PEFT loaded none and kept the zero-shot model
        torch.testing.assert_close(peft_model(**x).logits, ref, atol=1e-5, rtol=1e-5)
    assert (ref - zero_shot).abs().max() > 1e-2


def test_merged_export_of_the_whole_model_loads_with_its_lm_head(tmp_path):
    """save_merged wrote the inner LlavaModel alone: from_pretrained of the whole model made lm_head random."""
    from transformers import LlavaForConditionalGeneration

    model = _fresh(tiny_llava)
    targets = {"text": [r"language_model\.layers\.\d+\.self_attn\.[qv]_proj$"]}
    mlv.attach(model.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, n_up=2, targets=targets))
    _randomize(model)
    x = llava_inputs(2)
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad(), mlv.route(model, "b"):
        ref, ref_tokens = model(**x).logits, model.generate(**x, **greedy)
    out = mlv.save_merged(model, "b", tmp_path / "merged")
    merged = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert torch.equal(merged.lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(merged.generate(**x, **greedy), ref_tokens)
