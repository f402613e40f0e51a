"""Image decoding and the dataset readers, on tiny fixture files written into tmp_path."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lora_vl.data import images as images_mod
from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.images import ImageError, load_image, to_uint8_tensor, verify_image
from mtl_lora_vl.data.readers import PathEscapeError, read_split
from mtl_lora_vl.data.world import build_split
from mtl_lora_vl.metrics import vqa_accuracy
from mtl_lora_vl.tasks import load_spec

# ------------------------------------------------------------------------------------ fixtures


def _rgb(path: Path, color=(200, 30, 30), size=(24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _huge_png_header(path: Path, w: int, h: int) -> Path:
    """A PNG whose IHDR claims w x h pixels (no pixel data): enough for Image.open to read the size."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "data"
    imgs = r / "images"
    _rgb(imgs / "good.jpg")
    _rgb(imgs / "good2.png", (10, 200, 10))
    Image.new("L", (20, 20), 128).save(imgs / "gray.png")
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    pal.save(imgs / "palette.png")
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))          # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))                      # one opaque blue pixel
    rgba.save(imgs / "rgba.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(imgs / "cmyk.jpg")   # CMYK red
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(imgs / "sixteen.png")
    (imgs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + os.urandom(64))
    (imgs / "empty.jpg").write_bytes(b"")
    full = (imgs / "good.jpg").read_bytes()
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big.save(imgs / "to_truncate.jpg", quality=95)
    data = (imgs / "to_truncate.jpg").read_bytes()
    (imgs / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (imgs / "to_truncate.jpg").unlink()
    assert full
    outside = _rgb(tmp_path / "outside" / "secret.jpg")
    (imgs / "link_out.jpg").symlink_to(outside)
    (imgs / "link_in.jpg").symlink_to(imgs / "good.jpg")
    return r


# ------------------------------------------------------------------------------------ images.py

@pytest.mark.parametrize("name", ["good.jpg", "gray.png", "palette.png", "rgba.png", "cmyk.jpg", "sixteen.png"])
def test_load_image_converts_to_rgb(root, name):
    img = load_image(root / "images" / name)
    assert img.mode == "RGB"


def test_conversions_are_faithful(root):
    imgs = root / "images"
    rgba = load_image(imgs / "rgba.png")
    assert rgba.getpixel((5, 5)) == (255, 255, 255)            # transparent -> white, not black or red
    assert rgba.getpixel((0, 0)) == (0, 0, 255)
    r, g, b = load_image(imgs / "cmyk.jpg").getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60                        # CMYK red stays red
    assert load_image(imgs / "sixteen.png").getpixel((3, 3)) == (255, 255, 255)   # scaled, not clipped
    # a 16-bit image is scaled by its depth: a maximum of 255 (of 65535) is dark, as it was one value above
    dark = Image.new("I;16", (4, 4), 255)
    one_above = Image.new("I;16", (4, 4), 256)
    assert images_mod.to_rgb(dark).getpixel((0, 0)) == images_mod.to_rgb(one_above).getpixel((0, 0)) == (0, 0, 0)
    assert load_image(imgs / "palette.png").getpixel((0, 0)) == (0, 0, 255)


def test_load_image_size_and_tensor(root):
    img = load_image(root / "images" / "good.jpg", 8)              # 24 x 16 -> shorter side 8
    assert img.size == (12, 8)
    t = to_uint8_tensor(root / "images" / "good.jpg", 8)
    assert t.shape == (3, 8, 8) and t.dtype == torch.uint8
    assert abs(int(t[0, 4, 4]) - 200) < 20 and int(t[1, 4, 4]) < 60
    t = to_uint8_tensor(Image.new("RGB", (40, 20), (1, 2, 3)), 16)
    assert t.shape == (3, 16, 16) and t[:, 8, 8].tolist() == [1, 2, 3]
    scene = build_split("vqa", "val", n=1).examples[0].image
    t = to_uint8_tensor(scene, 32)
    assert t.shape == (3, 32, 32)
    assert torch.equal(t, to_uint8_tensor(load_image(scene, 32), 32))


@pytest.mark.parametrize("name, cause", [
    ("corrupt.jpg", "not a readable image"),
    ("empty.jpg", "empty"),
    ("missing.jpg", "not found"),
    ("truncated.jpg", "cannot be decoded"),
])
def test_load_image_errors_name_the_file(root, name, cause):
    with pytest.raises(ImageError, match=cause) as err:
        load_image(root / "images" / name)
    assert name in str(err.value)


def test_huge_images_are_refused_before_decoding(root, tmp_path, monkeypatch):
    huge = _huge_png_header(tmp_path / "huge.png", 30_000, 30_000)
    with pytest.raises(ImageError, match="huge.png.*too large"):
        load_image(huge)
    with pytest.raises(ImageError, match="too large"):
        verify_image(huge)
    # Our own limit, below PIL's bomb threshold: refused from the header, load() is never reached.
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 100)

    def no_decode(self):
        raise AssertionError("decoded an image that should have been refused")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    with pytest.raises(ImageError, match="good.jpg.*exceeds the limit"):
        load_image(root / "images" / "good.jpg")


def test_pil_own_size_limit_does_not_override_ours(tmp_path, monkeypatch):
    """Between PIL's limit (89.5 MP, here 100 px) and MAX_PIXELS an image is read: PIL's warning refused
    every image from 89.5 MP up, whatever MAX_PIXELS said."""
    Image.new("RGB", (12, 12), (1, 2, 3)).save(tmp_path / "mid.png")  # 144 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_image(tmp_path / "mid.png").size == (12, 12)
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 120)
    with pytest.raises(ImageError, match="mid.png.*exceeds the limit"):
        load_image(tmp_path / "mid.png")
    # beyond twice PIL's limit PIL refuses first: the advice names our limit too (it said to raise PIL's alone, which
    # cannot read an image that is over ours as well -- with the defaults, every such image; helper 112)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(ImageError, match=r"downscale it first \(or raise PIL.Image.MAX_IMAGE_PIXELS, and "
                                         r"mtl_lora_vl.data.images.MAX_PIXELS, 120, where the image is over that too"):
        load_image(tmp_path / "mid.png")


# ------------------------------------------------------------------------------------ readers

def _write_json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return path.name


@contextlib.contextmanager
def _warns():
    """The messages the readers log as warnings (``skipped N unreadable image(s)``); at least one is expected."""
    msgs: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: msgs.append(record.getMessage())
    log = logging.getLogger("mtl_lora_vl.data")   # the readers' image checker logs in mtl_lora_vl.data.common
    log.addHandler(handler)
    try:
        yield msgs
    finally:
        log.removeHandler(handler)
    assert msgs, "expected a logged warning"


def _one_warning(record) -> str:
    msgs = [m for m in record if "skipped" in m]
    assert len(msgs) == 1, msgs
    return msgs[0]


def _vqa_files(root: Path, image_ids: list[int]) -> None:
    vdir = root / "val2014"
    for iid in image_ids:
        _rgb(vdir / f"COCO_val2014_{iid:012d}.jpg")
    qs = [{"image_id": iid, "question": f"what is {iid}?", "question_id": iid * 10} for iid in image_ids + [99]]
    anns = [{"question_id": iid * 10, "image_id": iid, "question_type": "what is", "answer_type": "other",
             "multiple_choice_answer": "cat",
             "answers": [{"answer": "cat", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]}
            for iid in image_ids + [99]]
    _write_json(root / "q.json", {"data_subtype": "val2014", "questions": qs})
    _write_json(root / "a.json", {"annotations": anns})


def test_vqav2(root):
    _vqa_files(root, [1, 42])       # question 990 refers to image 99, which is missing
    with _warns() as rec:
        s = read_split("vqav2", root, questions="q.json", annotations="a.json", images="val2014")
    assert "skipped 1" in _one_warning(rec) and "COCO_val2014_000000000099.jpg" in _one_warning(rec)
    assert s.skipped == 1 and len(s.examples) == 2
    e = s.examples[1]
    assert e.image.endswith("COCO_val2014_000000000042.jpg") and os.path.isabs(e.image)
    assert e.text == "what is 42?" and e.answers == ("cat",) * 10 and e.question_type == "other"
    assert e.meta["question_id"] == 420 and e.image_id == "42"
    assert e.meta["filter_type"] == "what is"   # the candidates' type: the question's words, not answer_type
    # test-dev style: questions only
    with _warns():
        s = read_split("vqav2", root, questions="q.json", images="val2014")
    assert s.examples[0].answers == () and s.examples[0].meta["filter_type"] == ""
    with pytest.raises(ImageError, match="000000000099"):
        read_split("vqav2", root, questions="q.json", annotations="a.json", images="val2014", strict=True)


def test_coco_captions(root):
    imgs = [{"id": 1, "file_name": "good.jpg"}, {"id": 2, "file_name": "corrupt.jpg"},
            {"id": 3, "file_name": "good2.png"}, {"id": 4, "file_name": "empty.jpg"}]
    anns = [{"image_id": 1, "caption": f"cap {k}"} for k in range(5)] + \
           [{"image_id": 2, "caption": "x"}, {"image_id": 3, "caption": "a green"}, {"image_id": 4, "caption": "y"}]
    _write_json(root / "captions.json", {"images": imgs, "annotations": anns})
    with _warns() as rec:
        s = read_split("coco_captions", root, annotations="captions.json", images="images")
    msg = _one_warning(rec)
    assert "skipped 2" in msg and "corrupt.jpg" in msg and "empty.jpg" in msg
    assert s.skipped == 2 and len(s.examples) == 6          # five + one pairs
    assert s.examples[0].captions == tuple(f"cap {k}" for k in range(5))
    with _warns():
        s = read_split("coco_captions", root, annotations="captions.json", images="images", one_per_image=True)
    assert [e.text for e in s.examples] == ["cap 0", "a green"]
    with pytest.raises(ImageError, match="corrupt.jpg"):
        read_split("coco_captions", root, annotations="captions.json", images="images", strict=True)


def test_karpathy(root):
    def entry(fn, split, n=5):
        return {"filepath": "images", "filename": fn, "split": split, "cocoid": hash(fn) % 1000,
                "sentences": [{"raw": f"{fn} caption {k}", "tokens": []} for k in range(n)]}

    _write_json(root / "dataset_coco.json", {"images": [
        entry("good.jpg", "train"), entry("good2.png", "restval"), entry("gray.png", "val"),
        entry("cmyk.jpg", "test"), entry("truncated.jpg", "test"), entry("missing.jpg", "val")]})
    train = read_split("karpathy", root, annotations="dataset_coco.json", split="train")
    assert len(train.examples) == 10 and train.skipped == 0     # train + restval, one example per caption
    only = read_split("karpathy", root, annotations="dataset_coco.json", split="train", include_restval=False)
    assert len(only.examples) == 5
    with _warns() as rec:
        val = read_split("karpathy", root, annotations="dataset_coco.json", split="val")
    assert "missing.jpg" in _one_warning(rec) and val.skipped == 1
    assert len(val.examples) == 1 and len(val.examples[0].captions) == 5    # one per image for val/test
    # a truncated JPEG is caught at read time (its end-of-image marker is missing, so it is decoded)
    with _warns() as rec:
        test = read_split("karpathy", root, annotations="dataset_coco.json", split="test")
    assert "truncated.jpg" in _one_warning(rec) and "truncated" in _one_warning(rec)
    assert len(test.examples) == 1 and test.skipped == 1
    with pytest.raises(ValueError, match="split' of format 'karpathy' "
                                         "must be one of 'train', 'val', 'test', 'restval'"):
        read_split("karpathy", root, annotations="dataset_coco.json", split="dev")


def test_imagefolder(root):
    base = root / "folder"
    _rgb(base / "dog" / "a.jpg")
    _rgb(base / "cat" / "b.png")
    _rgb(base / "cat" / "sub" / "c.png")
    (base / "cat" / "notes.txt").write_text("not an image")
    (base / "bird").mkdir()
    (base / "bird" / "broken.jpg").write_bytes(b"garbage")
    with _warns() as rec:
        s = read_split("imagefolder", root, folder="folder")
    assert "broken.jpg" in _one_warning(rec)
    assert s.class_names == ["bird", "cat", "dog"] and s.skipped == 1
    assert sorted((Path(e.image).name, e.label) for e in s.examples) == [("a.jpg", 2), ("b.png", 1), ("c.png", 1)]
    # classes interleaved (the first image of each class, then the second...): a prefix spans the classes
    assert [(Path(e.image).name, e.label) for e in s.examples] == [("b.png", 1), ("a.jpg", 2), ("c.png", 1)]
    (base / "bird" / "broken.jpg").unlink()
    (base / "dog" / "escape.jpg").symlink_to(root.parent / "outside" / "secret.jpg")
    for strict in (False, True):
        with pytest.raises(PathEscapeError, match="outside the data root"):
            read_split("imagefolder", root, folder="folder", strict=strict)


def test_imagefolder_reads_a_linked_subfolder_once_as_torchvision_does(root):
    """A class folder's subfolder that is a symlink (a subset built by linking folders of a pool under the data root)
    was passed over without a word: cat/ held a.png and the link more/ -> pool/ of two images, and cat had 1 image
    (torchvision's ImageFolder reads 3). A link back up (a loop) is walked once; a linked folder out of the data root
    is refused as a linked file is."""
    base = root / "folder"
    _rgb(base / "cat" / "a.png")
    _rgb(base / "dog" / "b.png")
    _rgb(root / "pool" / "c.png")
    _rgb(root / "pool" / "d.png")
    (base / "cat" / "more").symlink_to(root / "pool")
    (base / "cat" / "more_again").symlink_to(root / "pool")   # one folder linked twice: its images read once
    (root / "pool" / "up").symlink_to(base / "cat")   # a loop: cat/more/up is cat again
    s = read_split("imagefolder", root, folder="folder")
    assert sorted(e.image_id for e in s.examples if e.label == 0) == ["folder/cat/a.png", "folder/cat/more/c.png",
                                                                      "folder/cat/more/d.png"]
    assert len(s.examples) == 4
    (base / "dog" / "out").symlink_to(root.parent / "outside")
    with pytest.raises(PathEscapeError, match=r"image folder 'folder/dog/out' resolves to .*outside the data root"):
        read_split("imagefolder", root, folder="folder")


def test_imagefolder_refuses_a_folder_linked_into_two_classes(root):
    """Since linked subfolders are followed, cat/dogs -> ../dog read dog's images as cat's too: b.png was an example
    of both classes (training on two labels for one image, scored wrong in one of them) without a word. A folder
    reached from two classes is refused, naming both; linked within one class it is still read once."""
    base = root / "folder"
    _rgb(base / "cat" / "a.png")
    _rgb(base / "dog" / "b.png")
    (base / "cat" / "dogs").symlink_to(base / "dog")
    with pytest.raises(DataFormatError, match=r"folder/cat/dogs and folder/dog are one folder .*classes 'cat' and "
                                              r"'dog'"):
        read_split("imagefolder", root, folder="folder")
    (base / "cat" / "dogs").unlink()
    _rgb(root / "pool" / "c.png")
    (base / "cat" / "more").symlink_to(root / "pool")
    (base / "dog" / "more").symlink_to(root / "pool")
    with pytest.raises(DataFormatError, match=r"folder/cat/more and folder/dog/more are one folder"):
        read_split("imagefolder", root, folder="folder")
    (base / "dog" / "more").unlink()
    assert len(read_split("imagefolder", root, folder="folder").examples) == 3


def test_jsonl_all_row_kinds(root):
    rows = [{"image": "images/good.jpg", "caption": "a red box"}, {"image": "images/good.jpg", "text": "red"},
            {"image": "images/good2.png", "caption": "green"}, {"image": "images/empty.jpg", "caption": "none"}]
    (root / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with _warns():
        s = read_split("jsonl", root, file="caps.jsonl")
    assert [e.text for e in s.examples] == ["a red box", "red", "green"] and s.skipped == 1
    assert s.examples[0].captions == ("a red box", "red")

    rows = [{"image": "good.jpg", "question": "color?", "answers": ["red"] * 10, "question_type": "color"},
            {"image": "palette.png", "question": "what?", "answers": [{"answer": "blue"}]}]
    (root / "vqa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = read_split("jsonl", root, file="vqa.jsonl", images="images")
    assert s.examples[0].answers == ("red",) * 10 and s.examples[0].question_type == "color"
    assert s.examples[1].answers == ("blue",) and s.examples[1].question_type is None

    rows = [{"image": "images/good.jpg", "label": "red"}, {"image": "images/good2.png", "label": "green"}]
    (root / "cls.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = read_split("jsonl", root, file="cls.jsonl")
    assert s.class_names == ["green", "red"] and [e.label for e in s.examples] == [1, 0]
    s = read_split("jsonl", root, file="cls.jsonl", class_names=["red", "green", "blue"])
    assert [e.label for e in s.examples] == [0, 1]
    # labels are read stripped, and so are the given names: "red " was refused as not one of ['red ', ' green']
    s = read_split("jsonl", root, file="cls.jsonl", class_names=["red ", " green"])
    assert [e.label for e in s.examples] == [0, 1]


def test_a_json_nan_in_a_jsonl_row_is_a_missing_value_not_the_text_nan(root):
    """``json.dumps`` of ``df.to_dict("records")`` writes pandas' missing cells as ``NaN``: a row whose caption was
    missing trained on the caption "nan", a question type NaN made the type "nan" (scored and filtered as such), and
    a NaN image_id on two images was "image_id 'nan' was given to another image"."""
    rows = ['{"image": "images/good.jpg", "caption": "red", "image_id": NaN}',
            '{"image": "images/good2.png", "caption": NaN, "image_id": NaN}',
            '{"image": "images/gray.png", "caption": "gray", "image_id": NaN}']
    (root / "nan.jsonl").write_text("\n".join(rows) + "\n")
    with _warns() as msgs:
        s = read_split("jsonl", root, file="nan.jsonl")
    assert [(e.image_id, e.text) for e in s.examples] == [("images/good.jpg", "red"), ("images/gray.png", "gray")]
    assert any("1 row(s) have no caption text" in m for m in msgs)
    rows = ['{"image": "good.jpg", "question": "color?", "answers": ["red"], "question_type": NaN, '
            '"filter_type": NaN}',
            '{"image": "good2.png", "question": "what?", "answers": ["green"], "question_type": "what"}']
    (root / "nan_vqa.jsonl").write_text("\n".join(rows))
    s = read_split("jsonl", root, file="nan_vqa.jsonl", images="images")
    assert [e.question_type for e in s.examples] == [None, "what"]
    assert s.examples[0].meta["filter_type"] == ""
    (root / "nan_q.jsonl").write_text(rows[1] + '\n{"image": "good.jpg", "question": NaN, "answers": ["red"]}\n')
    with pytest.raises(DataFormatError, match=r"nan_q.jsonl:2: 'question' is blank"):
        read_split("jsonl", root, file="nan_q.jsonl", images="images")


def test_a_question_id_given_twice_in_row_files_is_refused_by_line(root):
    """A JSONL of VQA rows joined twice (``cat a.jsonl a.jsonl``) read every question twice, weighed twice in training
    and counted twice in evaluation, without a word; the VQAv2 reader refuses such a file ("question_id ... is given
    to two questions")."""
    rows = [{"image": "good.jpg", "question": "color?", "answers": ["red"], "question_id": 10},
            {"image": "good2.png", "question": "color?", "answers": ["green"], "question_id": 11}]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    (root / "twice.jsonl").write_text(text + text)
    with pytest.raises(DataFormatError, match=r"twice.jsonl:3: question_id 10 is given to another row at "
                                              r".*twice.jsonl:1"):
        read_split("jsonl", root, file="twice.jsonl", images="images")
    (root / "once.jsonl").write_text(text + json.dumps({**rows[0], "question_id": "10b"}) + "\n")
    assert len(read_split("jsonl", root, file="once.jsonl", images="images").examples) == 3


def test_a_question_id_shared_by_different_rows_is_read_as_datasets_number_them(root):
    """MME gives each image two questions under one question_id (the image's name), and POPE numbers each category's
    questions from 1: rows that share a question_id but differ are different questions, and such a file was refused
    as 'joined twice'. Only a row repeated whole is refused."""
    rows = [{"image": "good.jpg", "question": "Is it red? Answer yes or no.", "answers": ["yes"],
             "question_id": "code/good.jpg"},
            {"image": "good.jpg", "question": "Is it blue? Answer yes or no.", "answers": ["no"],
             "question_id": "code/good.jpg"},
            {"image": "good2.png", "question": "Is there a cat?", "answers": ["no"], "question_id": 1,
             "question_type": "adversarial"},
            {"image": "good.jpg", "question": "Is there a dog?", "answers": ["no"], "question_id": 1,
             "question_type": "popular"}]
    (root / "mme.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = read_split("jsonl", root, file="mme.jsonl", images="images")
    assert [e.meta["question_id"] for e in s.examples] == ["code/good.jpg", "code/good.jpg", 1, 1]
    (root / "mme.jsonl").write_text("\n".join(json.dumps(r) for r in rows + rows[2:3]) + "\n")
    with pytest.raises(DataFormatError, match=r"mme.jsonl:5: question_id 1 is given to another row at .*mme.jsonl:3"):
        read_split("jsonl", root, file="mme.jsonl", images="images")


def test_a_row_repeated_whole_is_refused_whichever_row_of_its_question_id_it_repeats(root):
    """MME gives two questions one question_id: a file repeating its second question read it twice (3 examples),
    as only the first row of an id was compared; repeating the first was refused."""
    q1 = {"image": "good.jpg", "question": "Is it red?", "answers": ["yes"], "question_id": "code/good.jpg"}
    q2 = {"image": "good.jpg", "question": "Is it blue?", "answers": ["no"], "question_id": "code/good.jpg"}
    (root / "mme.jsonl").write_text("\n".join(json.dumps(r) for r in (q1, q2, q2)) + "\n")
    with pytest.raises(DataFormatError, match=r"mme.jsonl:3: question_id 'code/good.jpg' is given to another row "
                                              r"at .*mme.jsonl:2,"):
        read_split("jsonl", root, file="mme.jsonl", images="images")


def test_image_ids_zero_blank_captions_and_ids_shared_by_two_images(root):
    rows = [{"image": "images/good.jpg", "image_id": 0, "caption": "red"},
            {"image": "images/good2.png", "image_id": "", "caption": "green"},
            {"image": "images/gray.png", "caption": "   "}]          # a blank caption is no caption
    (root / "ids.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = read_split("jsonl", root, file="ids.jsonl")
    assert [(e.image_id, e.text) for e in s.examples] == [("0", "red"), ("images/good2.png", "green")]
    # One id on two images: evaluation kept one of them and retrieval treated both as one image.
    rows = [{"image": "images/good.jpg", "image_id": "7", "caption": "red"},
            {"image": "images/good.jpg", "image_id": "7", "caption": "a red box"},
            {"image": "images/good2.png", "image_id": "7", "caption": "green"}]
    (root / "dup.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataFormatError, match=r"dup.jsonl:3: image_id '7' was given to another image at "
                                              r".*dup.jsonl:1 .*give each image its own id"):
        read_split("jsonl", root, file="dup.jsonl")
    rows = [{"image": "good.jpg", "image_id": "7", "question": "q?", "answers": ["a"]},
            {"image": "good2.png", "image_id": "7", "question": "q?", "answers": ["a"]}]
    (root / "dupq.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataFormatError, match=r"dupq.jsonl:2: image_id '7'"):
        read_split("jsonl", root, file="dupq.jsonl", images="images")


def test_reader_options_take_paths_as_python_gives_them(root):
    (root / "p.jsonl").write_text('{"image": "images/good.jpg", "label": "cat"}\n')
    assert read_split("jsonl", root, file=root / "p.jsonl").class_names == ["cat"]   # a Path, not only a str


def test_csv_errors_name_the_physical_line(root):
    text = 'image,text\n\n\nimages/good.jpg,"two\nlines"\n\nimages/good2.png,x\nimages/gray.png,x,extra\n'
    (root / "lines.csv").write_text(text)
    with pytest.raises(DataFormatError, match=r"lines.csv:8: more fields than header columns"):
        read_split("csv", root, file="lines.csv")


def test_a_quote_left_open_in_a_large_csv_is_named_by_its_line(root):
    """The rows after an open quote grow one field past csv's 131072-character limit: the read ended in a bare
    '_csv.Error: field larger than field limit' (no file, no line; the command line printed a traceback)."""
    rows = [f"images/good.jpg,{('red', 'blue')[i % 2]}" for i in range(20000)]
    rows[100] = 'images/good.jpg,"blue'
    (root / "open.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match=r"open.csv:102: the CSV record that starts on this line cannot be read "
                                              r"\(field larger than field limit .*\); a quote left open"):
        read_split("csv", root, file="open.csv")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_image_paths_written_relative_to_the_file_say_where_the_data_root_takes_them(tmp_path, fmt):
    """A file in a subfolder whose image paths are relative to that folder (LLaVA's layout) lost every row with
    'no usable examples (... file not found)', naming neither the rule nor the option that fixes it."""
    root = tmp_path / "data"
    (root / "coco" / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "coco" / "img" / "a.png")
    (root / "coco" / f"train.{fmt}").write_text('{"image": "img/a.png", "text": "x"}\n' if fmt == "jsonl"
                                                else "image,text\nimg/a.png,x\n")
    fix = r"not the file's folder: 'img/a.png' is beside train\.\w+, so give images = 'coco' in the split's options"
    with pytest.raises(DataFormatError, match=r"no usable examples .*file not found\); image paths .*" + fix):
        read_split(fmt, root, file=f"coco/train.{fmt}")
    with pytest.raises(ImageError, match=r"file not found; fix or remove .*; image paths .*" + fix):
        read_split(fmt, root, file=f"coco/train.{fmt}", strict=True)
    assert len(read_split(fmt, root, file=f"coco/train.{fmt}", images="coco").examples) == 1
    (tmp_path / "other").mkdir()
    with pytest.raises(DataFormatError, match=r"so give --data-root .*coco$"):   # a file outside the data root
        read_split(fmt, tmp_path / "other", file=str(root / "coco" / f"train.{fmt}"))


def test_one_json_document_given_as_jsonl_is_named(root):
    """A LLaVA-style .json (a list of rows, indented or on one line) read as JSONL said 'line 1: not valid JSON
    (Expecting value)' or 'got list', without the fix; a malformed first JSONL line is not told that."""
    rows = [{"image": "images/good.jpg", "text": "x"}, {"image": "images/good2.png", "text": "y"}]
    whole = "; the file looks like one JSON document, not JSON lines: write one JSON object per line"
    for name, text, said in [("indented", json.dumps(rows, indent=2), "not valid JSON (Expecting value)"),
                             ("compact", json.dumps(rows), "each line must be a JSON object, got list"),
                             ("object", json.dumps(rows[0], indent=2), "not valid JSON (Expecting property name")]:
        (root / f"{name}.jsonl").write_text(text)
        with pytest.raises(DataFormatError, match=re.escape(f"{name}.jsonl:1: {said}") + ".*" + re.escape(whole)):
            read_split("jsonl", root, file=f"{name}.jsonl")
    (root / "line.jsonl").write_text('{"image": "images/good.jpg" "text": "x"}\n')
    with pytest.raises(DataFormatError, match=r"line.jsonl:1: not valid JSON \(Expecting ',' delimiter\)$"):
        read_split("jsonl", root, file="line.jsonl")


def test_byte_order_mark_is_skipped_and_other_encodings_named(root):
    """Excel's "CSV UTF-8" starts with a byte-order mark: its header's first column read as '\\ufeffimage'."""
    (root / "bom.csv").write_bytes("image,label\nimages/good.jpg,cat\n".encode("utf-8-sig"))
    assert read_split("csv", root, file="bom.csv").class_names == ["cat"]
    (root / "bom.jsonl").write_bytes('{"image": "images/good.jpg", "label": "cat"}\n'.encode("utf-8-sig"))
    assert read_split("jsonl", root, file="bom.jsonl").class_names == ["cat"]
    (root / "latin.jsonl").write_bytes('{"image": "images/good.jpg", "label": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin.jsonl:1: not UTF-8 text .*save the file as UTF-8"):
        read_split("jsonl", root, file="latin.jsonl")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_byte_that_is_not_utf8_is_named_by_its_line_and_file_offset(root, fmt):
    """Python decodes a text file in chunks of about 8 KiB and counts the error's byte in the chunk: a Latin-1
    'é' on line 3001 of a JSONL was said to be at byte 4234 of a file where it sits at byte 118922."""
    rows = [f'{{"image": "images/good.jpg", "text": "row {i}"}}\n' if fmt == "jsonl" else f"images/good.jpg,row {i}\n"
            for i in range(5000)]
    rows[3000] = rows[3000].replace("row 3000", "caf\xe9")
    head = "" if fmt == "jsonl" else "image,text\n"
    data = (head + "".join(rows)).encode("latin-1")
    (root / f"late.{fmt}").write_bytes(data)
    line, at = 3001 + bool(head), data.index(b"\xe9")
    with pytest.raises(DataFormatError, match=rf"late.{fmt}:{line}: not UTF-8 text \(byte {at} of the file: invalid "
                                              r"continuation byte\); save the file as UTF-8"):
        read_split(fmt, root, file=f"late.{fmt}")
    (root / "wide.jsonl").write_bytes('{"image": "images/good.jpg", "text": "x"}\n'.encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"wide.jsonl:1: not UTF-8 text .*it looks like UTF-16"):
        read_split("jsonl", root, file="wide.jsonl")


def test_csv_all_row_kinds(root):
    def write(name, header, rows):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return name

    f = write("vqa.csv", ["image", "question", "answers"],
              [["images/good.jpg", "what color?", "red|red|Red|red|red|red|red|red|red|dark red"],
               ["images/cmyk.jpg", "how many?", "1"]])
    s = read_split("csv", root, file=f)
    assert s.examples[0].answers[-1] == "dark red" and len(s.examples[0].answers) == 10
    assert s.examples[1].answers == ("1",)
    f = write("cls.csv", ["image", "label"], [["images/good.jpg", "2"], ["images/gray.png", "0"],
                                              ["images/corrupt.jpg", "1"]])
    with _warns():
        s = read_split("csv", root, file=f)
    assert s.class_names == ["0", "1", "2"] and [e.label for e in s.examples] == [2, 0] and s.skipped == 1
    f = write("caps.csv", ["image", "text"], [["images/good.jpg", "red, bright"]])
    assert read_split("csv", root, file=f).examples[0].text == "red, bright"
    f = write("bad.csv", ["image", "label"], [["images/good.jpg", "9"]])
    with pytest.raises(ValueError, match="bad.csv:2: label index 9"):
        read_split("csv", root, file=f, class_names=["a", "b"])
    f = write("mixed.csv", ["image", "text", "label"], [["images/good.jpg", "x", ""], ["images/good.jpg", "", "a"]])
    with pytest.raises(ValueError, match="mix task kinds"):
        read_split("csv", root, file=f)


@pytest.mark.parametrize("bad", ["../outside/secret.jpg", "images/../../outside/secret.jpg", "ABSOLUTE",
                                 "images/link_out.jpg"])
@pytest.mark.parametrize("strict", [False, True])
def test_paths_escaping_the_root_are_refused(root, bad, strict):
    if bad == "ABSOLUTE":
        bad = str(root.parent / "outside" / "secret.jpg")
    (root / "esc.jsonl").write_text(json.dumps({"image": "images/good.jpg", "text": "ok"}) + "\n"
                                    + json.dumps({"image": bad, "text": "sneaky"}) + "\n")
    with pytest.raises(PathEscapeError) as err:
        read_split("jsonl", root, file="esc.jsonl", strict=strict)
    assert bad in str(err.value) and str(root) in str(err.value)


def test_a_dot_dot_that_stays_inside_the_root_is_read_and_one_through_a_folder_link_out_is_refused(root):
    """``val2014/../images/good.jpg`` names a file inside the data root (found so as resolved): read. A ``..`` after a
    folder that links outside the root climbs from the link's target, not from the link: outside, refused."""
    (root.parent / "outside" / "deep").mkdir(parents=True, exist_ok=True)
    _rgb(root.parent / "outside" / "secret.jpg")
    (root / "val2014").mkdir()
    (root / "folder_out").symlink_to(root.parent / "outside" / "deep")
    (root / "in.jsonl").write_text(json.dumps({"image": "val2014/../images/good.jpg", "text": "ok"}))
    assert Path(read_split("jsonl", root, file="in.jsonl").examples[0].image) == (root / "images/good.jpg").resolve()
    (root / "out.jsonl").write_text(json.dumps({"image": "folder_out/../secret.jpg", "text": "sneaky"}))
    with pytest.raises(PathEscapeError, match="'folder_out/../secret.jpg' resolves to .*outside/secret.jpg, outside"):
        read_split("jsonl", root, file="out.jsonl")


def test_symlink_inside_root_is_fine(root):
    (root / "in.jsonl").write_text(json.dumps({"image": "images/link_in.jpg", "text": "ok"}))
    s = read_split("jsonl", root, file="in.jsonl")
    assert Path(s.examples[0].image).name == "good.jpg"


@pytest.mark.parametrize("verify", [False, True])
def test_a_folder_named_as_an_image_is_not_called_missing(root, verify):
    """With verify = false a folder where an image should be was skipped as 'file not found' (the full check says
    'is not a regular file')."""
    (root / "dir.jsonl").write_text(json.dumps({"image": "images", "text": "x"}) + "\n"
                                    + json.dumps({"image": "images/good.jpg", "text": "y"}) + "\n")
    with pytest.raises(ImageError, match=r"image .*images: is not a regular file; fix or remove the image, or set "
                                         r"strict = false to skip unreadable images with a warning$"):
        read_split("jsonl", root, file="dir.jsonl", verify=verify, strict=True)


def test_verify_switch(root):
    (root / "v.jsonl").write_text(json.dumps({"image": "images/corrupt.jpg", "text": "x"}) + "\n"
                                  + json.dumps({"image": "images/missing.jpg", "text": "y"}))
    with _warns() as rec:
        s = read_split("jsonl", root, file="v.jsonl", verify=False)
    assert len(s.examples) == 1 and s.skipped == 1          # existence is still checked
    assert "missing.jpg" in _one_warning(rec)
    with pytest.raises(ValueError, match="no usable examples"), _warns():
        read_split("jsonl", root, file="v.jsonl")
    # the error itself names a failure (a wrong images folder was "skipped 2 unreadable image(s)" and nothing more)
    with pytest.raises(ValueError, match=r"no usable examples \(skipped 2 unreadable image\(s\), e\.g\. .*nowhere"), \
            _warns():
        read_split("jsonl", root, file="v.jsonl", images="nowhere")


def test_malformed_annotation_fields_are_named(root, tmp_path):
    """A field of the wrong type or an answer without its text: the file and field are named (they were a bare
    TypeError or KeyError, and through a spec a TypeError was blamed on the spec's options)."""
    _write_json(root / "q.json", {"data_subtype": "x",
                                  "questions": [{"question_id": 1, "image_id": 1, "question": "q"}]})
    _write_json(root / "q_null.json", {"questions": None})
    _write_json(root / "a_bad.json", {"annotations": [{"question_id": 1, "answers": [{"ans": "red"}]}]})
    _write_json(root / "coco_int.json", {"images": [], "annotations": 5})
    for fmt, kw, says in (("vqav2", {"questions": "q_null.json"}, "q_null.json: the top level's 'questions' field must "
                           "be a list, got NoneType"),
                          ("vqav2", {"questions": "q.json", "annotations": "a_bad.json", "images": "images",
                                     "image_pattern": "good.jpg"},
                           "a_bad.json: an answer of annotation 1 has no 'answer' field"),
                          ("coco_captions", {"annotations": "coco_int.json"},
                           "'annotations' field must be a list, got int")):
        with pytest.raises(DataFormatError, match=re.escape(says)):
            read_split(fmt, root, **kw)
    spec = tmp_path / "v.toml"
    spec.write_text('name = "v"\nkind = "vqa"\n[data]\nformat = "vqav2"\n[data.train]\nquestions = "q_null.json"\n'
                    '[data.val]\nquestions = "q.json"\n')
    with pytest.raises(DataFormatError, match="q_null.json: the top level's 'questions'"):
        load_spec(spec).load_split("train", root)  # not "the vqav2 reader rejected the options"


def test_strict_must_be_a_boolean(root):
    """A spec's strict = "false" (a string) turned strict on."""
    (root / "s.jsonl").write_text('{"image": "images/good.jpg", "label": "cat"}\n')
    with pytest.raises(TypeError, match="option 'strict' of format 'jsonl' must be true or false, got 'false'"):
        read_split("jsonl", root, file="s.jsonl", strict="false")


def test_dispatcher_errors(root):
    with pytest.raises(ValueError, match="unknown data format 'parquet'.*vqav2.*coco_captions.*karpathy.*imagefolder"):
        read_split("parquet", root)
    with pytest.raises(TypeError, match="does not take option.*'colour'.*options are"):
        read_split("jsonl", root, file="x.jsonl", colour=1)
    with pytest.raises(TypeError, match="needs option.*'file'"):
        read_split("csv", root)
    with pytest.raises(FileNotFoundError, match="data root"):
        read_split("jsonl", root / "nope", file="x.jsonl")
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        read_split("jsonl", root, file="x.jsonl")
    (root / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        read_split("coco_captions", root, annotations="broken.json")
    _write_json(root / "wrong.json", {"images": []})
    with pytest.raises(ValueError, match="no 'annotations' field"):
        read_split("coco_captions", root, annotations="wrong.json")


def test_the_readme_example_specs_load(tmp_path):
    """The task specs the README shows for real data parse, and their readers take every option they set."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```toml\n# (\w+)\.toml[^\n]*\n(.*?)```", readme, flags=re.S)
    assert {name for name, _ in blocks} >= {"vqav2", "coco", "folder"}
    for name, text in blocks:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        spec = load_spec(str(path))
        assert spec.data.format and "train" in spec.data.splits, name


def test_a_reader_option_it_does_not_take_is_named_when_the_spec_loads(tmp_path):
    path = tmp_path / "folder.toml"
    path.write_text('name = "cls"\nkind = "classification"\n[data]\nformat = "imagefolder"\n'
                    '[data.train]\nroot = "train"\n[data.val]\nfolder = "val"\n')
    with pytest.raises(ValueError, match=r"folder.toml: field 'data.train': format 'imagefolder' does not take "
                                         r"option\(s\) 'root'; its options are: folder"):
        load_spec(str(path))


def test_a_symlink_loop_is_a_skipped_image_not_a_failed_read(tmp_path):
    """One self-referencing link (a broken copy) stopped the whole read with pathlib's RuntimeError."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    (tmp_path / "x.jsonl").write_text('{"image": "ok.png", "caption": "a"}\n{"image": "loop.png", "caption": "b"}\n')
    with _warns():
        s = read_split("jsonl", tmp_path, file="x.jsonl")
    assert len(s.examples) == 1 and s.skipped == 1


def test_float_labels_and_a_wrong_csv_delimiter_say_what_is_wrong(tmp_path):
    """'label 0.0 is not one of the class names ['0.0', '1.0']' contradicted itself; a ';' CSV said only
    "no 'image' field"."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "f.jsonl").write_text('{"image": "a.png", "label": 0.0}\n{"image": "a.png", "label": 1.0}\n')
    with pytest.raises(DataFormatError, match=r"label 0.0 is a float; labels are class-name strings or integer"):
        read_split("jsonl", tmp_path, file="f.jsonl")
    (tmp_path / "semi.csv").write_text("image;caption\na.png;a dog\n")
    with pytest.raises(DataFormatError, match=r"no 'image' field.*\['image;caption'\].*check the delimiter"):
        read_split("csv", tmp_path, file="semi.csv")


def test_a_caption_field_holding_a_list_is_a_list_of_captions(root):
    """A JSONL "caption": [...] (and a Hugging Face Sequence(string) column such as Flickr30k's) became one
    caption, the Python repr of the list ("['a red thing', 'a red square']"), with no warning."""
    rows = [{"image": "images/good.jpg", "caption": ["a red thing", "a red square"]},
            {"image": "images/good2.png", "text": ["a green thing"]},
            {"image": "images/gray.png", "caption": 7}]     # a number is a caption as written (as before)
    (root / "lists.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = read_split("jsonl", root, file="lists.jsonl")
    assert [(e.text, e.captions) for e in s.examples] == [  # one training example per caption
        ("a red thing", ("a red thing", "a red square")), ("a red square", ("a red thing", "a red square")),
        ("a green thing", ("a green thing",)), ("7", ("7",))]
    (root / "bad.jsonl").write_text(json.dumps({"image": "images/good.jpg", "caption": {"en": "red"}}))
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: 'caption' must be a string or a list of strings"):
        read_split("jsonl", root, file="bad.jsonl")


def test_integer_labels_with_empty_classes_and_padded_names_are_named(tmp_path, caplog):
    """Labels 1..4 (1-based) made a class '0' the model could predict, years made a class per integer, both
    silently; ' red circle' and 'red circle' were two classes."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "one.jsonl").write_text("".join(json.dumps({"image": "a.png", "label": i}) + "\n"
                                                for i in (1, 2, 3, 4)))
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        s = read_split("jsonl", tmp_path, file="one.jsonl")
    assert s.class_names == ["0", "1", "2", "3", "4"]   # still indices: a split may lack a class
    assert "read as class indices 0..4, and 1 of those classes have no example here (0)" in caplog.text
    caplog.clear()
    (tmp_path / "zero.jsonl").write_text("".join(json.dumps({"image": "a.png", "label": i}) + "\n" for i in (0, 1)))
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        read_split("jsonl", tmp_path, file="zero.jsonl")
    assert "class indices" not in caplog.text
    (tmp_path / "pad.jsonl").write_text("".join(json.dumps({"image": "a.png", "label": v}) + "\n"
                                                for v in ("red circle", " red circle", "red circle ", "blue")))
    s = read_split("jsonl", tmp_path, file="pad.jsonl")
    assert s.class_names == ["blue", "red circle"] and [e.label for e in s.examples] == [1, 1, 1, 0]


def test_a_csv_with_spaces_after_its_commas_reads(tmp_path):
    """'image, caption' as the header said "no 'image' field" without naming the space."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "s.csv").write_text('image, caption\na.png, a red dog\na.png, "a dog, red"\n')
    s = read_split("csv", tmp_path, file="s.csv")
    assert sorted(s.examples[0].captions) == ["a dog, red", "a red dog"]


def test_skipped_images_warning_names_the_spec_setting(tmp_path, caplog):
    """A spec user was told 'Pass strict=True to fail instead.', a Python keyword, where the spec's [data] takes
    strict = true (as the strict error's own fix, 'set strict = false', is spelt)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "label": "red"}, {"image": "gone.png", "label": "blue"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        read_split("jsonl", tmp_path, file="c.jsonl")
    assert "skipped 1 unreadable image(s)" in caplog.text
    assert "Set strict = true in the task spec's [data]" in caplog.text


def test_rows_with_blank_captions_are_counted(tmp_path, caplog):
    """A caption of spaces dropped its row without a word."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    rows = [{"image": "a.png", "caption": "a red dog"}, {"image": "b.png", "caption": "   "}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        s = read_split("jsonl", tmp_path, file="c.jsonl")
    assert (len(s.examples) == 1
            and "1 row(s) have no caption text (blank or only spaces) and are left out" in caplog.text)
    assert "c.jsonl:2" in caplog.text


def test_csv_values_padded_before_a_comma_and_open_quotes(tmp_path, caplog):
    """'img/0.jpg , cat' kept the space in the image path (every row "file not found", dropped); a quote left
    open took the rows after it into one caption, without a word."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "pad.csv").write_text("image    , label\na.png , cat\na.png , dog\n")
    s = read_split("csv", tmp_path, file="pad.csv")
    assert [e.label for e in s.examples] == [0, 1] and s.class_names == ["cat", "dog"] and s.skipped == 0
    (tmp_path / "open.csv").write_text('image,caption\na.png,"a dog\na.png,a cat\na.png,a cow\n')
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        read_split("csv", tmp_path, file="open.csv")
    assert "1 quoted field(s) run over several lines (lines 2-4): a quote left open" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        read_split("csv", tmp_path, file="pad.csv")
    assert "run over several lines" not in caplog.text


def test_a_quote_left_open_in_a_label_or_path_is_refused(tmp_path):
    """Only free text may hold a line break: a quote left open in a label cell took every row after it into one
    class name ('blue\\nimg/2.jpg,green\\n...'), and a 6,000-row file trained as 100 rows and a fourth class, with
    a warning that said to ignore it if the line breaks were meant."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "label.csv").write_text('image,label\na.png,cat\na.png,"dog\na.png,cat\na.png,dog\n')
    with pytest.raises(DataFormatError, match=r"label.csv:3: the 'label' field runs over lines 3-5; a quote left open"):
        read_split("csv", tmp_path, file="label.csv")
    (tmp_path / "path.csv").write_text('image,text\n"a.png,a dog\na.png,a cat\n')
    with pytest.raises(DataFormatError, match=r"path.csv:2: the 'image' field runs over lines 2-3"):
        read_split("csv", tmp_path, file="path.csv")
    (tmp_path / "text.csv").write_text('image,text\na.png,"a dog\non two lines"\n')   # free text: meant, read
    assert read_split("csv", tmp_path, file="text.csv").examples[0].text == "a dog\non two lines"


def test_row_fields_that_read_as_something_else(tmp_path):
    """A misspelt 'answer' field gave rows without answers (the error came later, naming neither file nor
    field); a label '²' passed str.isdigit and failed int() with a bare ValueError."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "v.jsonl").write_text(json.dumps({"image": "a.png", "question": "q?", "answer": "yes"}) + "\n")
    with pytest.raises(DataFormatError, match=r"v.jsonl:1: no row has 'answers', but rows have 'answer'"):
        read_split("jsonl", tmp_path, file="v.jsonl")
    (tmp_path / "l.jsonl").write_text(json.dumps({"image": "a.png", "label": "²"}) + "\n")
    assert read_split("jsonl", tmp_path, file="l.jsonl").class_names == ["²"]   # a name, not an index


def test_coco_and_karpathy_blank_captions_duplicate_entries_and_id_types(tmp_path, caplog):
    """Blank captions became examples of empty text (and reference captions); an image entry listed twice gave
    each caption twice; annotations with image_id "1" for image 1 were dropped as if uncaptioned."""
    from PIL import Image

    for n in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / n)
    _write_json(tmp_path / "c.json", {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"image_id": "1", "caption": " a "}, {"image_id": 1, "caption": "  "},
                        {"image_id": 1, "caption": "b"}, {"image_id": 2, "caption": "c"},
                        {"image_id": 9, "caption": "d"}]})
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        s = read_split("coco_captions", tmp_path, annotations="c.json")
    assert [(e.image_id, e.text) for e in s.examples] == [("1", "a"), ("1", "b"), ("2", "c")]
    assert "1 caption(s) are blank" in caplog.text and "1 annotation image id(s) have no image entry" in caplog.text
    _write_json(tmp_path / "c2.json", {"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
                                      "annotations": [{"image_id": 1, "caption": "a"}]})
    with pytest.raises(DataFormatError, match="image id 1 is given to two files, 'a.png' and 'b.png'"):
        read_split("coco_captions", tmp_path, annotations="c2.json")
    _write_json(tmp_path / "k.json", {"images": [{"filename": "a.png", "split": "val",
                                                  "sentences": [{"raw": "a red"}, {"raw": " "}]}]})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        s = read_split("karpathy", tmp_path, annotations="k.json", split="val")
    assert s.examples[0].captions == ("a red",) and "1 caption(s) are blank" in caplog.text


# ------------------------------------------------------------------------- review of the data layer (helper 112)


def _png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def _small_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_csv_blank_caption_cell_is_left_out_with_a_count(tmp_path, caplog):
    """README: 'Blank captions are left out with a count (JSONL, CSV, COCO, Karpathy)'. A CSV row with an
    empty caption cell failed the whole file with "a row needs 'text', 'caption' ..." instead."""
    _small_image(tmp_path / "a.png")
    _small_image(tmp_path / "b.png")
    (tmp_path / "c.csv").write_text("image,caption\na.png,a red dog\nb.png,\n")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        s = read_split("csv", tmp_path, file="c.csv")
    assert [e.text for e in s.examples] == ["a red dog"]
    assert "1 row(s) have no caption text" in caplog.text and "c.csv:3" in caplog.text


def test_jsonl_empty_string_caption_is_left_out_like_spaces(tmp_path):
    _small_image(tmp_path / "a.png")
    _small_image(tmp_path / "b.png")
    rows = [{"image": "a.png", "caption": "a red dog"}, {"image": "b.png", "caption": ""}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(read_split("jsonl", tmp_path, file="c.jsonl").examples) == 1


def test_csv_blank_label_names_the_blank_field(tmp_path):
    _small_image(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("image,label\na.png,cat\na.png,\n")
    with pytest.raises(DataFormatError, match=r"l\.csv:3: 'label' is blank; give the row its label"):
        read_split("csv", tmp_path, file="l.csv")


def test_hf_rows_with_the_same_image_bytes_are_one_image(tmp_path):
    """Without an image_id column, rows holding the same encoded image were separate images: a retrieval
    split counted one photo twice (its captions negatives of each other), captioning split its references."""
    datasets = pytest.importorskip("datasets")
    a, b = _png_bytes((200, 0, 0)), _png_bytes((0, 0, 200))
    f = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [{"bytes": a, "path": None}, {"bytes": a, "path": None},
                                          {"bytes": b, "path": None}],
                                "caption": ["a red cat", "a cat in red", "a blue dog"]},
                               features=f).save_to_disk(str(tmp_path / "d"))
    s = read_split("hf_datasets", tmp_path, path="d", one_per_image=True)
    assert len(s.examples) == 2
    assert sorted(s.examples[0].captions) == ["a cat in red", "a red cat"]


def test_jsonl_labels_mixing_indices_and_names_are_refused(tmp_path):
    """{"label": 1} beside {"label": "cat"}: names ['1', 'cat'], and the int 1 became index 1 = 'cat'."""
    _small_image(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "label": 1}\n{"image": "a.png", "label": "cat"}\n')
    with pytest.raises(DataFormatError, match=r"m\.jsonl:1: label 1 is an integer class index but other rows give "
                                              r"class names"):
        read_split("jsonl", tmp_path, file="m.jsonl")


def test_coco_null_caption_is_not_the_text_none(tmp_path):
    _small_image(tmp_path / "im" / "1.jpg")
    coco = {"images": [{"id": 1, "file_name": "1.jpg"}],
            "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 1, "caption": None}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    s = read_split("coco_captions", tmp_path, annotations="c.json", images="im")
    assert [list(e.captions) for e in s.examples] == [["a cat"]]   # the null caption is blank, left out


def test_vqav2_null_answer_is_not_the_text_none(tmp_path):
    _small_image(tmp_path / "im" / "COCO_x_000000000001.jpg")
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "x", "questions": [
        {"question_id": 1, "image_id": 1, "question": "q?"}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 1, "image_id": 1, "answers": [{"answer": "yes"}] * 9 + [{"answer": None}]}]}))
    with pytest.raises(DataFormatError, match=r"a\.json: annotation 1 has an answer that is not text"):
        read_split("vqav2", tmp_path, questions="q.json", annotations="a.json", images="im")


def test_vqav2_a_question_without_annotation_is_refused_even_when_its_image_is_missing(root):
    """The missing annotation is the files' fault (of different subsets?), not a skipped image (helper 171)."""
    _vqa_files(root, [1, 42])   # question 990's image 99 is missing
    anns = json.loads((root / "a.json").read_text())
    _write_json(root / "a.json", {"annotations": [a for a in anns["annotations"] if a["question_id"] != 990]})
    with pytest.raises(DataFormatError, match=r"question 990 of .*q\.json has no annotation in a\.json"):
        read_split("vqav2", root, questions="q.json", annotations="a.json", images="val2014")


def test_a_path_out_of_the_data_root_is_a_data_format_error(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "../outside.jpg", "text": "x"}) + "\n")
    with pytest.raises(DataFormatError, match=r"rows\.jsonl:1: .*outside the data root"):
        read_split("jsonl", tmp_path, file="rows.jsonl")


def test_vqav2_duplicate_annotation_question_id_is_named(tmp_path):
    _small_image(tmp_path / "im" / "COCO_x_000000000001.jpg")
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "x", "questions": [
        {"question_id": 1, "image_id": 1, "question": "q?"}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 1, "image_id": 1, "answers": [{"answer": "a"}] * 10},
        {"question_id": 1, "image_id": 1, "answers": [{"answer": "b"}] * 10}]}))
    with pytest.raises(DataFormatError, match="question_id 1 has two different annotations"):
        read_split("vqav2", tmp_path, questions="q.json", annotations="a.json", images="im")


def test_vqav2_image_pattern_with_an_attribute_is_a_named_error(tmp_path):
    """``{image_id.real}`` formats (an int has it), ``{image_id.x}`` does not: it escaped as a bare AttributeError."""
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "x", "questions": [
        {"question_id": 1, "image_id": 1, "question": "q?"}]}))
    with pytest.raises(DataFormatError, match=r"image_pattern '\{image_id\.x\}\.jpg' cannot be filled for image_id 1"):
        read_split("vqav2", tmp_path, questions="q.json", image_pattern="{image_id.x}.jpg")


def test_nul_byte_in_image_path_is_a_named_error(tmp_path):
    (tmp_path / "n.jsonl").write_text(json.dumps({"image": "a\u0000.png", "caption": "x"}) + "\n")
    with pytest.raises(PathEscapeError, match="holds a NUL character; fix the path in the data file"):
        read_split("jsonl", tmp_path, file="n.jsonl")


def test_karpathy_entries_without_ids_keep_distinct_images_apart(tmp_path):
    """No cocoid/imgid: the id fell back to the bare filename, so a/1.jpg and b/1.jpg shared one image_id and
    retrieval/captioning evaluation merged them into one image."""
    _small_image(tmp_path / "a" / "1.jpg")
    _small_image(tmp_path / "b" / "1.jpg")
    k = {"images": [{"filepath": "a", "filename": "1.jpg", "split": "val", "sentences": [{"raw": "x"}]},
                    {"filepath": "b", "filename": "1.jpg", "split": "val", "sentences": [{"raw": "y"}]}]}
    (tmp_path / "k.json").write_text(json.dumps(k))
    s = read_split("karpathy", tmp_path, annotations="k.json", split="val")
    assert len({e.image_id for e in s.examples}) == 2


def test_a_karpathy_split_name_typo_names_the_spec_field(tmp_path):
    """split = "training" passed the spec and failed when read with the reader's bare ValueError, naming no spec
    file (helper 112): now the spec's field, the reader's choices and the file, when the spec loads (it was named
    only when the data was read)."""
    from mtl_lora_vl.tasks import SpecError

    spec = tmp_path / "k.toml"
    spec.write_text('name = "k"\nkind = "retrieval"\n[data]\nformat = "karpathy"\nannotations = "k.json"\n'
                    '[data.train]\nsplit = "training"\n[data.val]\nsplit = "val"\n')
    with pytest.raises(SpecError, match=r"k\.toml: field 'data.train': option 'split' of format 'karpathy' must be "
                                        r"one of 'train', 'val', 'test', 'restval', got 'training'"):
        load_spec(spec)


def test_imagefolder_says_which_files_it_does_not_read_and_which_classes_are_empty(tmp_path, caplog):
    """Files of other extensions (.heic, .jfif) were skipped without a word, so a class folder holding only such
    files became a class with no image, silently (helper 112)."""
    _small_image(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "1.heic").write_bytes(b"not read")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"hidden: not counted")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        s = read_split("imagefolder", tmp_path)
    assert s.class_names == ["cat", "dog"] and len(s.examples) == 1
    assert "1 image(s) of other formats are not read (e.g. " in caplog.text and "1.heic" in caplog.text
    assert "class folder(s) ['dog'] hold no image that was read" in caplog.text


def test_imagefolder_reads_jpeg_and_netpbm_files_by_their_other_names(tmp_path):
    """.jfif / .jpe (JPEG) and .pbm / .pnm (Netpbm) files, which Pillow decodes, were called "of other formats"
    and skipped, with the advice to convert them (review 187)."""
    from PIL import Image

    (tmp_path / "cat").mkdir()
    for name, fmt in (("1.jfif", "JPEG"), ("2.jpe", "JPEG"), ("3.pnm", "PPM")):
        Image.new("RGB", (8, 6), (200, 30, 30)).save(tmp_path / "cat" / name, format=fmt)
    Image.new("1", (8, 6), 1).save(tmp_path / "cat" / "4.pbm", format="PPM")
    s = read_split("imagefolder", tmp_path)
    assert sorted(Path(e.image).name for e in s.examples) == ["1.jfif", "2.jpe", "3.pnm", "4.pbm"]
    assert to_uint8_tensor(next(e.image for e in s.examples if e.image.endswith("4.pbm")), 4).shape == (3, 4, 4)


def test_karpathy_ids_without_a_collision_stay_the_filename(tmp_path):
    """Ids without cocoid/imgid stay the bare filename where no two collide (what earlier versions gave), so a
    checkpoint's digest of such a file stays valid; colliding filenames get filepath/filename (helper 114)."""
    for p in ("a/1.jpg", "b/2.jpg", "c/1.jpg"):
        _small_image(tmp_path / p)
    ims = [{"filepath": "a", "filename": "1.jpg", "split": "val", "sentences": [{"raw": "x"}]},
           {"filepath": "b", "filename": "2.jpg", "split": "val", "sentences": [{"raw": "y"}]}]
    (tmp_path / "k.json").write_text(json.dumps({"images": ims}))
    s = read_split("karpathy", tmp_path, annotations="k.json", split="val")
    assert [e.image_id for e in s.examples] == ["1.jpg", "2.jpg"]          # as before: digests unchanged
    ims.append({"filepath": "c", "filename": "1.jpg", "split": "val", "sentences": [{"raw": "z"}]})
    (tmp_path / "k.json").write_text(json.dumps({"images": ims}))
    s = read_split("karpathy", tmp_path, annotations="k.json", split="val")
    assert [e.image_id for e in s.examples] == ["a/1.jpg", "2.jpg", "c/1.jpg"]   # a collision: told apart


@pytest.mark.parametrize("ids", [["cocoA", "", None, ""], ["", None, "cocoA", ""]])
def test_hf_rows_without_an_id_holding_an_identified_rows_image_are_that_image(tmp_path, ids):
    """image_id 'cocoA' on one row, blank on two others of the same bytes: those became image 'row N', and
    retrieval counted the photo twice, its captions negatives of each other (helper 114). Either order."""
    datasets = pytest.importorskip("datasets")
    a, b = _png_bytes((200, 0, 0)), _png_bytes((0, 0, 200))
    f = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("string"),
                           "caption": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [{"bytes": x, "path": None} for x in (a, a, a, b)],
                                "image_id": ids, "caption": ["r1", "r2", "r3", "b"]},
                               features=f).save_to_disk(str(tmp_path / "d"))
    s = read_split("hf_datasets", tmp_path, path="d", one_per_image=True)
    assert [(e.image_id, sorted(e.captions)) for e in s.examples] == [("cocoA", ["r1", "r2", "r3"]), ("row 3", ["b"])]


def test_a_blank_label_in_a_file_that_also_has_captions_is_named(tmp_path):
    """A classification JSONL whose rows also carry a caption: the row with a blank label read as a caption row
    and the file failed as 'rows mix task kinds: classification ..., caption ...'."""
    _small_image(tmp_path / "a.png")
    _small_image(tmp_path / "b.png")
    rows = [{"image": "a.png", "caption": "a dog", "label": "dog"}, {"image": "b.png", "caption": "a cat", "label": ""}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: 'label' is blank"):
        read_split("jsonl", tmp_path, file="c.jsonl")


def test_a_csv_whose_every_caption_is_blank_says_so(tmp_path):
    """It said 'a row needs 'text', 'caption' or 'captions' ... besides 'image'' of a file that has a caption column."""
    _small_image(tmp_path / "a.png")
    _small_image(tmp_path / "b.png")
    (tmp_path / "c.csv").write_text("image,caption\na.png,\nb.png,\n")
    with pytest.raises(DataFormatError, match=r"'caption' is blank in every row"):
        read_split("csv", tmp_path, file="c.csv")


def test_imagefolder_is_quiet_about_the_files_every_folder_holds(tmp_path, caplog):
    """Thumbs.db, desktop.ini, a README or a labels file beside the images drew 'N file(s) of other extensions are
    not read ...; convert them to read them' on every load of a normal folder; an image format it does not read is
    still named."""
    _small_image(tmp_path / "cat" / "1.png")
    _small_image(tmp_path / "dog" / "1.png")
    for name in ("cat/Thumbs.db", "cat/desktop.ini", "dog/README.txt", "dog/labels.json", "cat/.DS_Store"):
        (tmp_path / name).write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        s = read_split("imagefolder", tmp_path)
    assert len(s.examples) == 2 and caplog.text == ""
    (tmp_path / "dog" / "2.HEIC").write_bytes(b"an image of another format")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        read_split("imagefolder", tmp_path)
    assert "not read (e.g. " in caplog.text and "2.HEIC" in caplog.text


def test_a_captions_csv_with_an_empty_label_column_and_blank_captions_names_both_columns(tmp_path):
    """'label' came first in the message ('label' is blank in every row; fill the column) of a captions file whose
    optional label column is empty: filling it would make the file a classification one."""
    _small_image(tmp_path / "a.png")
    _small_image(tmp_path / "b.png")
    (tmp_path / "c.csv").write_text("image,caption,label\na.png,,\nb.png,,\n")
    with pytest.raises(DataFormatError, match=r"'label' and 'caption' are blank in every row"):
        read_split("csv", tmp_path, file="c.csv")


# ------------------------------------------------------------------------------------ row fields that mislead


def _images(root: Path, n: int = 3) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(root / "img" / f"{i}.png")


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def test_reader_class_names_must_be_distinct_and_non_blank(tmp_path):
    # ["cat", "dog", "cat"]: the "cat" rows took label 2, class 0 ("cat" too) was empty, and the zero-shot
    # classifier's two identical "cat" prompts tied with the tie going to class 0: every cat scored wrong
    _images(tmp_path)
    f = _jsonl(tmp_path / "a.jsonl", [{"image": "0.png", "label": "cat"}, {"image": "1.png", "label": "dog"}])
    with pytest.raises(DataFormatError, match=r"class_names.*'cat'"):
        read_split("jsonl", tmp_path, file=f, images="img", class_names=["cat", "dog", "cat"])
    with pytest.raises(DataFormatError, match="class_names"):
        read_split("jsonl", tmp_path, file=f, images="img", class_names=["cat", "dog", " "])


@pytest.mark.parametrize("qtype", [["color"], {"t": 1}])
def test_vqa_question_type_that_is_not_text_is_named_at_read(tmp_path, qtype):
    # a list question_type crashed the VQA kind with "unhashable type: 'list'" -- in an evaluation split only
    # after training; ints beside strings crashed sorting the answer filter
    _images(tmp_path)
    f = _jsonl(tmp_path / "a.jsonl", [{"image": "0.png", "question": "q?", "answers": ["a"], "question_type": "color"},
                                      {"image": "1.png", "question": "q?", "answers": ["b"], "question_type": qtype}])
    with pytest.raises(DataFormatError, match=r"a\.jsonl:2.*question_type"):
        read_split("jsonl", tmp_path, file=f, images="img")


def test_vqa_integer_question_types_are_text(tmp_path):
    _images(tmp_path)
    f = _jsonl(tmp_path / "a.jsonl", [{"image": "0.png", "question": "q?", "answers": ["a"], "question_type": 0},
                                      {"image": "1.png", "question": "q?", "answers": ["b"], "question_type": "color"}])
    types = [e.question_type for e in read_split("jsonl", tmp_path, file=f, images="img").examples]
    assert types == ["0", "color"]   # 0 was read as no type (None), and an int key broke sorted(by_type)


def test_vqa_question_that_is_not_text_is_refused(tmp_path):
    _images(tmp_path)
    f = _jsonl(tmp_path / "a.jsonl", [{"image": "0.png", "question": ["what?"], "answers": ["a"]}])
    with pytest.raises(DataFormatError, match=r"a\.jsonl:1.*question"):   # was trained as the text "['what?']"
        read_split("jsonl", tmp_path, file=f, images="img")


def test_blank_answers_among_others_count_as_human_answers_in_a_list_and_a_pipe_string(tmp_path):
    """Both forms left a blank answer out: three 'red', six 'blue' and one blank scored 0.889 for red (over nine)
    where the official VQA script (and the VQAv2 reader, which keeps it) gives 0.9. Now both keep it; only blanks are no
    answers."""
    _images(tmp_path)
    rows = [{"image": "0.png", "question": "q?", "answers": ["red", " red ", "", " "]},
            {"image": "0.png", "question": "r?", "answers": ["red"] * 3 + ["blue"] * 6 + [""]},
            {"image": "0.png", "question": "s?", "answers": ["", " "]}]
    f = _jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.csv").write_text("image,question,answers\n0.png,q?,red| red ||  \n0.png,r?,"
                                    + "red|" * 3 + "blue|" * 6 + "\n0.png,s?,| \n")
    from_jsonl = [e.answers for e in read_split("jsonl", tmp_path, file=f, images="img").examples]
    from_csv = [e.answers for e in read_split("csv", tmp_path, file="a.csv", images="img").examples]
    assert from_jsonl == from_csv == [("red", "red", "", ""), ("red",) * 3 + ("blue",) * 6 + ("",), ()]
    assert vqa_accuracy("red", from_jsonl[1]) == pytest.approx(0.9)


def test_csv_header_that_repeats_a_column_is_refused(tmp_path):
    _images(tmp_path)   # csv.DictReader kept the last "caption" cell and dropped the first without a word
    (tmp_path / "a.csv").write_text("image,caption,caption\n0.png,a red,b blue\n")
    with pytest.raises(DataFormatError, match=r"a\.csv.*'caption'.*twice"):
        read_split("csv", tmp_path, file="a.csv", images="img")


def test_csv_row_with_fewer_fields_than_the_header_is_refused(tmp_path):
    _images(tmp_path)   # "0.png,what?" under image,question,answers: a question without answers, silently
    (tmp_path / "a.csv").write_text("image,question,answers\n0.png,what?\n1.png,why?,x\n")
    with pytest.raises(DataFormatError, match=r"a\.csv:2: fewer fields"):
        read_split("csv", tmp_path, file="a.csv", images="img")


def test_image_path_outside_the_root_names_the_row(tmp_path):
    _images(tmp_path)
    f = _jsonl(tmp_path / "a.jsonl", [{"image": "0.png", "caption": "a"}, {"image": "../../x.png", "caption": "b"}])
    with pytest.raises(ValueError, match=r"a\.jsonl:2"):
        read_split("jsonl", tmp_path, file=f, images="img")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_empty_class_names_list_is_named(root, fmt):
    text = ('{"image": "images/good.jpg", "label": 0}\n' if fmt == "jsonl" else "image,label\nimages/good.jpg,0\n")
    (root / f"rows.{fmt}").write_text(text)
    with pytest.raises(DataFormatError, match=rf"{fmt.upper()} rows\.{fmt}: the reader's class_names is empty; list"):
        read_split(fmt, root, file=f"rows.{fmt}", class_names=[])


@pytest.mark.parametrize(("fmt", "text", "meant"), [
    ("jsonl", '{"image": "images/good.jpg", "lable": "cat"}\n', "'lable': did you mean 'label'?"),
    ("csv", "image,captoin\nimages/good.jpg,a red square\n", "'captoin': did you mean 'caption'?"),
])
def test_a_row_without_a_task_field_names_its_fields_and_the_one_meant(root, fmt, text, meant):
    (root / f"rows.{fmt}").write_text(text)
    with pytest.raises(DataFormatError, match=rf"rows\.{fmt}:(1|2): a row needs .*the row's fields: "
                                              rf".*{re.escape(meant)}"):
        read_split(fmt, root, file=f"rows.{fmt}")


def test_labels_that_differ_only_in_unicode_form_are_warned_about(root, caplog):
    """'café' typed (one character) and 'café' from a macOS file name (e + a combining accent) print alike and were
    read as 2 classes without a word (the warning looked at case and spaces only): zero-shot prompts that a tokenizer
    reads alike tie, and each class's rows score against the other."""
    rows = ['{"image": "images/good.jpg", "label": "caf\u00e9"}', '{"image": "images/good2.png", "label": '
            '"cafe\u0301"}', '{"image": "images/gray.png", "label": "tea"}']
    (root / "rows.jsonl").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        split = read_split("jsonl", root, file="rows.jsonl")
    assert len(split.class_names) == 3   # still read as written
    assert "differ only in case, spaces or Unicode form and are read as 2 classes" in caplog.text


def test_labels_that_differ_only_in_case_are_warned_about(root, caplog):
    rows = ['{"image": "images/good.jpg", "label": "cat"}', '{"image": "images/good2.png", "label": "Cat"}',
            '{"image": "images/gray.png", "label": "dog"}']
    (root / "rows.jsonl").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        split = read_split("jsonl", root, file="rows.jsonl")
    assert split.class_names == ["Cat", "cat", "dog"]   # still read as written
    assert "the labels ['Cat', 'cat'] differ only in case, spaces or Unicode form and are read as 2 classes" in \
        caplog.text
    caplog.clear()
    (root / "rows.jsonl").write_text("\n".join(rows[::2]) + "\n")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        read_split("jsonl", root, file="rows.jsonl")
    assert "differ only in case" not in caplog.text


def test_a_csv_captions_cell_is_pipe_separated_as_answers_is(tmp_path):
    """A CSV cell cannot hold a list: a ``captions`` cell ``a|b`` was one caption "a|b" (a target no reference
    matches, and a reference no caption matches); it is two, as an ``answers`` cell is. ``caption`` / ``text``
    stay one caption each, '|' and all."""
    _small_image(tmp_path / "a.png")
    _small_image(tmp_path / "b.png")
    (tmp_path / "c.csv").write_text("image,captions\na.png,a red cube | a cube on grass\nb.png,one|\n")
    (tmp_path / "d.csv").write_text("image,caption\na.png,a red cube | a cube on grass\n")
    (tmp_path / "e.jsonl").write_text(json.dumps({"image": "a.png", "captions": "x|y"}) + "\n")
    got = {Path(e.image).name: e.captions for e in read_split("csv", tmp_path, file="c.csv").examples}
    assert got == {"a.png": ("a red cube", "a cube on grass"), "b.png": ("one",)}
    one = read_split("csv", tmp_path, file="d.csv").examples
    assert [e.captions for e in one] == [("a red cube | a cube on grass",)]
    assert {e.captions for e in read_split("jsonl", tmp_path, file="e.jsonl").examples} == {("x", "y")}
