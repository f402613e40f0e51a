"""Review 216: a model whose outputs are NaN (an overflow in half precision) is an error for every kind. Retrieval
and classification said so; VQA and NLVR ranked the NaN scores and reported an accuracy (0.167 and 0.667 on the
built-in world: NLVR above chance with a broken model)."""

from __future__ import annotations

import pytest
from vl_tiny import tiny_backbone

from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, load_spec


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("task", ["vqa", "nlvr"])
def test_nan_model_outputs_are_an_error_not_a_score(clip, task, monkeypatch):
    spec = load_spec(task)
    kind = build_kind(spec, world.build_split(task, "train", n=6, seed=0), clip)
    test = world.build_split(task, "test", n=6, seed=0)
    head = kind.build_head(clip)
    encode = clip.encode_image
    monkeypatch.setattr(clip, "encode_image", lambda images: encode(images) * float("nan"))
    for h in (None, head):
        with pytest.raises(ValueError, match=rf"task '{task}': .* NaN .*half precision"):
            kind.evaluate(clip, h, test, batch_size=4, device="cpu")
