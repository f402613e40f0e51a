"""``datasets``' split slices (``split = "train[:10%]"``, ``"train[100:200]"``, ``"train[:1000]+test[:10]"``) were
refused as "no parquet file of split 'train[:10%]'"; they are read as ``load_dataset(split=...)`` reads them
(``datasets.ReadInstruction``: percents rounded to the closest row, negative indices from the end), from parquet
folders and ``save_to_disk`` folders, and each image is read from its row when the table is opened again (as a
loader worker opens it)."""

from __future__ import annotations

import io
import pickle

import pytest
from PIL import Image

from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _table(split: str, n: int):
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", (16 + i, 12), (200, 30, 30)) for i in range(n)],
                                       "caption": [f"{split} {i}" for i in range(n)]})


def _rows(root, path, split, cache):
    """(caption, the width of the image read, after pickling: as a loader worker reads it) per example."""
    exs = read_split("hf_datasets", root, path=path, split=split, cache_dir=cache, verify=False).examples
    return [(e.captions[0], Image.open(io.BytesIO(pickle.loads(pickle.dumps(e.image)).fetch())).width - 16)
            for e in exs]


@pytest.fixture
def parquet(tmp_path):
    root = tmp_path / "root"
    (root / "pq").mkdir(parents=True)
    _table("train", 10).to_parquet(str(root / "pq" / "train-0.parquet"))
    _table("test", 5).to_parquet(str(root / "pq" / "test-0.parquet"))
    return root


@pytest.mark.parametrize(("split", "want"), [
    ("train[:30%]", [("train", i) for i in range(3)]),
    ("train[-2:]", [("train", 8), ("train", 9)]),
    ("train[2:4] + test[:1]", [("train", 2), ("train", 3), ("test", 0)]),
    ("test[-1:]+train[:1]", [("test", 4), ("train", 0)]),
    ("train[:50%]+train[50%:]", [("train", i) for i in range(10)]),
])
def test_a_sliced_split_of_parquet_files_reads_the_rows_datasets_reads(tmp_path, parquet, split, want):
    cache = str(tmp_path / "cache")
    got = _rows(parquet, "pq", split, cache)   # (was: refused, "no parquet file of split 'train[:30%]'")
    assert [(c.split()[0], int(c.split()[1])) for c, _ in got] == want
    assert all(int(c.split()[1]) == width for c, width in got)   # each image its row's
    files = {s: [str(parquet / "pq" / f"{s}-0.parquet")] for s in ("train", "test")}
    theirs = datasets.load_dataset("parquet", data_files=files, split=split.replace(" ", ""), cache_dir=cache)
    assert [c for c, _ in got] == theirs["caption"]


def test_percent_rounding_is_datasets_closest(tmp_path, parquet):
    for pct, n in (("15%", 2), ("14%", 1), ("-25%", 8)):   # 1.5 rows: 2; 1.4: 1; the first 75% of 10: 7.5, 8
        assert len(_rows(parquet, "pq", f"train[:{pct}]", str(tmp_path / "cache"))) == n


def test_a_sliced_split_of_a_saved_dataset_dict_reads_its_rows(tmp_path):
    root = tmp_path / "root"
    datasets.DatasetDict({"train": _table("train", 10), "test": _table("test", 5)}).save_to_disk(str(root / "saved"))
    assert _rows(root, "saved", "train[-3:]", None) == [("train 7", 7), ("train 8", 8), ("train 9", 9)]
    assert _rows(root, "saved", "test[20%:40%]", None) == [("test 1", 1)]
    with pytest.raises(ValueError, match=r"split 'train\[:2\]\+test\[:2\]' joins the splits \['train', 'test'\] with "
                                         r"'\+', which reads a folder of parquet files"):
        read_split("hf_datasets", root, path="saved", split="train[:2]+test[:2]")


@pytest.mark.parametrize(("split", "said"), [
    ("train[:5]+train[3:6]", "chooses some rows twice (its slices overlap)"),
    ("train[5:5]", "chooses no row of split 'train' (10 rows) in one of its slices"),
    ("train[:10", "is not datasets' split syntax"),
    ("train[:10%](nearest)", "is not datasets' split syntax"),
])
def test_a_slice_of_no_rows_or_rows_twice_or_bad_syntax_is_refused(tmp_path, parquet, split, said):
    with pytest.raises(ValueError, match=r"split '.*' " + said.replace("(", r"\(").replace(")", r"\)")):
        read_split("hf_datasets", parquet, path="pq", split=split, cache_dir=str(tmp_path / "cache"))
