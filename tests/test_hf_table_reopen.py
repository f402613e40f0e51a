"""A loader worker reopens an hf_datasets table by its path: a split folder saved again since the start (other
images at the same row numbers) was read silently, pairing the start's captions with the new rows' images."""

from __future__ import annotations

import pickle
import shutil

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.common import DataFormatError  # noqa: E402
from mtl_lora_vl.data.readers import read_split  # noqa: E402

FEATURES = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})


def _captions(n: int, shade: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 12), (40 * i, shade, 30)) for i in range(n)],
                                       "caption": [f"picture {i}" for i in range(n)]}, features=FEATURES)


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def test_a_worker_refuses_a_split_folder_replaced_since_the_start(tmp_path):
    datasets.DatasetDict({"train": _captions(3, 90), "test": _captions(2, 90)}).save_to_disk(tmp_path / "ds")
    train = read_split("hf_datasets", tmp_path, path="ds", split="train")
    ref = pickle.loads(pickle.dumps(train.examples[1].image))   # as a loader worker gets it
    again = pickle.loads(pickle.dumps(train.examples[1].image))
    assert ref.fetch() == train.examples[1].image.fetch()   # unchanged: read as at the start
    assert pickle.loads(pickle.dumps(train)).examples[0].image.table == train.examples[0].image.table
    _captions(3, 200).save_to_disk(tmp_path / "new")
    shutil.rmtree(tmp_path / "ds" / "train")
    (tmp_path / "new").rename(tmp_path / "ds" / "train")
    with pytest.raises(DataFormatError, match=r"ds \[train\]: the dataset's files changed since it was read .*start "
                                              "again"):
        again.fetch()


def test_another_split_saved_again_leaves_a_workers_split_readable(tmp_path):
    datasets.DatasetDict({"train": _captions(3, 90), "test": _captions(2, 90)}).save_to_disk(tmp_path / "ds")
    train = read_split("hf_datasets", tmp_path, path="ds", split="train")
    ref = pickle.loads(pickle.dumps(train.examples[1].image))   # as a loader worker gets it
    _captions(4, 200).save_to_disk(tmp_path / "new")   # only the test split saved again (the rows train does not read)
    shutil.rmtree(tmp_path / "ds" / "test")
    (tmp_path / "new").rename(tmp_path / "ds" / "test")
    assert ref.fetch() == train.examples[1].image.fetch()   # was: refused, "the dataset's files changed"


def test_a_dataset_read_whole_is_stamped_whole(tmp_path):
    _captions(3, 90).save_to_disk(tmp_path / "one")   # a lone Dataset: no split folder, the whole folder is read
    ref = pickle.loads(pickle.dumps(read_split("hf_datasets", tmp_path, path="one").examples[1].image))
    (tmp_path / "one" / "state.json").write_text((tmp_path / "one" / "state.json").read_text() + " ")
    with pytest.raises(DataFormatError, match="the dataset's files changed since it was read"):
        ref.fetch()


def test_a_folder_saved_again_in_place_is_refused_by_a_process_holding_it_open(tmp_path):
    # save_to_disk into the same folder (another process) truncates and rewrites its files in place, under the memory
    # map of a process that already read the table (workers=0, or a persistent loader worker)
    datasets.DatasetDict({"train": _captions(3, 90)}).save_to_disk(tmp_path / "ds")
    _captions(3, 200).save_to_disk(tmp_path / "new")
    train = read_split("hf_datasets", tmp_path, path="ds", split="train")
    image = train.examples[1].image
    before = image.fetch()   # the table is open (memory-mapped) in this process now
    data = next((tmp_path / "ds" / "train").glob("*.arrow"))
    new = next((tmp_path / "new").glob("*.arrow")).read_bytes()
    with open(data, "r+b") as f:   # (as long as before, at least: a file cut short under the map is a bus error)
        f.write(new + bytes(max(0, data.stat().st_size - len(new))))
    with pytest.raises(DataFormatError, match=r"ds \[train\]: the dataset's files changed since it was read"):
        assert image.fetch() == before   # was: the new table's image, beside the start's caption
