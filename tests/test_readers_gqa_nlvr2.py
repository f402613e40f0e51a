"""The GQA and NLVR2 readers, on tiny fixture files in their official layouts written into tmp_path."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError, ReaderOptionError
from mtl_lora_vl.data.images import ImageError
from mtl_lora_vl.data.readers import READERS, check_reader_options, read_gqa, read_nlvr2, read_split
from mtl_lora_vl.metrics import vqa_accuracy


def _img(path: Path, fmt: str | None = None, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), color).save(path, format=fmt)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png" + bytes(40))
    return path


# ------------------------------------------------------------------------------------ GQA

def _gqa_q(image_id, question, answer=None, structural="verify", detailed="existC", **extra):
    q = {"imageId": image_id, "question": question, "isBalanced": True, "groups": {"global": None, "local": "x"},
         "semantic": [], "semanticStr": "", "annotations": {}, "entailed": [], "equivalent": []}
    if answer is not None:
        q.update(answer=answer, fullAnswer=f"Yes, it is {answer}.",
                 types={"structural": structural, "semantic": "obj", "detailed": detailed})
    q.update(extra)
    return q


@pytest.fixture()
def gqa_root(tmp_path: Path) -> Path:
    root = tmp_path / "gqa"
    _img(root / "images" / "2354786.jpg", "JPEG")
    _img(root / "images" / "n161313.jpg", "JPEG")
    qs = {"20968379": _gqa_q("2354786", "Is the sky dark?", "yes"),
          "05345672": _gqa_q("n161313", "What is the color of the car?", "red", structural="query",
                             detailed="colorQ"),
          "1111": _gqa_q("missing", "Is there a dog?", "no")}
    (root / "testdev_balanced_questions.json").write_text(json.dumps(qs))
    test = {"t1": {"imageId": "2354786", "question": "Is it sunny?", "isBalanced": True}}
    (root / "test_balanced_questions.json").write_text(json.dumps(test))
    return root


def test_gqa_reads_questions_answers_types_and_skips_a_missing_image(gqa_root, caplog):
    with caplog.at_level(logging.WARNING, "mtl_lora_vl.data"):
        s = read_gqa(gqa_root, "testdev_balanced_questions.json", images="images")
    assert s.skipped == 1 and "missing.jpg" in caplog.text
    a, b = s.examples
    assert a.image == str((gqa_root / "images" / "2354786.jpg").resolve()) and os.path.isabs(a.image)
    assert (a.image_id, a.text, a.answers, a.question_type) == ("2354786", "Is the sky dark?", ("yes",), "verify")
    assert a.meta == {"question_id": "20968379", "filter_type": "verify", "full_answer": "Yes, it is yes.",
                      "is_balanced": True}
    assert (b.image_id, b.answers, b.question_type, b.meta["filter_type"]) == ("n161313", ("red",), "query", "query")
    # one answer: the metric scores it by exact match after normalisation
    assert vqa_accuracy("Red.", b.answers) == 1.0 and vqa_accuracy("blue", b.answers) == 0.0


def test_gqa_reads_a_folder_of_question_files_in_numeric_order(gqa_root):
    """GQA's "all" questions come as train_all_questions/train_all_questions_0.json ... _9.json."""
    folder = gqa_root / "train_all_questions"
    folder.mkdir()
    for n, qid in ((10, "c"), (2, "b"), (0, "a")):
        (folder / f"train_all_questions_{n}.json").write_text(json.dumps({qid: _gqa_q("2354786", f"q {qid}?", "no")}))
    s = read_gqa(gqa_root, "train_all_questions", images="images")
    assert [e.meta["question_id"] for e in s.examples] == ["a", "b", "c"]   # 0, 2, 10: not 0, 10, 2
    (folder / "train_all_questions_3.json").write_text(json.dumps({"b": _gqa_q("2354786", "again?", "no")}))
    with pytest.raises(DataFormatError, match=r"train_all_questions_3\.json: question b is also in "
                                              r"train_all_questions_2\.json"):
        read_gqa(gqa_root, "train_all_questions", images="images")
    (gqa_root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no \*\.json files"):
        read_gqa(gqa_root, "empty", images="images")


def test_gqa_folder_of_several_splits_question_files_is_refused(gqa_root):
    """A folder holding the balanced files of several splits (testdev_balanced_questions.json beside
    test_balanced_questions.json, or train_ beside val_) was read as one split: testdev's 2 usable questions and
    test's unanswered one together, without a word (the ids differ, so the repeated-id check said nothing)."""
    with pytest.raises(DataFormatError, match=r"holds the question files of several sets \['test_balanced_questions', "
                                              r"'testdev_balanced_questions'\].*give one file"):
        read_gqa(gqa_root, ".", images="images")
    (gqa_root / "test_balanced_questions.json").unlink()   # one set's file alone in the folder: read
    assert len(read_gqa(gqa_root, ".", images="images").examples) == 2


def test_gqa_folder_of_question_files_passes_over_macos_appledouble_files(gqa_root):
    """A tar made on macOS (or a copy to a FAT/SMB volume) holds '._train_all_questions_0.json' beside each file:
    the folder was refused as holding two sets, ['._train_all_questions', 'train_all_questions']."""
    folder = gqa_root / "train_all_questions"
    folder.mkdir()
    for n, qid in ((0, "a"), (1, "b")):
        (folder / f"train_all_questions_{n}.json").write_text(json.dumps({qid: _gqa_q("2354786", f"q {qid}?", "no")}))
        (folder / f"._train_all_questions_{n}.json").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X  ")
    s = read_gqa(gqa_root, "train_all_questions", images="images")
    assert [e.meta["question_id"] for e in s.examples] == ["a", "b"]


def test_gqa_keeps_only_the_fields_it_reads_as_it_parses(gqa_root):
    """A question's program, annotations and entailments are dropped as each is parsed (the balanced train file
    holds 943k questions), and the examples are as before."""
    from mtl_lora_vl.data.common import load_json
    from mtl_lora_vl.data.gqa import _KEPT, _slim

    path = gqa_root / "testdev_balanced_questions.json"
    qs = load_json(path, object_hook=_slim)
    assert all(set(q) <= set(_KEPT) for q in qs.values()) and qs["1111"]["question"] == "Is there a dog?"
    assert "semantic" in json.loads(path.read_text())["1111"]
    s = read_gqa(gqa_root, path.name, images="images")
    assert [e.answers for e in s.examples] == [("yes",), ("red",)]


def test_gqa_type_options_test_files_and_pattern(gqa_root):
    s = read_gqa(gqa_root, "testdev_balanced_questions.json", images="images", question_type_field="detailed",
                 filter_type_field="")
    assert [e.question_type for e in s.examples] == ["existC", "colorQ"]
    assert [e.meta["filter_type"] for e in s.examples] == ["", ""]
    s = read_gqa(gqa_root, "test_balanced_questions.json", images="images")   # no answer, no types
    (e,) = s.examples
    assert e.answers == () and e.question_type is None and e.meta["filter_type"] == "" and "full_answer" not in e.meta
    _img(gqa_root / "other" / "img_2354786.jpg", "JPEG")
    s = read_gqa(gqa_root, "test_balanced_questions.json", images="other", image_pattern="img_{image_id}.jpg")
    assert s.examples[0].image.endswith("img_2354786.jpg")


def test_gqa_strict_and_corrupt_image(gqa_root):
    with pytest.raises(ImageError, match="missing.jpg"):
        read_gqa(gqa_root, "testdev_balanced_questions.json", images="images", strict=True)
    _corrupt(gqa_root / "images" / "n161313.jpg")
    s = read_gqa(gqa_root, "testdev_balanced_questions.json", images="images")
    assert [e.image_id for e in s.examples] == ["2354786"] and s.skipped == 2
    s = read_gqa(gqa_root, "testdev_balanced_questions.json", images="images", verify=False)
    assert len(s.examples) == 2 and s.skipped == 1   # existence only: the corrupt file passes, the missing one not


@pytest.mark.parametrize(("content", "message"), [
    ([{"imageId": "1", "question": "q?"}], r"q\.json: GQA questions must be a JSON object mapping each question id"),
    ({"77": "Is it?"}, r"q\.json: question 77 must be a JSON object"),
    ({"77": {"question": "Is it?"}}, r"q\.json: question 77 has no 'imageId' field"),
    ({"77": {"imageId": "2354786"}}, r"q\.json: question 77 has no 'question' field"),
    ({"77": {"imageId": None, "question": "Is it?"}}, r"question 77's 'imageId' must be an image id"),
    ({"77": {"imageId": "2354786", "question": "  "}}, r"q\.json: question 77's 'question' must be non-blank text"),
    ({"77": {"imageId": "2354786", "question": "Is it?", "answer": ["yes"]}},
     r"q\.json: question 77's 'answer' must be non-blank text, got \['yes'\]"),
    ({"77": {"imageId": "2354786", "question": "Is it?", "answer": None}}, r"question 77's 'answer' must be non-blank"),
    ({"77": {"imageId": "2354786", "question": "Is it?", "answer": "yes", "types": "verify"}},
     r"question 77's 'types' must be an object"),
    ({"77": {"imageId": "2354786", "question": "Is it?", "answer": "yes", "types": {"semantic": "obj"}}},
     r"question 77's 'types' has no 'structural' type \(it has 'semantic'\); set question_type_field"),
])
def test_gqa_format_errors_name_file_question_and_fix(gqa_root, content, message):
    (gqa_root / "q.json").write_text(json.dumps(content))
    with pytest.raises(DataFormatError, match=message):
        read_gqa(gqa_root, "q.json", images="images")


def test_gqa_through_read_split_checks_its_options(gqa_root):
    assert READERS["gqa"] is read_gqa
    s = read_split("gqa", gqa_root, questions="testdev_balanced_questions.json", images="images",
                   question_type_field="semantic")
    assert [e.question_type for e in s.examples] == ["obj", "obj"]
    check_reader_options("gqa", {"questions": "q.json", "strict": True, "verify": "decode"})
    with pytest.raises(ReaderOptionError, match="format 'gqa' needs option.*'questions'"):
        read_split("gqa", gqa_root, images="images")
    with pytest.raises(ReaderOptionError, match="'question_type_field' of format 'gqa' must be one of 'structural'"):
        check_reader_options("gqa", {"questions": "q.json", "question_type_field": "structual"})
    with pytest.raises(ReaderOptionError, match="format 'gqa' does not take option.*'annotations'"):
        check_reader_options("gqa", {"questions": "q.json", "annotations": "a.json"})


# ------------------------------------------------------------------------------------ NLVR2

def _nlvr_line(ident: str, label="True", sentence="There are two dogs.", **extra) -> dict:
    row = {"validation": {"1": label}, "sentence": sentence, "left_url": "http://x/l.jpg", "writer": "3",
           "label": label, "right_url": "http://x/r.jpg", "synset": "dog", "query": "two dogs12",
           "identifier": ident, "extra_validations": {}}
    row.update(extra)
    return row


def _write_lines(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path.name


@pytest.fixture()
def nlvr_root(tmp_path: Path) -> Path:
    root = tmp_path / "nlvr2"
    for pair in ("train-10108-0", "train-10108-1"):
        for side in (0, 1):
            _img(root / "images" / "train" / "7" / f"{pair}-img{side}.png", "PNG")
    _img(root / "images" / "train" / "3" / "train-20-2-img0.png", "JPEG")   # ".png" that is a JPEG: read by header
    _img(root / "images" / "train" / "3" / "train-20-2-img1.png", "PNG")
    _img(root / "dev" / "dev-850-0-img0.png", "PNG")
    _img(root / "dev" / "dev-850-0-img1.png", "PNG")
    _write_lines(root / "train.json", [
        _nlvr_line("train-10108-0-0", "True", directory=7),
        _nlvr_line("train-10108-0-1", "False", "The left image has one dog.", directory=7),
        _nlvr_line("train-10108-1-0", False, directory=7),
        _nlvr_line("train-20-2-1", True, directory=3),
    ])
    _write_lines(root / "dev.json", [_nlvr_line("dev-850-0-0", "False", synset="cat"), "",
                                     _nlvr_line("dev-850-1-1")])   # pair 1 has no images
    return root


def test_nlvr2_reads_train_with_directories_and_labels(nlvr_root):
    s = read_nlvr2(nlvr_root, "train.json", images="images/train")
    assert s.skipped == 0 and [e.image_id for e in s.examples] == ["train-10108-0-0", "train-10108-0-1",
                                                                   "train-10108-1-0", "train-20-2-1"]
    e = s.examples[1]
    base = (nlvr_root / "images" / "train" / "7").resolve()
    assert e.image == (str(base / "train-10108-0-img0.png"), str(base / "train-10108-0-img1.png"))
    assert (e.text, e.label, e.question_type) == ("The left image has one dog.", 0, None)
    assert e.meta == {"identifier": "train-10108-0-1", "label_name": "False", "group": "train-10108--1"}
    # NLVR2's consistency groups the pairs of one sentence: its identifier without the pair id
    assert [x.meta["group"] for x in s.examples] == ["train-10108--0", "train-10108--1", "train-10108--0",
                                                     "train-20--1"]
    assert [x.label for x in s.examples] == [1, 0, 0, 1]
    assert [x.meta["label_name"] for x in s.examples] == ["True", "False", "False", "True"]
    assert s.examples[3].image[0].endswith("3/train-20-2-img0.png")


def test_nlvr2_dev_without_directory_skips_a_pair_with_a_missing_image(nlvr_root, caplog):
    with caplog.at_level(logging.WARNING, "mtl_lora_vl.data"):
        s = read_nlvr2(nlvr_root, "dev.json", images="dev", question_type_field="synset")
    (e,) = s.examples
    assert e.image == tuple(str((nlvr_root / "dev" / f"dev-850-0-img{i}.png").resolve()) for i in (0, 1))
    assert e.label == 0 and e.question_type == "cat"
    assert s.skipped == 2 and "dev-850-1-img0.png" in caplog.text and "dev-850-1-img1.png" in caplog.text
    with pytest.raises(ImageError, match="dev-850-1-img0.png"):
        read_nlvr2(nlvr_root, "dev.json", images="dev", strict=True)


def test_nlvr2_one_corrupt_image_skips_its_examples(nlvr_root):
    _corrupt(nlvr_root / "images" / "train" / "7" / "train-10108-0-img1.png")   # the right image of two sentences
    s = read_nlvr2(nlvr_root, "train.json", images="images/train")
    assert [e.image_id for e in s.examples] == ["train-10108-1-0", "train-20-2-1"] and s.skipped == 1
    with pytest.raises(ImageError, match="train-10108-0-img1.png"):
        read_nlvr2(nlvr_root, "train.json", images="images/train", strict=True)


def test_nlvr2_image_pattern(nlvr_root):
    flat = nlvr_root / "flat"
    for side in (0, 1):
        _img(flat / f"dev-850-0-{side}.jpg", "JPEG")
    _write_lines(nlvr_root / "one.json", [_nlvr_line("dev-850-0-0")])
    s = read_nlvr2(nlvr_root, "one.json", images="flat", image_pattern="{split}-{set_id}-{pair_id}-{side}.jpg")
    assert s.examples[0].image[1].endswith("flat/dev-850-0-1.jpg")
    with pytest.raises(ReaderOptionError, match=r"does not use \{side\}: the left and right images would be one"):
        read_nlvr2(nlvr_root, "one.json", images="flat", image_pattern="{pair}.jpg")
    with pytest.raises(ReaderOptionError, match=r"image_pattern '\{image_id\}.png' cannot be filled.*\{pair\}"):
        read_nlvr2(nlvr_root, "one.json", image_pattern="{image_id}.png")


@pytest.mark.parametrize(("line", "message"), [
    ('{"identifier": "dev-1-0-0", "sentence": "x", ', r"bad.json:2: not valid JSON .*one JSON object per line"),
    ('["dev-1-0-0", "x", "True"]', r"bad.json:2: each line must be a JSON object, got list"),
    ({"sentence": "x", "label": "True"}, r"bad.json:2: needs an 'identifier'"),
    ({"identifier": "dev-1-0-0", "label": "True"}, r"bad.json:2: example dev-1-0-0's 'sentence' must be non-blank"),
    ({"identifier": "dev-1-0-0", "sentence": " ", "label": "True"}, r"'sentence' must be non-blank text"),
    ({"identifier": "dev-1-0-0", "sentence": "x"}, r"bad.json:2: example dev-1-0-0 has no 'label'"),
    ({"identifier": "dev-1-0-0", "sentence": "x", "label": "yes"},
     r"bad.json:2: example dev-1-0-0's 'label' must be \"True\" or \"False\" .*got 'yes'"),
    ({"identifier": "dev-1-0-0", "sentence": "x", "label": 1}, r"'label' must be \"True\" or \"False\""),
    ({"identifier": "dev-1-0", "sentence": "x", "label": "True"},
     r"bad.json:2: identifier 'dev-1-0' is not split-set_id-pair_id-sentence_id"),
    ({"identifier": "dev-1--0", "sentence": "x", "label": "True"}, r"identifier 'dev-1--0' is not split-set_id"),
    ({"identifier": "dev-../1-0-0", "sentence": "x", "label": "True"}, r"is not split-set_id-pair_id-sentence_id"),
    ({"identifier": "dev-850-0-0", "sentence": "x", "label": "True"},
     r"bad.json:2: identifier 'dev-850-0-0' is given twice \(lines 1 and 2\)"),
    ({"identifier": "dev-1-0-0", "sentence": "x", "label": "True", "directory": "../7"},
     r"bad.json:2: example dev-1-0-0's 'directory' must be the name of a subfolder"),
])
def test_nlvr2_format_errors_name_the_line(nlvr_root, line, message):
    _write_lines(nlvr_root / "bad.json", [_nlvr_line("dev-850-0-0"), line])
    with pytest.raises(DataFormatError, match=message):
        read_nlvr2(nlvr_root, "bad.json", images="dev")


def test_nlvr2_question_type_field_must_be_on_every_line(nlvr_root):
    with pytest.raises(DataFormatError, match=r"dev.json:1: example dev-850-0-0 has no 'topic' field"):
        read_nlvr2(nlvr_root, "dev.json", images="dev", question_type_field="topic")


def test_nlvr2_through_read_split_checks_its_options(nlvr_root):
    assert READERS["nlvr2"] is read_nlvr2
    s = read_split("nlvr2", nlvr_root, annotations="dev.json", images="dev", verify="decode")
    assert [e.image_id for e in s.examples] == ["dev-850-0-0"] and s.strict is False
    with pytest.raises(ReaderOptionError, match="format 'nlvr2' needs option.*'annotations'"):
        read_split("nlvr2", nlvr_root, images="dev")
    with pytest.raises(ReaderOptionError, match="format 'nlvr2' does not take option.*'questions'"):
        read_split("nlvr2", nlvr_root, annotations="dev.json", questions="q.json")
    with pytest.raises(ReaderOptionError, match="option 'strict' of format 'nlvr2' must be true or false"):
        check_reader_options("nlvr2", {"annotations": "dev.json", "strict": "false"})
    with pytest.raises(ValueError, match="unknown data format 'nlvr'.*gqa.*nlvr2"):
        read_split("nlvr", nlvr_root, annotations="dev.json")
