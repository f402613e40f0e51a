"""Second look at ``image_table`` (``hf_join``): a slice as the image table's own split (``image_table = {...,
split = "train[:3]"}``) sliced the image table, so the rows whose images lie outside the slice were refused as
"images missing", long after the spec loaded; it is refused when the spec loads, saying to slice the rows. A key
repeated on a row with no image beside one with an image was refused as "two different images (None and
b'\\x89PNG...')"; it says which row holds no image."""

from __future__ import annotations

import pytest

from mtl_lora_vl.data.common import DataFormatError, ReaderOptionError
from mtl_lora_vl.data.hf_join import check_image_table
from mtl_lora_vl.data.readers import read_split

COLUMNS = {"image_id": "imageId", "question": "question", "answers": "answer"}


@pytest.mark.parametrize("split", ["train[:3]", "train[10%:]", "train[:2]+test", "train[:50%](pct1_dropremainder)"])
def test_a_sliced_image_table_split_is_refused_saying_to_slice_the_rows(split):
    with pytest.raises(ReaderOptionError) as e:   # (was: read, its rows outside the slice "missing" their images)
        check_image_table({"path": "GQA/images", "key": "id", "split": split}, COLUMNS)
    said = str(e.value)
    assert f"split {split!r} slices the image table's rows" in said and "slice the rows' split instead" in said
    whole = "train+test" if "+" in split else "train"
    assert f'give its split unsliced (split = "{whole}")' in said


def test_an_unsliced_image_table_split_is_taken():
    check_image_table({"path": "GQA/images", "key": "id", "split": "train+test"}, COLUMNS)
    check_image_table({"path": "GQA/images", "key": "id", "split": "testdev"}, COLUMNS)


def test_a_key_repeated_on_a_row_without_an_image_is_refused_saying_which_row_holds_none(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = tmp_path / "root"
    (root / "rows").mkdir(parents=True)
    png = (b"\x89PNG\r\n\x1a\n" + b"\x00" * 24)
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_dict({"id": ["n1", "n1"], "image": [None, {"bytes": png, "path": None}]},
                               features=features).to_parquet(str(root / "images.parquet"))
    datasets.Dataset.from_dict({"imageId": ["n1"], "question": ["q"], "answer": ["a"]}).to_parquet(
        str(root / "rows" / "train-0.parquet"))
    with pytest.raises(DataFormatError) as e:
        read_split("hf_datasets", root, path="rows", split="train", columns=COLUMNS, verify=False,
                   image_table={"path": "images.parquet", "key": "id"}, cache_dir=str(tmp_path / "cache"))
    said = str(e.value)
    assert "rows 0 and 1: key 'n1' of column 'id'" in said   # (both rows named, as before)
    assert "row 0 holds no image, row 1 holds an encoded image of 32 bytes" in said   # (was: "None and b'\\x89PNG...")
    assert "None" not in said and "\\x89" not in said
