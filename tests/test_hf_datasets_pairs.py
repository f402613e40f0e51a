"""The hf_datasets reader on tables of several image columns (NLVR2 copies on the hub: ``left_image`` /
``right_image``, ``sentence``, ``label``): ``columns = {images = [...]}`` -> rows of the ``nlvr`` kind."""

from __future__ import annotations

import io
import logging
import pickle

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.common import DataFormatError  # noqa: E402
from mtl_lora_vl.data.fallback import ImageFallback  # noqa: E402
from mtl_lora_vl.data.hf_datasets import DatasetImage  # noqa: E402
from mtl_lora_vl.data.images import ImageError, image_key, load_image  # noqa: E402
from mtl_lora_vl.data.readers import PathEscapeError, ReaderOptionError, read_split  # noqa: E402

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
PAIR = {"images": ["left_image", "right_image"], "statement": "sentence", "label": "label"}


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), COLORS[i % len(COLORS)]).save(buf, "PNG")
    return buf.getvalue()


def _pairs(n: int, labels=None, image=None, label_feature=None, colours=None, extra=None) -> datasets.Dataset:
    """Row i: left colour i, right colour i + 1 unless ``colours`` gives each row's (left, right); images as
    ``datasets.Image`` unless ``image`` says otherwise; ``extra`` maps further column names to (values, feature).
    Built in one ``from_dict`` rather than with ``add_column(..., feature=)``, which datasets < 4.0 lacks."""
    image = image or datasets.Image()
    labels = [i % 2 == 0 for i in range(n)] if labels is None else labels
    colours = colours or [(i, i + 1) for i in range(n)]
    extra = extra or {}
    return datasets.Dataset.from_dict(
        {"left_image": [_png(a) for a, _ in colours], "right_image": [_png(b) for _, b in colours],
         "sentence": [f"statement {i}" for i in range(n)], "label": labels,
         **{name: values for name, (values, _) in extra.items()}},
        features=datasets.Features({"left_image": image, "right_image": image, "sentence": datasets.Value("string"),
                                    "label": label_feature or datasets.Value("bool"),
                                    **{name: feature for name, (_, feature) in extra.items()}}))


@pytest.mark.parametrize("image", ["Image", "binary"])
def test_pair_columns_read_to_tuples_of_references_per_column(tmp_path, image):
    root = tmp_path / "data"
    feature = datasets.Image() if image == "Image" else datasets.Value("binary")
    datasets.DatasetDict({"train": _pairs(3, image=feature)}).save_to_disk(root / "nlvr")
    split = read_split("hf_datasets", root, path="nlvr", split="train", columns=PAIR)
    ex = split.examples
    assert len(ex) == 3 and split.skipped == 0 and split.class_names is None
    assert [e.label for e in ex] == [1, 0, 1] and ex[2].text == "statement 2"
    assert [e.image_id for e in ex] == ["0", "1", "2"]
    left, right = ex[1].image
    assert isinstance(left, DatasetImage) and isinstance(right, DatasetImage)
    assert (left.column, left.row, right.column, right.row) == ("left_image", 1, "right_image", 1)
    assert load_image(left).getpixel((3, 3)) == COLORS[1] and load_image(right).getpixel((3, 3)) == COLORS[2]
    # each image is named by its table, row and column (how a failed one is named, image by image)
    assert str(left).endswith("[train] row 1 column 'left_image'") and "row 1 column 'right_image'" in image_key(
        ex[1].image)
    copy = pickle.loads(pickle.dumps(ex[1]))
    assert copy.image == ex[1].image and copy.image[0].table.opened == {}
    assert load_image(copy.image[1]).getpixel((0, 0)) == COLORS[2]


def test_pair_columns_of_file_paths_under_the_root(tmp_path):
    root = tmp_path / "data"
    (root / "pics").mkdir(parents=True)
    for i in range(3):
        (root / "pics" / f"{i}.png").write_bytes(_png(i))
    datasets.Dataset.from_dict({"a": ["0.png", "1.png"], "b": ["1.png", "2.png"], "s": ["x", "y"],
                                "t": ["yes", "no"]}).save_to_disk(root / "paths")
    cols = {"images": ["a", "b"], "text": "s", "label": "t"}
    split = read_split("hf_datasets", root, path="paths", columns=cols, images="pics")
    pics = (root / "pics").resolve()
    assert [e.image for e in split.examples] == [(str(pics / "0.png"), str(pics / "1.png")),
                                                 (str(pics / "1.png"), str(pics / "2.png"))]
    assert [e.label for e in split.examples] == [1, 0] and split.examples[0].image_id == "0.png|1.png"
    datasets.Dataset.from_dict({"a": ["0.png"], "b": ["../../out.png"], "s": ["x"],
                                "t": ["yes"]}).save_to_disk(root / "esc")
    with pytest.raises(PathEscapeError, match=r"row 0 column 'b': .*outside the data root"):
        read_split("hf_datasets", root, path="esc", columns=cols, images="pics")


@pytest.mark.parametrize("labels, feature, want", [
    ([True, False, True], datasets.Value("bool"), [1, 0, 1]),
    (["True", "False", "false"], datasets.Value("string"), [1, 0, 0]),
    (["yes", "NO", "1"], datasets.Value("string"), [1, 0, 1]),
    ([0, 1, 1], datasets.Value("int64"), [0, 1, 1]),
    ([1, 0, 1], datasets.ClassLabel(names=["False", "True"]), [1, 0, 1]),
    ([1, 0, 1], datasets.ClassLabel(names=["True", "False"]), [0, 1, 0]),   # by name, never by index order
    ([0, 1, 0], datasets.ClassLabel(names=["yes", "no"]), [1, 0, 1]),
])
def test_labels_are_truth_values_by_the_rows_rule(tmp_path, labels, feature, want):
    _pairs(3, labels=labels, label_feature=feature).save_to_disk(tmp_path / "t")
    split = read_split("hf_datasets", tmp_path, path="t", columns=PAIR)
    assert [e.label for e in split.examples] == want and split.class_names is None


@pytest.mark.parametrize("labels, feature, match", [
    ([0, 1], datasets.ClassLabel(names=["cat", "dog"]), r"label column 'label' is a ClassLabel of names \['cat', "
                                                        r"'dog'\].*true/false"),
    ([0, 1], datasets.ClassLabel(names=["True", "maybe"]), r"\['maybe'\] is none of those"),
    (["true", "maybe"], datasets.Value("string"), r"row 1: label 'maybe' .*true/false"),
    ([0, 2], datasets.Value("int64"), r"row 1: label 2 .*truth value"),
])
def test_labels_that_are_no_truth_values_are_refused(tmp_path, labels, feature, match):
    _pairs(2, labels=labels, label_feature=feature).save_to_disk(tmp_path / "t")
    with pytest.raises(DataFormatError, match=match):
        read_split("hf_datasets", tmp_path, path="t", columns=PAIR)


def test_a_broken_image_is_named_by_its_row_and_column(tmp_path, caplog):
    binary = datasets.Value("binary")
    rights = [_png(1), _png(2)[:20], _png(3)]   # row 1's right image cut short; its left one is fine
    datasets.Dataset.from_dict({"left_image": [_png(i) for i in range(3)], "right_image": rights,
                                "sentence": [f"statement {i}" for i in range(3)], "label": [True, False, True]},
                               features=datasets.Features({"left_image": binary, "right_image": binary,
                                                           "sentence": datasets.Value("string"),
                                                           "label": datasets.Value("bool")})
                               ).save_to_disk(tmp_path / "broken")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data"):
        split = read_split("hf_datasets", tmp_path, path="broken", columns=PAIR)
    assert [e.text for e in split.examples] == ["statement 0", "statement 2"] and split.skipped == 1
    assert "row 1 column 'right_image'" in caplog.text and "row 1 column 'left_image'" not in caplog.text
    with pytest.raises(ImageError, match=r"row 1 column 'right_image'"):
        read_split("hf_datasets", tmp_path, path="broken", columns=PAIR, strict=True)
    # unchecked, the loader's fallback names that one image, not the pair
    split = read_split("hf_datasets", tmp_path, path="broken", columns=PAIR, verify=False)
    fallback = ImageFallback("pairs", split.examples, 8)
    row, pixels = fallback.decode(1)
    assert row != 1 and tuple(pixels.shape) == (2, 3, 8, 8)
    assert len(fallback.failed_files()) == 1 and fallback.failed_files()[0].endswith("row 1 column 'right_image'")


def test_rows_of_one_image_id_share_their_references(tmp_path):
    cols = {**PAIR, "image_id": "pair_id"}
    same = _pairs(3, colours=[(0, 1), (0, 1), (2, 3)]).add_column("pair_id", ["p", "p", "q"])
    same.save_to_disk(tmp_path / "same")
    ex = read_split("hf_datasets", tmp_path, path="same", columns=cols).examples
    assert [part.row for part in ex[1].image] == [0, 0] and [e.image_id for e in ex] == ["p", "p", "q"]
    assert [load_image(part).getpixel((0, 0)) for part in ex[2].image] == [COLORS[2], COLORS[3]]
    clash = _pairs(3, colours=[(0, 1), (0, 2), (2, 3)]).add_column("pair_id", ["p", "p", "q"])
    clash.save_to_disk(tmp_path / "clash")   # rows 0 and 1 give "p" to two pairs (their right images differ)
    with pytest.raises(DataFormatError, match=r"row 1: image_id 'p' was given to another image at .*row 0"):
        read_split("hf_datasets", tmp_path, path="clash", columns=cols)


@pytest.mark.parametrize("columns, match", [
    ({"images": ["left_image"], "statement": "sentence", "label": "label"}, r"images names 1 column\(s\).*two or more"),
    ({"images": [], "statement": "sentence", "label": "label"}, r"images names 0 column"),
    ({"images": ["left_image", "left_image"], "statement": "sentence", "label": "label"}, r"more than once"),
    ({"images": ["left_image", "middle"], "statement": "sentence", "label": "label"},
     r"column\(s\) \['middle'\] not found \(mapped from \['images'\]\).*'left_image', 'right_image'"),
    ({"images": ["left_image", "label"], "statement": "sentence", "label": "label"},
     r"image column 'label' has type .*bool.*expected images"),
    ({"image": "left_image", "images": ["left_image", "right_image"], "statement": "sentence", "label": "label"},
     r"both image \('left_image'\) and images .* are mapped"),
    ({"images": "left_image", "statement": "sentence", "label": "label"},
     r"images must be a list of the image columns"),
    ({"image": "left_image", "statement": "sentence", "label": "label"}, r"statement is the text of a row of several"),
    ({"images": ["left_image", "right_image"], "label": "label"}, r"row 0: no statement"),
])
def test_clear_errors_for_bad_mappings(tmp_path, columns, match):
    _pairs(2).save_to_disk(tmp_path / "t")
    with pytest.raises((ValueError, ReaderOptionError, DataFormatError), match=match):
        read_split("hf_datasets", tmp_path, path="t", columns=columns)


def test_a_pair_is_never_guessed_from_column_names(tmp_path):
    _pairs(2).save_to_disk(tmp_path / "t")
    with pytest.raises(ValueError, match=r"no image column, and the dataset has 2 columns of images \['left_image', "
                                         r"'right_image'\]; a row of several images is not guessed.*images = \["):
        read_split("hf_datasets", tmp_path, path="t")


def test_nlvr_task_on_a_hf_table_trains_and_evaluates_through_the_command(tmp_path):
    from test_nlvr import assert_pair_spec_trains

    data = tmp_path / "data"
    qtypes = datasets.Value("string")
    train = _pairs(6, extra={"kind": ([["a", "b"][i % 2] for i in range(6)], qtypes)})
    datasets.DatasetDict({"train": train, "validation": train.select(range(4))}).save_to_disk(data / "nlvr2")
    spec = tmp_path / "pairs.toml"
    spec.write_text('name = "pairs"\nkind = "nlvr"\n[data]\nformat = "hf_datasets"\npath = "nlvr2"\n'
                    'columns = {images = ["left_image", "right_image"], statement = "sentence", label = "label", '
                    'question_type = "kind"}\n'
                    '[data.train]\nsplit = "train"\n[data.val]\nsplit = "validation"\n'
                    '[data.test]\nsplit = "validation"\n')
    assert_pair_spec_trains(spec, data, tmp_path / "run")


def test_a_columns_option_of_the_wrong_type_is_named_in_plain_words():
    """The spec-time message for ``columns`` (strings, or lists of strings for ``images``) read "a table of string or
    a list of stringss"."""
    from mtl_lora_vl.data.readers import check_reader_options

    with pytest.raises(Exception, match=r"'columns' of format 'hf_datasets' must be a table of strings or lists of "
                                        r"strings, got 'img'"):
        check_reader_options("hf_datasets", {"path": "t", "columns": "img"})


def test_swapping_the_pair_columns_changes_the_resume_digest(tmp_path):
    """A pair table's rows hold DatasetImage references (no file name) and ids str(i): images = [right, left] gave
    the same rows_sha256 as [left, right], so a resume on the swapped mapping was not told the data changed (review
    178; a path table's digest changed, its file names are in it)."""
    _pairs(4).save_to_disk(tmp_path / "t")
    a = read_split("hf_datasets", tmp_path, path="t", columns=PAIR)
    b = read_split("hf_datasets", tmp_path, path="t", columns={**PAIR, "images": ["right_image", "left_image"]})
    assert [e.image[0].column for e in b.examples] == ["right_image"] * 4
    assert a.rows_sha256 != b.rows_sha256


def test_parquet_pair_references_fetch_in_a_fresh_process(tmp_path):
    """A parquet pair's references pickle without their opened table and decode in another interpreter."""
    import pickle
    import subprocess
    import sys

    (tmp_path / "pq").mkdir()
    _pairs(3).to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    split = read_split("hf_datasets", tmp_path, path="pq", split="train", columns=PAIR)
    blob = pickle.dumps(split.examples[2].image)
    code = ("import pickle,sys; from mtl_lora_vl.data.images import load_image; "
            "im = pickle.loads(sys.stdin.buffer.read()); print([load_image(p).getpixel((0, 0)) for p in im])")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True).stdout.decode()
    assert out.strip() == "[(30, 30, 200), (200, 200, 30)]"


def test_a_mapped_group_column_names_the_rows_of_one_statement(tmp_path):
    root = tmp_path / "data"
    table = _pairs(3).add_column("sentence_id", ["a", "a", "b"])
    datasets.DatasetDict({"train": table}).save_to_disk(root / "nlvr")
    split = read_split("hf_datasets", root, path="nlvr", split="train", columns={**PAIR, "group": "sentence_id"})
    assert [e.meta.get("group") for e in split.examples] == ["a", "a", "b"]
    renamed = _pairs(2).add_column("group", ["a", "b"])   # never taken by its name alone
    datasets.DatasetDict({"train": renamed}).save_to_disk(root / "named")
    split = read_split("hf_datasets", root, path="named", split="train", columns=PAIR)
    assert [e.meta.get("group") for e in split.examples] == [None, None]
