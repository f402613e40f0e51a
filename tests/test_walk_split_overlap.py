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


def _warned(tmp_path, caplog, train: str | None, test: str | None, test_path: str = "d") -> str:
    def table(split: str | None) -> str:
        return "" if split is None else f'split = "{split}"\n'

    spec = tmp_path / "mine.toml"
    spec.write_text(f'kind = "classification"\n[data]\nformat = "hf_datasets"\n[data.train]\npath = "d"\n'
                    f'{table(train)}[data.test]\npath = "{test_path}"\n{table(test)}')
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_spec(spec)
    return caplog.text


@pytest.mark.parametrize(("train", "test", "named"), [(None, "train[80%:]", "['train[80%:]']"),
                                                      (None, "train", "['train']"),
                                                      ("train[:80%]", None, "['train[:80%]']"),
                                                      (None, "train[:2]+train[5:]", "['train[:2]', 'train[5:]']")])
def test_a_table_without_split_shares_rows_with_a_slice_of_the_same_files(tmp_path, caplog, train, test, named):
    text = _warned(tmp_path, caplog, train, test)
    assert SHARED + named[1:] in text


def test_without_split_on_both_is_the_same_rows_and_other_files_are_not_warned_of(tmp_path, caplog):
    assert SAME in _warned(tmp_path, caplog, None, None)
    assert "[data.test]" not in _warned(tmp_path, caplog, None, "train[80%:]", test_path="other")
    assert "[data.test]" not in _warned(tmp_path, caplog, "train[:80%]", "train[80%:]")


def test_shared_parts_of_no_split():
    assert shared_parts("train[80%:]", "") == ["train[80%:]"]
    assert shared_parts("", "train[:80%]+test") == ["train[:80%]", "test"]
    assert shared_parts("", "") == [""]
