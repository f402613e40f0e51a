"""``image_table`` whose key repeats: one image on two rows under its key (a table written with a repeat) was refused
as "key ... is also row 0's"; it is read (the key's first row), and two rows of different images under one key are
refused naming both rows. The join reads no image's bytes to tell rows apart (``byte_tails`` was read for every
row of the image table, never used there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data import hf_datasets
from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")

COLUMNS = {"image_id": "imageId", "question": "question", "answers": "answer"}
COLORS = {"n1": (200, 30, 30), "n2": (30, 200, 30)}


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _write(root, ids, images, asked=("n1", "n2", "n1")) -> None:
    for config, columns in (("images", {"id": list(ids), "image": list(images)}),
                            ("instructions", {"imageId": list(asked), "question": [f"what is {k}?" for k in asked],
                                              "answer": ["red" for _ in asked]})):
        folder = root / "GQA" / f"testdev_balanced_{config}"
        folder.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(columns).to_parquet(str(folder / "testdev-00000-of-00001.parquet"))


def _read(tmp_path, **image_table):
    return read_split("hf_datasets", tmp_path / "data", path="GQA/testdev_balanced_instructions", split="testdev",
                      columns=COLUMNS, cache_dir=str(tmp_path / "cache"),
                      image_table={"path": "GQA/testdev_balanced_images", "key": "id", **image_table})


def _png(key, size=8):
    return Image.new("RGB", (size, size), COLORS[key])


def test_a_key_repeated_on_one_image_is_read_and_on_two_images_refused_naming_both_rows(tmp_path):
    _write(tmp_path / "data", ["n1", "n2", "n1"], [_png("n1"), _png("n2"), _png("n1")])
    split = _read(tmp_path)   # (was: refused, "key 'n1' of column 'id' is also row 0's")
    assert [(e.image_id, e.image.row) for e in split.examples] == [("n1", 0), ("n2", 1), ("n1", 0)]
    _write(tmp_path / "data", ["n1", "n2", "n1"], [_png("n1"), _png("n2"), _png("n1", 9)])
    with pytest.raises(DataFormatError, match=r"testdev_balanced_images.* rows 0 and 2: key 'n1' of column 'id' names "
                                              r"two different images \(encoded images of \d+ and \d+ bytes\)"):
        _read(tmp_path)


def test_a_key_repeated_on_one_path_is_read_and_on_two_paths_refused(tmp_path):
    root = tmp_path / "data"
    for name in ("a.png", "b.png"):
        (root / "imgs").mkdir(parents=True, exist_ok=True)
        _png("n1").save(root / "imgs" / name)
    _write(root, ["n1", "n2", "n1"], ["imgs/a.png", "imgs/b.png", "imgs/a.png"])
    split = _read(tmp_path, image="image")
    assert [Path(e.image).name for e in split.examples] == ["a.png", "b.png", "a.png"]
    _write(root, ["n1", "n2", "n1"], ["imgs/a.png", "imgs/b.png", "imgs/b.png"])
    with pytest.raises(DataFormatError, match=re.escape("rows 0 and 2: key 'n1' of column 'id' names two different "
                                                        "images (paths 'imgs/a.png' and 'imgs/b.png')")):
        _read(tmp_path, image="image")


def test_the_join_reads_no_byte_tails_of_the_image_table(tmp_path, monkeypatch):
    _write(tmp_path / "data", ["n1", "n2"], [_png("n1"), _png("n2")])

    def refused(*a, **k):
        raise AssertionError("byte_tails read for a join")

    monkeypatch.setattr(hf_datasets, "byte_tails", refused)
    monkeypatch.setattr(hf_datasets, "byte_lengths", refused)
    assert [e.image.row for e in _read(tmp_path).examples] == [0, 1, 0]   # (was: byte_tails of every image row)
