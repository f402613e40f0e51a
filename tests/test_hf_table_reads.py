"""Reading an hf_datasets split fetches each image once, for its check, and reads it from the Arrow column itself
(helper 444): every fetch went through ``Dataset.__getitem__`` of the reopened table, about 50 us a row (0.5 s of a
10k-row split's start-up, and again per row in a loader worker), where the memory-mapped column gives the same cell
in about 5 us (the array kept: one made anew per row costs as much again, 46 us at 2000 chunks). A table seen
through an indices mapping is still read through it."""

from __future__ import annotations

import io
import pickle

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from mtl_lora_vl.data.hf_table import DatasetImage, DatasetTable  # noqa: E402
from mtl_lora_vl.data.readers import read_split  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def _counted(monkeypatch) -> tuple[list[int], list[int]]:
    """(rows fetched, rows read one by one through Dataset.__getitem__) from here on."""
    fetched: list[int] = []
    got: list[int] = []
    fetch, getitem = DatasetImage.fetch, datasets.Dataset.__getitem__
    monkeypatch.setattr(DatasetImage, "fetch", lambda self: fetched.append(self.row) or fetch(self))
    monkeypatch.setattr(datasets.Dataset, "__getitem__", lambda self, key: (isinstance(key, int) and got.append(key))
                        or getitem(self, key))
    return fetched, got


@pytest.mark.parametrize("saved", ["parquet", "disk"])
def test_a_read_fetches_each_image_once_from_its_column(tmp_path, monkeypatch, saved):
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": _png(20 * i), "path": None} for i in range(6)],
                                     "caption": [f"c{i}" for i in range(6)]}, features=features)
    ds.to_parquet(tmp_path / "d.parquet") if saved == "parquet" else ds.save_to_disk(tmp_path / "d")
    fetched, got = _counted(monkeypatch)
    split = read_split("hf_datasets", tmp_path, path="d.parquet" if saved == "parquet" else "d",
                       cache_dir=str(tmp_path / "cache"))
    assert sorted(fetched) == list(range(6))   # each image once: its check (verify = true)
    assert got == []   # was: one Dataset.__getitem__ per image
    assert split.examples[4].image.fetch() == _png(80)
    table = split.examples[0].image.table   # one array kept (built anew per row, its chunk lookup cost as much)
    assert table.cells("image") is table.cells("image") and pickle.loads(pickle.dumps(table)).arrays == {}


@pytest.mark.parametrize("layout", ["columns", "lists"])
def test_rows_of_several_images_read_each_image_once_from_its_column(tmp_path, monkeypatch, layout):
    img, text = datasets.Image(), datasets.Value("string")
    pairs = [[{"bytes": _png(10 * i + j), "path": None} for j in range(2)] for i in range(4)]
    if layout == "columns":
        data = {"left": [p[0] for p in pairs], "right": [p[1] for p in pairs]}
        features = {"left": img, "right": img}
        images: str | list[str] = ["left", "right"]
    else:
        data, features, images = {"images": pairs}, {"images": datasets.Sequence(img)}, "images"
    datasets.Dataset.from_dict({**data, "sentence": list("abcd"), "label": [True, False] * 2},
                               features=datasets.Features({**features, "sentence": text,
                                                           "label": datasets.Value("bool")})
                               ).to_parquet(tmp_path / "p.parquet")
    fetched, got = _counted(monkeypatch)
    split = read_split("hf_datasets", tmp_path, path="p.parquet", cache_dir=str(tmp_path / "cache"),
                       columns={"images": images, "statement": "sentence", "label": "label"})
    assert sorted(fetched) == sorted([0, 0, 1, 1, 2, 2, 3, 3]) and got == []
    assert [part.fetch() for part in split.examples[3].image] == [_png(30), _png(31)]


def test_a_table_opened_through_an_indices_mapping_is_read_through_it(tmp_path):
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": [{"bytes": _png(20 * i), "path": None} for i in range(4)]},
                               features=features).save_to_disk(tmp_path / "d")
    table = DatasetTable("disk", (str(tmp_path / "d"),), None)
    table.opened["image"] = datasets.load_from_disk(str(tmp_path / "d")).select([3, 1]).with_format("arrow")
    assert [DatasetImage(table, "image", r).fetch() for r in (0, 1)] == [_png(60), _png(20)]
