"""A parquet file of no rows (a hub shard of an empty split, a filter that kept nothing): ``datasets``'
``Dataset.from_parquet`` fails on it with a bare ``DatasetGenerationError`` (pyarrow's "BatchSize must be greater
than 0"), alone or beside files that have rows. Such files are left out; a split of only such files is refused
saying what to do."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.readers import read_split

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets")


def _write(path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": ["a.png"] * rows, "question": [f"q{i}?" for i in range(rows)],
                             "answer": ["yes"] * rows}, schema=pa.schema([(c, pa.string()) for c in
                                                                          ("image", "question", "answer")])), path)


@pytest.fixture
def root(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    return tmp_path


def test_a_file_of_no_rows_beside_files_with_rows_is_left_out(root):
    _write(root / "d" / "train-00000-of-00002.parquet", 0)
    _write(root / "d" / "train-00001-of-00002.parquet", 2)
    assert [ex.text for ex in read_split("hf_datasets", root, path="d", split="train").examples] == ["q0?", "q1?"]
    assert [ex.text for ex in read_split("hf_datasets", root, path="d", split="train[1:]").examples] == ["q1?"]


def test_a_split_of_only_files_of_no_rows_is_refused_saying_what_to_do(root):
    _write(root / "d" / "train.parquet", 0)
    with pytest.raises(DataFormatError, match=r"d: split 'train': its parquet file\(s\) hold no rows; give a file or "
                                              r"split that has rows, or leave that split out of the task spec"):
        read_split("hf_datasets", root, path="d", split="train")


def test_one_parquet_file_of_no_rows_is_refused_without_a_split(root):
    _write(root / "d.parquet", 0)
    with pytest.raises(DataFormatError, match=r"hf_datasets d\.parquet: its parquet file\(s\) hold no rows; "):
        read_split("hf_datasets", root, path="d.parquet")
