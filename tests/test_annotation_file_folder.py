"""An annotation file named by a path that is a folder (the images' folder given as the file, or a folder of
files) is said to be a folder, with the fix; it was reported as "file ... not found", which sends the user looking
for a path that is there (helper 314)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_lora_vl.data.readers import read_split


@pytest.mark.parametrize(("fmt", "option"), [("jsonl", "file"), ("csv", "file"), ("coco_captions", "annotations"),
                                             ("nlvr2", "annotations"), ("vqav2", "questions")])
def test_a_folder_given_as_the_annotation_file_is_named_a_folder(tmp_path: Path, fmt: str, option: str) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(IsADirectoryError, match=r"train is a folder, not a file; give the path of the .* file in it"):
        read_split(fmt, tmp_path, **{option: "train"})


def test_a_missing_annotation_file_is_still_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"JSONL file .*nowhere.jsonl not found") as e:
        read_split("jsonl", tmp_path, file="nowhere.jsonl")
    assert not isinstance(e.value, IsADirectoryError)
