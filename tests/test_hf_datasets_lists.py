"""The hf_datasets reader on ONE column of lists of images (``Sequence(Image())``: Mantis-Instruct, MMMU-style sets,
NLVR2 copies): ``columns = {images = "images"}`` -> rows of several images, one lazy reference per list element."""

from __future__ import annotations

import io
import logging
import pickle

import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.common import DataFormatError  # noqa: E402
from mtl_lora_vl.data.images import ImageError, image_key, load_image, to_uint8_tensor  # noqa: E402
from mtl_lora_vl.data.readers import PathEscapeError, read_split  # noqa: E402
from mtl_lora_vl.data.records import image_parts  # noqa: E402

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
LIST = {"images": "images", "statement": "sentence", "label": "label"}


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _png(i: int, size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLORS[i % len(COLORS)]).save(buf, "PNG")
    return buf.getvalue()


def _lists(n: int, element=None, colours=None, labels=None, extra=None) -> datasets.Dataset:
    """Row i: images of colours i and i + 1 (or ``colours[i]``), as a list column of ``element`` (Image);
    ``extra`` maps further column names to (values, feature). Built in one ``from_dict`` rather than with
    ``add_column(..., feature=)``, which datasets < 4.0 lacks (the floor is 2.21)."""
    colours = colours or [(i, i + 1) for i in range(n)]
    labels = [i % 2 == 0 for i in range(n)] if labels is None else labels
    extra = extra or {}
    return datasets.Dataset.from_dict(
        {"images": [[_png(c) for c in cs] for cs in colours], "sentence": [f"statement {i}" for i in range(n)],
         "label": labels, **{name: values for name, (values, _) in extra.items()}},
        features=datasets.Features({"images": datasets.Sequence(element or datasets.Image()),
                                    "sentence": datasets.Value("string"), "label": datasets.Value("bool"),
                                    **{name: feature for name, (_, feature) in extra.items()}}))


@pytest.mark.parametrize("element", ["Image", "binary"])
def test_a_list_column_reads_to_one_lazy_reference_per_element(tmp_path, element):
    from mtl_lora_vl.data.hf_images import DatasetListImage

    root = tmp_path / "data"
    feature = datasets.Image() if element == "Image" else datasets.Value("binary")
    datasets.DatasetDict({"train": _lists(3, feature, colours=[(0, 1), (1, 2), (2, 3, 4)])}).save_to_disk(root / "l")
    split = read_split("hf_datasets", root, path="l", split="train", columns=LIST)
    ex = split.examples
    assert len(ex) == 3 and split.skipped == 0 and split.class_names is None
    assert [e.label for e in ex] == [1, 0, 1] and ex[1].text == "statement 1"
    assert [e.image_id for e in ex] == ["0", "1", "2"]
    assert [len(e.image) for e in ex] == [2, 2, 3]   # as JSONL rows: two or more, the kind decides how many
    assert all(isinstance(p, DatasetListImage) for e in ex for p in e.image)
    assert [(p.column, p.row, p.position) for p in ex[2].image] == [("images", 2, j) for j in range(3)]
    assert [load_image(p).getpixel((3, 3)) for p in ex[2].image] == [COLORS[2], COLORS[3], COLORS[4]]
    assert str(ex[1].image[1]).endswith("[train] row 1 column 'images' position 1")
    assert image_key(ex[1].image).endswith("row 1 column 'images' position 0 + " + str(ex[1].image[1]))
    blob = pickle.dumps(ex[1])   # small: the bytes stay in the table, nothing opened travels
    assert len(blob) < 1500
    copy = pickle.loads(blob)
    assert copy.image == ex[1].image and copy.image[0].table.opened == {}
    assert load_image(copy.image[1]).getpixel((0, 0)) == COLORS[2]


def test_a_list_column_of_file_paths_under_the_root(tmp_path):
    root = tmp_path / "data"
    (root / "pics").mkdir(parents=True)
    for i in range(3):
        (root / "pics" / f"{i}.png").write_bytes(_png(i))
    datasets.Dataset.from_dict({"ims": [["0.png", "1.png"], ["1.png", "2.png"]], "s": ["x", "y"],
                                "t": ["yes", "no"]}).save_to_disk(root / "paths")
    cols = {"images": "ims", "text": "s", "label": "t"}
    split = read_split("hf_datasets", root, path="paths", columns=cols, images="pics")
    pics = (root / "pics").resolve()
    assert [e.image for e in split.examples] == [(str(pics / "0.png"), str(pics / "1.png")),
                                                 (str(pics / "1.png"), str(pics / "2.png"))]
    assert [e.label for e in split.examples] == [1, 0] and split.examples[0].image_id == "0.png|1.png"
    datasets.Dataset.from_dict({"ims": [["0.png", "../../out.png"]], "s": ["x"], "t": ["yes"]}).save_to_disk(root / "e")
    with pytest.raises(PathEscapeError, match=r"row 0 column 'ims' position 1: .*outside the data root"):
        read_split("hf_datasets", root, path="e", columns=cols, images="pics")


def test_parquet_list_columns_written_by_datasets_and_by_pyarrow(tmp_path):
    """A parquet file written by ``datasets`` (its features in the schema) and one written by pyarrow alone: a list
    of ``{bytes, path}`` structs, which ``datasets`` reads as ``List({'bytes', 'path'})``."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "hf").mkdir()
    _lists(3).to_parquet(str(tmp_path / "hf" / "train-0.parquet"))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    raw = pa.table({"images": pa.array([[{"bytes": _png(c), "path": None} for c in cs] for cs in [(3, 4), (5, 0)]],
                                       type=pa.list_(struct)),
                    "sentence": ["s0", "s1"], "label": ["true", "false"]})
    (tmp_path / "raw").mkdir()
    pq.write_table(raw, tmp_path / "raw" / "train-0.parquet")
    kw = {"split": "train", "columns": LIST, "cache_dir": str(tmp_path / "cache")}
    hf = read_split("hf_datasets", tmp_path, path="hf", **kw)
    assert [load_image(p).getpixel((0, 0)) for p in hf.examples[2].image] == [COLORS[2], COLORS[3]]
    ex = read_split("hf_datasets", tmp_path, path="raw", **kw).examples
    assert [e.label for e in ex] == [1, 0]
    assert [load_image(p).getpixel((0, 0)) for e in ex for p in e.image] == [COLORS[3], COLORS[4], COLORS[5], COLORS[0]]
    # the references decode in another interpreter (a loader worker started afresh)
    code = ("import pickle,sys; from mtl_lora_vl.data.images import load_image; "
            "im = pickle.loads(sys.stdin.buffer.read()); print([load_image(p).getpixel((0, 0)) for p in im])")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(ex[1].image), capture_output=True,
                         check=True).stdout.decode()
    assert out.strip() == str([COLORS[5], COLORS[0]])


class _Backbone:
    image_size = 16

    def preprocess_uint8(self, images, dtype):
        return images


def test_loader_workers_read_the_elements_lazily_and_get_the_same_pixels(tmp_path):
    from mtl_lora_vl.data.loader import iter_sized_image_batches

    colours = [(0, 1), (2, 3), (4, 5), (1, 3), (5, 2), (0, 4)]
    sizes = [[(20 + 4 * i, 16 + 5 * j) for j in range(2)] for i in range(6)]   # a wrong row or element would show
    datasets.Dataset.from_dict(
        {"images": [[_png(c, sizes[i][j]) for j, c in enumerate(cs)] for i, cs in enumerate(colours)],
         "sentence": [f"s{i}" for i in range(6)], "label": [True, False] * 3},
        features=_lists(1).features).save_to_disk(tmp_path / "l")
    split = read_split("hf_datasets", tmp_path, path="l", columns=LIST, verify=False)
    parts = [p for ex in split.examples for p in image_parts(ex)]
    got = torch.cat([b for b, _ in iter_sized_image_batches(_Backbone(), parts, batch_size=4, device="cpu",
                                                            num_workers=2)])
    assert split.examples[0].image[0].table.opened == {}   # read in the workers only, not here
    want = torch.stack([to_uint8_tensor(Image.open(io.BytesIO(_png(c, sizes[i][j]))), 16)
                        for i, cs in enumerate(colours) for j, c in enumerate(cs)])
    assert got.shape == (12, 3, 16, 16) and torch.equal(got, want)


def test_a_corrupt_image_in_a_list_is_named_by_its_row_and_position(tmp_path, caplog):
    lists = [[_png(0), _png(1)], [_png(2), _png(3)[:20]], [_png(4), _png(5)]]   # row 1's second image cut short
    datasets.Dataset.from_dict({"images": lists, "sentence": ["a", "b", "c"], "label": [True, False, True]},
                               features=datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                                           "sentence": datasets.Value("string"),
                                                           "label": datasets.Value("bool")})
                               ).save_to_disk(tmp_path / "broken")
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data"):
        split = read_split("hf_datasets", tmp_path, path="broken", columns=LIST)
    assert [e.text for e in split.examples] == ["a", "c"] and split.skipped == 1
    assert "row 1 column 'images' position 1" in caplog.text and "position 0" not in caplog.text
    with pytest.raises(ImageError, match=r"row 1 column 'images' position 1"):
        read_split("hf_datasets", tmp_path, path="broken", columns=LIST, strict=True)
    # unchecked, the loader's fallback names that one image
    from mtl_lora_vl.data.fallback import ImageFallback

    fallback = ImageFallback("lists", read_split("hf_datasets", tmp_path, path="broken", columns=LIST,
                                                 verify=False).examples, 8)
    row, pixels = fallback.decode(1)
    assert row != 1 and tuple(pixels.shape) == (2, 3, 8, 8)
    assert len(fallback.failed_files()) == 1 and fallback.failed_files()[0].endswith("row 1 column 'images' position 1")


def test_a_missing_element_is_named_by_its_row_and_position(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"images": pa.array([[{"bytes": _png(0), "path": None}, None]], type=pa.list_(struct)),
                             "sentence": ["s"], "label": [True]}), tmp_path / "gap.parquet")
    with pytest.raises(DataFormatError, match=r"row 0 column 'images' position 1: no image"):
        read_split("hf_datasets", tmp_path, path="gap.parquet", columns=LIST, cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("colours, match", [
    ([(0, 1), (2,)], r"row 1: column 'images' holds 1 image\(s\); a row of several images needs two or more"),
    ([(0, 1), ()], r"row 1: column 'images' holds 0 image\(s\)"),
])
def test_a_list_too_short_for_several_images_is_refused(tmp_path, colours, match):
    _lists(2, colours=colours).save_to_disk(tmp_path / "t")
    with pytest.raises(DataFormatError, match=match):
        read_split("hf_datasets", tmp_path, path="t", columns=LIST)


def test_a_list_of_another_length_than_trainings_is_refused_by_the_nlvr_kind(tmp_path):
    """As on JSONL rows: the reader takes rows of two or more images; the nlvr kind takes its count from the first
    training row and refuses a row of another count at start-up."""
    from vl_tiny import tiny_backbone

    from mtl_lora_vl.tasks import build_kind, load_spec

    _lists(3, colours=[(0, 1), (1, 2), (2, 3, 4)]).save_to_disk(tmp_path / "t")
    split = read_split("hf_datasets", tmp_path, path="t", columns=LIST)
    with pytest.raises(ValueError, match=r"training example '2' holds 3 image\(s\); a row of an nlvr task holds 2 "
                                         r"images, as training's"):
        build_kind(load_spec("nlvr"), split, tiny_backbone(tmp_path / "clip"))


@pytest.mark.parametrize("columns, match", [
    ({"image": "images", "text": "sentence"}, r"column 'images' holds a list of images in each row .*not one image; "
                                              r"map it alone as images = 'images'"),
    ({"images": ["images", "other"], "statement": "sentence", "label": "label"},
     r"column 'images' holds a list of images .*map it alone as images = 'images'"),
    (None, r"no image column, and column\(s\) \['images'\] hold lists of images; a row of several images is not "
           r"guessed.*images = \"images\""),
    ({"images": "other", "statement": "sentence", "label": "label"},
     r"images = 'other' names a column of .*Image.*not of lists of images.*or one column whose rows are lists"),
    ({"images": "images", "image": "other", "statement": "sentence", "label": "label"}, r"both image .* and images"),
])
def test_a_list_column_mapped_as_one_image_or_a_single_column_as_a_list_is_refused(tmp_path, columns, match):
    other = [{"bytes": _png(i), "path": None} for i in range(2)]
    _lists(2, extra={"other": (other, datasets.Image())}).save_to_disk(tmp_path / "t")
    assert datasets.load_from_disk(str(tmp_path / "t")).features["other"] == datasets.Image()
    with pytest.raises(ValueError, match=match):
        read_split("hf_datasets", tmp_path, path="t", columns=columns)


def test_rows_of_one_image_id_share_their_references(tmp_path):
    same = _lists(3, colours=[(0, 1), (0, 1), (2, 3)]).add_column("pair_id", ["p", "p", "q"])
    same.save_to_disk(tmp_path / "same")
    ex = read_split("hf_datasets", tmp_path, path="same", columns={**LIST, "image_id": "pair_id"}).examples
    assert [(p.row, p.position) for p in ex[1].image] == [(0, 0), (0, 1)]
    assert [e.image_id for e in ex] == ["p", "p", "q"]


def test_an_nlvr_task_on_a_list_column_trains_and_evaluates_through_the_command(tmp_path):
    from test_nlvr import assert_pair_spec_trains

    data = tmp_path / "data"
    train = _lists(6).add_column("kind", [["a", "b"][i % 2] for i in range(6)])
    datasets.DatasetDict({"train": train, "validation": train.select(range(4))}).save_to_disk(data / "nlvr2")
    spec = tmp_path / "pairs.toml"
    spec.write_text('name = "pairs"\nkind = "nlvr"\n[data]\nformat = "hf_datasets"\npath = "nlvr2"\n'
                    'columns = {images = "images", statement = "sentence", label = "label", question_type = "kind"}\n'
                    '[data.train]\nsplit = "train"\n[data.val]\nsplit = "validation"\n'
                    '[data.test]\nsplit = "validation"\n')
    assert_pair_spec_trains(spec, data, tmp_path / "run")
