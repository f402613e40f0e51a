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


@pytest.mark.parametrize("class_names", [["Fox", "Dog", "Cat"], ["Dog", "Cat", "Fox"], ["DOG ", "cat", "FOX"]])
def test_class_names_in_another_case_and_order_are_read_by_name(root, class_names):
    """Compared exactly, no name matched, so the ClassLabel's indices were read by position: ["Dog", "Cat", "Fox"]
    gave Dog, Cat, Cat, Fox, Dog for cat, dog, dog, fox, cat (1 row of 5 right), silently. The case and spaces aside
    (as the task's options.class_names are compared) they name every class, so rows are read by name."""
    split = read_split("hf_datasets", root, path="pets", class_names=class_names)
    assert [n.strip().lower() for n in _labels(split)] == TRUTH
    assert split.class_names == class_names


def test_a_name_at_another_index_beside_renamed_ones_is_refused(root):
    with pytest.raises(DataFormatError, match=r"pets: class_names puts 'cat' at 1, but 'cat' is class 0 of the "
                                              r"ClassLabel of label column 'label' .*lacks \['dog', 'fox'\].*give "
                                              r"class_names in the order of the ClassLabel of label column 'label' "
                                              r"\['cat', 'dog', 'fox'\]"):
        read_split("hf_datasets", root, path="pets", class_names=["a dog", "cat", "a fox"])


@pytest.mark.parametrize("class_names", [["fox", "dog"], ["dog"], ["fox"]])
def test_fewer_class_names_with_a_moved_one_are_refused_by_name(root, class_names):
    """A list shorter than the ClassLabel, naming one of its classes at another index, failed with a bare
    IndexError (the check read class_names at the ClassLabel's index). Read by name, the rows of the classes it
    leaves out (cat; cat and dog, or cat and fox) have no name."""
    with pytest.raises(DataFormatError, match=rf"class_names names {len(class_names)} of the 3 classes of the "
                                              r"ClassLabel of label column 'label' .*\(read by name\), but rows are "
                                              r"of \['cat'.* too.*add those names to class_names \(in any order\), "
                                              r"or leave class_names out"):
        read_split("hf_datasets", root, path="pets", class_names=class_names)


@pytest.mark.parametrize("class_names", [["cat", "dog"], ["a cat", "a dog"], ["cat"]])
def test_fewer_class_names_with_none_moved_are_refused_by_name(root, class_names):
    """Read by position, it failed at the first fox row: "label index 2 out of range for 2 classes"."""
    with pytest.raises(DataFormatError, match=rf"pets: class_names has {len(class_names)} names but the ClassLabel of "
                                              r"label column 'label' has 3 classes \['cat', 'dog', 'fox'\].*give all "
                                              r"3 names .* or leave class_names out"):
        read_split("hf_datasets", root, path="pets", class_names=class_names)


def test_fewer_class_names_that_name_every_class_the_rows_use_are_read(tmp_path):
    """A subset's ClassLabel keeps every name of the whole set (a split with no fox row): class_names naming the
    classes its rows use read it by position, as before ea89c95, which refused it for lacking 'fox'."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    images = [Image.new("RGB", (16 + i, 12), COLOURS[n]) for i, n in enumerate(TRUTH)]
    kept = [(im, NAMES.index(n)) for im, n in zip(images, TRUTH) if n != "fox"]
    table = datasets.Dataset.from_dict({"image": [im for im, _ in kept], "label": [k for _, k in kept]},
                                       features=features)
    table.save_to_disk(tmp_path / "pets")
    split = read_split("hf_datasets", tmp_path, path="pets", class_names=["a cat", "a dog"])
    assert split.class_names == ["a cat", "a dog"] and _labels(split) == ["a cat", "a dog", "a dog", "a cat"]
    with pytest.raises(DataFormatError, match=r"class_names has 1 names but .* has 3 classes"):   # a dog row: no name
        read_split("hf_datasets", tmp_path, path="pets", class_names=["cat"])
    # the same classes named in another order are read by name (refused before, as if fox's rows needed a name)
    split = read_split("hf_datasets", tmp_path, path="pets", class_names=["dog", "cat"])
    assert split.class_names == ["dog", "cat"] and _labels(split) == ["cat", "dog", "dog", "cat"]
    with pytest.raises(DataFormatError, match=r"names 1 of the 3 classes .* but rows are of \['cat'\] too"):
        read_split("hf_datasets", tmp_path, path="pets", class_names=["dog"])


def _unlabelled(folder, labels, names=NAMES, **images) -> None:
    features = datasets.Features({**{c: datasets.Image() for c in images}, "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({**images, "label": labels}, features=features).save_to_disk(folder)


@pytest.mark.parametrize("class_names", [None, NAMES, ["fox", "dog", "cat"]])
def test_a_label_of_minus_one_is_refused_as_unlabelled(tmp_path, class_names):
    """-1 is how ``datasets`` writes a row with no label (a hub test split's rows): it was refused as "label index -1
    out of range for 3 classes", which read as a bad class list, not as rows that have no label."""
    images = [Image.new("RGB", (16 + i, 12), COLOURS["cat"]) for i in range(4)]
    _unlabelled(tmp_path / "pets", [0, -1, 2, -1], image=images)
    with pytest.raises(DataFormatError, match=r"pets row 1: label -1 in ClassLabel column 'label' \(2 of 4 rows\); "
                                              r"-1 means unlabelled .*give a split with labels, or remove those rows "
                                              r"\(ds.filter\(lambda r: r\['label'\] != -1\)"):
        read_split("hf_datasets", tmp_path, path="pets", class_names=class_names)


def test_a_pair_statement_labelled_minus_one_is_refused_as_unlabelled(tmp_path):
    """A pair table's ClassLabel -1 was read as a blank label: "label is blank", no word of -1."""
    left = [Image.new("RGB", (16 + i, 12), COLOURS["cat"]) for i in range(3)]
    right = [Image.new("RGB", (16 + i, 12), COLOURS["dog"]) for i in range(3)]
    _unlabelled(tmp_path / "pairs", [1, 0, -1], names=["false", "true"], left=left, right=right)
    table = datasets.load_from_disk(str(tmp_path / "pairs")).add_column("s", ["a", "b", "c"])
    table.save_to_disk(tmp_path / "pairs2")
    cols = {"images": ["left", "right"], "statement": "s", "label": "label"}
    with pytest.raises(DataFormatError, match=r"pairs2 row 2: label -1 in ClassLabel column 'label' \(1 of 3 rows\); "
                                              r"-1 means unlabelled"):
        read_split("hf_datasets", tmp_path, path="pairs2", columns=cols)


def test_a_question_table_with_an_unread_classlabel_of_minus_one_is_read(tmp_path):
    """A VQA row reads no label, so a ClassLabel column beside its question (taken by name without ``columns``) holding
    -1 is no missing label: such a table read before a9812d4, which refused it as unlabelled."""
    images = [Image.new("RGB", (16 + i, 12), COLOURS["cat"]) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answers": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.ClassLabel(names=["yes/no", "other"])})
    datasets.Dataset.from_dict({"image": images, "question": ["what?"] * 4, "answers": [["a"]] * 4,
                                "label": [0, -1, 1, -1]}, features=features).save_to_disk(tmp_path / "vqa")
    split = read_split("hf_datasets", tmp_path, path="vqa")
    assert [e.text for e in split.examples] == ["what?"] * 4 and all(e.answers == ("a",) for e in split.examples)
