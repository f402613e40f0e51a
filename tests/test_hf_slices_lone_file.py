"""A slice of one parquet file whose name names no split (``path = "data.parquet"``, ``split = "train[:2]"``):
``datasets``' ``load_dataset("parquet", data_files=...)`` calls such a file "train", but here a lone file's split is
read from its name, and ``split = "train"`` on it is refused (every split would read the same rows); its slice is
refused alike, now naming the split as written and how to slice the file (name it for its split), where it said
"split 'train' ... leave split out", which would read every row, the slice dropped."""

from __future__ import annotations

import pytest
from PIL import Image

from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


@pytest.fixture
def root(tmp_path):
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = tmp_path / "root"
    root.mkdir()
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (8 + i, 8)) for i in range(4)],
                                "caption": [f"a picture {i}" for i in range(4)]}).to_parquet(str(root / "data.parquet"))
    return root


def _read(tmp_path, root, path, split):
    return read_split("hf_datasets", root, path=path, split=split, cache_dir=str(tmp_path / "cache"), verify=False)


@pytest.mark.parametrize("split", ["train[:2]", "train[:50%]+train[50%:]"])
def test_a_slice_of_a_lone_file_named_for_no_split_says_how_to_slice_it(tmp_path, root, split):
    with pytest.raises(ValueError) as e:
        _read(tmp_path, root, "data.parquet", split)
    said = str(e.value)
    assert f"split = {split!r}" in said   # (was: only "split = 'train' selects nothing")
    assert f"name the file for its split, e.g. {root / 'data_train.parquet'}, and keep split = {split!r}" in said
    (root / "data.parquet").rename(root / "data_train.parquet")   # as it says: the slice reads
    assert [e.captions[0] for e in _read(tmp_path, root, "data_train.parquet", split).examples][:2] == [
        "a picture 0", "a picture 1"]


def test_the_lone_file_unsliced_is_refused_as_before(tmp_path, root):
    with pytest.raises(ValueError, match=r"its name does not say split 'train' .* so split = 'train' selects nothing "
                                         r".*leave split out where the file is that split's data"):
        _read(tmp_path, root, "data.parquet", "train")
    assert len(_read(tmp_path, root, "data.parquet", None).examples) == 4
