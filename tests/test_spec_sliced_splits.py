"""The task spec's warning where val or test reads rows that train reads, for ``datasets``' split slices
(``split = "train[:90%]"``): the parts were compared as whole strings, so train ``train[:90%]`` beside val ``train``
(every row of it) or ``train[80%:]`` (rows 80-90% in both) trained on the scored rows with no warning."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.split_overlap import length_decides, shared_on, shared_parts
from mtl_lora_vl.tasks.spec import load_spec

SHARED = "[data.test] reads rows that [data.train] reads too (the same files; the split(s) ["
SAME = "[data.test] reads the same rows as [data.train]"


def _warned(tmp_path, caplog, train: str, test: str) -> str:
    spec = tmp_path / "mine.toml"
    spec.write_text(f'kind = "vqa"\n[data]\nformat = "hf_datasets"\npath = "d"\n[data.train]\nsplit = "{train}"\n'
                    f'[data.test]\nsplit = "{test}"\n')
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_spec(spec)
    return caplog.text


@pytest.mark.parametrize(("train", "test"), [("train[:90%]", "train"), ("train[:90%]", "train[80%:]"),
                                             ("train[:1000]", "train[999:1100]"), ("train", "test+train[:10]"),
                                             ("train[10:20]+val", "train[:11]"), ("train[:90%]", "train[89%:]")])
def test_slices_sharing_rows_with_train_are_warned_of(tmp_path, caplog, train, test):
    assert SHARED in _warned(tmp_path, caplog, train, test)


@pytest.mark.parametrize(("train", "test"), [("train[:90%]", "train[90%:]"), ("train[:1000]", "train[1000:]"),
                                             ("train[:90%]", "test"), ("train[10:20]", "train[:10]+test")])
def test_slices_of_other_rows_are_not_warned_of(tmp_path, caplog, train, test):
    assert "[data.test]" not in _warned(tmp_path, caplog, train, test)


def test_the_same_slices_read_the_same_rows(tmp_path, caplog):
    assert SAME in _warned(tmp_path, caplog, "train[:10%]+test", "test + train[:10%]")


def test_what_the_names_alone_cannot_tell_is_not_claimed():
    """Rows against percents, or a slice counted from the end, depend on the split's length."""
    assert shared_parts("train[:90%]", "train[-100:]") == []
    assert shared_parts("train[:90%]", "train[:10]") == []
    assert shared_parts("train[:10]+test", "train[5:]+test") == ["train[:10]", "test"]
    assert shared_parts("train[:]", "train[5:6]") == ["train[:]"]


# Percents rounded two ways: a bound falls on other rows in each, so slices that meet at one percent share rows
# (the overlap check compared the percents alone and said train[:50%] and train[50%:](pct1_dropremainder) share none);
# whether they do depends on the split's length, so they are decided once it is read (LengthPair.warning, which
# TaskSpec.load_split calls on the lengths the read counted its slices on; tests/test_split_overlap_lengths.py reads
# them), not at load: train[:50%](pct1_dropremainder) beside train[40%:50%] share rows 80-99 of 200, none of 150.
ROUNDED_APART = [("train[:50%]", "train[50%:](pct1_dropremainder)", 150),   # (rows 50 to 74)
                 ("train[50%:](pct1_dropremainder)", "train[:50%]", 150),
                 ("train[:50%]", "train[60%:](pct1_dropremainder)", 199),   # (rows 60 to 99)
                 # (no row in common on a split shorter than 181 rows: 8% to 13% of 181 is rows 14 to 23)
                 ("train[8%:13%]", "train[23%:29%](pct1_dropremainder)", 181),
                 ("train[:50%](pct1_dropremainder)", "train[40%:]", 100)]   # (rows 40 to 49)


def _spec(tmp_path, train: str, test: str):
    spec = tmp_path / "mine.toml"
    spec.write_text(f'kind = "vqa"\n[data]\nformat = "hf_datasets"\npath = "d"\n[data.train]\nsplit = "{train}"\n'
                    f'[data.test]\nsplit = "{test}"\n')
    return load_spec(spec)


@pytest.mark.parametrize(("train", "test", "n"), ROUNDED_APART)
def test_slices_rounded_two_ways_sharing_rows_are_warned_of_once_read(tmp_path, caplog, train, test, n):
    assert "[data.test]" not in _warned(tmp_path, caplog, train, test)   # (at load the length is not known)
    warning = _spec(tmp_path, train, test).data.length_pairs["test"].warning({"train": n})
    assert warning is not None and f"{SHARED}'{test}']" in warning


@pytest.mark.parametrize(("train", "test"), [("train[:50%](pct1_dropremainder)", "train[50%:]"),
                                             ("train[:50%](closest)", "train[50%:]"),
                                             ("train[:50%](pct1_dropremainder)", "train[50%:](pct1_dropremainder)"),
                                             ("train[50%:50%]", "train[:60%](pct1_dropremainder)")])   # (empty)
def test_slices_rounded_so_that_they_never_meet_are_not_warned_of(tmp_path, caplog, train, test):
    assert "[data.test]" not in _warned(tmp_path, caplog, train, test)
    pair = _spec(tmp_path, train, test).data.length_pairs.get("test")
    assert pair is None or all(pair.warning({"train": n}) is None for n in (10, *range(100, 300)))


@pytest.mark.parametrize(("one", "other", "n"), ROUNDED_APART)
def test_the_slices_warned_of_share_rows_as_datasets_reads_them(one, other, n):
    datasets = pytest.importorskip("datasets")

    def rows(split: str) -> set[int]:
        chosen = datasets.ReadInstruction.from_spec(split).to_absolute({"train": n})[0]
        return set(range(chosen.from_, chosen.to))

    assert rows(one) & rows(other)
    assert shared_parts(one, other) == [] and length_decides(one, other)
    assert shared_on(one, other, {"train": n}) == [one]


# One end a percent makes both ends percents, as datasets reads them (train[10:50%] is train[10%:50%]): such a part
# was taken for rows against percents, told by the length alone, and train[:30%] beside train[10:50%] was unwarned.
@pytest.mark.parametrize(("train", "test"), [("train[:30%]", "train[10:50%]"), ("train[10%:50]", "train[40%:]"),
                                             ("train[:30%](pct1_dropremainder)", "train[20:40%](pct1_dropremainder)")])
def test_a_slice_with_one_end_a_percent_is_read_as_percents(tmp_path, caplog, train, test):
    datasets = pytest.importorskip("datasets")

    def rows(split: str) -> set[int]:
        chosen = datasets.ReadInstruction.from_spec(split).to_absolute({"train": 200})[0]
        return set(range(chosen.from_, chosen.to))

    assert rows(train) & rows(test)
    assert SHARED in _warned(tmp_path, caplog, train, test)
    assert "[data.test]" not in _warned(tmp_path, caplog, "train[:10%]", "train[10:50%]")


def test_slice_ends_are_numbers_as_datasets_reads_them(tmp_path, caplog):
    """datasets reads ``1_000`` as 1000 (train[:1_000] beside train[999:] was taken for two splits' names, unwarned);
    an end it cannot read (``train[-:5]``) crashed the spec's load with int()'s bare message, before the reader's
    refusal that names the split and the syntax."""
    datasets = pytest.importorskip("datasets")
    assert datasets.ReadInstruction.from_spec("train[:1_000]").to_absolute({"train": 2000})[0].to == 1000
    assert SHARED in _warned(tmp_path, caplog, "train[:1_000]", "train[999:]")
    assert "[data.test]" not in _warned(tmp_path, caplog, "train[:1_000]", "train[1000:]")
    assert "[data.test]" not in _warned(tmp_path, caplog, "train[-:5]", "train[:5]")
    assert shared_parts("train[1__0:]", "train[:5]") == []
