"""Mistral 3 (tiny, from its config): the family row on the bare model -- default targets in the Pixtral tower and
the Mistral decoder, mixed-task routes (logits, greedy and beam generate, gradients) through the tower that packs
every image's patches into one sequence, images of different sizes, the projector when targets name it, the PEFT
export and the merged checkpoint."""

from __future__ import annotations

import pytest
import torch
from mistral3_tiny import inputs, tiny_mistral3
from vlm_checks import (
    assert_mixed_gradients_are_per_task_sums,
    assert_mixed_route_per_task,
    assert_peft_export_matches,
    perturb_adapters,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import BackboneError, backbone_class_for
from mtl_lora_vl.families import find_family


def _adapted(method: str = "mtl_lora", targets=None):
    torch.manual_seed(0)
    m = tiny_mistral3().eval()
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], method=method, r=4, **({"targets": targets} if targets else {}))
    mlv.attach(m, cfg)
    return perturb_adapters(m)


def test_default_targets_take_the_pixtral_layers_and_the_language_model():
    m = _adapted()
    info = m._mtl_lora
    assert find_family(m).name == info.family == "mistral3"
    linears = {n for n, mod in tiny_mistral3().named_modules() if isinstance(mod, torch.nn.Linear)}
    vision = {n for n in linears if ".vision_tower." in n}
    text = {n for n in linears if ".language_model." in n}
    assert len(vision) == 14 and len(text) == 14     # 2 layers: q k v o gate up down, in each tower
    assert {n for n, t in info.towers.items() if t == "image"} == vision
    assert {n for n, t in info.towers.items() if t == "text"} == text


def test_no_backbone_class_yet_says_so():
    with pytest.raises(BackboneError, match=r"no backbone class for Mistral 3 yet .*mtl_lora_vl.attach"):
        backbone_class_for(tiny_mistral3())


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_mixed_route_equals_each_task_alone(method):
    """Logits, greedy and 3-beam generate under route [0, 1]: the Pixtral tower reads both images as one sequence of
    (1, 32, 32); each image's patches take its row's task."""
    assert_mixed_route_per_task(_adapted(method), inputs(2), [0, 1])


def test_images_of_different_sizes_take_their_rows_task():
    """Pixtral reads each image at its own size (image_sizes): a 32 x 32 image (16 patches) and a 16 x 32 one (8)."""
    assert_mixed_route_per_task(_adapted(), inputs(2, sizes=[(32, 32), (16, 32)]), [1, 0])


def test_the_projector_when_targets_name_it():
    """The projector's patch merger and linear layers (every 4 patches one row) are routed image by image too."""
    m = _adapted(targets={"image": [r"multi_modal_projector\.(patch_merger\.merging_layer|linear_[12])$"]})
    assert len(m._mtl_lora.towers) == 3
    assert_mixed_route_per_task(m, inputs(3, sizes=[(32, 32), (16, 32), (32, 32)]), [0, 1, 1])


def test_mixed_gradients_equal_the_per_task_sum():
    m = _adapted()
    m.train()
    assert_mixed_gradients_are_per_task_sums(m, inputs(3), ("vision_tower", "language_model"))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
def test_peft_export_loads_with_the_same_outputs(tmp_path):
    pytest.importorskip("peft")
    m = _adapted()
    mlv.export_lora(m, ["a", "b"], tmp_path / "peft")
    torch.manual_seed(0)
    assert_peft_export_matches(m, tiny_mistral3().eval(), tmp_path / "peft", inputs(2))


def test_a_merged_checkpoint_loads_with_from_pretrained_and_the_same_outputs(tmp_path):
    m = _adapted()
    x = inputs(2)
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None)
    with torch.no_grad(), mlv.route(m, "b"):
        logits, tokens = m(**x).logits, m.generate(**x, **kw)
    out = mlv.save_merged(m, "b", tmp_path / "merged")
    merged = type(tiny_mistral3()).from_pretrained(str(out), local_files_only=True).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, logits, atol=1e-4, rtol=1e-4)   # (fp32 rounding of W + ΔW)
        assert torch.equal(merged.generate(**x, **kw), tokens)
