"""Readers refuse malformed entries by name (a question or caption that is not text, a question id twice, one
Karpathy image id for two files) and read an identical repeated Karpathy entry once."""
import json
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError, ReaderOptionError
from mtl_lora_vl.data.readers import check_reader_options, read_split


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "im").mkdir()
    for n in ("a", "b"):
        Image.new("RGB", (16, 16), "red").save(tmp_path / "im" / f"{n}.jpg")
    return tmp_path


def _vqa(root: Path, questions: list[dict], answers: dict[int, list[str]] | None = None) -> dict:
    (root / "q.json").write_text(json.dumps({"questions": questions}))
    kw = dict(questions="q.json", images="im", image_pattern="{image_id}.jpg")
    if answers is not None:
        anns = [{"question_id": q, "answers": [{"answer": a} for a in ans]} for q, ans in answers.items()]
        (root / "a.json").write_text(json.dumps({"annotations": anns}))
        kw["annotations"] = "a.json"
    return kw


@pytest.mark.parametrize("text", [None, "", "   ", ["what?"], {"en": "what?"}])
def test_vqav2_question_that_is_not_text_is_refused(root, text):
    # today: null -> the question "None", a list -> "['what?']", "" -> fails later in a loader worker
    kw = _vqa(root, [{"question_id": 1, "image_id": "a", "question": text}])
    with pytest.raises(DataFormatError, match=r"q\.json.*question 1"):
        read_split("vqav2", root, **kw)


def test_vqav2_question_id_twice_in_the_questions_file_is_refused(root):
    # today: both questions silently get question 1's annotation (the second's answers are wrong)
    kw = _vqa(root, [{"question_id": 1, "image_id": "a", "question": "what colour?"},
                     {"question_id": 1, "image_id": "b", "question": "how many?"}], {1: ["red"] * 10})
    with pytest.raises(DataFormatError, match=r"q\.json.*question_id 1"):
        read_split("vqav2", root, **kw)


@pytest.mark.parametrize("caption", [["a red square", "red"], {"en": "a red square"}])
def test_coco_caption_that_is_not_text_is_refused(root, caption):
    # today: str(list) / str(dict) becomes the caption "['a red square', 'red']"
    (root / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                             "annotations": [{"image_id": 1, "caption": caption}]}))
    with pytest.raises(DataFormatError, match=r"c\.json.*caption"):
        read_split("coco_captions", root, annotations="c.json", images="im")


def _karpathy(root: Path, images: list[dict]) -> None:
    (root / "k.json").write_text(json.dumps({"images": images}))


def test_karpathy_one_cocoid_for_two_files_is_refused(root):
    # today: two images share image_id "1"; retrieval_texts() then scores b.jpg's caption as a.jpg's and drops b.jpg
    _karpathy(root, [{"filename": "a.jpg", "split": "test", "cocoid": 1, "sentences": [{"raw": "x"}]},
                     {"filename": "b.jpg", "split": "test", "cocoid": 1, "sentences": [{"raw": "y"}]}])
    with pytest.raises(DataFormatError, match=r"k\.json.*1"):
        read_split("karpathy", root, annotations="k.json", split="test", images="im")


def test_karpathy_same_entry_twice_gives_each_caption_once(root):
    # today: 2 training examples, each caption twice (read_coco_captions skips an identical repeated entry)
    entry = {"filename": "a.jpg", "split": "train", "cocoid": 1, "sentences": [{"raw": "x"}]}
    _karpathy(root, [entry, dict(entry)])
    split = read_split("karpathy", root, annotations="k.json", split="train", images="im")
    assert [ex.text for ex in split.examples] == ["x"]
    assert split.examples[0].captions == ("x",)


@pytest.mark.parametrize("name", [None, 7, ""])
def test_coco_file_name_that_is_not_text_is_refused_by_type(root, name):
    # was: looked for as the file "None" / "7" and reported as not found (or skipped with a warning)
    (root / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": name}],
                                             "annotations": [{"image_id": 1, "caption": "a red square"}]}))
    with pytest.raises(DataFormatError, match=r"c\.json.*'file_name' must be a file name"):
        read_split("coco_captions", root, annotations="c.json", images="im")


@pytest.mark.parametrize("field,value", [("filename", None), ("filename", 3), ("filepath", None), ("filepath", 1)])
def test_karpathy_file_name_that_is_not_text_is_refused_by_type(root, field, value):
    entry = {"split": "test", "filename": "a.jpg", "filepath": "", "sentences": [{"raw": "a red square"}]}
    entry[field] = value
    _karpathy(root, [entry])
    with pytest.raises(DataFormatError, match=rf"k\.json.*'{field}' must be a"):
        read_split("karpathy", root, annotations="k.json", split="test", images="im")


def test_karpathy_without_filepath_reads(root):   # Flickr30k's file has no filepath
    _karpathy(root, [{"split": "test", "filename": "a.jpg", "sentences": [{"raw": "a red square"}]}])
    assert read_split("karpathy", root, annotations="k.json", split="test",
                      images="im").examples[0].text == "a red square"


def test_jsonl_image_that_is_not_text_is_refused_by_type(root):
    (root / "r.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": "red"}) + "\n"
                                  + json.dumps({"image": 7, "caption": "blue"}) + "\n")
    with pytest.raises(DataFormatError, match=r"r\.jsonl:2: 'image' must be a file path \(text\), got 7"):
        read_split("jsonl", root, file="r.jsonl", images="im")


def test_misspelt_karpathy_split_is_refused_with_the_options():
    # was: accepted by the option check (any string) and refused only when the data was read
    with pytest.raises(ReaderOptionError, match=r"option 'split' of format 'karpathy' must be one of 'train', 'val'"):
        check_reader_options("karpathy", {"annotations": "k.json", "split": "tset"})
    check_reader_options("karpathy", {"annotations": "k.json", "split": "restval"})
