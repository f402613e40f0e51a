"""Second look at ``image_table`` (``hf_join``): a slice as the image table's own split (``image_table = {...,
split = "train[:3]"}``) sliced the image table, so the rows whose images lie outside the slice were refused as
"images missing", long after the spec loaded; it is refused when the spec loads, saying to slice the rows."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.common import ReaderOptionError
from mtl_lora_vl.data.hf_join import check_image_table

COLUMNS = {"image_id": "imageId", "question": "question", "answers": "answer"}


@pytest.mark.parametrize("split", ["train[:3]", "train[10%:]", "train[:2]+test", "train[:50%](pct1_dropremainder)"])
def test_a_sliced_image_table_split_is_refused_saying_to_slice_the_rows(split):
    with pytest.raises(ReaderOptionError) as e:   # (was: read, its rows outside the slice "missing" their images)
        check_image_table({"path": "GQA/images", "key": "id", "split": split}, COLUMNS)
    said = str(e.value)
    assert f"split {split!r} slices the image table's rows" in said and "slice the rows' split instead" in said
    whole = "train+test" if "+" in split else "train"
    assert f'give its split unsliced (split = "{whole}")' in said


def test_an_unsliced_image_table_split_is_taken():
    check_image_table({"path": "GQA/images", "key": "id", "split": "train+test"}, COLUMNS)
    check_image_table({"path": "GQA/images", "key": "id", "split": "testdev"}, COLUMNS)
