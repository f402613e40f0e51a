"""Two CSV files joined into one (``cat a.csv b.csv``) hold the header twice; the second was read as a row: its label
"label" became a class of no example (in every prediction's choices: 3 classes for a cat/dog file) and its image
"image" a missing file. It is refused, naming the line (helper 314)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.readers import read_split


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_a_header_repeated_among_the_rows_is_refused_by_line(root: Path, bom: str) -> None:
    (root / "joined.csv").write_text(f"image,label\nimg/0.png,cat\nimg/1.png,dog\n{bom}image , label\nimg/2.png,cat\n",
                                     encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"joined\.csv:4: the row repeats the header \(image,label\).*Remove"):
        read_split("csv", root, file="joined.csv")


def test_a_row_naming_some_columns_is_read(root: Path) -> None:
    Image.new("RGB", (8, 8)).save(root / "image", "PNG")   # a file named "image" whose class is "dog"
    (root / "ok.csv").write_text("image,label\nimg/0.png,cat\nimage,dog\n")
    s = read_split("csv", root, file="ok.csv")
    assert s.class_names == ["cat", "dog"] and [e.label for e in s.examples] == [0, 1]


def test_a_header_of_the_same_columns_in_another_order_is_refused_by_line(root: Path) -> None:
    """A second file written with its columns in another order (``label,image``) joined on: its header row gave the
    class "image", and every row after it was read with its cells under the wrong columns (the class "2.png", the
    image "bird"): 4 classes for a cat/dog/bird file, the bird row lost, and only "skipped 2 unreadable image(s)"."""
    (root / "joined.csv").write_text("image,label\nimg/0.png,cat\nimg/1.png,dog\nlabel,image\nbird,img/2.png\n")
    with pytest.raises(DataFormatError, match=r"joined\.csv:4: the row names the header's columns in another order "
                                              r"\(label,image\).*Remove"):
        read_split("csv", root, file="joined.csv")
