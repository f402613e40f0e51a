"""The processor fields that set a family's image-token count come from the family table (``count_fields``), and
name fields that family's own processor has (helper 338: LLaVA-OneVision's and Mistral 3's count mismatch named
LLaVA's patch_size / num_additional_image_tokens, fields their processors lack)."""

from __future__ import annotations

import pytest
import torch
from gemma3_tiny import tiny_gemma3_backbone
from idefics3_tiny import tiny_idefics3_backbone
from llava_tiny import tiny_llava_backbone
from mistral3_tiny import tiny_mistral3_backbone
from qwen_tiny import tiny_qwen2vl_backbone
from test_generation_markers import _anyres_backbone

from mtl_lora_vl.backbones import BackboneError, backbone_class
from mtl_lora_vl.backbones.hf_processor import check_processor_count, mismatch_fix
from mtl_lora_vl.backbones.hf_vlm import HFVLMBackbone
from mtl_lora_vl.families import FAMILIES, find_family

# Per family: its tiny backbone, the fields (on the processor, or its image processor: "image_processor.") the
# message must name, and figures of the tiny model it must give.
CASES = {
    "llava": (tiny_llava_backbone, ["patch_size", "num_additional_image_tokens", "vision_feature_select_strategy"],
              ["patch_size is 8"]),
    "llava_next": (_anyres_backbone("llava_next"),
                   ["patch_size", "num_additional_image_tokens", "vision_feature_select_strategy"], []),
    "llava_onevision": (_anyres_backbone("llava_onevision"), ["num_image_tokens", "vision_feature_select_strategy"],
                        ["= 16, plus 1 for a tower with a CLS token"]),
    "paligemma": (lambda d: tiny_llava_backbone(d, "paligemma"), ["image_processor.image_seq_length"], ["to 16"]),
    "gemma3": (tiny_gemma3_backbone, ["image_seq_length"], ["to 4"]),
    "mistral3": (tiny_mistral3_backbone, ["patch_size", "spatial_merge_size"], ["(8)", "(2)"]),
    "qwen2_vl": (tiny_qwen2vl_backbone, ["image_processor.patch_size", "image_processor.merge_size"], ["(8)", "(2)"]),
    "idefics3": (tiny_idefics3_backbone, ["image_seq_len", "image_processor.do_image_splitting"], ["to 4"]),
}
_LLAVA_ONLY = "num_additional_image_tokens"


def test_every_vlm_family_of_the_table_names_its_count_fields():
    """Every family wrapped by a language-model backbone has its count fields in the table, and a test here."""
    vlm = [f.name for f in FAMILIES if f.backbone and issubclass(backbone_class(f.backbone), HFVLMBackbone)]
    assert sorted(vlm) == sorted(CASES)
    assert all(f.count_fields is not None for f in FAMILIES if f.name in vlm)
    assert all(f.count_fields is None for f in FAMILIES if f.name not in vlm)


@pytest.mark.parametrize("family", list(CASES))
def test_count_fields_are_the_familys_own_processor_fields(tmp_path_factory, family):
    """Each field named exists on that family's processor (or its image processor), with the tiny model's figures;
    only LLaVA / LLaVA-NeXT name LLaVA's num_additional_image_tokens."""
    make, fields, figures = CASES[family]
    bb = make(tmp_path_factory.mktemp(family))
    fam = find_family(bb.model)
    assert fam.name == family
    said = fam.count_fields(bb.processor, bb.model.config, bb.num_image_tokens)
    for field in fields:
        owner, _, name = field.rpartition(".")
        holder = getattr(bb.processor, owner) if owner else bb.processor
        assert name in said and hasattr(holder, name), (family, field, said)
    for figure in figures:
        assert figure in said, (family, figure, said)
    assert (_LLAVA_ONLY in said) == (family in ("llava", "llava_next")), said
    if not bb.layout.token_side:   # what a count mismatch says (a native-resolution layout names its own)
        assert said in mismatch_fix(bb.layout, bb.processor, bb.model.config, fam)


def test_a_model_of_no_family_is_not_told_llavas_fields(tmp_path):
    """Without a family (an in-memory model of another class), no family's fields are guessed."""
    bb = tiny_llava_backbone(tmp_path)
    said = mismatch_fix(bb.layout, bb.processor, bb.model.config, None)
    assert _LLAVA_ONLY not in said and f"writes {bb.num_image_tokens} per image" in said and "no family" in said


def test_onevisions_count_mismatch_names_its_own_fields(tmp_path):
    """A forward whose prompt lacks one image token: OneVision's message named LLaVA's patch_size and
    num_additional_image_tokens (its processor has neither); it names num_image_tokens now."""
    bb = _anyres_backbone("llava_onevision")(tmp_path)
    b = bb.lm_collator()([bb.image_token + " caption:"] * 2, ["red", "blue"])
    ids = b["input_ids"].clone()
    ids[0, (ids[0] == bb.image_token_id).nonzero()[0]] = 5
    with pytest.raises(BackboneError, match="image tokens do not match the image features") as e:
        bb._forward(torch.randn(2, 3, bb.image_size, bb.image_size), ids, b["attention_mask"])
    assert "its num_image_tokens" in str(e.value) and _LLAVA_ONLY not in str(e.value)


@pytest.mark.parametrize("family", list(CASES))
def test_the_load_checks_count_message_names_the_tables_fields(tmp_path_factory, family):
    """check_processor_count (a loaded processor whose count is not the model's) names the fields the table's
    count_fields names: it guessed them from processor attributes, so Mistral 3 was told LLaVA's patch_size /
    num_additional_image_tokens / vision_feature_select_strategy, and LLaVA-NeXT / OneVision that their 32-px tiles
    should be the 64-px canvas ('set its size / crop_size to 64')."""
    make, fields, _ = CASES[family]
    bb = make(tmp_path_factory.mktemp(family))
    fam, config, processor = find_family(bb.model), bb.model.config, bb.processor
    if hasattr(processor.image_processor, "do_image_splitting"):   # (as the backbone checks: one view)
        processor.image_processor.do_image_splitting = False
    said = processor._get_num_multimodal_tokens(image_sizes=[[bb.image_size] * 2])["num_image_tokens"][0]
    with pytest.raises(BackboneError, match=f"to {said} tokens but the vision tower gives {said + 1}") as e:
        check_processor_count(processor, bb.image_size, said + 1, family, config, fam)
    assert fam.count_fields(processor, config, said + 1) in str(e.value), str(e.value)
    assert "size / crop_size" not in str(e.value) and (_LLAVA_ONLY in str(e.value)) == (family in ("llava",
                                                                                                 "llava_next"))
