"""A JSON answer written as a float with no fraction (2.0: pandas writes an int column holding a NaN so) reads as
the integer's text, "2", the answer a model generates; other numbers keep their text."""

from __future__ import annotations

import json

from PIL import Image

from mtl_lora_vl.data.readers import read_split


def test_whole_float_answers_read_as_integers(tmp_path):
    Image.new("RGB", (8, 8), (200, 20, 20)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "how many?", "answers": [2.0, 2, "2", 2.5]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = read_split("jsonl", tmp_path, file="q.jsonl")
    assert split.examples[0].answers == ("2", "2", "2", "2.5")   # was ("2.0", "2", "2", "2.5"): never matched
