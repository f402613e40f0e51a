"""A reader's strict stop on an unreadable image names the data file's row that gives it, as the loader's strict stop
names the example: a file used by many rows, or a row found only by its line, is then fixed at once."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mtl_lora_vl.data.images import ImageError
from mtl_lora_vl.data.rows import read_csv, read_jsonl


@pytest.mark.parametrize("row", [{"text": "a cat"}, {"question": "what?", "answers": ["x"]}, {"label": "cat"}])
def test_a_strict_read_names_the_row_of_a_broken_image(tmp_path, row):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "img" / "good.png")
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    lines = [{"image": "img/good.png", **row}, {"image": "img/empty.png", **row}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ImageError, match=r"rows\.jsonl:2: image .*empty\.png: file is empty"):
        read_jsonl(tmp_path, "rows.jsonl", strict=True)
    (tmp_path / "rows.csv").write_text("image,text\nimg/good.png,a\nimg/empty.png,b\n")
    with pytest.raises(ImageError, match=r"rows\.csv:3: image .*empty\.png: file is empty"):
        read_csv(tmp_path, "rows.csv", strict=True)
    assert len(read_jsonl(tmp_path, "rows.jsonl").examples) == 1   # not strict: the row is skipped, as before
