"""The note that a split's read leaves out files named for a longer split (``train_extra.parquet`` beside
``train.parquet``) is given once, for the split as written: reading each part of a join alone (each split's rows,
for the row names of a join and for slices) noted ``train`` as read without ``train_extra`` though the join read it."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.readers import read_split

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets")

NOTE = "is read without the file(s) ['train_extra.parquet']"


@pytest.fixture
def root(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "ds").mkdir()
    for name, rows in (("train", 2), ("train_extra", 1), ("test", 1)):
        pq.write_table(pa.table({"image": ["a.png"] * rows, "question": [f"{name} {i}?" for i in range(rows)],
                                 "answer": ["yes"] * rows}), tmp_path / "ds" / f"{name}.parquet")
    return tmp_path


@pytest.mark.parametrize("split", ["train+train_extra", "train[:1]+train_extra[:1]", "train_extra+train[1:]"])
def test_a_join_that_reads_the_longer_named_file_notes_nothing(root, caplog, split):
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        read_split("hf_datasets", root, path="ds", split=split, cache_dir=str(root / "cache"))
    assert NOTE not in caplog.text


@pytest.mark.parametrize("split", ["train", "train[:1]", "train[:1]+test"])
def test_a_split_that_leaves_it_out_notes_it_once(root, caplog, split):
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        read_split("hf_datasets", root, path="ds", split=split, cache_dir=str(root / "cache"))
    assert caplog.text.count(NOTE) == 1
