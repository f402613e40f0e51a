"""Targets whose regex lists are all empty adapt nothing: ``MTLLoRAConfig`` passed them and ``attach`` then blamed the
model ("matched no nn.Linear or nn.MultiheadAttention in CLIP", with a list of linear layers it has). One empty list
beside a tower that names regexes stays allowed: it leaves that tower unadapted, as leaving it out does."""

from __future__ import annotations

import pytest
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attach import select_targets


@pytest.mark.parametrize("targets", [{"image": []}, {"text": []}, {"image": [], "text": ()}])
def test_targets_that_name_no_regex_are_refused(targets):
    with pytest.raises(mlv.ConfigError, match=r"^targets: .* names no regular expression for any tower, so nothing "
                                              r"would be adapted; give at least one"):
        mlv.MTLLoRAConfig(tasks=["a"], targets=targets)


def test_an_empty_list_beside_a_named_tower_leaves_that_tower_unadapted():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    empty = select_targets(model, mlv.MTLLoRAConfig(tasks=["a"], targets={"image": ["^0$"], "text": []}))
    left_out = select_targets(model, mlv.MTLLoRAConfig(tasks=["a"], targets={"image": ["^0$"]}))
    assert [c[0] for c in empty] == [c[0] for c in left_out] == ["0"]
