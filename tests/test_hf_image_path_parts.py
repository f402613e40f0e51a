"""``columns = {image = ["filepath", "filename"]}``: an ``hf_datasets`` table that keeps an image's path in two
columns (Karpathy-style parquet: ``filepath`` "val2014", ``filename`` "COCO_val2014_....jpg") reads the path joined
from them, folders first; no mapping could read such a table before, so a user had to rewrite it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.common import ReaderOptionError
from mtl_lora_vl.data.hf_datasets import check_hf_options
from mtl_lora_vl.data.readers import PathEscapeError, read_split
from mtl_lora_vl.tasks.spec import SpecError, load_spec

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")

HEAD = 'kind = "retrieval"\n[data]\nformat = "hf_datasets"\npath = "karpathy"\n'
SPLITS = '[data.train]\nsplit = "train"\n[data.val]\nsplit = "validation"\n'
NAMES = ["COCO_val2014_000000391895.jpg", "COCO_val2014_000000522418.jpg", "COCO_train2014_000000184613.jpg"]


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _karpathy(root: Path, filepath: list, filename: list, **more) -> None:
    """A Karpathy-style parquet table (one row per image, its captions a list) and the images it names."""
    for folder, name in zip(filepath, filename):
        if name:
            (root / "coco" / (folder or "")).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (len(name) * 7 % 255, 9, 9)).save(root / "coco" / (folder or "") / name, "JPEG")
    (root / "karpathy").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"filepath": filepath, "filename": filename,
                                "sentences": [[f"caption {i}"] for i in range(len(filename))], **more}
                               ).to_parquet(str(root / "karpathy" / "train-00000-of-00001.parquet"))


def _read(tmp_path, columns, **kw):
    return read_split("hf_datasets", tmp_path / "data", path="karpathy", split="train", images="coco",
                      columns=columns, cache_dir=str(tmp_path / "cache"), **kw)


def test_an_image_path_kept_in_two_columns_is_read_joined_folders_first(tmp_path):
    _karpathy(tmp_path / "data", ["val2014", "val2014", "train2014"], NAMES, cocoid=[391895, 522418, 184613])
    split = _read(tmp_path, {"image": ["filepath", "filename"], "captions": "sentences"})
    root = (tmp_path / "data" / "coco").resolve()
    assert [Path(e.image) for e in split.examples] == [root / f / n for f, n in
                                                        zip(["val2014", "val2014", "train2014"], NAMES)]
    # the default image id is the joined path, as a single path column's is
    assert split.examples[0].image_id == "val2014/COCO_val2014_000000391895.jpg" and split.skipped == 0
    with_id = _read(tmp_path, {"image": ["filepath", "filename"], "captions": "sentences", "image_id": "cocoid"})
    assert [e.image_id for e in with_id.examples] == ["391895", "522418", "184613"]


def test_a_blank_folder_part_is_left_out_and_a_blank_file_name_is_refused_with_its_row(tmp_path):
    _karpathy(tmp_path / "data", ["val2014", None, ""], NAMES)
    split = _read(tmp_path, {"image": ["filepath", "filename"], "captions": "sentences"})
    assert [e.image_id for e in split.examples] == ["val2014/" + NAMES[0], NAMES[1], NAMES[2]]
    _karpathy(tmp_path / "data2", ["val2014", "val2014", "val2014"], [NAMES[0], " ", NAMES[2]])
    with pytest.raises(ValueError, match=re.escape("row 1: no file name in column 'filename' (image = "
                                                   "['filepath', 'filename'] joins")):
        read_split("hf_datasets", tmp_path / "data2", path="karpathy", split="train", images="coco",
                   columns={"image": ["filepath", "filename"], "captions": "sentences"},
                   cache_dir=str(tmp_path / "cache"))


def test_one_image_spelled_with_doubled_separators_is_one_path_and_one_image_id(tmp_path):
    """``val2014/`` + ``a.png`` was joined as ``val2014//a.png``, another default image id than ``val2014`` +
    ``a.png``'s: one image, two ids in rows read one by one (questions; captions are grouped by the image)."""
    _karpathy(tmp_path / "data", ["val2014", "val2014/", "./val2014//"], [NAMES[0], NAMES[0], "/" + NAMES[0]],
              question=["what?", "where?", "who?"], answers=[["a"], ["b"], ["c"]])
    columns = {"image": ["filepath", "filename"], "question": "question", "answers": "answers"}
    split = _read(tmp_path, columns)
    assert [e.image_id for e in split.examples] == ["val2014/" + NAMES[0]] * 3   # was: val2014//..., ./val2014////...
    assert len({e.image for e in split.examples}) == 1


def test_a_joined_path_that_leaves_the_data_root_is_refused_naming_the_row(tmp_path):
    _karpathy(tmp_path / "data", ["val2014", "../..", "val2014"], NAMES)
    with pytest.raises(PathEscapeError, match="row 1: "):
        _read(tmp_path, {"image": ["filepath", "filename"], "captions": "sentences"})


def test_a_column_the_table_lacks_is_named_with_a_did_you_mean(tmp_path):
    _karpathy(tmp_path / "data", ["val2014"] * 3, NAMES)
    with pytest.raises(ValueError, match=re.escape("column(s) ['file_name'] not found (mapped from ['image']); "
                                                   "'file_name': did you mean 'filename'?")):
        _read(tmp_path, {"image": ["filepath", "file_name"], "captions": "sentences"})


def test_a_part_column_that_is_not_text_is_refused_saying_what_it_holds(tmp_path):
    _karpathy(tmp_path / "data", ["val2014"] * 3, NAMES, cocoid=[1, 2, 3],
              pic=[Image.new("RGB", (4, 4)) for _ in range(3)])
    with pytest.raises(ValueError, match=r"column 'cocoid' holds Value\((dtype=)?'int64'.*not text"):
        _read(tmp_path, {"image": ["filepath", "cocoid"], "captions": "sentences"})
    with pytest.raises(ValueError, match=r"column 'pic' holds images, not text; map a column of images alone "
                                         r"\(image = 'pic'\), several images of a row as images"):
        _read(tmp_path, {"image": ["filepath", "pic"], "captions": "sentences"})


@pytest.mark.parametrize("image, said", [
    ("[]", "image = [] names 0 column(s); a path made of several columns names two or more"),
    ('["filename"]', "image = ['filename'] names 1 column(s)"),
    ('["filepath", "filepath"]', "names the column(s) ['filepath'] more than once"),
    ('["filepath", ""]', "image must be one column (image = \"img\"), or a list of the columns whose cells join"),
    ('["filepath", 3]', "option 'columns' of format 'hf_datasets' must be a table of strings or lists of strings"),
    ("3", "option 'columns' of format 'hf_datasets' must be a table of strings or lists of strings"),
])
def test_a_bad_path_of_columns_is_refused_when_the_spec_loads(tmp_path, image, said):
    path = tmp_path / "mine.toml"
    path.write_text(HEAD + f'columns = {{image = {image}, captions = "sentences"}}\n' + SPLITS)
    with pytest.raises(SpecError, match=re.escape(said)):
        load_spec(path)


def test_a_path_of_columns_of_another_type_is_refused_by_the_readers_own_check():
    with pytest.raises(ReaderOptionError, match=re.escape("image must be one column (image = \"img\"), or a list "
                                                          "of the columns whose cells join into its path")):
        check_hf_options({"columns": {"image": ["filepath", 3]}})


def test_a_path_of_columns_loads_in_a_spec(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(HEAD + 'columns = {image = ["filepath", "filename"], captions = "sentences"}\n' + SPLITS)
    assert load_spec(path).data.options["columns"]["image"] == ["filepath", "filename"]
