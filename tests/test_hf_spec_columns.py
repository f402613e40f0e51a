"""A task spec's ``columns`` table for the ``hf_datasets`` reader: a misspelt field name (a key) or a mapping of the
wrong shape was refused only when the split was read, after the model had loaded; the keys need no dataset, so they
are checked when the spec loads. (The values, the dataset's column names, are checked when the split is read.)"""

from __future__ import annotations

import re

import pytest

from mtl_lora_vl.tasks.spec import SpecError, load_spec

HEAD = 'kind = "vqa"\n[data]\nformat = "hf_datasets"\npath = "no_such_dataset"\n'
SPLITS = '[data.train]\nsplit = "train"\n[data.val]\nsplit = "validation"\n'


def _spec(tmp_path, text: str):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


def test_a_misspelt_field_in_the_data_table_is_named_with_a_did_you_mean_at_spec_load(tmp_path):
    path = _spec(tmp_path, HEAD + 'columns = {imgae = "img", question = "q"}\n' + SPLITS)
    with pytest.raises(SpecError) as err:
        load_spec(path)   # no data root, no dataset: the keys alone are wrong
    said = str(err.value)
    assert said.startswith(f"{path}: field 'data': option 'columns': unknown field(s) ['imgae']")
    assert "'imgae': did you mean 'image'?" in said and "'question_type'" in said


def test_a_misspelt_field_in_a_split_table_names_that_table(tmp_path):
    path = _spec(tmp_path, HEAD + '[data.train]\nsplit = "train"\ncolumns = {image = "img", questoin = "q"}\n'
                 '[data.val]\nsplit = "validation"\n')
    with pytest.raises(SpecError, match=re.escape("field 'data.train': option 'columns': unknown field(s) "
                                                  "['questoin']; 'questoin': did you mean 'question'?")):
        load_spec(path)


@pytest.mark.parametrize("columns, said", [
    ('{image = "a", images = ["a", "b"], statement = "s", label = "l"}', "both image ('a') and images"),
    ('{images = ["a"], statement = "s", label = "l"}', "images names 1 column(s)"),
    ('{images = ["a", "a"], statement = "s", label = "l"}', "images names the column(s) ['a'] more than once"),
    ('{image = "a", statement = "s", label = "l"}', "statement is the text of a row of several images"),
])
def test_a_mapping_of_the_wrong_shape_is_refused_at_spec_load(tmp_path, columns, said):
    path = _spec(tmp_path, HEAD.replace('"vqa"', '"nlvr"') + f"columns = {columns}\n" + SPLITS)
    with pytest.raises(SpecError, match=re.escape(f"field 'data': option 'columns': {said}")):
        load_spec(path)


def test_a_well_formed_mapping_loads_and_its_column_names_wait_for_the_dataset(tmp_path):
    spec = load_spec(_spec(tmp_path, HEAD + 'columns = {image = "no such column", question = "q"}\n' + SPLITS))
    assert spec.data.options["columns"] == {"image": "no such column", "question": "q"}


def test_a_column_name_the_dataset_lacks_is_refused_at_read_with_a_did_you_mean(tmp_path):
    """The values wait for the dataset; their refusal listed its columns but did not say which one was meant."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from mtl_lora_vl.data.readers import read_split

    datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "caption": ["a"]}).save_to_disk(tmp_path / "t")
    with pytest.raises(ValueError, match=re.escape("column(s) ['captoin'] not found (mapped from ['caption']); "
                                                   "'captoin': did you mean 'caption'?; the dataset has columns "
                                                   "['image', 'caption']")):
        read_split("hf_datasets", tmp_path, path="t", columns={"image": "image", "caption": "captoin"})
