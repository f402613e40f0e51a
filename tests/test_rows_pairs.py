"""Generic JSONL / CSV rows of several images (``images`` + ``statement`` + a true/false ``label``): the ``nlvr``
kind's rows without NLVR2's own files."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError, PathEscapeError
from mtl_lora_vl.data.images import ImageError
from mtl_lora_vl.data.rows import read_csv, read_jsonl


def _images(root, n: int = 4) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20, 16), (60 * i, 255 - 60 * i, 90)).save(root / "img" / f"{i}.png")
    return [f"{i}.png" for i in range(n)]


def _jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_pair_rows_read_to_tuples_with_truth_labels(tmp_path):
    _images(tmp_path)
    _jsonl(tmp_path / "pairs.jsonl", [
        {"images": ["0.png", "1.png"], "statement": "the left image is red", "label": True,
         "question_type": "colour"},
        {"images": ["1.png", "2.png"], "text": "both images hold a square", "label": "False", "image_id": "p1"},
        {"images": ["2.png", "3.png", "0.png"], "statement": "three images", "label": 1},
        {"images": "3.png|0.png", "statement": "a piped string", "label": "no"},
        {"images": ["0.png", "1.png"], "statement": "same pair, another statement", "label": "YES"},
    ])
    split = read_jsonl(tmp_path, "pairs.jsonl", images="img")
    ex = split.examples
    img = tmp_path.resolve() / "img"
    assert [e.label for e in ex] == [1, 0, 1, 0, 1]
    assert ex[0].image == (str(img / "0.png"), str(img / "1.png")) and ex[0].text == "the left image is red"
    assert ex[0].question_type == "colour" and ex[1].question_type is None
    assert len(ex[2].image) == 3 and ex[3].image == (str(img / "3.png"), str(img / "0.png"))
    assert ex[1].image_id == "p1" and ex[0].image_id == ex[4].image_id == "0.png|1.png"
    assert split.class_names is None and split.skipped == 0


def test_csv_pair_rows_and_a_split_of_only_true_rows(tmp_path):
    _images(tmp_path)
    (tmp_path / "pairs.csv").write_text("images,statement,label,question_type\n"
                                        "0.png|1.png,the left image is red,true,colour\n"
                                        "img2.png | 3.png,\"a statement, with a comma\",1,\n".replace("img2", "2"))
    split = read_csv(tmp_path, "pairs.csv", images="img")
    img = tmp_path.resolve() / "img"
    assert [e.image for e in split.examples] == [(str(img / "0.png"), str(img / "1.png")),
                                                 (str(img / "2.png"), str(img / "3.png"))]
    assert [e.label for e in split.examples] == [1, 1]   # not class 0 of one sorted class name
    assert [e.question_type for e in split.examples] == ["colour", None]
    assert split.examples[1].text == "a statement, with a comma"
    _jsonl(tmp_path / "true.jsonl", [{"images": ["0.png", "1.png"], "statement": "s", "label": "true"},
                                     {"images": ["2.png", "3.png"], "statement": "t", "label": "yes"}])
    assert [e.label for e in read_jsonl(tmp_path, "true.jsonl", images="img").examples] == [1, 1]
    (tmp_path / "false.csv").write_text("images,text,label\n0.png|1.png,s,false\n1.png|2.png,t,0\n")
    assert [e.label for e in read_csv(tmp_path, "false.csv", images="img").examples] == [0, 0]


@pytest.mark.parametrize("row, match", [
    ({"images": ["0.png", "1.png"], "statement": "s", "label": "maybe"}, r"pairs\.jsonl:2: label 'maybe' .*true/false"),
    ({"images": ["0.png", "1.png"], "statement": "s", "label": 2}, r"pairs\.jsonl:2: label 2 .*truth value"),
    ({"images": ["0.png", "1.png"], "statement": "s", "label": 1.0}, r"pairs\.jsonl:2: label 1\.0 "),
    ({"images": ["0.png", "1.png"], "statement": "s", "label": "red"}, r"pairs\.jsonl:2: label 'red'"),
    ({"images": ["0.png", "1.png"], "statement": "s"}, r"pairs\.jsonl:2: no label.*true or false"),
    ({"images": ["0.png", "1.png"], "statement": "s", "label": " "}, r"pairs\.jsonl:2: label is blank"),
    ({"images": ["0.png", "1.png"], "label": 1}, r"pairs\.jsonl:2: no statement.*'statement'"),
    ({"images": ["0.png", "1.png"], "statement": "a", "text": "b", "label": 1}, r"pairs\.jsonl:2: .*both 'statement' "
                                                                                r"and 'text'"),
    ({"images": ["0.png"], "statement": "s", "label": 1}, r"pairs\.jsonl:2: 'images' holds 1 path"
                                                          r".*two or more.*'image'"),
    ({"images": "0.png", "statement": "s", "label": 1}, r"pairs\.jsonl:2: 'images' holds 1 path"),
    ({"images": ["0.png", ""], "statement": "s", "label": 1}, r"pairs\.jsonl:2: 'images' .* blank path"),
    ({"images": ["0.png", 3], "statement": "s", "label": 1}, r"pairs\.jsonl:2: 'images' must be a list of image paths"),
    ({"images": ["0.png", "1.png"], "image": "2.png", "statement": "s", "label": 1},
     r"pairs\.jsonl:2: the row has both 'image' and 'images'.*no 'image'"),
    ({"images": [], "statement": "s", "label": 1}, r"pairs\.jsonl:2: 'images' is empty"),
    ({"images": ["0.png", "1.png"], "statement": "s", "label": 1, "question_type": ["x"]},
     r"pairs\.jsonl:2: 'question_type' must be text"),
    ({"image": ["0.png", "1.png"], "statement": "s", "label": "b"}, r"pairs\.jsonl:2: .*several images .* 'images'"),
    ({"images": ["0.png", "1.png"], "statement": "s", "label": 1, "group": ["a"]},
     r"pairs\.jsonl:2: 'group' must be text or a number"),
])
def test_bad_pair_rows_are_refused_by_file_and_line(tmp_path, row, match):
    _images(tmp_path)
    first = {"images": ["0.png", "1.png"], "statement": "fine", "label": 1}
    if "images" not in row:   # a row of one-image form: a file of its own (beside pair rows it would mix kinds)
        first = {"image": "0.png", "statement": "fine", "label": "a"}
    _jsonl(tmp_path / "pairs.jsonl", [first, row])
    with pytest.raises(DataFormatError, match=match):
        read_jsonl(tmp_path, "pairs.jsonl", images="img")


def test_pair_rows_do_not_mix_with_other_kinds_and_take_no_class_names(tmp_path):
    _images(tmp_path)
    pair = {"images": ["0.png", "1.png"], "statement": "s", "label": 1}
    for other in ({"image": "2.png", "label": "cat"}, {"image": "2.png", "text": "a caption"},
                  {"image": "2.png", "question": "what?", "answers": ["x"]}):
        _jsonl(tmp_path / "mix.jsonl", [pair, other])
        with pytest.raises(DataFormatError, match=r"rows mix task kinds: nlvr \(images \+ statement\) "
                                                  r"\(.*mix\.jsonl:1\), \w+ \(.*mix\.jsonl:2\); use one file per task"
                                                  r".*'images'"):
            read_jsonl(tmp_path, "mix.jsonl", images="img")
    (tmp_path / "mix.csv").write_text("image,images,statement,label\n,0.png|1.png,s,true\n2.png,,t,cat\n")
    with pytest.raises(DataFormatError, match=r"rows mix task kinds: nlvr .*mix\.csv:2\), classification .*mix\.csv:3"):
        read_csv(tmp_path, "mix.csv", images="img")
    _jsonl(tmp_path / "p.jsonl", [pair])
    with pytest.raises(DataFormatError, match="class_names is for classification rows"):
        read_jsonl(tmp_path, "p.jsonl", images="img", class_names=["false", "true"])
    _jsonl(tmp_path / "out.jsonl", [pair, {**pair, "images": ["0.png", "../../1.png"]}])
    with pytest.raises(PathEscapeError, match=r"out\.jsonl:2: image path 'img/\.\./\.\./1\.png' "
                                              r".*outside the data root"):
        read_jsonl(tmp_path, "out.jsonl", images="img")


def test_a_missing_image_skips_its_row_and_strict_raises(tmp_path, caplog):
    _images(tmp_path, 3)
    _jsonl(tmp_path / "pairs.jsonl", [{"images": ["0.png", "1.png"], "statement": "s", "label": 1},
                                      {"images": ["1.png", "gone.png"], "statement": "t", "label": 0},
                                      {"images": ["gone.png", "2.png"], "statement": "u", "label": 0},
                                      {"images": ["2.png", "0.png"], "statement": "v", "label": "false"}])
    with caplog.at_level(logging.WARNING):
        split = read_jsonl(tmp_path, "pairs.jsonl", images="img")
    assert [e.text for e in split.examples] == ["s", "v"] and split.skipped == 1   # one unreadable file, two rows
    assert "gone.png" in caplog.text
    with pytest.raises(ImageError, match="gone.png"):
        read_jsonl(tmp_path, "pairs.jsonl", images="img", strict=True)


def test_nlvr_task_on_jsonl_pairs_trains_and_evaluates_through_the_command(tmp_path):
    from test_nlvr import assert_pair_spec_trains

    data = tmp_path / "data"
    names = _images(data, 6)
    rows = [{"images": [names[i], names[(i + 1) % 6]], "statement": "the left image is redder",
             "label": ["true", "false"][i % 2], "question_type": ["a", "b"][i % 2]} for i in range(6)]
    _jsonl(data / "train.jsonl", rows)
    _jsonl(data / "dev.jsonl", rows[:4])
    spec = tmp_path / "pairs.toml"
    spec.write_text('name = "pairs"\nkind = "nlvr"\n[data]\nformat = "jsonl"\nimages = "img"\n'
                    '[data.train]\nfile = "train.jsonl"\n[data.val]\nfile = "dev.jsonl"\n'
                    '[data.test]\nfile = "dev.jsonl"\n')
    assert_pair_spec_trains(spec, data, tmp_path / "run")


def test_an_image_id_names_one_pair(tmp_path):
    _images(tmp_path)
    _jsonl(tmp_path / "ids.jsonl", [{"images": ["0.png", "1.png"], "statement": "s", "label": 1, "image_id": "p"},
                                    {"images": ["0.png", "1.png"], "statement": "t", "label": 0, "image_id": "p"},
                                    {"images": ["1.png", "2.png"], "statement": "u", "label": 0, "image_id": "p"}])
    with pytest.raises(DataFormatError, match=r"ids\.jsonl:3: image_id 'p' was given to another image at "
                                              r".*ids\.jsonl:1 \(\('.*0\.png', '.*1\.png'\) there"):
        read_jsonl(tmp_path, "ids.jsonl", images="img")


def test_a_group_names_the_rows_of_one_statement_for_consistency(tmp_path):
    _images(tmp_path)
    _jsonl(tmp_path / "pairs.jsonl", [
        {"images": ["0.png", "1.png"], "statement": "s", "label": 1, "group": "sent-7"},
        {"images": ["2.png", "3.png"], "statement": "s", "label": 0, "group": 7},
        {"images": ["1.png", "2.png"], "statement": "t", "label": 0, "group": " "},
        {"images": ["3.png", "0.png"], "statement": "u", "label": 1}])
    with open(tmp_path / "pairs.jsonl", "a") as f:   # a JSON NaN (pandas' blank cell) is no group, not "nan"
        f.write('{"images": ["0.png", "2.png"], "statement": "v", "label": 0, "group": NaN}\n')
    ex = read_jsonl(tmp_path, "pairs.jsonl", images="img").examples
    assert [e.meta.get("group") for e in ex] == ["sent-7", "7", None, None, None]
    (tmp_path / "pairs.csv").write_text("images,statement,label,group\n0.png|1.png,s,true,g1\n2.png|3.png,s,0,\n")
    assert [e.meta.get("group") for e in read_csv(tmp_path, "pairs.csv", images="img").examples] == ["g1", None]
