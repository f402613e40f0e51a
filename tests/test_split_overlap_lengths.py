"""The train / val overlap warning where only the split's length tells whether two slices share rows: a bound
counted from the end (``train[:90%]`` beside ``train[-10%:]`` share row 13 of 15) or rows beside percents
(``train[:5]`` beside ``train[40%:]`` share row 4 of 10). The names alone cannot tell, so no warning came; once a
slice is read its split's length is known, and the pair is decided then as ``datasets`` counts the rows."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.hf_slices import slice_rows
from mtl_lora_vl.data.split_overlap import length_decides, shared_on, shared_parts
from mtl_lora_vl.tasks.spec import load_spec

SHARED = "[data.test] reads rows that [data.train] reads too (the same files; the split(s) ["


@pytest.fixture
def folder(tmp_path):
    """``folder(n, saved)``: a data root whose ``d`` holds one split, train, of ``n`` rows: parquet files (two
    shards), or a ``save_to_disk`` folder."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    def make(n: int, saved: bool = False):
        root = tmp_path / f"{n}{'s' if saved else 'p'}"
        (root / "d").mkdir(parents=True)
        Image.new("RGB", (8, 8), "red").save(root / "a.png")
        rows = {"image": ["a.png"] * n, "label": ["cat", "dog"] * (n // 2) + ["cat"] * (n % 2)}
        if saved:
            datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(root / "d"))
        else:
            for i, part in enumerate((slice(0, n // 2), slice(n // 2, n))):
                pq.write_table(pa.table({k: v[part] for k, v in rows.items()}),
                               root / "d" / f"train-0000{i}-of-00002.parquet")
        return root
    return make


def _spec(root, train: str, test: str):
    spec = root / "mine.toml"
    spec.write_text(f'kind = "classification"\n[data]\nformat = "hf_datasets"\npath = "d"\ncache_dir = "cache"\n'
                    f'[data.train]\nsplit = "{train}"\n[data.test]\nsplit = "{test}"\n')
    return load_spec(spec)


def _read(root, caplog, train: str, test: str, first: str = "train") -> str:
    """The warnings of loading the spec (none may name [data.test]) and reading its two splits, ``first`` first."""
    caplog.clear()
    with caplog.at_level("WARNING"):
        spec = _spec(root, train, test)
        assert "[data.test]" not in caplog.text
        for split in (first, "test" if first == "train" else "train"):
            spec.load_split(split, root)
    return caplog.text


@pytest.mark.parametrize(("n", "train", "test"), [(10, "train[-3:]", "train[-6:-2]"),
                                                  (15, "train[:90%]", "train[-10%:]"),
                                                  (10, "train[:5]", "train[40%:]"),
                                                  (10, "train[-40%:]", "train[:7]")])
@pytest.mark.parametrize("saved", [False, True])
def test_slices_sharing_rows_on_the_split_read_are_warned_of_once_read(folder, caplog, n, train, test, saved):
    text = _read(folder(n, saved), caplog, train, test)
    assert text.count(SHARED) == 1
    assert f"{SHARED}'{test.split('+')[0]}']" in text


@pytest.mark.parametrize(("n", "train", "test"), [(10, "train[:90%]", "train[-10%:]"),
                                                  (20, "train[:5]", "train[40%:]"),
                                                  (10, "train[:-3]", "train[-3:]")])
def test_slices_sharing_no_row_on_the_split_read_are_not_warned_of(folder, caplog, n, train, test):
    assert "[data.test]" not in _read(folder(n), caplog, train, test)


def test_an_eval_only_read_is_warned_of_and_a_train_read_alone_is_not(folder, caplog):
    root = folder(15)
    assert "[data.test]" in _read(root, caplog, "train[:90%]", "train[-10%:]", first="test")
    caplog.clear()
    with caplog.at_level("WARNING"):
        _spec(root, "train[:90%]", "train[-10%:]").load_split("train", root)
    assert "[data.test]" not in caplog.text


# Percents rounded two ways (pct1_dropremainder beside the default, closest) were decided at load by a scan of
# lengths 100-10,299 ("share rows on some length"): train[:50%](pct1_dropremainder) beside train[40%:50%] was warned of
# on 150 rows, where they read rows 0-49 and 60-74. They are decided on the length read, as the pairs above are.
@pytest.mark.parametrize("saved", [False, True])
def test_slices_rounded_two_ways_are_decided_on_the_length_read(folder, caplog, saved):
    root = folder(150, saved)
    assert "[data.test]" not in _read(root, caplog, "train[:50%](pct1_dropremainder)", "train[40%:50%]")
    text = _read(root, caplog, "train[:50%]", "train[50%:](pct1_dropremainder)")   # (rows 50 to 74 in both)
    assert text.count(SHARED) == 1 and f"{SHARED}'train[50%:](pct1_dropremainder)']" in text


def test_slices_rounded_two_ways_share_rows_as_datasets_reads_them():
    """A grid of percent slices rounded two ways, on lengths 100-299: shared_on claims exactly the pairs that
    ``datasets`` reads a row of in both, and the names claim none of them."""
    pytest.importorskip("datasets")
    ends = [0, 10, 40, 50, 60, 99, 100]
    slices = [f"train[{f'{a}%' if a else ''}:{f'{b}%' if b < 100 else ''}]"
              for a in ends for b in ends if 0 < b - a < 100]   # (train[:10%] ... train[99%:]; not train[:])
    pct1 = [f"{p}(pct1_dropremainder)" for p in slices]
    shared = apart = 0
    for n in range(100, 300, 7):
        for one in slices:
            for other in pct1:
                truth = bool(_rows_of(one, {"train": n}) & _rows_of(other, {"train": n}))
                assert shared_parts(one, other) == [] and length_decides(one, other)
                assert shared_on(one, other, {"train": n}) == ([one] if truth else []), (one, other, n)
                assert shared_on(other, one, {"train": n}) == ([other] if truth else []), (other, one, n)
                shared, apart = shared + truth, apart + (not truth)
    assert shared > 100 and apart > 100   # (both verdicts were compared)


def test_shared_on_counts_as_datasets_does():
    assert length_decides("train[-100:-40]", "train[-50:]")
    assert shared_on("train[-100:-40]", "train[-50:]", {"train": 100}) == ["train[-100:-40]"]
    assert shared_on("train[-10%:]", "train[:90%]", {"train": 15}) == ["train[-10%:]"]
    assert shared_on("train[-10%:]", "train[:90%]", {"train": 10}) == []
    assert shared_on("train[-10%:]", "train[:90%]", {}) == []   # (a length not told: not claimed)
    assert shared_on("train[-5:]+test[:3]", "test[:-1]+train", {"train": 10}) == ["train[-5:]"]
    assert shared_on("train[-5:]+test[:3]", "test[:-1]+train", {"train": 10, "test": 4}) == ["train[-5:]", "test[:3]"]
    assert not length_decides("train[:5]", "train[5:]")
    assert not length_decides("train[-5:]", "test[-5:]")


def _rows_of(split: str, lengths: dict[str, int]) -> set[tuple[str, int]]:
    """The rows ``datasets``' ``ReadInstruction`` reads of ``split`` on splits of ``lengths`` rows."""
    from datasets import ReadInstruction

    chosen = ReadInstruction.from_spec(split).to_absolute(lengths)
    return {(c.splitname, i) for c in chosen for i in range(c.from_, c.to)}


def test_joined_slices_counted_from_the_end_share_rows_as_datasets_reads_them():
    """Every pair of joined splits (``train[-3:]+test[:2]``) of a grid of slices, on splits of a few lengths: the
    names' verdict (shared_parts) claims only rows ``datasets`` reads in both, and where the names leave it to the
    length (length_decides) shared_on claims exactly them."""
    pytest.importorskip("datasets")
    ends = ["", "2", "-3", "7", "-40%", "60%"]
    singles = ["train", *(f"{n}[{a}:{b}]" for n in ("train", "test") for a in ends for b in ends)]
    joined = [f"{a}+{b}" for a in singles[:13] for b in singles[13:] if "test" in b][::9]
    checked = 0
    for lengths in ({"train": 10, "test": 6}, {"train": 15, "test": 20}):
        for one in joined + singles[1::4]:
            for other in singles + joined[::4]:
                try:   # (a split the reader refuses: a slice of no row, rows read twice)
                    slice_rows(one, lengths, ""), slice_rows(other, lengths, "")
                except ValueError:
                    continue
                mine, theirs = _rows_of(one, lengths), _rows_of(other, lengths)
                told = shared_parts(one, other)
                truth = {p for p in one.split("+") if _rows_of(p, lengths) & theirs}
                assert set(told) <= truth, (one, other, lengths)
                if not told:
                    assert (set(shared_on(one, other, lengths)) if length_decides(one, other) else set()) == truth, \
                        (one, other, lengths)
                checked += bool(mine & theirs)
    assert checked > 50   # (pairs that do share rows were compared, not only refused ones)
