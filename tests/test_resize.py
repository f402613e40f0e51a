"""Images of any shape reach a model the way its checkpoint declares (open_clip's resize modes, Hugging Face
image processors), with the same pixels as those libraries' own pipelines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.loader import iter_image_batches
from mtl_lora_vl.data.records import Example
from mtl_lora_vl.data.resize import ImageResize


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("wh", [(97, 61), (61, 97), (20, 30)])
def test_matches_open_clip_transform(mode, interpolation, wh):
    from open_clip.transform import image_transform

    img = _image(*wh)
    ref = image_transform(32, is_train=False, mean=(0.0,) * 3, std=(1.0,) * 3, resize_mode=mode,
                          interpolation=interpolation)(img)
    ours = to_uint8_tensor(img, ImageResize(32, mode, interpolation)).float() / 255
    assert ours.shape == ref.shape == (3, 32, 32)
    assert torch.equal(ours, ref)


def test_matches_hf_image_processors():
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    clip = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=3,
                              do_normalize=False)
    siglip = SiglipImageProcessor(size={"height": 32, "width": 32}, resample=2, do_normalize=False)
    for proc, expect in ((clip, ImageResize(32, "shortest", "bicubic", resize_to=40, floor_crop=True)),
                         (siglip, ImageResize(32, "squash", "bilinear"))):
        resize = ImageResize.from_hf(32, proc)
        assert resize == expect
        assert ImageResize.from_hf(32, json.loads(proc.to_json_string())) == expect   # the saved config
        # 96 x 64 -> 60 x 40: an even difference; 64 x 46 -> 55 x 40: 23 = 3 mod 4, where a rounded crop (open_clip's,
        # torchvision's) starts one pixel later than Hugging Face's floored one (COCO's 640 x 427 at 336 is such a size)
        for wh in ((96, 64), (64, 46), (41, 30)):   # 41 x 30 -> 32 x 40 ... and, below, a side shorter than the crop
            img = _image(*wh, seed=1)
            ref = proc(images=img, return_tensors="pt")["pixel_values"][0]
            ours = to_uint8_tensor(img, resize).float() / 255
            assert (ours - ref).abs().max() <= 1.5 / 255, (type(proc).__name__, wh)
    short = CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 24, "width": 24}, resample=3,
                               do_normalize=False)   # the short side padded, the long one cropped at a floored offset
    img = _image(41, 30, seed=2)
    ref = short(images=img, return_tensors="pt")["pixel_values"][0]
    ours = to_uint8_tensor(img, ImageResize.from_hf(24, short)).float() / 255
    assert (ours - ref).abs().max() <= 1.5 / 255
    with pytest.raises(ValueError, match=r"squashes images to 40x40 and then crops 32x32"):
        ImageResize.from_hf(32, {"size": {"height": 40, "width": 40}, "do_center_crop": True})
    assert ImageResize.from_hf(32, {"size": {"height": 32, "width": 32}, "do_center_crop": True}).mode == "squash"
    # a crop that is not the model's size: the model refuses the processor's own output, and cutting the model's
    # size out of it instead kept half the view, silently (helper 138)
    for crop in ({"height": 64, "width": 64}, 64):
        with pytest.raises(ValueError, match=r"crops 64x64 after resizing, but the model takes 32x32 images; save the "
                                             r"processor with crop_size 32"):
            ImageResize.from_hf(32, {"size": {"shortest_edge": 64}, "crop_size": crop, "do_center_crop": True})
    assert ImageResize.from_hf(32, {"size": {"shortest_edge": 64}, "crop_size": 64, "do_center_crop": False}).size == 32


def test_modes_give_different_pixels_on_a_wide_image():
    img = Image.new("RGB", (128, 64), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 64))           # the left quarter is red
    squash = to_uint8_tensor(img, ImageResize(32, "squash", "bilinear"))
    crop = to_uint8_tensor(img, 32)
    longest = to_uint8_tensor(img, ImageResize(32, "longest"))
    assert squash[0, :, 0].min() > 200 and crop[0, :, 0].max() < 50           # cropped away
    assert longest[:, 0].sum() == 0 and longest[0, 16, 0] > 200               # padded rows are black


def test_backbones_carry_their_declared_resize(tmp_path):
    from llava_tiny import IMAGE, save_tiny_llava, save_tiny_paligemma

    assert load_backbone("builtin").resize == ImageResize(64, "squash", "bilinear", alpha="drop")   # open_clip config
    assert load_backbone("builtin-llava").resize == ImageResize(64, "shortest", "bicubic",
                                                                resize_to=64, floor_crop=True)
    pali = load_backbone(f"hf:{save_tiny_paligemma(tmp_path / 'pali')}")
    assert pali.resize == ImageResize(IMAGE, "squash", "bicubic")     # SiglipImageProcessor: resample 3
    llava = load_backbone(f"hf:{save_tiny_llava(tmp_path / 'llava')}")
    assert llava.resize.mode == "shortest"


def test_evaluation_images_follow_the_backbone():
    """The loader resizes by the backbone's declaration: the built-in CLIP squashes a wide image."""
    bb = load_backbone("builtin")
    img = Image.new("RGB", (128, 64), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 64))
    batch = next(iter_image_batches(bb, [Example(image=img, image_id="wide")], batch_size=1, device="cpu"))
    mean, std = torch.tensor(bb.mean).view(3, 1), torch.tensor(bb.std).view(3, 1)
    left = batch[0, :, :, 0] * std + mean
    assert left[0].min() > 0.8 and left[2].max() < 0.2    # red: the left quarter is still there


def test_bad_declarations_are_named():
    with pytest.raises(ValueError, match="unknown resize mode 'pad'"):
        ImageResize.from_open_clip(32, {"resize_mode": "pad"})
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        ImageResize(32, interpolation="cubic")
    with pytest.raises(ValueError, match="only square"):
        ImageResize.from_hf(32, {"size": {"height": 32, "width": 48}, "do_center_crop": False}, "pp.json")
    with pytest.raises(ValueError, match="pp.json: resample=9"):
        ImageResize.from_hf(32, {"resample": 9}, "pp.json")
    with pytest.raises(ValueError, match="resize_to applies to mode 'shortest' only"):
        ImageResize(32, "squash", resize_to=40)


def test_llava_pad_to_square_matches_its_image_processor():
    """LlavaImageProcessor(do_pad=True) pads a non-square image to a square of the image mean (LLaVA-1.5's "pad"
    aspect mode) before resizing; the package cropped the centre instead (max difference 2.7 after
    normalisation, the edges of a wide image lost). Other processors' do_pad (a batch padded to its largest
    image) is not this."""
    from transformers import LlavaImageProcessor, SiglipImageProcessor

    proc = LlavaImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=3,
                               do_pad=True, do_normalize=False)
    resize = ImageResize.from_hf(32, proc)
    assert resize.pad_square == tuple(int(x * 255) for x in proc.image_mean)
    assert ImageResize.from_hf(32, json.loads(proc.to_json_string())) == resize   # the saved config
    for wh in ((64, 24), (30, 41), (33, 33)):
        img = _image(*wh, seed=3)
        ref = proc(images=img, return_tensors="pt")["pixel_values"][0]
        ours = to_uint8_tensor(img, resize).float() / 255
        assert (ours - ref).abs().max() <= 1.5 / 255, wh
    squash = LlavaImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False, resample=3, do_pad=True,
                                 do_normalize=False)   # padded, then squashed to the square
    img = _image(64, 24, seed=4)
    ours = to_uint8_tensor(img, ImageResize.from_hf(32, squash)).float() / 255
    assert (ours - squash(images=img, return_tensors="pt")["pixel_values"][0]).abs().max() <= 1.5 / 255
    assert ImageResize.from_hf(32, {"do_pad": True, "size": {"shortest_edge": 32}}).pad_square is None
    assert ImageResize.from_hf(32, SiglipImageProcessor(size={"height": 32, "width": 32})).pad_square is None


def test_native_images_keep_their_sizes_in_evaluation_batches():
    """A native resize: the eval loader puts images of their own sizes on one canvas and says each size; the
    plain image iterator (towers that embed one batch of squares) refuses such a batch by name."""
    from types import SimpleNamespace

    from mtl_lora_vl.data.loader import iter_sized_image_batches, sizes_kwarg

    resize = ImageResize(32, mode="native", factor=16)
    bb = SimpleNamespace(name="native-bb", resize=resize, image_size=32,
                         preprocess_uint8=lambda x, dtype: x.to(dtype) / 255)
    examples = [Example(image=Image.new("RGB", (w, h), (255, 0, 0)), image_id=str(i))
                for i, (w, h) in enumerate([(64, 32), (32, 64), (40, 40)])]
    [(images, sizes)] = list(iter_sized_image_batches(bb, examples, batch_size=3, device="cpu"))
    assert sizes == ((16, 32), (32, 16), (32, 32)) and images.shape == (3, 3, 32, 32)
    assert images[0, 0, :16, :32].min() == 1 and images[0, :, 16:].abs().sum() == 0   # zeros outside the image
    assert sizes_kwarg(images, sizes) == {"image_sizes": [(16, 32), (32, 16), (32, 32)]}
    assert sizes_kwarg(images[2:], sizes[2:]) == {}   # every image fills the batch: called as before
    with pytest.raises(ValueError, match="'native-bb' resizes images to sizes of their own.*iter_sized_image_batches"):
        list(iter_image_batches(bb, examples, batch_size=3, device="cpu"))
    with pytest.raises(ValueError, match="factor, min_pixels, max_pixels and longest apply to mode 'native' only"):
        ImageResize(32, factor=16)
    with pytest.raises(ValueError, match="mode 'native' needs factor"):
        ImageResize(32, mode="native")
    with pytest.raises(ValueError, match="min_pixels 2000 is above max_pixels 1024"):
        ImageResize(32, mode="native", factor=16, min_pixels=2000)
