"""A sliced split joining two splits of a ``save_to_disk`` folder (``split = "train[:2]+test[:2]"``) was refused
under its unsliced name ("split 'train+test' joins ..."), which the user never wrote, and told to write the splits
as parquet files "with split = 'train+test'", which reads every row of both; it names what the user wrote."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


@pytest.fixture
def saved(tmp_path):
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = tmp_path / "root"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"caption": [f"{s} {i}" for i in range(4)]})
                          for s in ("train", "test")}).save_to_disk(str(root / "saved"))
    return root


@pytest.mark.parametrize("split", ["train[:2]+test[:2]", "train + test[50%:]"])
def test_a_sliced_join_of_saved_splits_is_refused_under_the_name_written(saved, split):
    with pytest.raises(ValueError) as e:
        read_split("hf_datasets", saved, path="saved", split=split)
    said = str(e.value)
    assert f"split {split!r} joins the splits ['train', 'test'] with '+'" in said   # (was: split 'train+test')
    assert f"with split = {split!r}" in said
    assert "'train+test'" not in said


def test_an_unsliced_join_of_saved_splits_is_refused_as_before(saved):
    with pytest.raises(ValueError, match=r"split 'train\+test' joins the splits \['train', 'test'\] with '\+'.* with "
                                         r"split = 'train\+test'"):
        read_split("hf_datasets", saved, path="saved", split="train+test")
