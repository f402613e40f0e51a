"""``image_table``: GQA on the hub (``lmms-lab/GQA``) keeps a split's images and questions in two configs joined by
image id (``testdev_balanced_images``: ``id``, ``image``; ``testdev_balanced_instructions``: ``id``, ``imageId``,
``question``, ``answer``); the questions' config read alone had no image, the whole folder is refused as configs.
Tiny parquet files in the hub layout, built here (no network)."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.readers import read_split
from mtl_lora_vl.tasks.spec import SpecError, load_spec

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")

COLORS = {"n1": (200, 30, 30), "n2": (30, 200, 30), "n3": (30, 30, 200)}
COLUMNS = {"image_id": "imageId", "question": "question", "answers": "answer", "question_id": "id"}
IMAGES = {"path": "GQA/testdev_balanced_images", "key": "id"}


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _png(rgb) -> Image.Image:
    return Image.new("RGB", (8, 8), rgb)


def _gqa(root: Path, image_ids=("n3", "n1", "n2"), asked=("n1", "n2", "n1", "n3"), split="testdev",
         **more_images) -> Path:
    """lmms-lab/GQA's layout: one folder per config, a hub shard per split in each."""
    shard = f"{split}-00000-of-00001.parquet"
    (root / "GQA" / "testdev_balanced_images").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"id": list(image_ids), "image": [_png(COLORS.get(k, (9, 9, 9))) for k in image_ids],
                                **more_images}).to_parquet(str(root / "GQA" / "testdev_balanced_images" / shard))
    (root / "GQA" / "testdev_balanced_instructions").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({
        "id": [f"q{i}" for i in range(len(asked))], "imageId": list(asked),
        "question": [f"what colour is {k}?" for k in asked], "answer": ["red" for _ in asked],
        "fullAnswer": ["It is red." for _ in asked], "isBalanced": [True for _ in asked],
    }).to_parquet(str(root / "GQA" / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet"))
    return root


def _read(tmp_path, root=None, **kw):
    kw = {"path": "GQA/testdev_balanced_instructions", "split": "testdev", "columns": COLUMNS,
          "image_table": IMAGES, "cache_dir": str(tmp_path / "cache"), **kw}
    return read_split("hf_datasets", root or tmp_path / "data", **kw)


def test_questions_read_their_images_from_the_image_config_by_image_id(tmp_path):
    _gqa(tmp_path / "data")
    split = _read(tmp_path)
    exs = split.examples
    assert [(e.image_id, e.text, e.answers) for e in exs] == [
        ("n1", "what colour is n1?", ("red",)), ("n2", "what colour is n2?", ("red",)),
        ("n1", "what colour is n1?", ("red",)), ("n3", "what colour is n3?", ("red",))]
    # each image is its row of the image table (in another order than the questions), read lazily from it
    assert [e.image.row for e in exs] == [1, 2, 1, 0]
    assert {Path(e.image.table.location[0]).parent.name for e in exs} == {"testdev_balanced_images"}
    for e in exs:
        pixels = to_uint8_tensor(pickle.loads(pickle.dumps(e.image)), 8)   # (as a loader worker gets it)
        assert tuple(pixels[:, 4, 4].tolist()) == COLORS[e.image_id]
    assert exs[0].image is exs[2].image   # the rows of one image share one reference
    assert Image.open(io.BytesIO(exs[3].image.fetch())).getpixel((0, 0)) == COLORS["n3"]


def test_an_image_table_whose_split_is_named_otherwise_is_given_its_split(tmp_path):
    _gqa(tmp_path / "data", split="test")   # images in test-00000-of-00001, questions in testdev-...
    with pytest.raises(FileNotFoundError, match="no parquet file of split 'testdev'"):
        _read(tmp_path)
    assert len(_read(tmp_path, image_table={**IMAGES, "split": "test"}).examples) == 4


def test_an_image_id_the_image_table_lacks_is_refused_naming_the_row_and_the_count(tmp_path):
    _gqa(tmp_path / "data", image_ids=("n1", "n2"))
    with pytest.raises(ValueError, match=re.escape("row 3: image id 'n3' (column 'imageId') is not in column 'id' of "
                                                   "the image table ") + r".*\(1 of 4 rows' images missing\)"):
        _read(tmp_path)


def test_a_blank_image_id_is_refused(tmp_path):   # (a key naming two images: tests/test_hf_join_repeated_keys.py)
    _gqa(tmp_path / "data2", asked=("n1", "", "n2"))
    with pytest.raises(ValueError, match=re.escape("row 1: no image id in column 'imageId' (1 of 3 rows)")):
        _read(tmp_path, root=tmp_path / "data2")


def test_the_image_tables_columns_are_checked_by_name(tmp_path):
    _gqa(tmp_path / "data", thumb=[_png((1, 1, 1)) for _ in range(3)])
    with pytest.raises(ValueError, match=re.escape("image_table's key column 'imageid' not found; did you mean "
                                                   "'image'?")):
        _read(tmp_path, image_table={**IMAGES, "key": "imageid", "image": "image"})
    with pytest.raises(ValueError, match=re.escape("the image table has columns of images ['image', 'thumb']; name "
                                                   "its image column")):
        _read(tmp_path)
    split = _read(tmp_path, image_table={**IMAGES, "image": "image"})
    assert {e.image.column for e in split.examples} == {"image"}


def test_the_questions_config_alone_points_at_image_table(tmp_path):
    _gqa(tmp_path / "data")
    with pytest.raises(ValueError, match=re.escape("no image column; map one with") + r".*GQA on the hub.*"
                       + re.escape('image_table = {path = "GQA/testdev_balanced_images", key = "id"}')):
        _read(tmp_path, image_table=None)


def _spec(tmp_path, data: str) -> Path:
    path = tmp_path / "gqa.toml"
    path.write_text('kind = "vqa"\n[data]\nformat = "hf_datasets"\npath = "GQA/testdev_balanced_instructions"\n'
                    + data + '\n[data.train]\nsplit = "train"\n[data.val]\nsplit = "testdev"\n')
    return path


def test_a_spec_names_the_image_table_and_its_bad_forms_are_refused_at_load(tmp_path):
    cols = 'columns = {image_id = "imageId", question = "question", answers = "answer"}\n'
    ok = load_spec(_spec(tmp_path, cols + 'image_table = {path = "GQA/testdev_balanced_images", key = "id"}'))
    assert ok.data.options["image_table"] == IMAGES
    for table, said in [
        ('{path = "GQA/x", kye = "id"}', "option 'image_table': unknown key(s) ['kye']; 'kye': did you mean 'key'?"),
        ('{path = "GQA/x"}', "option 'image_table' needs key (the image table's path"),
        ('{path = "GQA/x", key = "id", image = " "}', "option 'image_table': ['image'] blank"),
        ('{path = "GQA/x", key = 3}', "option 'image_table' of format 'hf_datasets' must be a table of strings"),
    ]:
        with pytest.raises(SpecError, match=re.escape(said)):
            load_spec(_spec(tmp_path, cols + f"image_table = {table}"))
    with pytest.raises(SpecError, match=re.escape("option 'columns' maps ['image'] beside image_table")):
        load_spec(_spec(tmp_path, 'columns = {image = "img", image_id = "imageId", question = "question"}\n'
                        'image_table = {path = "GQA/x", key = "id"}'))
    with pytest.raises(SpecError, match=re.escape("option 'image_table' looks each row's image up by its image_id, "
                                                  "and columns maps no image_id; map the column that holds the image "
                                                  "table's 'id' values")):
        load_spec(_spec(tmp_path, 'columns = {question = "question"}\nimage_table = {path = "GQA/x", key = "id"}'))


def test_ids_pandas_wrote_as_floats_find_their_int_keys_and_a_nan_is_no_id(tmp_path):
    # pandas writes a column of ints with a blank cell as floats: 2.0 is the key 2, NaN no key (was: 'nan' a key,
    # so two images without one were "also row 3's", and every row's 2.0 "not in column 'id'")
    nan = float("nan")
    _gqa(tmp_path / "data", image_ids=(3.0, 1.0, 2.0, nan, nan), asked=(1, 2, 1, 3))
    assert [(e.image_id, e.image.row) for e in _read(tmp_path).examples] == [("1", 1), ("2", 2), ("1", 1), ("3", 0)]
    _gqa(tmp_path / "data2", image_ids=(3, 1, 2), asked=(1.0, 2.0, 1.0, 3.0))
    assert [e.image.row for e in _read(tmp_path, root=tmp_path / "data2").examples] == [1, 2, 1, 0]
    _gqa(tmp_path / "data3", image_ids=(3, 1, 2), asked=(1.0, nan, 2.0))
    with pytest.raises(ValueError, match=re.escape("row 1: no image id in column 'imageId' (1 of 3 rows)")):
        _read(tmp_path, root=tmp_path / "data3")


def test_an_image_table_of_one_file_or_one_saved_dataset_is_read_whole_beside_rows_of_a_split(tmp_path):
    # (it was read at the rows' split, which names no part of one table, and a blank split is refused: unreadable)
    _gqa(tmp_path / "data")
    folder = tmp_path / "data" / "GQA" / "testdev_balanced_images"
    shard = folder / "testdev-00000-of-00001.parquet"
    shard.rename(folder / "images.parquet")
    one_file = {**IMAGES, "path": "GQA/testdev_balanced_images/images.parquet"}
    assert [e.image.row for e in _read(tmp_path, image_table=one_file).examples] == [1, 2, 1, 0]
    datasets.Dataset.from_parquet(str(folder / "images.parquet"), cache_dir=str(tmp_path / "c2")).save_to_disk(
        str(tmp_path / "data" / "GQA" / "saved_images"))
    saved = {**IMAGES, "path": "GQA/saved_images"}
    assert [e.image.row for e in _read(tmp_path, image_table=saved).examples] == [1, 2, 1, 0]
    # the folder, whose file names no split: the image table's option named, and what reads it
    with pytest.raises(FileNotFoundError, match=re.escape("image_table 'GQA/testdev_balanced_images', read at split "
                                                          "'testdev' (the rows' split): ") + ".*no parquet file of "
                       "split 'testdev'.*" + re.escape('name its split as image_table = {..., split = "..."}, or give '
                                                       'one of its files as path')):
        _read(tmp_path)


def test_a_saved_dataset_dict_image_table_without_the_rows_split_names_the_image_tables_split(tmp_path):
    _gqa(tmp_path / "data")
    images = datasets.Dataset.from_parquet(
        str(tmp_path / "data" / "GQA" / "testdev_balanced_images" / "testdev-00000-of-00001.parquet"),
        cache_dir=str(tmp_path / "c2"))
    datasets.DatasetDict({"train": images, "val": images}).save_to_disk(str(tmp_path / "data" / "GQA" / "dict"))
    with pytest.raises(ValueError, match=re.escape("image_table 'GQA/dict', read at split 'testdev' (the rows' "
                                                   "split): ") + ".*" + re.escape(
                                                       "split 'testdev' not found; the saved dataset has splits "
                                                       "['train', 'val'] (name its split as image_table = {..., "
                                                       'split = "..."}')):
        _read(tmp_path, image_table={**IMAGES, "path": "GQA/dict"})
    assert len(_read(tmp_path, image_table={**IMAGES, "path": "GQA/dict", "split": "val"}).examples) == 4


def test_no_rows_id_among_the_keys_shows_both_and_asks_for_the_key_column(tmp_path):
    # image_id mapped to the questions' own id column (q0, q1, ...) by mistake: every row missing, and the message
    # told only to give another split or remove the rows
    _gqa(tmp_path / "data")
    with pytest.raises(ValueError, match=re.escape("(4 of 4 rows' images missing); no row's id is a key there (its "
                                                   "keys read e.g. ['n3', 'n1', 'n2'], the rows' ids e.g. ['q0', "
                                                   "'q1', 'q2']): is 'id' the column of the ids that 'id' gives")):
        _read(tmp_path, columns={**COLUMNS, "image_id": "id", "question_id": "imageId"})



def test_a_folder_of_configs_refused_points_at_image_table_where_one_holds_images(tmp_path):
    # (configs named without the split's name; GQA's own names, testdev_balanced_..., in the test below)
    _gqa(tmp_path / "data")
    for config in ("images", "instructions"):
        (tmp_path / "data" / "GQA" / f"testdev_balanced_{config}").rename(tmp_path / "data" / "GQA" / config)
    with pytest.raises(ValueError, match=re.escape("lie in the folders ['images', 'instructions'], as the configs of a "
                                                   "dataset do") + ".*" + re.escape(
                                                       'path = "GQA/instructions"; where config \'images\' holds the '
                                                       "images of another's rows, read the rows' config as path and "
                                                       'join it by image id: path = "GQA/instructions", image_table = '
                                                       '{path = "GQA/images", key = "id"} and columns = {image_id = '
                                                       '"imageId", ...}')):
        _read(tmp_path, path="GQA", image_table=None, columns=None)
    exs = _read(tmp_path, path="GQA/instructions", image_table={**IMAGES, "path": "GQA/images"}).examples
    assert [e.image.row for e in exs] == [1, 2, 1, 0]


_GQA_FIX = re.escape('path = "GQA/testdev_balanced_instructions", image_table = {path = "GQA/testdev_balanced_images", '
                     'key = "id"} and columns = {image_id = "imageId", ...}')


@pytest.mark.parametrize("split", ["testdev", None])
@pytest.mark.parametrize("layout", ["shards", "parquet_branch"])
def test_gqa_hub_folder_names_are_refused_as_configs_pointing_at_image_table(tmp_path, split, layout):
    """lmms-lab/GQA's own config names hold the split's (``testdev_balanced_images/testdev-00000-of-00001.parquet``;
    the parquet branch: ``testdev_balanced_images/testdev/0000.parquet``). path = "GQA" with split = "testdev" was
    told to set split = "testdev_balanced_images" (the folders taken for splits); with no split both configs were read
    as one table, a raw datasets CastError. Both are refused as configs, naming the join."""
    _gqa(tmp_path / "data")
    if layout == "parquet_branch":
        for config in ("images", "instructions"):
            folder = tmp_path / "data" / "GQA" / f"testdev_balanced_{config}"
            (folder / "testdev").mkdir()
            (folder / "testdev-00000-of-00001.parquet").rename(folder / "testdev" / "0000.parquet")
    with pytest.raises(ValueError, match=re.escape("the parquet files of split 'testdev' lie in the folders "
                                                   "['testdev_balanced_images', 'testdev_balanced_instructions'], as "
                                                   "the configs of a dataset do") + ".*" + _GQA_FIX) as e:
        _read(tmp_path, path="GQA", split=split, image_table=None, columns=None)
    assert 'split = "testdev_balanced_images"' not in str(e.value)
    exs = _read(tmp_path, split=split).examples   # (what the refusal says to set reads the rows with their images)
    assert [e.image.row for e in exs] == [1, 2, 1, 0]


def test_an_image_table_row_without_an_image_is_named_by_its_row_there(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _gqa(tmp_path / "data")
    shard = tmp_path / "data" / "GQA" / "testdev_balanced_images" / "testdev-00000-of-00001.parquet"
    table = pq.read_table(shard)
    cells = table.column("image").to_pylist()
    cells[2] = None   # n2's image
    pq.write_table(table.set_column(1, "image", pa.array(cells, type=table.schema.field("image").type)), shard)
    with pytest.raises(ValueError, match=re.escape("row 1: no image in column 'image' of the image table ") + ".*"
                       + re.escape("(its row 2, whose key is the row's image id)")):
        _read(tmp_path)
