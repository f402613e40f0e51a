"""A user's walk through the train / val overlap warning: a ``[data.train]`` table that gives no ``split`` reads the
one split its files hold, whole (a parquet folder of ``train-*.parquet`` shards, a ``save_to_disk`` folder of one
split), so a val or test table slicing that split (``split = "train[80%:]"``) is scored on training rows. The names
were compared as they are written (``""`` against ``"train"``), and no warning came."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.split_overlap import shared_parts
from mtl_lora_vl.tasks.spec import load_spec

SHARED = "[data.test] reads rows that [data.train] reads too (the same files; the split(s) ["
SAME = "[data.test] reads the same rows as [data.train]"


def _spec(tmp_path, train: str | None, test: str | None, test_path: str = "d"):
    def table(split: str | None) -> str:
        return "" if split is None else f'split = "{split}"\n'

    spec = tmp_path / "mine.toml"
    spec.write_text(f'kind = "classification"\n[data]\nformat = "hf_datasets"\ncache_dir = "cache"\n'
                    f'[data.train]\npath = "d"\n{table(train)}[data.test]\npath = "{test_path}"\n{table(test)}')
    return load_spec(spec)


def _warned(tmp_path, caplog, train: str | None, test: str | None, test_path: str = "d") -> str:
    caplog.clear()
    with caplog.at_level("WARNING"):
        _spec(tmp_path, train, test, test_path)
    return caplog.text


@pytest.fixture
def root(tmp_path):
    """A parquet folder holding one split, train: 10 rows."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"image": ["a.png"] * 10, "label": ["cat", "dog"] * 5}),
                   tmp_path / "d" / "train-00000-of-00001.parquet")
    return tmp_path


# A table without split beside one naming a split is warned of once both are read (the files hold the split named):
# warned at the spec's load, the warning came before the reader refused a split the files do not hold.
@pytest.mark.parametrize(("train", "test", "named"), [(None, "train[80%:]", "['train[80%:]']"),
                                                      (None, "train", "['train']"),
                                                      ("train[:80%]", None, "['train[:80%]']"),
                                                      (None, "train[:2]+train[5:]", "['train[:2]', 'train[5:]']")])
def test_a_table_without_split_shares_rows_with_a_slice_of_the_same_files(root, caplog, train, test, named):
    caplog.clear()
    with caplog.at_level("WARNING"):
        spec = _spec(root, train, test)
        assert "[data.test]" not in caplog.text
        spec.load_split("train", root)
        spec.load_split("test", root)
    assert caplog.text.count(SHARED + named[1:]) == 1


@pytest.mark.parametrize(("train", "test"), [(None, "test"), (None, "validation[:50%]")])
def test_a_split_the_files_do_not_hold_is_refused_unwarned(root, caplog, train, test):
    caplog.clear()
    with caplog.at_level("WARNING"):
        spec = _spec(root, train, test)
        spec.load_split("train", root)
        with pytest.raises(FileNotFoundError, match="split"):
            spec.load_split("test", root)
    assert "[data.test]" not in caplog.text


def test_without_split_on_both_is_the_same_rows_and_other_files_are_not_warned_of(tmp_path, caplog):
    assert SAME in _warned(tmp_path, caplog, None, None)
    assert "[data.test]" not in _warned(tmp_path, caplog, None, "train[80%:]", test_path="other")
    assert "[data.test]" not in _warned(tmp_path, caplog, "train[:80%]", "train[80%:]")


def test_shared_parts_of_no_split():
    assert shared_parts("train[80%:]", "") == ["train[80%:]"]
    assert shared_parts("", "train[:80%]+test") == ["train[:80%]", "test"]
    assert shared_parts("", "") == [""]
