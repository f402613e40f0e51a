"""``MTLLoRAModel(coca).generate`` is open_clip's ``CoCa.generate``, which imports its samplers from transformers 4
(``BeamSearchScorer``, the logits warpers): under the transformers 5 this package needs it failed with open_clip's
"Please install transformers" (installed). It is refused naming the backbone's own routed captioning."""

from __future__ import annotations

import open_clip.coca_model
import pytest
import torch
from vl_tiny import tiny_backbone

import mtl_lora_vl as mlv


@pytest.fixture
def coca(tmp_path):
    return tiny_backbone(tmp_path, coca=True)   # (a fresh one per test: each attaches)


def test_wrapper_generate_on_a_coca_names_the_backbones_generate(coca, monkeypatch):
    monkeypatch.setattr(open_clip.coca_model, "_has_transformers", False)   # (as under transformers 5)
    model = mlv.MTLLoRAModel(coca.model, mlv.MTLLoRAConfig(tasks=["captioning", "retrieval"], r=2))
    images = torch.randn(2, 3, 32, 32)
    for kwargs in ({"tasks": ["captioning", "retrieval"]}, {}):
        with pytest.raises(RuntimeError, match=r"open_clip's CoCa.generate cannot run .* transformers 5 removed.*"
                                               r"with model.route\(tasks\): bb.generate\(images"):
            model.generate(images, seq_len=6, **kwargs)
    with model.route(["captioning", "retrieval"]):   # the way the message names
        assert len(coca.generate(images, max_len=3, beam_size=2)) == 2


def test_wrapper_generate_on_a_coca_is_open_clips_where_it_can_run(coca, monkeypatch):
    monkeypatch.setattr(open_clip.coca_model, "_has_transformers", True)
    calls = []
    monkeypatch.setattr(open_clip.coca_model.CoCa, "generate", lambda self, image, **kw: calls.append(kw) or "ran")
    model = mlv.MTLLoRAModel(coca.model, mlv.MTLLoRAConfig(tasks=["captioning"], r=2))
    assert model.generate(torch.randn(1, 3, 32, 32), tasks="captioning", seq_len=6) == "ran"
    assert calls == [{"seq_len": 6}]
