"""A user's walk through messages naming a row of splits joined whole (``split = "test+train"``, ``datasets``'
``+``, no slice) of a parquet folder: a bad row of the train split was named by its place in the joined table
(``row 13``, where the train split has 12 rows: the user opening its files looks for a row that is not there); a
sliced join already named it by its split (``row 7 of split 'train' (row 13 of the slice)``). An image table read at
such a join (rows at ``testdev[:2]+val[:2]``) named a repeated key's rows so too. Now both name the split."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _shard(folder, name, images, labels) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
        str(folder / f"{name}.parquet"))


def _img(level):
    return Image.new("RGB", (8, 8), (level, 0, 0))


def test_a_row_of_splits_joined_whole_is_named_by_its_split(tmp_path):
    root = tmp_path / "data"
    _shard(root / "d", "test-00000-of-00001", [_img(i) for i in range(3)], ["cat"] * 3)
    _shard(root / "d", "train-00000-of-00002", [_img(10 + i) for i in range(2)], ["dog"] * 2)
    _shard(root / "d", "train-00001-of-00002", [_img(20), None, _img(22)], ["dog"] * 3)   # (train's row 3: no image)
    cache = str(tmp_path / "cache")
    for split, row in (("test+train", "row 3 of split 'train': no image"), ("train", "[train] row 3: no image"),
                       ("test+train[1:]", "row 3 of split 'train' (row 5 of the slice): no image")):
        with pytest.raises(DataFormatError, match=re.escape(row)):   # (test+train: was "row 6", past train's 5 rows)
            read_split("hf_datasets", root, path="d", split=split, cache_dir=cache)
    # rows and the made-up image ids are as before: the join's place (what row keys are made of)
    _shard(root / "d", "train-00001-of-00002", [_img(20), _img(21), _img(22)], ["dog"] * 3)
    split = read_split("hf_datasets", root, path="d", split="test+train", cache_dir=cache)
    assert [e.image_id for e in split.examples] == [str(i) for i in range(8)]


def test_an_image_table_read_at_a_join_names_a_repeated_keys_rows_by_split(tmp_path):
    root = tmp_path / "data"
    for split, ids, levels in (("testdev", ["a", "b"], [1, 2]), ("val", ["c", "b"], [3, 4])):
        for config, columns in (("images", {"id": ids, "image": [_img(v) for v in levels]}),
                                ("instructions", {"imageId": ids, "question": ["what?"] * 2, "answer": ["red"] * 2})):
            folder = root / "GQA" / f"testdev_balanced_{config}"
            folder.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(columns).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    with pytest.raises(DataFormatError, match=re.escape("row 1 of split 'testdev' and row 1 of split 'val': key 'b' "
                                                        "of column 'id' names two different images")):   # (was: 1, 3)
        read_split("hf_datasets", root, path="GQA/testdev_balanced_instructions", split="testdev[:2]+val[:2]",
                   columns={"image_id": "imageId", "question": "question", "answers": "answer"},
                   cache_dir=str(tmp_path / "cache"), image_table={"path": "GQA/testdev_balanced_images", "key": "id"})
