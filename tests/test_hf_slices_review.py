"""Second look at ``datasets``' split slices (``hf_slices``): a slice well written that ``datasets`` refuses for the
rows it is given (``(pct1_dropremainder)`` on a split of under 100 rows) was refused as "not datasets' split syntax",
sending the user to rewrite a split that is written right."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.hf_slices import slice_rows

pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


def test_pct1_dropremainder_on_a_small_split_is_refused_for_its_rows_not_its_syntax():
    with pytest.raises(ValueError) as e:
        slice_rows("train[:15%](pct1_dropremainder)", {"train": 10}, "hf_datasets data")
    said = str(e.value)
    assert "not datasets' split syntax" not in said   # (was: told to rewrite a split written right)
    assert "datasets cannot read split 'train[:15%](pct1_dropremainder)' from these rows" in said
    assert "'train': 10" in said and "pct1_dropremainder" in said


def test_a_bad_spelling_is_still_refused_as_syntax():
    with pytest.raises(ValueError, match=r"split 'train\[:10' is not datasets' split syntax"):
        slice_rows("train[:10", {"train": 10}, "hf_datasets data")
    assert slice_rows("train[:15%](pct1_dropremainder)", {"train": 200}, "x") == ((0, 30),)
