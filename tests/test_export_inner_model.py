"""A PEFT export of a model whose inner multimodal model was adapted on its own (family "custom")."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import llava_inputs, tiny_llava
from test_adapter_io import _fresh, _randomize

import mtl_lora_vl as mlv


def _inner_adapted(randomized: bool = True):
    """A tiny LLaVA with adapters on its inner LlavaModel only (text q/v), random adapter values, and two rows."""
    model = _fresh(tiny_llava)
    targets = {"text": [r"language_model\.layers\.\d+\.self_attn\.[qv]_proj$"]}
    mlv.attach(model.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, n_up=2, targets=targets))
    if randomized:
        _randomize(model)
    return model, llava_inputs(2)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
def test_peft_export_of_the_whole_model_loads_onto_the_whole_model(tmp_path):
    from peft import PeftModel

    model, x = _inner_adapted()   # adapters on model.model (a LlavaModel) only
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

    model, x = _inner_adapted()
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad(), mlv.route(model, "b"):
        ref, ref_tokens = model(**x).logits, model.generate(**x, **greedy)
    out = mlv.save_merged(model, "b", tmp_path / "merged")
    merged = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert torch.equal(merged.lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(merged.generate(**x, **greedy), ref_tokens)


def _wrapped(kind, model, tmp_path):
    """``model`` in a wrapper of ``kind``: DDP (a one-process gloo group), torch.compile, MTLLoRAModel."""
    if kind == "ddp":
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        return torch.nn.parallel.DistributedDataParallel(model)
    return torch.compile(model) if kind == "compile" else mlv.MTLLoRAModel(model)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
@pytest.mark.parametrize("kind", ["ddp", "compile", "mtl_lora_model"])
def test_exports_of_a_wrapped_model_whose_inner_model_was_adapted_are_of_the_whole_model(tmp_path, kind):
    """Review h322: a wrapper around the LLaVA resolved to its inner model: PEFT names that PEFT loaded none of
    (the zero-shot model, with a warning) and a merged LlavaModel without lm_head (random in from_pretrained: merged
    vs routed 4.5e-01)."""
    import torch.distributed as dist
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    model, x = _inner_adapted()
    with torch.no_grad(), mlv.route(model, "b"):
        ref = model(**x).logits
    try:
        wrapper = _wrapped(kind, model, tmp_path)
        peft_dir = mlv.export_lora(wrapper, "b", tmp_path / "peft", format="peft")
        merged_dir = mlv.save_merged(wrapper, "b", tmp_path / "merged")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert "model.language_model.layers.0.self_attn.q_proj" in json.loads(
        (peft_dir / "adapter_config.json").read_text())["target_modules"]
    peft_model = PeftModel.from_pretrained(_fresh(tiny_llava), str(peft_dir)).eval()
    merged = LlavaForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert torch.equal(merged.lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**x).logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(**x).logits, ref, atol=1e-5, rtol=1e-5)


def test_merged_state_dict_of_the_whole_model_loads_into_it():
    """Review h322: mlv.merged_state_dict(llava, task) gave the inner model's keys (no lm_head, no "model."), which
    llava.load_state_dict refused; it gives those of the model passed in, also through a wrapper."""
    model, x = _inner_adapted()
    with torch.no_grad(), mlv.route(model, "b"):
        ref = model(**x).logits
    sd = mlv.merged_state_dict(model, "b")
    assert set(mlv.merged_state_dict(mlv.MTLLoRAModel(model), "b")) == set(sd)
    inner_keys = {k.removeprefix("model.") for k in sd if k != "lm_head.weight"}
    assert set(mlv.merged_state_dict(model.model, "b")) == inner_keys   # the inner model passed: its own keys
    fresh = _fresh(tiny_llava)
    fresh.load_state_dict(sd)   # strict: every key of the whole model, none other
    with torch.no_grad():
        torch.testing.assert_close(fresh(**x).logits, ref, atol=1e-5, rtol=1e-5)


def test_auto_format_of_a_llava_whose_inner_model_was_adapted_is_peft(tmp_path):
    """Review h322: format="auto" read the adapted inner model's family ("custom") and wrote the plain layout of the
    inner model, which apply_plain_lora refused on the LLaVA; the LLaVA family's default, PEFT, is written."""
    from mtl_lora_vl.io.exports import export_format

    model, _ = _inner_adapted(randomized=False)
    assert export_format(model) == export_format(mlv.MTLLoRAModel(model)) == "peft"
    assert export_format(model.model) == "plain"   # the inner model itself, of no family
    path = mlv.export_lora(model, "b", tmp_path / "auto")
    doc = json.loads((path / "adapter_config.json").read_text())
    assert "model.language_model.layers.0.self_attn.q_proj" in doc["target_modules"]
