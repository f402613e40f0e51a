"""Image paths written on Windows (``img\\0.png``) name the same files on Linux; they were looked for as one file named
'img\\0.png', so every row of such a data file was skipped as 'file not found'."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.data.common import PathEscapeError, resolve_under
from mtl_lora_vl.data.readers import read_split

pytestmark = pytest.mark.skipif(os.sep != "/", reason="a backslash is already a separator on Windows")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data" / "img" / "sub").mkdir(parents=True)
    for i, name in enumerate(("img/0.png", "img/sub/1.png")):
        Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(tmp_path / "data" / name)
    return tmp_path / "data"


def test_a_csv_written_on_windows_reads_its_images(root):
    (root / "a.csv").write_text("image,label\nimg\\0.png,cat\nimg\\sub\\1.png,dog\n")
    split = read_split("csv", root, file="a.csv", strict=True)
    assert [Path(ex.image) for ex in split.examples] == [root.resolve() / "img" / "0.png",
                                                          root.resolve() / "img" / "sub" / "1.png"]
    assert split.class_names == ["cat", "dog"]


def test_a_windows_path_that_climbs_out_is_refused(root):
    (root.parent / "secret.png").write_bytes(b"")
    (root / "a.jsonl").write_text(json.dumps({"image": "..\\secret.png", "label": "cat"}) + "\n")
    with pytest.raises(PathEscapeError, match=r"a\.jsonl:1: .*outside the data root"):
        read_split("jsonl", root, file="a.jsonl")
    with pytest.raises(PathEscapeError, match="is absolute"):
        resolve_under(root, "\\img\\0.png")


def test_a_file_whose_name_holds_a_backslash_is_still_that_file(root):
    odd = root / "img" / "a\\b.png"
    Image.new("RGB", (8, 8)).save(odd, format="PNG")
    assert resolve_under(root, "img/a\\b.png") == odd.resolve()


def test_a_backslash_path_too_long_to_look_up_resolves_as_a_plain_long_name_does(root):
    """Looking for a file named as written ('img\\xxx...') raised OSError 'File name too long' out of the reader; a
    long name without a backslash resolves (and is then skipped as any missing file is)."""
    long = "x" * 300
    assert resolve_under(root, f"img\\{long}.png") == resolve_under(root, f"img/{long}.png")
