"""Row cells as a JSONL / CSV (or a table's) row gives them: float-written labels, NaN ids, array cells."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl_lora_vl.data import row_keys
from mtl_lora_vl.data import rows as rows_module
from mtl_lora_vl.data.common import DataFormatError, ImageChecker
from mtl_lora_vl.data.readers import read_split
from mtl_lora_vl.data.rows import examples_from_rows


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    Image.new("RGB", (8, 8), color).save(path)
    return path.name


def test_csv_labels_written_as_floats_are_refused_as_jsonl_refuses_them(tmp_path):
    """pandas writes an integer label column holding a blank as floats: a CSV's '1.0', '0.0', '10.0', '2.0' became
    the classes ['0.0', '1.0', '10.0', '2.0'] (sorted as text: label 10 read as class 2), where JSONL's 1.0 is
    refused."""
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (10, 200, 10))
    (tmp_path / "f.csv").write_text(f"image,label\n{a},1.0\n{b},0.0\n{a},10.0\n{b},2.0\n")
    (tmp_path / "f.jsonl").write_text(f'{{"image": "{a}", "label": 1.0}}\n{{"image": "{b}", "label": 0.0}}\n')
    with pytest.raises(DataFormatError, match=r"f\.csv:2: label '1\.0' is a whole number written as a float.*"
                                              r"write 1, not 1\.0"):
        read_split("csv", tmp_path, file="f.csv")
    with pytest.raises(DataFormatError, match=r"label 1\.0 is a float.*write 1, not 1\.0"):
        read_split("jsonl", tmp_path, file="f.jsonl")
    # read as names where they are: the class_names given, or beside other names, or not whole numbers
    s = read_split("csv", tmp_path, file="f.csv", class_names=["0.0", "1.0", "2.0", "10.0"])
    assert [e.label for e in s.examples] == [1, 0, 3, 2]
    (tmp_path / "g.csv").write_text(f"image,label\n{a},1.0\n{b},1.5\n{a},cat\n")
    assert read_split("csv", tmp_path, file="g.csv").class_names == ["1.0", "1.5", "cat"]
    (tmp_path / "i.csv").write_text(f"image,label\n{a},1\n{b},0\n")   # integers: indices, as before
    assert [e.label for e in read_split("csv", tmp_path, file="i.csv").examples] == [1, 0]


def test_a_statements_float_written_label_says_to_write_the_integer(tmp_path):
    """A statement's '1.0' was refused (as JSONL's 1.0 is) without saying what to write."""
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (10, 200, 10))
    (tmp_path / "p.csv").write_text(f"images,statement,label\n{a}|{b},two images,1.0\n")
    with pytest.raises(DataFormatError, match=r"p\.csv:2: label '1\.0' of a statement .* must be a truth value.*"
                                              r"write 1, not '1\.0'"):
        read_split("csv", tmp_path, file="p.csv")
    (tmp_path / "p.jsonl").write_text(json.dumps({"images": [a, b], "statement": "two images", "label": 0.0}) + "\n")
    with pytest.raises(DataFormatError, match=r"write 0, not 0\.0"):
        read_split("jsonl", tmp_path, file="p.jsonl")


def _from_rows(root: Path, rows: list[dict]):
    return examples_from_rows(list(enumerate(rows, 1)), at=lambda n: f"rows:{n}", source="rows",
                              image_of=lambda r: root / r["image"], check=ImageChecker(True, False),
                              class_names=None, one_per_image=False)


def test_a_row_repeated_whole_with_array_cells_is_refused(tmp_path):
    """The repeated-row check keyed an unhashable cell by its identity: rows of a pandas table read from parquet
    (DataFrame.to_dict("records"): list columns are numpy arrays) joined twice held two equal arrays, "different",
    and every question was read, weighed and scored twice; so was a numpy float32 NaN cell (no float: NaN != NaN)."""
    a = _png(tmp_path / "a.png")
    for cell in (np.array(["yes", "yes", "no"]), np.float32("nan")):
        row = {"image": a, "question": "is it red?", "answers": ["yes"], "question_id": 7}
        with pytest.raises(DataFormatError, match=r"rows:2: question_id 7 is given to another row at rows:1, and the "
                                                  r"row repeats it whole"):
            _from_rows(tmp_path, [{**row, "extra": cell}, {**row, "extra": cell.copy()}])
    row = {"image": a, "question": "is it red?", "answers": ["yes"], "question_id": 7}   # differing arrays: two
    s = _from_rows(tmp_path, [{**row, "extra": np.array([1, 2])}, {**row, "extra": np.array([1, 3])}])
    assert len(s.examples) == 2


def test_a_nan_image_id_is_no_id(tmp_path):
    """A pandas table's blank image_id cell is NaN: read as the id 'nan', rows without an id were all one image's,
    refused as "image_id 'nan' was given to another image" (or, of one image, grouped under the id 'nan')."""
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (10, 200, 10))
    nan = float("nan")
    s = _from_rows(tmp_path, [{"image": a, "caption": "red", "image_id": nan},
                              {"image": b, "caption": "green", "image_id": nan},
                              {"image": b, "caption": "a green square", "image_id": "g"}])
    assert [(e.image_id, e.text) for e in s.examples] == [("a.png", "red"), ("b.png", "green"),
                                                        ("b.png", "a green square")]
    s = _from_rows(tmp_path, [{"images": [a, b], "statement": "two", "label": 1, "image_id": nan},
                              {"images": [b, a], "statement": "two", "label": 0, "image_id": np.float64("nan")}])
    assert [e.image_id for e in s.examples] == ["a.png|b.png", "b.png|a.png"]


def test_a_vqa_csvs_float_label_column_is_not_refused_as_class_labels(tmp_path):
    """The float-label refusal took every row's ``label``: a VQA CSV carrying a label column of its own (a 0/1 flag
    that pandas wrote as '1.0' / '0.0'), read before as its 2 questions, was refused as if its labels were class
    indices. Only classification rows' labels are class labels."""
    a = _png(tmp_path / "a.png")
    (tmp_path / "v.csv").write_text(f"image,question,answers,label\n{a},is it red?,yes,1.0\n{a},is it blue?,no,0.0\n")
    s = read_split("csv", tmp_path, file="v.csv")
    assert [(e.text, e.answers) for e in s.examples] == [("is it red?", ("yes",)), ("is it blue?", ("no",))]


def test_an_array_cell_is_compared_at_once_not_value_by_value(tmp_path, monkeypatch):
    """The repeated-row key took an array cell as the list of its values, each keyed on its own: a row with a
    768-float embedding took 775 key steps where a row with a number there takes 7 (10k such rows: 23x the
    check's time). A numpy array is now keyed by its bytes, in one step; equal arrays are still one row, and an array of
    Python objects (pandas' list of strings) is still compared by its values."""
    a = _png(tmp_path / "a.png")
    row = {"image": a, "question": "is it red?", "answers": ["yes"], "question_id": 7}
    key = row_keys.row_key
    steps: list[int] = []
    monkeypatch.setattr(row_keys, "row_key", lambda value: (steps.append(1), key(value))[1])

    def key_steps(cell: object) -> int:
        steps.clear()
        _from_rows(tmp_path, [{**row, "extra": cell}])
        return len(steps)

    assert key_steps(np.zeros(768, np.float32)) == key_steps(0.5)
    for cell in (np.full(768, np.nan, np.float32), np.array([["a", "b"]], dtype=object)):   # repeated: refused
        with pytest.raises(DataFormatError, match="repeats it whole"):
            _from_rows(tmp_path, [{**row, "extra": cell}, {**row, "extra": cell.copy()}])
    s = _from_rows(tmp_path, [{**row, "extra": np.zeros(2, np.int32)}, {**row, "extra": np.zeros(1, np.int64)}])
    assert len(s.examples) == 2   # same bytes, other values: two rows


def test_a_numpy_float32_nan_image_id_or_group_is_none(tmp_path):
    """5f46b2b took a float NaN image_id as no id, but numpy's float32 NaN is no float: two such rows of two images
    were still refused ("image_id 'nan' was given to another image"), and a float32 NaN group made every such
    statement one group 'nan'."""
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (10, 200, 10))
    nan = np.float32("nan")
    s = _from_rows(tmp_path, [{"image": a, "label": "red", "image_id": nan},
                              {"image": b, "label": "green", "image_id": nan}])
    assert [e.image_id for e in s.examples] == ["a.png", "b.png"]
    s = _from_rows(tmp_path, [{"images": [a, b], "statement": "two", "label": 1, "group": nan},
                              {"images": [b, a], "statement": "two", "label": 0, "group": nan}])
    assert [e.meta for e in s.examples] == [{}, {}]


def test_a_pandas_na_image_id_or_question_id_is_no_id(tmp_path):
    """A pandas nullable column's blank cell is pd.NA (string, Int64 dtypes): `examples_from_rows` raised
    "TypeError: boolean value of NA is ambiguous" on an image_id or question_id of pd.NA (a row read by itertuples or
    iloc), where NaN is read as no id."""
    pd = pytest.importorskip("pandas")
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (10, 200, 10))
    table = pd.DataFrame({"image": [a, b, b], "question": ["q1", "q2", "q3"], "answers": ["red", "green", "green"],
                          "image_id": pd.array([None, None, "g"], dtype="string"),
                          "question_id": pd.array([None, 7, None], dtype="Int64")})
    rows = [dict(zip(table.columns, r)) for r in table.itertuples(index=False)]   # (to_dict gives None)
    assert rows[0]["image_id"] is pd.NA and rows[0]["question_id"] is pd.NA
    s = _from_rows(tmp_path, rows)
    assert [e.image_id for e in s.examples] == ["a.png", "b.png", "g"]
    s = _from_rows(tmp_path, [{"images": [a, b], "statement": "two", "label": 1, "image_id": pd.NA, "group": pd.NA}])
    assert [(e.image_id, e.meta.get("group")) for e in s.examples] == [("a.png|b.png", None)]
    assert row_keys.no_id(pd.NA) and row_keys.no_id(pd.NaT) and not row_keys.no_id(np.array([1.0, 2.0]))
    with pytest.raises(DataFormatError, match=r"rows:2: question_id 7 is given to another row"):   # not np.int64(7)
        _from_rows(tmp_path, [rows[1], rows[1]])
    with pytest.raises(DataFormatError, match=r"question_id 'q7' is given to another row"):   # text keeps its quotes
        _from_rows(tmp_path, [{**rows[1], "question_id": np.str_("q7")}] * 2)


def test_one_image_named_in_nfc_and_nfd_has_one_id(tmp_path):
    """Rows without an image_id naming one image café.png, one in NFC and one in NFD (a file written on macOS), both
    resolve to the file but got two ids (the names as written): the image counted as two in anything keyed by id."""
    nfc, nfd = unicodedata.normalize("NFC", "café.png"), unicodedata.normalize("NFD", "café.png")
    _png(tmp_path / nfc)
    rows = [{"image": nfc, "question": "colour?", "answers": ["red"]},
            {"image": nfd, "question": "shape?", "answers": ["square"]},
            {"image": "./" + nfc, "question": "size?", "answers": ["small"]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                      encoding="utf-8")
    s = read_split("jsonl", tmp_path, file="q.jsonl")
    assert len({e.image for e in s.examples}) == 1
    assert [e.image_id for e in s.examples] == [nfc, nfc, nfc]


def _nan_with_bits(bits: int, dtype=np.float64):
    """A NaN of the given bit pattern: x86's default NaN (what inf - inf or 0 / 0 compute) has its sign bit set,
    numpy's np.nan has not; both are NaN, with other bytes."""
    return np.array([bits], np.uint64 if dtype == np.float64 else np.uint32).view(dtype)


def test_a_row_repeated_whole_with_signed_zeros_or_other_nans_is_one_row(tmp_path):
    """The key of a row repeated whole took a numpy scalar or array cell by its bytes: a row with 0.0 and its repeat
    with -0.0 (equal under ==), or with np.nan and a computed NaN (inf - inf: the sign bit set), were two rows, so a
    file joined to itself whose float column was written twice (one copy recomputed) read every question twice.
    Values equal under == are one key (a float32 0.5 and a float64 0.5 too), NaN is NaN whatever its bits; other
    values (float32 0.1 is not float64 0.1; a (2,) and a (1, 2) array) stay other rows."""
    a = _png(tmp_path / "a.png")
    row = {"image": a, "question": "is it red?", "answers": ["yes"], "question_id": 7}
    neg_nan = _nan_with_bits(0xFFF8000000000000)
    odd_nan32 = _nan_with_bits(0x7FC00001, np.float32)
    pairs = [(np.float64(0.0), np.float64(-0.0)), (np.float32(0.0), np.float32(-0.0)), (0.0, np.float64(-0.0)),
             (np.float64("nan"), neg_nan[0]), (np.float32("nan"), odd_nan32[0]),
             (np.array([0.0, 1.5]), np.array([-0.0, 1.5])), (np.array([np.nan, 1.0]), np.array([neg_nan[0], 1.0])),
             (np.array([np.nan], np.float32), odd_nan32),
             (np.array([complex(-0.0, np.nan)]), np.array([complex(0.0, -np.nan)])),
             (np.int64(7), 7), (np.array([0.5], np.float32), np.array([0.5])),
             (np.arange(3, dtype=np.int8), np.arange(3))]
    for first, second in pairs:
        assert row_keys.row_key(first) == row_keys.row_key(second), (first, second)
        with pytest.raises(DataFormatError, match="rows:2: question_id 7 is given to another row at rows:1, and the "
                                                  "row repeats it whole"):
            _from_rows(tmp_path, [{**row, "extra": first}, {**row, "extra": second}])
    for first, second in [(np.float64(0.0), np.float64(5e-324)), (np.array([0.0, np.nan]), np.array([np.nan, 0.0])),
                          (np.array([0.1], np.float32), np.array([0.1])), (np.array([1, 2]), np.array([[1, 2]]))]:
        assert row_keys.row_key(first) != row_keys.row_key(second), (first, second)
        assert len(_from_rows(tmp_path, [{**row, "extra": first}, {**row, "extra": second}]).examples) == 2


def test_integer_and_float_arrays_of_equal_values_are_one_row_key(tmp_path):
    """The scalars 1 and 1.0 are one key (1 == 1.0), but the arrays [1] and [1.0] were two: an integer array was
    keyed as int64 and a float one as float64, so a table joined to itself whose array column was read once as
    integers and once as floats (a pandas column with a blank becomes float) kept every repeated row. Arrays follow
    the scalars now: values equal under Python's exact == are one key (floats holding whole numbers as integers,
    complex numbers with no imaginary part as reals, uint64 as int64 in its range); values not exactly equal stay
    two keys (2**53 + 1 is no float64: the float 2.0**53 is another value)."""
    a = _png(tmp_path / "a.png")
    row = {"image": a, "question": "is it red?", "answers": ["yes"], "question_id": 7}
    equal = [(np.array([1]), np.array([1.0])), (np.array([1, 2], np.int8), np.array([1.0, 2.0], np.float32)),
             (np.array([[3, 0]]), np.array([[3.0, -0.0]])), (np.array([2 ** 60]), np.array([2.0 ** 60])),
             (np.array([-2 ** 63]), np.array([-2.0 ** 63])), (np.array([1 + 0j, 2]), np.array([1, 2])),
             (np.array([1], np.uint64), np.array([1.0])), (np.array([], np.int64), np.array([], np.float32)),
             (np.array([True, False]), np.array([1.0, 0.0]))]
    for first, second in equal:
        assert 1 == 1.0 and bool((first == second).all()), (first, second)   # (equal values)
        assert row_keys.row_key(first) == row_keys.row_key(second), (first, second)
        assert hash(row_keys.row_key(first)) == hash(row_keys.row_key(second)), (first, second)
    with pytest.raises(DataFormatError, match="rows:2: question_id 7 is given to another row at rows:1, and the row "
                                              "repeats it whole"):
        _from_rows(tmp_path, [{**row, "extra": np.array([1, 2])}, {**row, "extra": np.array([1.0, 2.0])}])
    other = [(np.array([2 ** 53 + 1]), np.array([2.0 ** 53])), (np.array([1]), np.array([1.5])),
             (np.array([1 + 1j]), np.array([1])), (np.array([2 ** 64 - 1], np.uint64), np.array([-1])),
             (np.array([2.0 ** 63]), np.array([-2 ** 63])), (np.array([np.inf]), np.array([2 ** 62])),
             (np.array([1]), np.array([[1.0]])), (np.array([np.nan + 0j]), np.array([0]))]
    for first, second in other:
        assert row_keys.row_key(first) != row_keys.row_key(second), (first, second)
    assert row_keys.row_key(np.array([np.nan, 1.0])) == row_keys.row_key(np.array([np.nan, 1 + 0j]))


def test_numpy_integer_labels_of_a_pandas_table_are_class_indices(tmp_path):
    """A pandas Int64 (nullable) label column gives np.int64 cells (itertuples, iloc): no Python int, so each label
    was refused as "label np.int64(1) is a int64; labels are class-name strings or integer class indices"; a pair
    row's np.bool_ / np.int64 truth label too."""
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (10, 200, 10))
    s = _from_rows(tmp_path, [{"image": a, "label": np.int64(1)}, {"image": b, "label": np.int64(0)}])
    assert [e.label for e in s.examples] == [1, 0] and s.class_names == ["0", "1"]
    s = _from_rows(tmp_path, [{"images": [a, b], "statement": "two", "label": np.bool_(True)},
                              {"images": [b, a], "statement": "two", "label": np.int64(0)}])
    assert [e.label for e in s.examples] == [1, 0]


def test_a_rows_whole_key_is_made_only_where_its_question_id_repeats(tmp_path, monkeypatch):
    """2c10f1e made an array cell's key 2.2x dearer (canonical bytes), and every row with a question_id was keyed
    whole; rows whose ids are all distinct cannot repeat a row, so only the rows of a repeated id are keyed whole (a
    768-float32 cell: 49.2 -> 23.2 us a row read). Repeats are found as before."""
    a = _png(tmp_path / "a.png")
    whole = []

    def counted(value):
        if isinstance(value, dict):
            whole.append(value.get("question_id"))
        return row_keys.row_key(value)

    monkeypatch.setattr(rows_module, "row_key", counted)
    rows = [{"image": a, "question": f"q{i}?", "answers": ["yes"], "question_id": i, "emb": np.full(4, i / 3)}
            for i in range(5)]
    assert len(_from_rows(tmp_path, rows).examples) == 5 and whole == []
    rows.append({**rows[3], "question": "another?"})   # id 3 again, another question: both keyed, both kept
    assert len(_from_rows(tmp_path, rows).examples) == 6 and sorted(whole) == [3, 3]
    rows.append({**rows[3], "emb": -rows[3]["emb"] * -1.0})   # row 4 whole again (a recomputed cell)
    with pytest.raises(DataFormatError, match="rows:7: question_id 3 is given to another row at rows:4, and the row "
                                              "repeats it whole"):
        _from_rows(tmp_path, rows)


def test_a_list_and_an_array_of_equal_values_are_one_row_key(tmp_path):
    """A list ``[1, 2]`` (a JSON file's cell, a datasets row's) and an array ``[1, 2]`` (a pandas table's) were two row
    keys, list-of-values against array bytes, so a row repeated whole, read once each way, was two rows. A list equal
    to an array value by value is keyed as that array (nested lists as a 2-D one, strings as strings); lists whose
    values differ, a tuple (``[1, 2] != (1, 2)``), a list numpy would round (``[2**53 + 1, 0.5]``) stay apart."""
    a = _png(tmp_path / "a.png")
    row = {"image": a, "question": "is it red?", "answers": ["yes"], "question_id": 7}
    equal = [([1, 2], np.array([1, 2])), ([1, 2], np.array([1.0, 2.0], np.float32)),
             ([[1, 2], [3, 4]], np.array([[1, 2], [3, 4]])), ([float("nan"), 1.0], np.array([np.nan, 1.0])),
             ([np.array([1, 2]), np.array([3, 4])], np.array([[1, 2], [3, 4]])), ([], np.array([], np.int64)),
             ([[1, 2], [3]], np.array([np.array([1, 2]), np.array([3])], dtype=object)),
             (["a", "bc"], np.array(["a", "bc"], dtype="<U5")), ([True, 0], np.array([1.0, 0.0]))]
    for first, second in equal:
        assert row_keys.row_key(first) == row_keys.row_key(second), (first, second)
        assert hash(row_keys.row_key(first)) == hash(row_keys.row_key(second)), (first, second)
    with pytest.raises(DataFormatError, match="rows:2: question_id 7 is given to another row at rows:1, and the row "
                                              "repeats it whole"):
        _from_rows(tmp_path, [{**row, "extra": [1, 2]}, {**row, "extra": np.array([1, 2])}])
    other = [([2 ** 53 + 1, 0.5], np.array([2.0 ** 53, 0.5])), ([1, 2], (1, 2)), ([1, 2], np.array([[1, 2]])),
             (["1"], np.array([1])), ([0.1], np.array([0.1], np.float32)), ([2 ** 70], [2 ** 70 + 1])]
    for first, second in other:
        assert row_keys.row_key(first) != row_keys.row_key(second), (first, second)
    assert len(_from_rows(tmp_path, [{**row, "extra": [1, 2]}, {**row, "extra": np.array([1, 3])}]).examples) == 2


def test_a_list_numpy_cannot_make_into_an_array_is_keyed_by_its_values():
    """A list of tensors that need grad: numpy's asarray raised torch's RuntimeError ("Can't call numpy() on Tensor
    that requires grad") out of the row key, which before lists were tried as arrays keyed it value by value."""
    torch = pytest.importorskip("torch")
    def needs_grad(value: float) -> list:
        return [torch.full((2,), value, requires_grad=True)]

    assert row_keys.row_key(needs_grad(1.0)) == row_keys.row_key(needs_grad(1.0))   # (two reads: two tensors)
    assert row_keys.row_key(needs_grad(1.0)) != row_keys.row_key(needs_grad(0.0))
