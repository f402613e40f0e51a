"""Image references given as URLs (https://..., file://...) are refused with the row that gives them, not looked for
as files under the data root ('<root>/https:/x.org/a.png: file not found') and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.common import PathEscapeError, resolve_under
from mtl_lora_vl.data.readers import read_split


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "img" / "0.png")
    return tmp_path


@pytest.mark.parametrize("url", ["https://example.org/cat.jpg", "http://example.org/a/b.png", "s3://bucket/c.jpg"])
def test_a_jsonl_row_with_an_image_url_is_refused_naming_the_line(root, url):
    rows = [{"image": "img/0.png", "label": "cat"}, {"image": url, "label": "dog"}]
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PathEscapeError, match=rf"a\.jsonl:2: image path '{url}' is a URL; .*download them"):
        read_split("jsonl", root, file="a.jsonl")


def test_a_csv_row_with_an_image_url_is_refused_under_an_images_folder_too(root):
    (root / "a.csv").write_text("image,label\n0.png,cat\nhttps://example.org/dog.jpg,dog\n")
    with pytest.raises(PathEscapeError, match=r"a\.csv:3: image path 'https://example.org/dog.jpg' is a URL"):
        read_split("csv", root, file="a.csv", images="img", strict=False)


def test_a_parquet_path_column_with_an_image_url_names_the_row(root):
    pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (root / "t").mkdir()
    pq.write_table(pa.table({"image": ["img/0.png", "https://example.org/a.png"], "label": ["cat", "dog"]}),
                   root / "t" / "train-0.parquet")
    with pytest.raises(PathEscapeError, match=r"train-0\.parquet \[train\] row 1: image path 'https://exa.* is a URL"):
        read_split("hf_datasets", root, path="t", split="train")


def test_plain_and_drive_like_paths_are_not_urls(root):
    assert resolve_under(root, "img/0.png") == root.resolve() / "img" / "0.png"
    assert resolve_under(root, "img/a:b.png").name == "a:b.png"   # a colon inside a file name
    with pytest.raises(PathEscapeError, match="is absolute"):
        resolve_under(root, "C:/data/0.png")
