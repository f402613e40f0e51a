"""The hf_datasets reader: save_to_disk folders and parquet files built here, columns mapped in the spec."""

from __future__ import annotations

import gc
import io
import logging
import pickle
import re
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.hf_datasets import DatasetImage  # noqa: E402
from mtl_lora_vl.data.images import ImageError, load_image, to_uint8_tensor  # noqa: E402
from mtl_lora_vl.data.loader import TaskDataset  # noqa: E402
from mtl_lora_vl.data.readers import PathEscapeError, read_split  # noqa: E402
from mtl_lora_vl.tasks.spec import load_spec  # noqa: E402

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _pil(i: int) -> Image.Image:
    return Image.new("RGB", (24, 16), COLORS[i % len(COLORS)])


def _jpeg_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    _pil(i).save(buf, "JPEG")
    return buf.getvalue()


def _vqa_dict(n: int, offset: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "img": [_pil(i + offset) for i in range(n)],
        "q": [f"what colour is picture {i + offset}?" for i in range(n)],
        "ans": [["red", "red", "dark red"] for _ in range(n)],
        "qid": list(range(offset, offset + n)),
    })


def test_save_to_disk_vqa_with_mapped_columns(tmp_path):
    root = tmp_path / "data"
    datasets.DatasetDict({"train": _vqa_dict(3), "validation": _vqa_dict(2, 3)}).save_to_disk(root / "vqa_ds")
    cols = {"image": "img", "question": "q", "answers": "ans", "question_id": "qid"}
    train = read_split("hf_datasets", root, path="vqa_ds", split="train", columns=cols)
    assert len(train.examples) == 3 and train.skipped == 0
    ex = train.examples[1]
    assert isinstance(ex.image, DatasetImage) and ex.image.row == 1
    assert ex.text == "what colour is picture 1?" and ex.answers == ("red", "red", "dark red")
    assert ex.meta == {"question_id": 1} and ex.image_id == "1"
    assert load_image(ex.image).getpixel((3, 3)) == COLORS[1]
    val = read_split("hf_datasets", root, path=str(root / "vqa_ds"), split="validation", columns=cols)
    assert [e.text for e in val.examples] == ["what colour is picture 3?", "what colour is picture 4?"]
    # The reference is small and reopens the table in another process (a loader worker): nothing opened travels.
    assert load_image(val.examples[0].image) and val.examples[0].image.table.opened
    blob = pickle.dumps(val.examples[0])
    assert len(blob) < 1000
    copy = pickle.loads(blob).image
    assert copy.table.opened == {} and copy.table == val.examples[0].image.table
    assert load_image(copy).getpixel((0, 0)) == COLORS[3]
    # The opened table belongs to the split's table, not to the module: it goes when the split goes.
    opened = weakref.ref(val.examples[0].image.table.opened["img"])
    del val, copy
    gc.collect()
    assert opened() is None
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['train', 'validation'\]"):
        read_split("hf_datasets", root, path="vqa_ds", split="test", columns=cols)


def test_a_missing_image_id_does_not_borrow_another_rows_image(tmp_path):
    root = tmp_path / "data"
    datasets.Dataset.from_dict({"image": [_pil(0), _pil(1), _pil(2)], "caption": ["c0", "c1", "c2"],
                                "image_id": [None, None, "1"]}).save_to_disk(root / "ids")
    s = read_split("hf_datasets", root, path="ids")
    assert [e.captions for e in s.examples] == [("c0",), ("c1",), ("c2",)]
    assert [load_image(e.image).getpixel((0, 0)) for e in s.examples] == [COLORS[0], COLORS[1], COLORS[2]]


def test_parquet_captions_from_file_paths_and_class_labels(tmp_path):
    root = tmp_path / "data"
    (root / "pics").mkdir(parents=True)
    for i in range(3):
        _pil(i).save(root / "pics" / f"{i}.png")
    caps = datasets.Dataset.from_dict({"file": [f"{i}.png" for i in range(3)],
                                       "sentences": [[f"picture {i}", f"image number {i}"] for i in range(3)]})
    (root / "caps" / "data").mkdir(parents=True)
    caps.to_parquet(root / "caps" / "data" / "train-00000-of-00001.parquet")
    caps.select([0]).to_parquet(root / "caps" / "data" / "test-00000-of-00001.parquet")
    kw = {"path": "caps", "columns": {"image": "file", "captions": "sentences"}, "images": "pics",
          "cache_dir": str(tmp_path / "cache")}
    train = read_split("hf_datasets", root, split="train", **kw)
    assert [(Path(e.image).name, e.text) for e in train.examples][:3] == [
        ("0.png", "picture 0"), ("0.png", "image number 0"), ("1.png", "picture 1")]
    assert train.examples[0].captions == ("picture 0", "image number 0") and train.examples[0].image_id == "0.png"
    test = read_split("hf_datasets", root, split="test", one_per_image=True, **kw)
    assert len(test.examples) == 1 and test.examples[0].text == "picture 0"
    with pytest.raises(FileNotFoundError, match=r"no parquet file of split 'val'.*train-00000"):
        read_split("hf_datasets", root, split="val", **kw)

    labels = datasets.Dataset.from_dict(
        {"image": [_pil(i) for i in range(4)], "label": [0, 1, 1, 0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}))
    labels.to_parquet(root / "labels.parquet")
    s = read_split("hf_datasets", root, path="labels.parquet", cache_dir=str(tmp_path / "cache"))
    assert s.class_names == ["cat", "dog"] and [e.label for e in s.examples] == [0, 1, 1, 0]
    assert to_uint8_tensor(s.examples[2].image, 8).shape == (3, 8, 8)


def test_bytes_column_bad_images_and_strict(tmp_path, caplog):
    root = tmp_path / "data"
    good = _jpeg_bytes(0)
    blobs = [good, good[: len(good) // 2], _jpeg_bytes(2)]
    ds = datasets.Dataset.from_dict({"png": blobs, "label": ["a", "b", "a"]},
                                    features=datasets.Features({"png": datasets.Value("binary"),
                                                                "label": datasets.Value("string")}))
    ds.save_to_disk(root / "b")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data"):
        s = read_split("hf_datasets", root, path="b", columns={"image": "png", "label": "label"})
    assert any(re.search(r"skipped 1 unreadable.*row 1 column 'png': not a readable image", r.getMessage())
               for r in caplog.records)
    assert [e.image.row for e in s.examples] == [0, 2] and s.class_names == ["a", "b"]
    with pytest.raises(ImageError, match=r"row 1 column 'png'"):
        read_split("hf_datasets", root, path="b", columns={"image": "png", "label": "label"}, strict=True)
    # With the check off, the loader replaces the row whose bytes fail.
    s = read_split("hf_datasets", root, path="b", columns={"image": "png", "label": "label"}, verify=False)

    class Kind:
        name, uses_text = "cls", False

        def sample_text(self, ex):
            return None

        def sample_fields(self, ex, i):
            return {"labels": torch.tensor(ex.label)}

    ds_ = TaskDataset(Kind(), s, 8)
    assert ds_[1]["index"] in (0, 2) and ds_.images.replaced == 1


def test_paths_in_a_dataset_stay_under_the_root(tmp_path):
    root = tmp_path / "data"
    _pil(0).save(tmp_path / "outside.png")
    datasets.Dataset.from_dict({"image": ["../outside.png"], "text": ["x"]}).save_to_disk(root / "esc")
    with pytest.raises(PathEscapeError, match="outside the data root"):
        read_split("hf_datasets", root, path="esc")


def _caption_parquet(path: Path, colour: int, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"image": [_pil(colour) for _ in range(n)],
                                "caption": [f"picture {colour} {i}" for i in range(n)]}).to_parquet(str(path))


def test_parquet_folder_of_several_splits_needs_a_split(tmp_path):
    """Without split = ..., a folder with train-*.parquet and test-*.parquet was read as one split (the
    test images trained on)."""
    root = tmp_path / "data"
    _caption_parquet(root / "ds" / "train-0.parquet", 0, 3)
    _caption_parquet(root / "ds" / "test-0.parquet", 1, 2)
    with pytest.raises(ValueError, match=r"the parquet files hold the splits \['test', 'train'\]; set split"):
        read_split("hf_datasets", root, path="ds")
    assert len(read_split("hf_datasets", root, path="ds", split="train").examples) == 3
    _caption_parquet(root / "one" / "data-0.parquet", 0, 3)  # no split in the names: the folder is the split
    assert len(read_split("hf_datasets", root, path="one").examples) == 3


def test_a_dataset_rewritten_in_place_is_read_anew(tmp_path):
    """Images stay open per process; a dataset rewritten at the same path (a notebook, a loop) paired the new
    captions with the old table's images."""
    root = tmp_path / "data"
    _caption_parquet(root / "ds" / "train-0.parquet", 0, 2)
    first = read_split("hf_datasets", root, path="ds", split="train")
    assert load_image(first.examples[0].image).getpixel((0, 0)) == _pil(0).getpixel((0, 0))
    import os
    import time
    time.sleep(0.01)
    _caption_parquet(root / "ds" / "train-0.parquet", 2, 4)
    os.utime(root / "ds" / "train-0.parquet", ns=(time.time_ns(), time.time_ns() + 10**9))
    second = read_split("hf_datasets", root, path="ds", split="train")
    assert len(second.examples) == 4 and second.skipped == 0
    assert load_image(second.examples[3].image).getpixel((0, 0)) == _pil(2).getpixel((0, 0))


def test_clear_errors(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _vqa_dict(2).save_to_disk(root / "one")
    with pytest.raises(ValueError, match=r"column\(s\) \['question'\] not found.*columns \['img', 'q', 'ans', 'qid'\]"):
        read_split("hf_datasets", root, path="one", columns={"image": "img", "question": "question"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['picture'\]"):
        read_split("hf_datasets", root, path="one", columns={"picture": "img"})
    with pytest.raises(ValueError, match="no image column"):
        read_split("hf_datasets", root, path="one")
    with pytest.raises(ValueError, match=r"image column 'qid' has type .*int64.*expected images"):
        read_split("hf_datasets", root, path="one", columns={"image": "qid", "question": "q"})
    with pytest.raises(FileNotFoundError, match="hf_datasets path .*nowhere not found"):
        read_split("hf_datasets", root, path="nowhere")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"needs the optional package `datasets`.*mtl-lora-vl\[datasets\]"):
        read_split("hf_datasets", root, path="one", columns={"image": "img", "question": "q"})


def test_task_spec_points_at_a_dataset(tmp_path):
    root = tmp_path / "data"
    datasets.DatasetDict({"train": _vqa_dict(4), "validation": _vqa_dict(2, 4)}).save_to_disk(root / "vqa_ds")
    spec_file = tmp_path / "my_vqa.toml"
    spec_file.write_text(
        'kind = "vqa"\n'
        '[data]\nformat = "hf_datasets"\npath = "vqa_ds"\n'
        'columns = {image = "img", question = "q", answers = "ans"}\n'
        '[data.train]\nsplit = "train"\n[data.val]\nsplit = "validation"\n')
    spec = load_spec(spec_file)
    assert spec.data.format == "hf_datasets"
    val = spec.load_split("val", root)
    assert len(val.examples) == 2 and val.examples[0].answers == ("red", "red", "dark red")
    img = load_image(val.examples[1].image)
    assert np.asarray(img)[0, 0].tolist() == list(COLORS[5 % len(COLORS)])


def test_an_image_id_given_to_two_images_is_refused_and_shared_by_one(tmp_path):
    """Rows sharing an image_id shared the first row's image reference even when their bytes differed: the
    blue row decoded red (JSONL and CSV refuse the same data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(colour: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buf, "PNG")
        return buf.getvalue()

    (tmp_path / "same").mkdir()
    pq.write_table(pa.table({"image": [png("red"), png("red"), png("blue")], "caption": ["a", "b", "c"],
                             "image_id": ["1", "1", "2"]}), tmp_path / "same" / "train-0.parquet")
    s = read_split("hf_datasets", tmp_path, path="same", split="train", cache_dir=str(tmp_path / "c1"))
    assert s.examples[0].image is s.examples[1].image   # one image, two captions: one reference
    (tmp_path / "clash").mkdir()
    pq.write_table(pa.table({"image": [png("red"), png("blue")], "label": ["a", "b"], "image_id": ["1", "1"]}),
                   tmp_path / "clash" / "train-0.parquet")
    with pytest.raises(Exception, match=r"row 1: image_id '1' was given to another image at row 0"):
        read_split("hf_datasets", tmp_path, path="clash", split="train", cache_dir=str(tmp_path / "c2"))



def test_a_nan_image_id_is_no_id_not_the_id_nan(tmp_path):
    """A pandas table's blank image_id cell is NaN in parquet: read as the id 'nan', every row without one was one
    image's, refused as "image_id nan was given to another image" (the JSONL and CSV readers read NaN as no id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(colour: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buf, "PNG")
        return buf.getvalue()

    (tmp_path / "nan").mkdir()
    pq.write_table(pa.table({"image": [png("red"), png("blue"), png("red")], "caption": ["a", "b", "c"],
                             "image_id": [float("nan"), float("nan"), 7.0]}), tmp_path / "nan" / "train-0.parquet")
    s = read_split("hf_datasets", tmp_path, path="nan", split="train", cache_dir=str(tmp_path / "c"))
    # the red row without an id is the image row 2 names; the blue one gets a made-up id of its own
    by_caption = {e.text: e for e in s.examples}
    assert {t: e.image_id for t, e in by_caption.items()} == {"a": "7.0", "b": "row 1", "c": "7.0"}
    assert by_caption["a"].image is by_caption["c"].image

def test_a_table_row_repeated_whole_with_a_nan_cell_is_refused(tmp_path):
    """A parquet row with a float NaN cell, concatenated with itself, was read twice: NaN != NaN, so the repeated row
    did not compare equal to the first (a JSONL NaN is one shared object, and was refused)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "PNG")
    row = pa.table({"image": [buf.getvalue()], "q": ["Is it red?"], "ans": [["yes"]], "qid": [7],
                    "kind": [float("nan")]})
    pq.write_table(pa.concat_tables([row, row]), tmp_path / "twice.parquet")
    cols = {"image": "image", "question": "q", "answers": "ans", "question_id": "qid", "question_type": "kind"}
    with pytest.raises(Exception, match=r"row 1: question_id 7 is given to another row at .* row 0, and the row "
                                        r"repeats it whole"):
        read_split("hf_datasets", tmp_path, path="twice.parquet", columns=cols, cache_dir=str(tmp_path / "c"))


def test_a_split_name_that_selects_nothing_is_refused(tmp_path):
    """One saved Dataset (no split name) or one parquet file read the same rows for split = "train", "validation"
    or a typo: the val split scored the training rows, and the spec's same-rows check (by split name) was silent."""
    root = tmp_path / "data"
    datasets.Dataset.from_dict({"image": [_pil(i) for i in range(3)],
                                "caption": [f"picture {i}" for i in range(3)]}).save_to_disk(root / "one_ds")
    for split in ("train", "validation"):
        with pytest.raises(ValueError, match=rf"has no split name, so split = '{split}' selects nothing"):
            read_split("hf_datasets", root, path="one_ds", split=split)
    assert len(read_split("hf_datasets", root, path="one_ds").examples) == 3
    _caption_parquet(root / "labels.parquet", 0, 3)
    with pytest.raises(ValueError, match=r"its name does not say split 'validation'"):
        read_split("hf_datasets", root, path="labels.parquet", split="validation")
    assert len(read_split("hf_datasets", root, path="labels.parquet").examples) == 3
    _caption_parquet(root / "train-0.parquet", 0, 2)   # the name says the split: taken
    assert len(read_split("hf_datasets", root, path="train-0.parquet", split="train").examples) == 2
    two = datasets.DatasetDict({s: datasets.Dataset.from_dict({"image": [_pil(0)], "caption": ["a"]})
                                for s in ("train", "test")})
    two.save_to_disk(root / "two")   # several splits and none named: "split None not found" before
    with pytest.raises(ValueError, match=r"no split is given; the saved dataset has splits \['train', 'test'\] \(set "
                                         r"split = \.\.\."):
        read_split("hf_datasets", root, path="two")


def test_split_named_anywhere_in_a_file_or_folder_name_as_datasets_reads_it(tmp_path):
    """``mydata_train.parquet`` is the train split to ``datasets``; it was refused with split = "train" (only a
    name that began with the split counted), and a folder of ``mydata_train`` / ``mydata_test`` files read both
    splits as one."""
    pytest.importorskip("datasets")
    root = tmp_path / "root"
    _caption_parquet(root / "ds" / "mydata_train.parquet", 0, 3)
    _caption_parquet(root / "ds" / "mydata_test.parquet", 1, 2)
    _caption_parquet(root / "ds" / "constrain.parquet", 2, 1)   # 'train' inside a word: no split
    cache = str(tmp_path / "cache")
    assert len(read_split("hf_datasets", root, path="ds/mydata_train.parquet", split="train", cache_dir=cache)
               .examples) == 3
    assert len(read_split("hf_datasets", root, path="ds", split="train", cache_dir=cache).examples) == 3
    assert len(read_split("hf_datasets", root, path="ds", split="test", cache_dir=cache).examples) == 2
    with pytest.raises(ValueError, match=r"hold the splits \['test', 'train'\]"):
        read_split("hf_datasets", root, path="ds", cache_dir=cache)
    _caption_parquet(root / "coco" / "train2017" / "part-0.parquet", 0, 4)
    _caption_parquet(root / "coco" / "val2017" / "part-0.parquet", 1, 1)
    assert len(read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache).examples) == 1


def test_hub_shard_names_are_splits_of_their_own_as_datasets_reads_them(tmp_path):
    """A hub snapshot's ``data/test-00000-of-00001.parquet`` and ``data/test_hard-00000-of-00001.parquet`` are the
    splits 'test' and 'test_hard' to ``datasets``; split = "test" read both (6 rows where datasets gives 2), and a
    folder of only those two read as one split without split = ...; 'validation' beside validation_matched and
    validation_mismatched shards merged the two."""
    root = tmp_path / "root"
    cache = str(tmp_path / "cache")
    _caption_parquet(root / "hub" / "data" / "train-00000-of-00001.parquet", 0, 3)
    _caption_parquet(root / "hub" / "data" / "test-00000-of-00001.parquet", 1, 2)
    _caption_parquet(root / "hub" / "data" / "test_hard-00000-of-00001.parquet", 2, 4)
    assert len(read_split("hf_datasets", root, path="hub", split="test", cache_dir=cache).examples) == 2
    assert len(read_split("hf_datasets", root, path="hub", split="test_hard", cache_dir=cache).examples) == 4
    assert len(read_split("hf_datasets", root, path="hub/data", split="train", cache_dir=cache).examples) == 3
    (root / "hub" / "data" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(ValueError, match=r"hold the splits \['test', 'test_hard'\]"):
        read_split("hf_datasets", root, path="hub", cache_dir=cache)
    _caption_parquet(root / "mnli" / "validation_matched-00000-of-00001.parquet", 0, 2)
    _caption_parquet(root / "mnli" / "validation_mismatched-00000-of-00001.parquet", 1, 2)
    with pytest.raises(ValueError, match=r"split 'validation' names no split of its own here.*'validation_matched', "
                                         r"'validation_mismatched'"):
        read_split("hf_datasets", root, path="mnli", split="validation", cache_dir=cache)
    _caption_parquet(root / "mine" / "mydata_train-00000-of-00002.parquet", 0, 2)   # one shard name: still 'train'
    _caption_parquet(root / "mine" / "mydata_train-00001-of-00002.parquet", 1, 1)
    assert len(read_split("hf_datasets", root, path="mine", split="train", cache_dir=cache).examples) == 3


def test_split_folders_of_shards_named_otherwise_are_the_folders_splits(tmp_path):
    """train/data-00000-of-00001.parquet beside test/data-00000-of-00001.parquet are the splits train and test (as
    datasets reads a split's folder); without split = ... the folder was read as one split 'data' (5 rows: the test
    rows trained on) where it was refused before shard names counted, and two shard names in test/ refused split =
    "test"."""
    root = tmp_path / "root"
    cache = str(tmp_path / "cache")
    _caption_parquet(root / "ds" / "train" / "data-00000-of-00001.parquet", 0, 3)
    _caption_parquet(root / "ds" / "test" / "data-00000-of-00001.parquet", 1, 2)
    with pytest.raises(ValueError, match=r"the parquet files hold the splits \['test', 'train'\]; set split"):
        read_split("hf_datasets", root, path="ds", cache_dir=cache)
    assert len(read_split("hf_datasets", root, path="ds", split="train", cache_dir=cache).examples) == 3
    _caption_parquet(root / "ds" / "test" / "extra-00000-of-00001.parquet", 2, 4)
    assert len(read_split("hf_datasets", root, path="ds", split="test", cache_dir=cache).examples) == 6


def test_a_misspelt_columns_field_names_the_spec_file_and_the_field_meant(tmp_path):
    """It was a bare ValueError ('columns: unknown field(s) ['imgae']'), naming neither the spec nor the field meant."""
    root = tmp_path / "data"
    _vqa_dict(2).save_to_disk(root / "one")
    spec = tmp_path / "mine.toml"
    spec.write_text('kind = "vqa"\n[data]\nformat = "hf_datasets"\npath = "one"\n'
                    '[data.train]\ncolumns = {imgae = "img", question = "q", answers = "ans"}\n[data.val]\n')
    with pytest.raises(ValueError, match=r"mine\.toml: field 'data.train': .*unknown field\(s\) \['imgae'\]; 'imgae': "
                                         r"did you mean 'image'\?"):
        load_spec(spec).load_split("train", root)
