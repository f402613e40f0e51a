"""A whole hub folder of configs (GQA's ``lmms-lab/GQA``: ``<split>_balanced_images/`` beside
``<split>_balanced_instructions/``, for several splits) read with no ``split`` was refused naming only the first
split whose files lie in several config folders; each such split is named (a few, then how many more)."""

from __future__ import annotations

import re

import pytest

from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


def _shard(path, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns).to_parquet(str(path))


@pytest.mark.parametrize("splits", [("testdev", "train", "val"), ("challenge", "submission", "testdev", "train", "val",
                                                                   "x")])
def test_a_whole_folder_of_configs_with_no_split_names_each_split_of_several_configs(tmp_path, splits):
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = tmp_path / "root"
    for split in splits:
        _shard(root / "GQA" / f"{split}_balanced_images" / f"{split}-00000-of-00001.parquet", id=["n1"], image=[b"x"])
        _shard(root / "GQA" / f"{split}_balanced_instructions" / f"{split}-00000-of-00001.parquet", id=["q1"],
               imageId=["n1"], question=["what?"], answer=["red"])
    first, *rest = sorted(splits)
    with pytest.raises(ValueError) as e:
        read_split("hf_datasets", root, path="GQA", cache_dir=str(tmp_path / "cache"))
    said = str(e.value)
    assert re.search(rf"the parquet files of split '{first}' lie in the folders \['{first}_balanced_images', "
                     rf"'{first}_balanced_instructions'\] \(and so do the files of split\(s\) ", said), said
    for split in rest[:3]:   # (was: only the first split named)
        assert f"'{split}': ['{split}_balanced_images', '{split}_balanced_instructions']" in said
    if len(rest) > 3:
        assert f"; and {len(rest) - 3} more split(s))" in said and f"'{rest[3]}':" not in said
    assert f'path = "GQA/{first}_balanced_instructions"' in said and "image_table = " in said
