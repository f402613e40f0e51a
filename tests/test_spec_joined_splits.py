"""The task spec's warning where val or test reads rows that train reads: a split joined with ``+`` (``datasets``'
syntax, read by the hf_datasets format) was compared as a whole name, so train ``split = "train+test"`` beside test
``split = "test"`` trained on the scored rows with no warning."""

from __future__ import annotations

import pytest

from mtl_lora_vl.tasks.spec import load_spec

SAME = "[data.test] reads the same rows as [data.train]"
SHARED = "[data.test] reads rows that [data.train] reads too (the same files; the split(s) ['test']"


def _warned(tmp_path, caplog, train: str, test: str, path: str = "d") -> str:
    spec = tmp_path / "mine.toml"
    spec.write_text(f'kind = "vqa"\n[data]\nformat = "hf_datasets"\n[data.train]\npath = "d"\nsplit = "{train}"\n'
                    f'[data.test]\npath = "{path}"\nsplit = "{test}"\n')
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_spec(spec)
    return caplog.text


@pytest.mark.parametrize(("train", "test"), [("train+test", "test"), ("train + test", "test"),
                                             ("train", "test+train"), ("train+val+test", "val+test")])
def test_a_joined_split_sharing_a_part_with_train_is_warned_of(tmp_path, caplog, train, test):
    text = _warned(tmp_path, caplog, train, test)
    assert "[data.test] reads rows that [data.train] reads too (the same files; the split(s) [" in text
    assert ("'test'" if test != "test+train" else "'train'") in text


def test_joined_splits_naming_other_parts_or_other_files_are_not_warned_of(tmp_path, caplog):
    assert "[data.test]" not in _warned(tmp_path, caplog, "train+train_extra", "test")
    assert "[data.test]" not in _warned(tmp_path, caplog, "train+test", "test", path="other")   # (another folder)
    assert SAME in _warned(tmp_path, caplog, "train+test", "test + train")   # (the same splits, in another order)
    assert SAME in _warned(tmp_path, caplog, "train", "train")
    assert SHARED in _warned(tmp_path, caplog, "train+test", "test")
