"""The train / val overlap warning for slices counted from a split's end (``train[-50:]``): a whole split holds every
slice's rows, but a bound from the end was checked first and ``train`` beside ``train[-3:]`` was not warned of."""

from __future__ import annotations

import pytest
from test_spec_sliced_splits import SAME, SHARED
from test_spec_sliced_splits import _warned as _warned_at_load

from mtl_lora_vl.data.split_overlap import shared_parts


@pytest.mark.parametrize(("train", "test", "named"), [("train", "train[-3:]", "['train[-3:]']"),
                                                      ("train[-3:]", "train", "['train']"),
                                                      ("train[-10%:-2]", "test+train", "['train']")])
def test_a_whole_split_beside_a_slice_from_its_end_is_warned_of_at_load(tmp_path, caplog, train, test, named):
    assert SHARED + named[1:] in _warned_at_load(tmp_path, caplog, train, test)


def test_shared_parts_of_a_whole_split_and_a_slice_from_its_end():
    assert shared_parts("train[-3:]", "train") == ["train[-3:]"]
    assert shared_parts("train+test[-2:]", "test[:-1]+val") == []   # (both sliced: the length decides)
    assert shared_parts("train[-3:]", "test") == []


# The same slice counted from the end on both sides (train[-3:] beside train[-3:]) was left to the split's length,
# which never mattered: it reads the same rows on any length, and no warning came.
@pytest.mark.parametrize(("train", "test", "said"), [("train[-3:]", "train[-3:]", SAME),
                                                     ("train[-3:]+test[:2]", "test[2:] + train[-3:]",
                                                      SHARED + "'train[-3:]']"),
                                                     ("train[-30%:-1]", "train[:5]+train[-30%:-1]",
                                                      SHARED + "'train[-30%:-1]']")])
def test_a_slice_from_the_end_written_alike_is_warned_of_at_load(tmp_path, caplog, train, test, said):
    assert said in _warned_at_load(tmp_path, caplog, train, test)
