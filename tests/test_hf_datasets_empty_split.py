"""A save_to_disk folder with a split saved empty (no rows): ``datasets.load_from_disk`` cannot load the whole
dict (IndexError), so the reader loads the asked split alone and refuses an empty one by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.common import DataFormatError  # noqa: E402
from mtl_lora_vl.data.readers import read_split  # noqa: E402

FEATURES = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})


def _captions(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 12), (40 * i, 90, 30)) for i in range(n)],
                                       "caption": [f"picture {i}" for i in range(n)]}, features=FEATURES)


def _as_saved_with_no_rows(folder: Path) -> Path:
    """``folder``, a no-row ``Dataset`` saved with ``num_shards=1`` (one data file of no rows, which every release
    can write), made what ``datasets`` 5.x's own ``save_to_disk`` writes for no rows: no data file and
    ``"_data_files": []`` in state.json -- the layout ``load_from_disk`` fails on. datasets 2.21.0 (the floor) to
    4.0.0 cannot write that layout: their ``save_to_disk`` of no rows with an ``Image`` column divides by zero
    (``_estimate_nbytes``). ``test_the_no_row_layout_made_here_is_what_datasets_writes`` checks the two agree."""
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    for entry in state["_data_files"]:
        (folder / entry["filename"]).unlink()
    state["_data_files"] = []
    (folder / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    return folder


def _saved(dataset, folder: Path, **kw) -> Path:
    dataset.save_to_disk(str(folder), **kw)
    return folder


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def test_a_split_saved_empty_beside_others_leaves_the_others_readable(tmp_path):
    datasets.DatasetDict({"train": _captions(3), "test": _captions(0)}).save_to_disk(tmp_path / "ds",
                                                                                      num_shards={"test": 1})
    _as_saved_with_no_rows(tmp_path / "ds" / "test")
    train = read_split("hf_datasets", tmp_path, path="ds", split="train")   # was: IndexError from datasets
    assert sorted(c for e in train.examples for c in e.captions) == ["picture 0", "picture 1", "picture 2"]
    with pytest.raises(DataFormatError, match=r"ds: split 'test' was saved with no rows; .*give a split that has "
                                              r"rows, or leave that split out of the task spec"):
        read_split("hf_datasets", tmp_path, path="ds", split="test")


def test_a_lone_dataset_saved_empty_is_named(tmp_path):
    _as_saved_with_no_rows(_saved(_captions(0), tmp_path / "empty", num_shards=1))
    with pytest.raises(DataFormatError, match=r"hf_datasets \S*empty was saved with no rows; give a split that "
                                              r"has rows"):
        read_split("hf_datasets", tmp_path, path="empty")


def test_the_no_row_layout_made_here_is_what_datasets_writes(tmp_path):
    made = _as_saved_with_no_rows(_saved(_captions(0), tmp_path / "made", num_shards=1))
    try:
        _captions(0).save_to_disk(tmp_path / "real")
    except ZeroDivisionError:   # datasets 2.21.0 to 4.0.0 at least: _estimate_nbytes divides by the 0 rows
        pytest.skip(f"datasets {datasets.__version__} cannot save_to_disk a Dataset of no rows with an Image column "
                    "(ZeroDivisionError); 5.x writes the layout this checks")
    real = tmp_path / "real"
    assert sorted(f.name for f in made.iterdir()) == sorted(f.name for f in real.iterdir())
    for name in ("state.json", "dataset_info.json"):
        assert json.loads((made / name).read_text()) == json.loads((real / name).read_text()), name
    with pytest.raises(IndexError):   # what the reader's own message replaces
        datasets.load_from_disk(str(real))


def test_a_listed_split_whose_folder_is_missing_leaves_the_others_readable(tmp_path):
    datasets.DatasetDict({"train": _captions(2), "test": _captions(1)}).save_to_disk(tmp_path / "ds")
    shutil.rmtree(tmp_path / "ds" / "test")   # dataset_dict.json still lists it
    train = read_split("hf_datasets", tmp_path, path="ds", split="train")   # was: a bare FileNotFoundError
    assert sorted(c for e in train.examples for c in e.captions) == ["picture 0", "picture 1"]
    with pytest.raises(DataFormatError, match=r"ds: split 'test' is listed in dataset_dict.json \(\['train', "
                                              r"'test'\]\) but its folder \S+ holds no saved dataset \(present: "
                                              r"\['train'\]\); save the DatasetDict again"):
        read_split("hf_datasets", tmp_path, path="ds", split="test")


@pytest.mark.parametrize("name", ["../outside", "ABS"])
def test_a_split_name_that_leaves_the_folder_is_refused(tmp_path, name):
    import json

    datasets.DatasetDict({"train": _captions(2)}).save_to_disk(tmp_path / "data" / "ds")
    _captions(3).save_to_disk(tmp_path / "outside")   # another dataset, beside the data root
    name = str(tmp_path / "outside") if name == "ABS" else "../" + name
    (tmp_path / "data" / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", name]}))
    with pytest.raises(DataFormatError, match=r"ds/dataset_dict.json: split name\(s\) \[.*outside'\] are not plain "
                                              r"folder names in the dataset's folder .*fix the file's \"splits\" list"):
        read_split("hf_datasets", tmp_path / "data", path="ds", split=name)   # was: the 3 rows of outside/


@pytest.mark.parametrize("entry", ["../outside", 3, None])
def test_a_bad_entry_of_dataset_dict_json_leaves_the_listed_good_splits_readable(tmp_path, entry):
    import json

    datasets.DatasetDict({"train": _captions(2), "test": _captions(1)}).save_to_disk(tmp_path / "ds")
    (tmp_path / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test", entry]}))
    train = read_split("hf_datasets", tmp_path, path="ds", split="train")   # was: refused, or a bare TypeError
    assert sorted(c for e in train.examples for c in e.captions) == ["picture 0", "picture 1"]
    assert len(read_split("hf_datasets", tmp_path, path="ds", split="test").examples) == 1


@pytest.mark.parametrize("damage", ["state.json", "arrow"])
def test_an_asked_split_whose_files_are_damaged_is_named_and_the_others_load(tmp_path, damage):
    datasets.DatasetDict({"train": _captions(2), "test": _captions(1)}).save_to_disk(tmp_path / "ds")
    if damage == "state.json":
        (tmp_path / "ds" / "test" / "state.json").write_text("{cut short")
    else:
        for f in (tmp_path / "ds" / "test").glob("*.arrow"):
            f.unlink()
    assert len(read_split("hf_datasets", tmp_path, path="ds", split="train").examples) == 2
    with pytest.raises(DataFormatError, match=r"ds: split 'test' cannot be loaded from \S+test \((JSONDecodeError|"
                                              r"FileNotFoundError): .*\); its files are damaged or incomplete: save "
                                              r"the DatasetDict again"):
        read_split("hf_datasets", tmp_path, path="ds", split="test")   # was: datasets' bare error, naming no split


@pytest.mark.parametrize("text", ["{cut short", '{"splits": "train"}'])
def test_an_unreadable_dataset_dict_json_is_named(tmp_path, text):
    datasets.DatasetDict({"train": _captions(2)}).save_to_disk(tmp_path / "ds")
    (tmp_path / "ds" / "dataset_dict.json").write_text(text)
    with pytest.raises(DataFormatError, match=r"ds/dataset_dict.json: not a DatasetDict's list of splits \(.+\); it "
                                              r"should read \{\"splits\": \[\"train\", ...\]\}"):
        read_split("hf_datasets", tmp_path, path="ds", split="train")   # was: JSONDecodeError / reading ds/t/
