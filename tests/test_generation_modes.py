"""``generate`` under a route of one task per row refuses, before anything runs, a decoding mode that may run several
candidates per row (a ``custom_generate``; contrastive search, DoLa, group or constrained beams): it failed after the
prefill with a layer's "routed 2 task ids but the batch here has 6 samples" (review 330)."""

from __future__ import annotations

import pytest
import torch
from llava_tiny import tiny_llava_backbone

import mtl_lora_vl as mlv


def _three_candidates(model, input_ids, **kwargs):   # a decoder of one's own: 3 candidates per row after the prefill
    calls.append("called")
    model(input_ids=input_ids, attention_mask=kwargs.get("attention_mask"), pixel_values=kwargs.get("pixel_values"))
    return model(input_ids=input_ids[:, -1:].repeat_interleave(3, 0))


calls: list[str] = []


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    bb = tiny_llava_backbone(tmp_path_factory.mktemp("modes"), "llava")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, n_up=2))
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    return bb, images, bb.lm_collator()([f"{bb.image_token} caption:"] * 2)


@pytest.mark.parametrize("mode, kwargs", [("custom_generate", {"custom_generate": _three_candidates}),
                                          ("group_beam_search", {"num_beams": 4, "num_beam_groups": 2,
                                                                 "diversity_penalty": 1.0})])
def test_a_mode_of_several_candidates_per_row_is_refused_up_front_under_a_per_row_route(adapted, mode, kwargs):
    bb, images, batch = adapted
    calls.clear()
    with mlv.route(bb.model, [0, 1]), pytest.raises(mlv.RoutingError, match=f"generate: {mode} under a route of "
                                                                             "one task per row.*beam search"):
        bb.model.generate(**batch, pixel_values=images, max_new_tokens=2, pad_token_id=bb.pad_id, **kwargs)
    assert calls == []   # refused before the decoder of one's own ran


def test_the_modes_a_per_row_route_follows_and_a_one_task_route_still_generate(adapted):
    bb, images, batch = adapted
    gen = {"max_new_tokens": 2, "pad_token_id": bb.pad_id}
    with mlv.route(bb.model, [0, 1]):
        for kw in ({}, {"num_beams": 2, "num_return_sequences": 2}, {"do_sample": True, "top_k": 3}):
            assert bb.model.generate(**batch, pixel_values=images, **gen, **kw).shape[0] == 2 * kw.get(
                "num_return_sequences", 1)
    calls.clear()
    with mlv.route(bb.model, "a"):   # one task for every row: a decoder of one's own runs (nothing per row to follow)
        bb.model.generate(**batch, pixel_values=images, **gen, custom_generate=_three_candidates)
    assert calls == ["called"]
