"""LLaVA-OneVision rows of several images under the native aspect (review 198): evaluation reads a pair's images as
training and the processor do (each padded square with the image mean, one view), and a batch of pairs whose pictures
are all of the tower's side is read as one-view strips, though its sizes are left out. Tiny OneVision, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import test_llava_onevision
import torch
from PIL import Image

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.records import Example


@pytest.fixture(scope="module")
def ov(tmp_path_factory):
    return load_backbone(f"hf:{test_llava_onevision.build(tmp_path_factory.mktemp('ov'))[2]}")


def _pics(seed=0, sizes=((90, 30), (24, 70))):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_onevision_pair_evaluation_reads_each_image_as_training_and_the_processor_do(ov):
    """Evaluation (generate_texts / candidate_scores -> _image_batches) decodes an nlvr pair image by image
    (image_parts), so each image is tiled as alone, not padded square with the mean as training's decode
    (to_uint8_tensor(tuple)) and the processor read an image of a sample of several."""
    from mtl_lora_vl.tasks.generative import _image_batches

    pics = _pics()
    ex = Example(tuple(pics), "pair0", text="same?")
    (images, sizes), = list(_image_batches(ov, [ex], 1, "cpu", torch.float32, 0))
    train_u8, train_sizes = pad_images(list(to_uint8_tensor(tuple(pics), ov.resize)))
    train = ov.preprocess_uint8(train_u8)
    t = ov.image_token
    theirs = ov.processor(images=[pics], text=[f"{t} {t} same?"], return_tensors="pt")
    got = ov._vision_inputs(images, list(sizes))["pixel_values"][:, 0]
    want = ov._vision_inputs(train, list(train_sizes))["pixel_values"][:, 0]
    torch.testing.assert_close(want, theirs["pixel_values"][:, 0], atol=1e-5, rtol=1e-5)   # training: as processor
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)                            # evaluation: not


def test_onevision_pairs_of_tile_sized_pictures_are_read(ov):
    """A batch of pair rows whose every picture is S x S (the tower's side): each strip is (3, S, S), the canvas is
    S x S, and sizes_kwarg drops image_sizes (every original 'fills' the canvas); _vision_inputs then takes the batch
    for square canvases and refuses it ('expected images (B, 3, C, C)'). The same rows with one picture of another
    size train fine."""
    from mtl_lora_vl.data.loader import sizes_kwarg

    s = ov.tile_size
    pics = _pics(1, sizes=((s, s), (s, s)))
    t = ov.image_token
    uint8, sizes = pad_images(list(to_uint8_tensor(tuple(pics), ov.resize)))
    images = ov.preprocess_uint8(uint8)
    b = ov.lm_collator()([f"{t} {t} same?"], ["yes"], image_sizes=list(sizes))
    with torch.no_grad():
        ov.lm_loss(images, **b, **sizes_kwarg(images, sizes))
