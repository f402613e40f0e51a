"""A PIL image given as an example's image (documented in ``Example``) that was opened lazily reads its file in the
loader worker: a broken file must be an ImageError naming it, so its row is replaced (or, strict, named)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl_lora_vl.data.fallback import ImageFallback
from mtl_lora_vl.data.images import ImageError, load_image, note_depth, to_uint8_tensor
from mtl_lora_vl.data.records import Example


def _jpegs(tmp_path: Path) -> tuple[Path, Path]:
    arr = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    good, cut = tmp_path / "good.jpg", tmp_path / "cut.jpg"
    Image.fromarray(arr).save(good, quality=90)
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return good, cut


def test_a_truncated_lazily_opened_pil_image_is_an_image_error_naming_its_file(tmp_path):
    _, cut = _jpegs(tmp_path)
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot be decoded \(OSError: image file is truncated"):
        to_uint8_tensor(Image.open(cut), 16)
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot be decoded"):
        load_image(Image.open(cut), 16)


def test_a_row_whose_pil_image_fails_is_replaced_or_named_when_strict(tmp_path):
    good, cut = _jpegs(tmp_path)
    rows = [Example(Image.open(good), "good-0"), Example(Image.open(cut), "row-7")]
    index, pixels = ImageFallback("t", rows, 16).decode(1)
    assert index == 0 and tuple(pixels.shape) == (3, 16, 16)
    rows = [Example(Image.open(good), "good-0"), Example(Image.open(cut), "row-7")]
    with pytest.raises(ImageError, match=r"task 't': example 'row-7': image .*cut\.jpg: cannot be decoded.*strict"):
        ImageFallback("t", rows, 16, strict=True).decode(1)


def test_an_in_memory_pil_image_is_read_whatever_pillow_keeps_on_it():
    """Pillow 13 keeps ``tile`` on images read from files only: an in-memory image (``Image.fromarray``, ``Image.new``)
    was refused as 'cannot be decoded (AttributeError: ... no attribute 'tile')', so every such row was replaced."""
    arr = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for img in (Image.fromarray(arr), Image.new("RGB", (16, 16), (10, 200, 30))):
        assert to_uint8_tensor(img, 16).permute(1, 2, 0).numpy().tolist() == np.asarray(img).tolist()
        assert load_image(img).tobytes() == img.tobytes()


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.5, 1.0], [0, 127, 255]),               # levels 0-1 (a float array from a model or a library)
    ([0.0, 50.0, 100.0], [0, 50, 100]),             # levels 0-255, as convert("F") of an 8-bit image: not brightened
    ([0.0, 32767.5, 65535.0], [0, 127, 255]),       # levels 0-65535, as convert("F") of a 16-bit image
    ([0.0, 1e6, 2e6], [0, 127, 255]),               # beyond 16 bits: nothing to go by but its brightest pixel
])
def test_a_float_image_is_read_by_the_levels_its_values_fall_in(values, expected):
    img = Image.fromarray(np.array([values], dtype=np.float32), mode="F")
    assert [load_image(img).getpixel((i, 0))[0] for i in range(3)] == expected


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_a_resized_float_image_whose_ringing_passes_its_level_keeps_that_level(top):
    """A float image resized with Pillow's default bicubic rings past its level's top at a sharp edge (a 0-1 image's
    white reads 1.14, a convert("F") 0-255 one's 291): it was read by the next level (0-255 / 0-65535), so its white
    read as 1 of 255 and the whole image black; its level is kept (the ringing clipped, as an 8-bit resize clips it)."""
    arr = np.zeros((64, 64), dtype=np.float32)
    arr[16:48, 16:32] = top   # a white bar on black, its sharp edges ring when resized
    img = Image.fromarray(arr, mode="F").resize((100, 100))
    assert 1.1 * top < float(np.asarray(img).max()) < 1.2 * top
    read = np.asarray(load_image(img))[..., 0]
    assert read.max() == 255 and read[50, 37] == 255 and read[5, 5] == 0


def test_a_float_image_with_an_infinite_pixel_is_read_by_the_levels_of_its_finite_ones():
    """A 0-1 float image with one +inf pixel (a division by zero) was read by that pixel (as 1.8e308, the largest
    float): every other pixel 0, the image black; now its level is its finite pixels' (+inf white, -inf and NaN
    black)."""
    arr = np.array([[0.0, 0.5, 1.0, np.inf, -np.inf, np.nan]], dtype=np.float32)
    img = Image.fromarray(arr, mode="F")
    assert [load_image(img).getpixel((i, 0))[0] for i in range(6)] == [0, 127, 255, 255, 0, 0]
    dark = Image.fromarray(np.array([[0.0, 50.0, 100.0, np.inf]], dtype=np.float32), mode="F")
    assert [load_image(dark).getpixel((i, 0))[0] for i in range(4)] == [0, 50, 100, 255]
    assert [load_image(Image.fromarray(np.full((1, 2), np.nan, np.float32), mode="F")).getpixel((i, 0))[0]
            for i in range(2)] == [0, 0]


def test_an_integer_image_resized_past_255_keeps_its_8_bit_level():
    """convert("I") of an 8-bit image resized with Pillow's bicubic rings to 292 at a sharp edge: a mode I image over
    255 was read as 16-bit (x 255 / 65535), its white as 1 and the whole image black; as the float rule, up to half
    the level's top more is ringing, clipped. A 16-bit file (I;16) is still scaled by its depth, however dark."""
    arr = np.zeros((64, 64), dtype=np.uint8)
    arr[16:48, 16:32] = 255
    img = Image.fromarray(arr).convert("I").resize((100, 100))
    assert 280 < int(np.asarray(img).max()) < 300
    read = np.asarray(load_image(img))[..., 0]
    assert read.max() == 255 and read[50, 37] == 255 and read[5, 5] == 0
    deep = Image.fromarray(np.array([[0, 300, 600]], dtype=np.uint16))   # (I;16: a 16-bit image's depth)
    assert deep.mode.startswith("I;16") and [load_image(deep).getpixel((i, 0))[0] for i in range(3)] == [0, 1, 2]


def test_a_signed_16_bit_tiff_is_scaled_by_its_depth_however_dark():
    """Pillow opens a signed 16-bit TIFF (SampleFormat 2, numpy int16 written by tifffile / imageio) as mode I, not
    I;16: the rule that keeps the 0-255 level up to 382 for a mode I image not from a 16-bit file read its
    [0, 100, 200, 300] of 65535 as [0, 100, 200, 255] (a near-black image bright and clipped); it is scaled by its
    depth as a 16-bit PNG or unsigned TIFF is: [0, 0, 0, 1]."""
    data = io.BytesIO()
    Image.fromarray(np.array([[0, 100, 200, 300]], dtype=np.uint16)).save(data, format="TIFF", tiffinfo={339: 2})
    with Image.open(io.BytesIO(data.getvalue())) as opened:
        assert opened.mode == "I"
    assert [load_image(data.getvalue()).getpixel((i, 0))[0] for i in range(4)] == [0, 0, 0, 1]
    assert [load_image(Image.open(io.BytesIO(data.getvalue()))).getpixel((i, 0))[0] for i in range(4)] == [0, 0, 0, 1]
    wide = io.BytesIO()   # a 32-bit integer TIFF keeps the levels: its 0-255 data reads as it is
    Image.fromarray(np.array([[0, 100, 200, 255]], dtype=np.int32)).save(wide, format="TIFF")
    assert [load_image(wide.getvalue()).getpixel((i, 0))[0] for i in range(4)] == [0, 100, 200, 255]


def test_a_signed_16_bit_tiff_given_opened_reads_the_same_again_and_in_a_worker():
    """A signed 16-bit TIFF given as a lazily opened PIL image was scaled by its depth on its first read only: that
    read loads it, which drops the tile its depth was told by, so the next read (the adapted evaluation after the
    zero-shot one) and a loader worker's pickled copy read its [0, 100, 200, 300] as [0, 100, 200, 255]."""
    data = io.BytesIO()
    Image.fromarray(np.array([[0, 100, 200, 300]], dtype=np.uint16)).save(data, format="TIFF", tiffinfo={339: 2})
    opened = Image.open(io.BytesIO(data.getvalue()))
    assert [[load_image(opened).getpixel((i, 0))[0] for i in range(4)] for _ in range(2)] == [[0, 0, 0, 1]] * 2
    noted = Image.open(io.BytesIO(data.getvalue()))
    note_depth(noted)   # (the loader notes its rows' images before a worker gets its pickled copy)
    copy = pickle.loads(pickle.dumps(noted))
    assert [load_image(copy).getpixel((i, 0))[0] for i in range(4)] == [0, 0, 0, 1]


def test_a_multi_page_tiffs_next_page_is_not_read_by_the_depth_noted_for_its_first():
    """A PIL image of a multi-page TIFF given as the source keeps the note of its first page's depth (a signed 16-bit
    page) when it is moved to its next page (seek): that page, 32-bit integers of 0-255, read [0, 100, 200, 255] once
    and [0, 0, 0, 0] on the next read (the note of the page before: scaled by 65535). The page's own file answer now
    replaces the note."""
    data = io.BytesIO()
    first = Image.fromarray(np.array([[0, 100, 200, 300]], dtype=np.uint16))
    first.save(data, format="TIFF", save_all=True, tiffinfo={339: 2},
               append_images=[Image.fromarray(np.array([[0, 100, 200, 255]], dtype=np.int32))])
    opened = Image.open(io.BytesIO(data.getvalue()))
    assert [load_image(opened).getpixel((i, 0))[0] for i in range(4)] == [0, 0, 0, 1]
    opened.seek(1)
    assert [[load_image(opened).getpixel((i, 0))[0] for i in range(4)] for _ in range(2)] == [[0, 100, 200, 255]] * 2
    opened.seek(0)
    assert [[load_image(opened).getpixel((i, 0))[0] for i in range(4)] for _ in range(2)] == [[0, 0, 0, 1]] * 2


def test_a_signed_16_bit_tiff_loaded_before_it_is_given_is_scaled_by_its_depth():
    """A PIL image loaded before it is given (``datasets`` decodes an Image column with Image.open and load()) has no
    tile left to tell its samples' depth: a signed 16-bit TIFF's [0, 100, 200, 300] of 65535 read [0, 100, 200, 255]
    (from its path: [0, 0, 0, 1]), and so did a loader worker's pickled copy. Its TIFF tags (16 bits a sample) tell it;
    a 32-bit integer TIFF keeps its 0-255 levels."""
    data = io.BytesIO()
    Image.fromarray(np.array([[0, 100, 200, 300]], dtype=np.uint16)).save(data, format="TIFF", tiffinfo={339: 2})
    loaded = Image.open(io.BytesIO(data.getvalue()))
    loaded.load()
    assert [load_image(loaded).getpixel((i, 0))[0] for i in range(4)] == [0, 0, 0, 1]
    loaded = Image.open(io.BytesIO(data.getvalue()))
    loaded.load()
    note_depth(loaded)
    assert [load_image(pickle.loads(pickle.dumps(loaded))).getpixel((i, 0))[0] for i in range(4)] == [0, 0, 0, 1]
    wide = io.BytesIO()
    Image.fromarray(np.array([[0, 100, 200, 255]], dtype=np.int32)).save(wide, format="TIFF")
    loaded = Image.open(io.BytesIO(wide.getvalue()))
    loaded.load()
    assert [load_image(loaded).getpixel((i, 0))[0] for i in range(4)] == [0, 100, 200, 255]
