"""Transparent images reach an open_clip model as open_clip reads them (``convert("RGB")``: stored colours kept) and a
Hugging Face model composited on white, as its processor does; a zero-size in-memory image is an ImageError whose
row the fallback replaces (review 187)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lora_vl.data.fallback import ImageFallback
from mtl_lora_vl.data.images import ImageError, to_uint8_tensor
from mtl_lora_vl.data.records import Example
from mtl_lora_vl.data.resize import ImageResize


def _logo(mode: str) -> Image.Image:
    """A red disc on a transparent background stored as (0, 0, 0, 0): a typical logo / product PNG."""
    a = np.zeros((48, 64, 4), np.uint8)
    yy, xx = np.mgrid[:48, :64]
    a[(yy - 24) ** 2 + (xx - 32) ** 2 < 15 ** 2] = (255, 0, 0, 255)
    img = Image.fromarray(a)
    if mode == "P":
        img = Image.fromarray(a[..., :3]).convert("P")
        img.info["transparency"] = img.getpixel((0, 0))
    return img if mode in ("RGBA", "P") else img.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_open_clip_backbone_reads_transparent_images_as_open_clip_does(mode):
    """README: images reach an open_clip model 'pixel for pixel what open_clip.image_transform gives'. open_clip takes
    image.convert('RGB') -- its training loader decodes with webdataset's 'pilrgb' (open_clip_train/data.py:391), its
    transform ends in _convert_to_rgb -- so transparent pixels keep their stored colour. The package composites every
    image on white (Hugging Face's convert_rgb): 74 % of this logo's pixels differ, by up to 255 levels, from what the
    checkpoint was trained on."""
    from open_clip.transform import image_transform

    img = _logo(mode)
    trained = image_transform(32, is_train=False, mean=(0.0,) * 3, std=(1.0,) * 3)(img.convert("RGB"))
    ours = to_uint8_tensor(img, ImageResize.from_open_clip(32, {})).float() / 255
    assert ours[:, 0, 0].tolist() == [0.0, 0.0, 0.0]       # the stored colour of the transparent corner, not white
    assert torch.equal(ours, trained)


def test_hugging_face_backbones_keep_compositing_on_white():
    """(Unchanged by the fix: CLIPImageProcessor composites on white, and so does the package for HF checkpoints.)"""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_normalize=False)
    img = _logo("RGBA")
    ref = proc(images=img, return_tensors="pt")["pixel_values"][0]
    ours = to_uint8_tensor(img, ImageResize.from_hf(32, proc)).float() / 255
    assert ours[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert (ours - ref).abs().max() <= 1.5 / 255


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_a_zero_size_image_is_an_image_error_not_a_crash(mode):
    """An in-memory PIL image may have a zero side (Image.new allows it; a file's is refused from its header). It
    raised ZeroDivisionError (mode shortest) from the resize arithmetic, or became a black square silently (longest,
    squash); ImageFallback only catches ImageError, so a training worker died instead of replacing the row."""
    with pytest.raises(ImageError, match="0x5"):
        to_uint8_tensor(Image.new("RGB", (0, 5)), ImageResize(32, mode))


def test_a_zero_size_image_in_a_split_has_its_row_replaced():
    rows = [Example(Image.new("RGB", (0, 4)), "empty"), Example(Image.new("RGB", (4, 4), (9, 9, 9)), "ok")]
    index, pixels = ImageFallback("t", rows, 8).decode(0)
    assert index == 1 and pixels.shape == (3, 8, 8)


@pytest.mark.parametrize("alpha", ["white", "drop"])
def test_a_premultiplied_grey_alpha_image_reads_as_its_la_image(alpha):
    """A PIL image in mode La (grey, premultiplied alpha) was refused: Pillow converts La to LA only ('conversion from
    La to L not supported'), so its row was replaced."""
    la = Image.fromarray(np.array([[[100, 255], [60, 128]], [[0, 0], [200, 255]]], dtype=np.uint8))
    assert la.mode == "LA"
    pre = la.convert("La")
    resize = ImageResize(2, alpha=alpha)
    assert torch.equal(to_uint8_tensor(pre, resize), to_uint8_tensor(pre.convert("LA"), resize))
