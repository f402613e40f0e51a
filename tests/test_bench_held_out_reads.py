"""The held-out check reads a table's images a slice of their column at a time, and only as far as telling two of
them apart needs (helper 428): two Hugging Face splits of equal size sorted alike (row keys all matching) had every
image fetched and digested one row at a time -- seconds at a grid's start for 10k rows. Copies are still told."""

from __future__ import annotations

import io
import shutil

import pytest

from mtl_lora_vl.benchmark.held_out import check_held_out
from mtl_lora_vl.data.hf_table import DatasetImage
from mtl_lora_vl.tasks import load_spec


def _images(rng, n: int, heights: list[int]) -> list[dict]:
    from PIL import Image

    out = []
    for i in range(n):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (heights[i % len(heights)], 8, 3), dtype="uint8")).save(b, "PNG")
        out.append({"bytes": b.getvalue(), "path": None})
    return out


def test_tables_are_read_in_slices_and_copies_still_told(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import numpy as np

    from mtl_lora_vl.data.readers import read_split

    rng = np.random.default_rng(0)
    feat = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    val = _images(rng, 6, [8])            # (one length: only digests tell them apart)
    other = _images(rng, 6, [8, 9, 10])   # (lengths that differ from most of val's)
    labels = [0, 0, 0, 1, 1, 1]
    for name, images in (("val", val), ("test", other), ("part", [*val[:2], *other[2:]])):
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=feat).to_parquet(
            tmp_path / f"{name}.parquet")
    shutil.copy(tmp_path / "val.parquet", tmp_path / "copy.parquet")
    fetched = []
    real = DatasetImage.fetch
    monkeypatch.setattr(DatasetImage, "fetch", lambda self: fetched.append(self.row) or real(self))

    def read(name: str):
        return read_split("hf_datasets", tmp_path, path=f"{name}.parquet", cache_dir=str(tmp_path / "cache"))

    spec = load_spec("vqa")   # (only its name is read)

    def check(test: str) -> int:
        splits = {"val": read("val"), "test": read(test)}
        fetched.clear()   # (reading a split may read images; the check is what is counted)
        try:
            return check_held_out(spec, splits)
        finally:
            assert fetched == [], f"{test}: rows {fetched} read one by one"   # (read with their column's slice)

    assert check("test") == 0
    with pytest.warns(UserWarning, match="2 of the 6 rows of its test split are also rows of its val split"):
        assert check("part") == 2
    for name in ("val", "copy"):   # the same file, and a copy of it
        with pytest.raises(ValueError, match="every one of the 6 rows of its test split is also a row of its val"):
            check(name)
