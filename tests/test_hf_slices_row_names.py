"""Messages about a row of a sliced split (``split = "train[4:8]"``) named it by its place in the slice ("row 2"),
so a user opening the file looked at the wrong row; they name its row in its split, the slice's beside it
("row 6 of split 'train' (row 2 of the slice)"), as the made-up image ids (numbered in the split) do."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


def _write(root, split, n, blank=(), no_image=(), ids=None, labels=None):
    data = {"image": [None if i in no_image else Image.new("RGB", (16 + i, 12), (i, 9, 9)) for i in range(n)],
            "caption": ["" if i in blank else f"{split} {i}" for i in range(n)]}
    features = {"image": datasets.Image(), "caption": datasets.Value("string")}
    if ids is not None:
        data["image_id"], features["image_id"] = ids, datasets.Value("string")
    if labels is not None:
        data["label"], features["label"] = labels, datasets.ClassLabel(names=["cat", "dog"])
    datasets.Dataset.from_dict(data, features=datasets.Features(features)).to_parquet(
        str(root / "pq" / f"{split}-0.parquet"))


@pytest.fixture
def root(tmp_path):
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = tmp_path / "root"
    (root / "pq").mkdir(parents=True)
    return root


def _read(tmp_path, root, split, **options):
    return read_split("hf_datasets", root, path="pq", split=split, cache_dir=str(tmp_path / "cache"), verify=False,
                      **options)


def _refusal(tmp_path, root, split, **options) -> str:
    with pytest.raises((DataFormatError, ValueError)) as e:
        _read(tmp_path, root, split, **options)
    return str(e.value)


def test_a_row_without_an_image_is_named_by_its_row_in_the_split(tmp_path, root):
    _write(root, "train", 10, no_image={6})
    said = _refusal(tmp_path, root, "train[4:8]")
    assert "row 6 of split 'train' (row 2 of the slice): no image" in said   # (was: "row 2: no image")


def test_a_row_left_out_for_a_blank_caption_is_named_by_its_row_in_the_split(tmp_path, root, caplog):
    _write(root, "train", 10, blank={5})
    with caplog.at_level("WARNING", logger="mtl_lora_vl.data.rows"):
        exs = _read(tmp_path, root, "train[-6:]").examples
    assert len(exs) == 5
    assert "e.g. datasets" in caplog.text and caplog.text.rstrip().endswith(
        "row 5 of split 'train' (row 1 of the slice)")   # (was: "... [train[-6:]] row 1")


def test_an_image_id_given_to_two_images_names_both_rows_in_the_split(tmp_path, root):
    _write(root, "train", 10, ids=[str(i) for i in range(6)] + ["a", "b", "a", "c"])
    said = _refusal(tmp_path, root, "train[5:]")
    assert re.search(r"row 8 of split 'train' \(row 3 of the slice\): image_id 'a' was given to another image at "
                     r"row 6 of split 'train' \(row 1 of the slice\)", said), said


def test_an_unlabelled_row_is_named_by_its_row_in_the_split(tmp_path, root):
    _write(root, "train", 10, labels=[0, 1, 0, 1, 0, 1, 0, -1, 0, 1])
    said = _refusal(tmp_path, root, "train[50%:]", columns={"image": "image", "label": "label"})
    assert "row 7 of split 'train' (row 2 of the slice): label -1" in said


def test_a_row_of_a_joined_split_is_named_by_its_row_in_its_own_split(tmp_path, root):
    _write(root, "train", 10)
    _write(root, "test", 5, no_image={2})
    said = _refusal(tmp_path, root, "train[8:]+test[1:4]")
    assert "row 2 of split 'test' (row 3 of the slice): no image" in said


def test_an_image_reference_and_its_made_up_id_name_the_same_row(tmp_path, root):
    _write(root, "train", 10)
    exs = _read(tmp_path, root, "train[4:8]").examples
    assert [e.image_id for e in exs] == ["4", "5", "6", "7"]
    assert [re.search(r"row (\d+) of split 'train'", str(e.image)).group(1) for e in exs] == ["4", "5", "6", "7"]
    assert "(row 2 of the slice)" in str(exs[2].image)   # (was: "... [train[4:8]] row 2 column 'image'")
    whole = _read(tmp_path, root, "train").examples
    assert str(whole[6].image).endswith("[train] row 6 column 'image'")   # an unsliced split: as before


def test_a_row_whose_image_id_the_image_table_lacks_is_named_by_its_row_in_the_split(tmp_path, root):
    (root / "images").mkdir()
    datasets.Dataset.from_dict({"id": ["n0", "n1"], "image": [Image.new("RGB", (8, 8)) for _ in range(2)]}).to_parquet(
        str(root / "images" / "train-0.parquet"))
    asked = ["n0", "n1", "n0", "n1", "n9", "n0"]
    datasets.Dataset.from_dict({"imageId": asked, "question": ["what?"] * 6, "answer": ["red"] * 6}).to_parquet(
        str(root / "pq" / "train-0.parquet"))
    said = _refusal(tmp_path, root, "train[3:]", image_table={"path": "images", "key": "id"},
                    columns={"image_id": "imageId", "question": "question", "answers": "answer"})
    assert "row 4 of split 'train' (row 1 of the slice): image id 'n9'" in said   # (was: "row 1: image id 'n9'")
