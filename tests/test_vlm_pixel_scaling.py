"""A Hugging Face VLM's images are scaled and normalised as its image processor scales and normalises 8-bit levels:
``do_rescale`` / ``rescale_factor`` / ``do_normalize`` followed exactly (the loader's ``levels / 255`` with the mean
and std divided by ``255 · rescale_factor``), a factor or std that is no positive number refused by name. Before,
a processor that rescaled otherwise than by 1/255 was read as if it did (helper 222: 970 normalised units apart
with ``do_rescale`` false, 0.99 with ``rescale_factor`` 1/127.5). LLaVA-OneVision pads an image of a row of several
with its processor's image mean whatever its normalisation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import test_llava_onevision
import torch
from llava_tiny import IMAGE, save_tiny_llava
from PIL import Image
from transformers import AutoProcessor

from mtl_lora_vl.backbones import BackboneError, load_backbone
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("llava"))


def _edited(source, tmp_path, **fields):
    folder = tmp_path / "edited"
    shutil.copytree(source, folder)
    path = folder / "processor_config.json"
    doc = json.loads(path.read_text())
    doc["image_processor"].update(fields)
    path.write_text(json.dumps(doc))
    return folder


@pytest.mark.parametrize("fields", [
    {"do_rescale": False},
    {"rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]},
    {"do_rescale": False, "do_normalize": False},
    {"do_normalize": False},
    {"image_mean": 0.4, "image_std": 0.3},
])
def test_images_are_scaled_and_normalised_as_the_processor_does(source, tmp_path, fields):
    folder = _edited(source, tmp_path, **fields)
    bb = load_backbone(f"hf:{folder}")
    # pictures at the model's own size: no resampling, so the values must agree to float rounding
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)) for _ in range(2)]
    ours = bb.preprocess_uint8(torch.stack([to_uint8_tensor(p, bb.resize) for p in pictures]))
    theirs = AutoProcessor.from_pretrained(folder).image_processor(images=pictures, return_tensors="pt")
    torch.testing.assert_close(ours, theirs["pixel_values"].float(), rtol=1e-5, atol=1e-4)   # (levels: uint8)


@pytest.mark.parametrize("fields, named", [
    ({"rescale_factor": 0}, "rescale_factor 0"),
    ({"rescale_factor": "1/255"}, "rescale_factor '1/255'"),
    ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
])
def test_a_factor_or_std_that_is_no_positive_number_is_refused_by_name(source, tmp_path, fields, named):
    with pytest.raises(BackboneError, match=named):
        load_backbone(f"hf:{_edited(source, tmp_path, **fields)}")


def test_a_processor_that_crops_without_resizing_is_refused_by_name(source, tmp_path):
    """``do_resize`` false with ``do_center_crop``: the processor cuts each picture's centre at its own scale; the
    loader resized it first (3.1 normalised units apart on a 97x61 picture)."""
    with pytest.raises(ValueError, match="do_resize is false and do_center_crop true.*do_resize=true"):
        load_backbone(f"hf:{_edited(source, tmp_path, do_resize=False)}")


def test_onevisions_images_of_a_row_of_several_are_padded_with_the_processors_mean_without_normalisation(tmp_path):
    """``do_normalize`` false: the processor still pads such an image square with its ``image_mean``'s levels (the
    loader padded with the backbone's mean, then 0: black, 124 levels apart on the padded bands)."""
    folder = _edited(test_llava_onevision.build(tmp_path / "onevision")[2], tmp_path, do_normalize=False)
    bb = load_backbone(f"hf:{folder}")
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((20, 60), (64, 24))]
    uint8, sizes = pad_images(list(to_uint8_tensor(tuple(pictures), bb.resize)))
    views = bb._vision_inputs(bb.preprocess_uint8(uint8), list(sizes))["pixel_values"]
    t = bb.image_token
    theirs = AutoProcessor.from_pretrained(folder)(images=[pictures], text=[f"{t} {t} same?"], return_tensors="pt")
    torch.testing.assert_close(views[:, 0], theirs["pixel_values"][:, 0], rtol=1e-5, atol=1e-5)
