"""A data file, or a saved split, that holds no rows is refused saying what to do: the message was the bare
``<file>: no rows`` (a CSV of its header only, an empty JSONL, a saved Dataset whose one data file has no rows)."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.readers import read_split

FIX = r"no rows; give a file or split that has rows, or leave that split out of the task spec"


@pytest.mark.parametrize(("fmt", "text"), [("csv", "image,question,answer\n"), ("jsonl", ""), ("jsonl", "\n\n")])
def test_a_file_of_no_rows_says_what_to_do(tmp_path, fmt, text):
    (tmp_path / f"train.{fmt}").write_text(text)
    with pytest.raises(DataFormatError, match=rf"train\.{fmt}: {FIX}"):
        read_split(fmt, tmp_path, file=f"train.{fmt}")


def test_a_saved_split_of_one_empty_data_file_says_what_to_do(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": ["a.png"], "question": ["q?"], "answer": ["yes"]}).select([])
    ds.save_to_disk(str(tmp_path / "d"), num_shards=1)   # (one data file of no rows: every release can write it)
    with pytest.raises(DataFormatError, match=FIX):
        read_split("hf_datasets", tmp_path, path="d")
