"""The family table: module+class matching, one place naming families, table-driven refusals."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import tiny_hf_clip, tiny_llava, tiny_open_clip, tiny_paligemma, tiny_timm_vit
from gemma3_tiny import tiny_gemma3
from idefics3_tiny import tiny_idefics3
from mistral3_tiny import tiny_mistral3
from qwen_tiny import tiny_qwen2vl
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import BackboneError, backbone_class, backbone_class_for
from mtl_lora_vl.families import FAMILIES, family_named, find_family, merged_format, peft_export

PACKAGE = Path(mlv.__file__).resolve().parent


@pytest.mark.parametrize("build, family", [
    (lambda: tiny_open_clip("clip"), "open_clip"),
    (lambda: tiny_open_clip("custom"), "open_clip"),
    (lambda: tiny_open_clip("coca"), "open_clip"),
    (tiny_hf_clip, "hf_clip"),
    (tiny_llava, "llava"),
    (tiny_paligemma, "paligemma"),
    (tiny_gemma3, "gemma3"),
    (lambda: tiny_qwen2vl(False), "qwen2_vl"),
    (lambda: tiny_qwen2vl(True), "qwen2_vl"),
    (lambda: tiny_idefics3(False), "idefics3"),
    (lambda: tiny_idefics3(True), "idefics3"),
    (tiny_timm_vit, "timm_vit"),
])
def test_every_supported_class_is_found(build, family):
    model = build()
    assert find_family(model).name == family
    assert find_family(type(model)).name == family          # a class works as well as an instance


def test_other_vision_transformers_are_not_taken_for_timm():
    import open_clip.transformer
    import torchvision.models.vision_transformer as tv

    assert find_family(open_clip.transformer.VisionTransformer) is None
    assert find_family(tv.VisionTransformer) is None
    oc_vit = open_clip.transformer.VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=2,
                                                     mlp_ratio=2.0, output_dim=16)
    assert find_family(oc_vit) is None
    with pytest.raises(mlv.AttachError, match="not a supported model class"):
        mlv.attach(oc_vit, mlv.MTLLoRAConfig(tasks=["a", "b"]))


def test_matching_is_by_module_and_class_anywhere_in_the_mro():
    import open_clip
    from timm.models.vision_transformer import VisionTransformer

    class CLIPModel(nn.Module):  # the right name in the wrong module
        pass

    class MyCLIP(open_clip.CLIP):  # a user subclass of a family class
        pass

    class MyViT(VisionTransformer):
        pass

    assert find_family(CLIPModel) is None
    assert find_family(MyCLIP).name == "open_clip"
    assert find_family(MyViT).name == "timm_vit"


def test_table_is_complete_and_consistent():
    names = [f.name for f in FAMILIES]
    assert len(set(names)) == len(names)
    for fam in FAMILIES:
        assert all("." in c for c in fam.classes), fam.classes       # qualified: module prefix + class
        assert fam.merged_format in ("hf", "open_clip", "safetensors")
        assert family_named(fam.name) is fam
        if fam.backbone is None:
            assert fam.no_backbone, f"{fam.name} needs a reason why it has no backbone class"
        else:
            assert backbone_class(fam.backbone).__name__.endswith("Backbone")
    assert [f.name for f in FAMILIES if f.peft_export] == ["hf_clip", "llava", "llava_next", "llava_onevision",
                                                          "paligemma", "gemma3", "mistral3", "qwen2_vl", "idefics3"]
    assert peft_export("hf_clip") and not peft_export("open_clip") and not peft_export("custom")
    assert merged_format("open_clip", object()) == "open_clip" and merged_format("llava", object()) == "hf"
    assert merged_format("custom", tiny_hf_clip()) == "hf" and merged_format("custom", nn.Linear(2, 2)) == "safetensors"


def test_backbone_classes_come_from_the_table():
    from mtl_lora_vl.backbones import (
        Gemma3Backbone,
        HFClipBackbone,
        HFVLMBackbone,
        Idefics3Backbone,
        OpenClipBackbone,
        PaliGemmaBackbone,
        Qwen2VLBackbone,
    )

    assert backbone_class_for(tiny_open_clip("coca")) is OpenClipBackbone
    assert backbone_class_for(tiny_hf_clip()) is HFClipBackbone
    assert backbone_class_for(tiny_llava()) is HFVLMBackbone
    assert backbone_class_for(tiny_paligemma()) is PaliGemmaBackbone
    assert backbone_class_for(tiny_gemma3()) is Gemma3Backbone
    with pytest.raises(BackboneError, match="image-only"):
        backbone_class_for(tiny_timm_vit())
    assert backbone_class_for(tiny_qwen2vl(False)) is Qwen2VLBackbone
    assert backbone_class_for(tiny_qwen2vl(True)) is Qwen2VLBackbone
    assert backbone_class_for(tiny_idefics3(False)) is Idefics3Backbone
    assert backbone_class_for(tiny_idefics3(True)) is Idefics3Backbone
    assert backbone_class_for(tiny_mistral3()).__name__ == "Mistral3Backbone"
    with pytest.raises(BackboneError, match="not a model family with a backbone class; supported: open_clip"):
        backbone_class_for(nn.Linear(2, 2))


def test_families_module_is_a_leaf():
    """The table imports nothing from the package but its own functions (family_images.py, family_processors.py),
    which import nothing from it but the anyres arithmetic (family_anyres.py), which imports nothing from it."""
    for name, allowed in (("families.py", {"family_images", "family_processors"}),
                          ("family_images.py", {"family_anyres"}), ("family_anyres.py", set()),
                          ("family_processors.py", set())):
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                ok = node.level == 1 and node.module in allowed
                assert ok or (node.level == 0 and not (node.module or "").startswith("mtl_lora_vl")), ast.dump(node)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mtl_lora_vl") for a in node.names)


def test_no_family_name_branches_outside_the_table():
    names = "|".join(re.escape(f.name) for f in FAMILIES)
    branch = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "families.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if branch.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "family names compared outside families.py:\n" + "\n".join(offenders)


def test_llava_default_targets_leave_out_vision_layers_it_never_reads():
    """LLaVA-1.5 reads the vision tower's second-to-last layer (vision_feature_layer=-2): adapters on the last
    layer got no gradient, and DDP stopped at its second step."""
    from conftest import llava_inputs

    model = tiny_llava()   # 2 vision layers
    model.config.vision_feature_layer = -2
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a"], r=2))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, m in model.named_modules()
               if "vision_tower" in n and n.endswith("q_proj") and hasattr(m, "lora_A")}
    assert adapted == {"0"}
    with mlv.route(model, "a"):
        model(**llava_inputs(2)).logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    from mtl_lora_vl.families import _llava_unused_vision_layers

    fresh = tiny_llava()
    assert _llava_unused_vision_layers(fresh) == ()                     # -1: every layer is read
    fresh.config.vision_feature_layer = [-4, -3]                        # several layers (LLaVA-NeXT style)
    fresh.config.vision_config.num_hidden_layers = 6
    assert len(_llava_unused_vision_layers(fresh)) == 2                 # layers 4 and 5


def test_llava_default_targets_take_a_language_models_packed_projections():
    """A Phi-3 language model packs q/k/v into qkv_proj and gate/up into gate_up_proj: only o_proj and
    down_proj were adapted, silently."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Phi3Config

    from mtl_lora_vl.adapters.attach import select_targets

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = Phi3Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                      bos_token_id=2)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=95,
                                                      vision_feature_layer=-1))
    text_targets = {n.rsplit(".", 1)[1] for n, *_ in select_targets(model, mlv.MTLLoRAConfig(tasks=["a"]))
                    if "language_model" in n}
    assert text_targets == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
