"""Helper 288: without an image_id column the hf_datasets reader hashed every row's encoded image at each start,
resume and eval (about 1 s per 600 MB; the whole table read). A row whose image no other row's matches in length
holds an image of its own: only rows of a shared length are hashed, and rows of the same bytes still group."""

from __future__ import annotations

import io

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

import mtl_lora_vl.data.hf_datasets as hf  # noqa: E402
from mtl_lora_vl.data.readers import read_split  # noqa: E402


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _read_hashing(tmp_path, monkeypatch, images: list, features) -> tuple:
    """The split the hf_datasets reader reads (verify=False) from a saved table of ``images`` with captions c0, c1,
    ..., and the bytes of every image it hashed as it read."""
    datasets.Dataset.from_dict({"image": images, "caption": [f"c{i}" for i in range(len(images))]},
                               features=features).save_to_disk(tmp_path / "ds")
    hashed = []
    real = hf.hashlib.sha256

    def counted(data=b""):
        hashed.append(bytes(data))
        return real(data)

    monkeypatch.setattr(hf.hashlib, "sha256", counted)
    s = read_split("hf_datasets", tmp_path, path="ds", verify=False)
    monkeypatch.undo()
    return s, hashed


@pytest.mark.parametrize("as_struct", [True, False])
def test_only_rows_whose_image_length_is_shared_are_hashed(tmp_path, monkeypatch, as_struct):
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    red, wide = _png((8, 8), (200, 0, 0)), _png((40, 8), (0, 200, 0))
    blue = red[:-1] + bytes([red[-1] ^ 1])   # as long as red, other bytes (not decoded: verify=False)
    assert len(red) == len(blue) != len(wide)
    images = [red, wide, red, blue]   # rows 0 and 2 one image; row 3 as long but another image; row 1 alone
    column = [{"bytes": b, "path": None} for b in images] if as_struct else images
    features = datasets.Features({"image": datasets.Image() if as_struct else datasets.Value("binary"),
                                  "caption": datasets.Value("string")})
    s, hashed = _read_hashing(tmp_path, monkeypatch, column, features)
    hashed = [len(h) for h in hashed]
    assert sorted({(e.image_id, e.captions) for e in s.examples}) == [("0", ("c0", "c2")), ("1", ("c1",)),
                                                                       ("3", ("c3",))]
    assert hashed.count(len(red)) == 3 and len(wide) not in hashed   # rows 0, 2, 3; row 1 not read


def test_rows_of_one_length_that_end_otherwise_are_not_read_whole(tmp_path, monkeypatch):
    """Images of one length (raw or fixed-size encodings) were each read whole to be hashed, besides the check's
    read: 10,000 such rows, 10,000 hashes. Rows whose bytes near the end differ are other images, unread; rows that
    agree there (the same image, or one differing elsewhere) are still hashed and told apart."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    red = _png((8, 8), (200, 0, 0))
    other = bytearray(red)
    other[-40] ^= 1   # as long as red, another image (in the bytes before the end marker)
    head = bytearray(red)
    head[-1] ^= 1   # as long, and alike up to the last 16 bytes: told apart by its hash
    images = [red, bytes(other), red, bytes(head)]
    features = datasets.Features({"image": datasets.Value("binary"), "caption": datasets.Value("string")})
    s, hashed = _read_hashing(tmp_path, monkeypatch, images, features)
    assert sorted({(e.image_id, e.captions) for e in s.examples}) == [("0", ("c0", "c2")), ("1", ("c1",)),
                                                                       ("3", ("c3",))]
    assert sorted(hashed) == sorted([red, red, bytes(head)])   # row 1 not read whole
