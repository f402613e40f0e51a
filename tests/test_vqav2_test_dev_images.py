"""VQAv2's test-dev question file says ``"data_subtype": "test-dev2015"``, but test-dev is a subset of test2015 and COCO
keeps its images as ``test2015/COCO_test2015_<id>.jpg``: the reader read every image as missing (``no usable
examples``) until the subtype was given by hand (helper 314)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mtl_lora_vl.data.readers import read_split


def _test_dev(root: Path) -> None:
    (root / "test2015").mkdir()
    for iid in (1, 42):
        Image.new("RGB", (8, 8), (iid, 0, 0)).save(root / "test2015" / f"COCO_test2015_{iid:012d}.jpg")
    qs = [{"image_id": iid, "question": f"what is {iid}?", "question_id": iid * 1000} for iid in (1, 42)]
    (root / "q.json").write_text(json.dumps({"data_subtype": "test-dev2015", "questions": qs}))


def test_test_dev_questions_read_the_test2015_images(tmp_path: Path) -> None:
    _test_dev(tmp_path)
    s = read_split("vqav2", tmp_path, questions="q.json", images="test2015", strict=True)
    assert [Path(e.image).name for e in s.examples] == ["COCO_test2015_000000000001.jpg",
                                                        "COCO_test2015_000000000042.jpg"]
    assert s.skipped == 0 and [e.text for e in s.examples] == ["what is 1?", "what is 42?"]


def test_a_given_data_subtype_is_taken_as_it_is(tmp_path: Path) -> None:
    _test_dev(tmp_path)
    (tmp_path / "test-dev2015").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test-dev2015" / "COCO_test-dev2015_000000000001.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "test-dev2015" / "COCO_test-dev2015_000000000042.jpg")
    s = read_split("vqav2", tmp_path, questions="q.json", images="test-dev2015", data_subtype="test-dev2015")
    assert Path(s.examples[0].image).name == "COCO_test-dev2015_000000000001.jpg"
