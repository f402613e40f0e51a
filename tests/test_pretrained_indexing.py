"""``load_pretrained``'s result unpacks as ``backbone, heads, config``, and now indexes as that tuple:
``load_pretrained(path)[0]`` failed with "'Pretrained' object is not subscriptable". An index past the three, or one
that is no index, is named with the fields to read by name."""

from __future__ import annotations

import pytest
import torch

import mtl_lora_vl as mlv


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    bb = mlv.backbones.load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2))
    path = mlv.save_adapter(bb.model, tmp_path_factory.mktemp("ad") / "a", base={"backbone": "builtin"})
    return mlv.load_pretrained(path)


def test_the_result_indexes_as_the_tuple_it_unpacks_into(loaded):
    backbone, heads, config = loaded
    assert loaded[0] is backbone and loaded[1] is heads and loaded[2] is config
    assert loaded[-1] is config and len(loaded) == 3
    assert tuple(loaded[:2]) == (backbone, heads)
    assert loaded[torch.tensor(1)] is heads   # (anything that is an index, as a tuple takes it)


def test_an_index_past_the_three_or_no_index_is_named(loaded):
    with pytest.raises(IndexError, match=r"holds 3 values \(backbone, heads, config\), got index 3; read .kinds"):
        loaded[3]
    with pytest.raises(TypeError, match=r"by 0, 1 or 2, got 'backbone'; read the fields by name: .backbone"):
        loaded["backbone"]
