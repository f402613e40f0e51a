"""A list written as text in a JSONL or CSV cell -- what pandas' ``DataFrame.to_csv`` writes for a list column,
``"['yes', 'yes', 'no']"`` -- was read as one answer (or caption, label): VQA rows whose only answer no model can give
(accuracy 0 however right the model is), captions that are a Python list's text. It is refused, naming the file, the
line and the fix (helper 314)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.readers import read_split


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


def test_a_pandas_list_of_answers_in_a_csv_is_refused_with_the_fix(root: Path) -> None:
    # as pd.DataFrame({"image": [...], "question": [...], "answers": [[...], [...]]}).to_csv(path, index=False) writes
    (root / "vqa.csv").write_text("image,question,answers\nimg/0.png,what?,yes\n"
                                  "img/1.png,how many?,\"['2', 'two']\"\n")
    with pytest.raises(DataFormatError, match=r"vqa\.csv:3: the 'answers' cell .*\['2', 'two'\].* is a list written "
                                              r"as text.*'2\|two'.*orient='records', lines=True"):
        read_split("csv", root, file="vqa.csv")


@pytest.mark.parametrize(("field", "cell", "fix"), [
    ("captions", "\"['a cat', 'a small cat']\"", r"the captions '\|'-separated \('a cat\|a small cat'\)"),
    ("text", "\"[\"\"a cat\"\"]\"", "its own row"),
    ("label", "\"['cat']\"", "one label"),
])
def test_other_list_cells_of_a_csv_are_refused(root: Path, field: str, cell: str, fix: str) -> None:
    (root / "rows.csv").write_text(f"image,{field}\nimg/0.png,{cell}\n")
    with pytest.raises(DataFormatError, match=rf"rows\.csv:2: the '{field}' cell .* list written as text.*{fix}"):
        read_split("csv", root, file="rows.csv")


def test_a_json_list_kept_as_a_string_in_jsonl_is_refused(root: Path) -> None:
    rows = [{"image": "img/0.png", "question": "what?", "answers": ["yes"]},
            {"image": "img/1.png", "question": "what?", "answers": json.dumps(["no", "nope"])}]
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError, match=r"vqa\.jsonl:2: the 'answers' cell .* give the list itself "
                                              r"\(\[\"no\", \"nope\"\]\)"):
        read_split("jsonl", root, file="vqa.jsonl")


def test_bracketed_text_that_is_no_list_is_read_as_before(root: Path) -> None:
    (root / "ok.csv").write_text("image,question,answers\nimg/0.png,what?,[laughs]\nimg/1.png,which?,a|b\n")
    s = read_split("csv", root, file="ok.csv")
    assert [e.answers for e in s.examples] == [("[laughs]",), ("a", "b")]
    (root / "cap.jsonl").write_text(json.dumps({"image": "img/0.png", "captions": ["a cat", "[sic] a dog"]}) + "\n")
    assert read_split("jsonl", root, file="cap.jsonl").examples[0].captions == ("a cat", "[sic] a dog")


def test_the_fix_given_for_a_csv_captions_cell_reads_as_it_says(root: Path) -> None:
    """The fix for a captions list written as text named only a row per caption or JSON lines, though a CSV
    captions cell is '|'-separated as answers are; the cell it suggests holds both captions."""
    (root / "cap.csv").write_text("image,captions\nimg/0.png,a cat|a small cat\n")
    assert read_split("csv", root, file="cap.csv").examples[0].captions == ("a cat", "a small cat")
