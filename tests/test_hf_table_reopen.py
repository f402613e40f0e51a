"""A loader worker reopens an hf_datasets table by its path: a split folder saved again since the start (other
images at the same row numbers) was read silently, pairing the start's captions with the new rows' images."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.common import DataFormatError  # noqa: E402
from mtl_lora_vl.data.hf_table import row_shards  # noqa: E402
from mtl_lora_vl.data.readers import read_split  # noqa: E402

FEATURES = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})


def _captions(n: int, shade: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 12), (25 * i, shade, 30)) for i in range(n)],
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


def _shard_rows(folder) -> list[tuple[object, range]]:
    """Each Arrow file of a saved dataset folder with the rows it holds, counted from the files themselves."""
    import json

    import pyarrow as pa

    out, start = [], 0
    for entry in json.loads((folder / "state.json").read_text())["_data_files"]:
        n = pa.ipc.open_stream(pa.memory_map(str(folder / entry["filename"]))).read_all().num_rows
        out.append((folder / entry["filename"], range(start, start + n)))
        start += n
    return out


@pytest.mark.parametrize("saved", ["split", "lone"])
def test_a_read_stats_the_shard_holding_its_row_alone(tmp_path, saved):
    # a read stat'ed every file of the table twice (40 shards of a COCO-sized split: ~4x the cost of stat'ing 10);
    # now the one shard its row is read from: a change to it is refused, one to another shard is refused when that
    # shard's rows are read
    if saved == "split":   # 10 rows in 4 shards of 3, 3, 2, 2 rows
        splits = datasets.DatasetDict({"train": _captions(10, 90), "test": _captions(2, 90)})
        splits.save_to_disk(tmp_path / "ds", num_shards={"train": 4, "test": 1})
        folder, split = tmp_path / "ds" / "train", "train"
    else:
        _captions(10, 90).save_to_disk(tmp_path / "ds", num_shards=4)
        folder, split = tmp_path / "ds", None
    shards = _shard_rows(folder)
    assert [len(rows) for _, rows in shards] == [3, 3, 2, 2]
    examples = pickle.loads(pickle.dumps(read_split("hf_datasets", tmp_path, path="ds", split=split))).examples
    assert [e.image.row for e in examples] == list(range(10))   # (ten images: none shared by two rows)
    first = [e.image.fetch() for e in examples]   # as a loader worker reads them: the table opened in this process
    for shard, rows in shards:
        st = shard.stat()
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # as if written again
        for i, e in enumerate(examples):
            if i in rows:
                with pytest.raises(DataFormatError, match="the dataset's files changed since it was read"):
                    e.image.fetch()
            else:
                assert e.image.fetch() == first[i]   # was: refused, for a change to another shard
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [e.image.fetch() for e in examples] == first


def test_a_shard_rewritten_in_place_is_refused_and_the_others_read_as_at_the_start(tmp_path, monkeypatch):
    _captions(10, 90).save_to_disk(tmp_path / "ds", num_shards=4)
    _captions(10, 200).save_to_disk(tmp_path / "new", num_shards=4)
    examples = read_split("hf_datasets", tmp_path, path="ds").examples
    first = [e.image.fetch() for e in examples]
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: (stats.append(p), real_stat(p, *a, **k))[1])
    assert examples[4].image.fetch() == first[4]
    assert [p for p in stats if str(tmp_path) in str(p)] == [str(tmp_path / "ds" / "data-00001-of-00004.arrow")] * 2
    monkeypatch.undo()
    data = tmp_path / "ds" / "data-00001-of-00004.arrow"   # rows 3, 4, 5
    new = (tmp_path / "new" / "data-00001-of-00004.arrow").read_bytes()
    with open(data, "r+b") as f:   # (as long as before, at least: a file cut short under the map is a bus error)
        f.write(new + bytes(max(0, data.stat().st_size - len(new))))
    for i in (3, 5):
        with pytest.raises(DataFormatError, match=r"ds: the dataset's files changed since it was read"):
            examples[i].image.fetch()
    assert [examples[i].image.fetch() for i in (0, 2, 6, 9)] == [first[i] for i in (0, 2, 6, 9)]


def test_rows_whose_files_are_not_known_check_every_file(tmp_path, monkeypatch):
    _captions(10, 90).save_to_disk(tmp_path / "ds", num_shards=4)
    mapped = datasets.load_from_disk(str(tmp_path / "ds"))
    assert [end for end, _ in row_shards(mapped)] == [3, 6, 8, 10]
    assert row_shards(mapped.select([5, 0])) is None   # rows numbered through an indices mapping
    monkeypatch.setattr(datasets.config, "IN_MEMORY_MAX_SIZE", 10**9)   # load_from_disk keeps a small table in memory
    assert row_shards(datasets.load_from_disk(str(tmp_path / "ds"))) is None
    examples = read_split("hf_datasets", tmp_path, path="ds").examples
    first = examples[0].image.fetch()
    (tmp_path / "ds" / "state.json").write_text((tmp_path / "ds" / "state.json").read_text() + " ")
    with pytest.raises(DataFormatError, match="the dataset's files changed since it was read"):
        assert examples[0].image.fetch() == first   # every file stat'ed, as before
