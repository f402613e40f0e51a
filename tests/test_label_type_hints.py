"""Helper 288: a classification label that is neither a class name nor an integer index was refused with the one
hint "(write 0, not 0.0)", which fits 0.0 only: a list label ``["cat"]`` was told to write 0."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.rows import read_jsonl


@pytest.mark.parametrize("label, hint", [
    (["cat"], '(one label per row, not a list: write "cat", not ["cat"])'),
    ([2], "(one label per row, not a list: write 2, not [2])"),
    (["cat", "dog"], "(one class per row, not a list: rows with several labels are not read)"),
    (3.0, "(write 3, not 3.0)"),
    (1.5, "(an index is a whole number)"),
    (True, "(write 1 or the class name, not True)"),
    ({"id": 0}, ""),   # no hint fits
])
def test_the_hint_for_a_label_of_another_type_fits_that_label(tmp_path, label, hint):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "label": "cat"}, {"image": "a.png", "label": label}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError) as e:
        read_jsonl(tmp_path, "d.jsonl")
    tail = (f"d.jsonl:2: label {label!r} is a {type(label).__name__}; labels are class-name strings or integer "
            "class indices")
    assert str(e.value).endswith(f"{tail} {hint}" if hint else tail)
