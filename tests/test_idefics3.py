"""Idefics3 and SmolVLM (tiny, from configs): the family row, mixed-task routes through the vision tower, the
connector and the language model (logits, greedy and beam generate, gradients), the PEFT export and the merged
checkpoint, on the bare model (the backbone class is tested in test_idefics3_backbone.py)."""

from __future__ import annotations

import re

import pytest
import torch
from idefics3_tiny import CONNECTOR, inputs, tiny_idefics3
from vlm_checks import (
    assert_exported_peft_matches,
    assert_merged_checkpoint_matches,
    assert_mixed_gradients_are_per_task_sums,
    assert_mixed_route_per_task,
    perturb_adapters,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.families import family_named, find_family

SMOL = pytest.mark.parametrize("smolvlm", [False, True], ids=["idefics3", "smolvlm"])


def _adapted(smolvlm: bool = False, method: str = "mtl_lora", seed: int = 0, **cfg):
    torch.manual_seed(seed)
    m = tiny_idefics3(smolvlm).eval()
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], method=method, r=4, **cfg))
    return perturb_adapters(m)


def _with_connector():
    row = family_named("idefics3").targets
    return {"image": [*row["image"], CONNECTOR], "text": list(row["text"])}


@SMOL
def test_default_targets_take_the_vision_layers_and_the_language_model(smolvlm):
    m = _adapted(smolvlm)
    info = m._mtl_lora
    assert find_family(m).name == info.family == "idefics3"
    linears = {n for n, mod in tiny_idefics3(smolvlm).named_modules() if isinstance(mod, torch.nn.Linear)}
    vision = {n for n in linears if ".vision_model." in n}
    text = {n for n in linears if ".text_model." in n}
    assert len(vision) == 12 and len(text) == 14                # 2 layers: q k v out fc1 fc2 / q k v o gate up down
    assert {n for n, t in info.towers.items() if t == "image"} == vision
    assert {n for n, t in info.towers.items() if t == "text"} == text
    assert "model.connector.modality_projection.proj" not in info.towers and "lm_head" not in info.towers
    named = _adapted(smolvlm, targets=_with_connector())._mtl_lora.towers
    assert named["model.connector.modality_projection.proj"] == "image"   # the connector only when targets name it
    for pattern in family_named("idefics3").targets["image"]:           # no regex of the row matches nothing
        assert any(re.search(pattern, n) for n in vision)


@SMOL
@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_mixed_route_equals_each_task_alone(smolvlm, method):
    """Logits, greedy and 3-beam generate under route [0, 1] equal each task's own rows, through the vision
    layers, the connector and the language model."""
    m = _adapted(smolvlm, method, targets=_with_connector())
    assert_mixed_route_per_task(m, inputs(2, ragged=True), [0, 1])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_mixed_gradients_equal_the_per_task_sum(checkpointing):
    m = _adapted(targets=_with_connector())
    m.train()
    if checkpointing:
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    x = inputs(3)
    assert_mixed_gradients_are_per_task_sums(m, x, ("vision_model", "connector", "text_model"))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
@SMOL
def test_peft_export_loads_with_the_same_outputs(smolvlm, tmp_path):
    pytest.importorskip("peft")
    m = _adapted(smolvlm, targets=_with_connector())
    assert_exported_peft_matches(m, lambda: tiny_idefics3(smolvlm).eval(), tmp_path / "peft", inputs(2))
    assert (tmp_path / "peft" / "a" / "adapter_config.json").is_file()


@SMOL
def test_a_merged_checkpoint_loads_with_from_pretrained_and_the_same_outputs(smolvlm, tmp_path):
    m = _adapted(smolvlm, targets=_with_connector())
    assert_merged_checkpoint_matches(m, type(tiny_idefics3(smolvlm)), inputs(2, ragged=True), tmp_path / "merged")
