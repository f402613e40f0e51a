"""A ``ClassLabel`` label column beside the reader's ``class_names``: its indices were read into class_names' order,
so names listed in another order swapped every label silently."""

from __future__ import annotations

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.common import DataFormatError  # noqa: E402
from mtl_lora_vl.data.readers import read_split  # noqa: E402

NAMES = ["cat", "dog", "fox"]
TRUTH = ["cat", "dog", "dog", "fox", "cat"]
COLOURS = {"cat": (200, 30, 30), "dog": (30, 30, 200), "fox": (30, 200, 30)}


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


@pytest.fixture
def root(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    images = [Image.new("RGB", (16 + i, 12), COLOURS[n]) for i, n in enumerate(TRUTH)]   # each row its own image
    table = datasets.Dataset.from_dict({"image": images, "label": [NAMES.index(n) for n in TRUTH]}, features=features)
    table.save_to_disk(tmp_path / "pets")
    return tmp_path


def _labels(split):
    return [split.class_names[e.label] for e in sorted(split.examples, key=lambda e: int(e.image_id))]


@pytest.mark.parametrize("class_names", [None, NAMES, ["fox", "dog", "cat"], ["dog", "cat", "fox", "owl"]])
def test_class_names_in_another_order_read_each_row_by_its_name(root, class_names):
    split = read_split("hf_datasets", root, path="pets", class_names=class_names)
    assert _labels(split) == TRUTH   # was, for ["fox", "dog", "cat"]: fox, dog, dog, cat, fox
    assert split.class_names == (class_names or NAMES)


def test_class_names_that_rename_the_classes_are_read_by_index(root):
    split = read_split("hf_datasets", root, path="pets", class_names=["a cat", "a dog", "a fox"])
    assert _labels(split) == ["a cat", "a dog", "a dog", "a fox", "a cat"]


def test_a_name_at_another_index_beside_renamed_ones_is_refused(root):
    with pytest.raises(DataFormatError, match=r"label column 'label' is a ClassLabel whose class 0 is 'cat', but "
                                              r"class_names puts 'cat' at 1 .*give class_names in the ClassLabel's "
                                              r"order \['cat', 'dog', 'fox'\]"):
        read_split("hf_datasets", root, path="pets", class_names=["a dog", "cat", "a fox"])
