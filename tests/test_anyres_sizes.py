"""The native aspect's sizes (review 202): a strip of views does not say what size its picture was, so a strip
without its size is refused, not read as a picture of the strip's own shape; the loader and evaluation always pass
the sizes of such a backbone's images. Tiny LLaVA-NeXT, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import test_llava_next
import torch
from PIL import Image

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.loader import sizes_kwarg


@pytest.fixture(scope="module")
def next_bb(tmp_path_factory):
    return load_backbone(f"hf:{test_llava_next.build(tmp_path_factory.mktemp('next'))[2]}")


def _picture(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_a_strip_that_lost_its_size_is_refused_not_read_as_a_tall_picture(next_bb):
    """A wide 20 x 60 picture's strip (3 views, 96 x 32) that lost its size (any new tensor: preprocess_uint8,
    .to(), torch.stack, .clone()) is read as a 96 x 32 picture: its pinpoint (64 x 32) also has 3 views, so the
    check in _strip_views passes; the scores and generated text silently differ from the picture's (LLaVA-1.6: every
    picture of the 1008x336 / 336x1008 pinpoints, e.g. 300 x 900 and 900 x 300, has a 1344 x 336 strip read so)."""
    bb = next_bb
    strip = to_uint8_tensor(_picture(20, 60), bb.resize)
    x = bb.preprocess_uint8(strip[None])           # the attribute is gone here
    p = [f"{bb.image_token} what colour? answer:"]
    with torch.no_grad(), pytest.raises((ValueError, RuntimeError), match="image_sizes"):
        bb.sequence_scores(x, p, ["red", "blue"])


def test_a_batch_whose_pictures_are_their_strips_shape_keeps_its_sizes(next_bb):
    """A picture whose size is its own strip's shape (here 96 x 32: a 64 x 32 pinpoint, three views) leaves the batch
    no size that differs from the canvas: the sizes are kept for a backbone that needs them, not dropped."""
    strip = to_uint8_tensor(_picture(96, 32), next_bb.resize)
    assert tuple(strip.shape[-2:]) == (96, 32) and next_bb.needs_image_sizes
    x = next_bb.preprocess_uint8(strip[None])
    assert sizes_kwarg(x, [(96, 32)]) == {}   # a backbone whose images fill their squares: called as before
    kw = sizes_kwarg(x, [(96, 32)], next_bb.needs_image_sizes)
    assert kw == {"image_sizes": [(96, 32)]}
    with torch.no_grad():
        scores = next_bb.sequence_scores(x, [f"{next_bb.image_token} what colour? answer:"], ["red"], **kw)
    assert scores.shape == (1, 1)
    next_bb.native_aspect(False)
    try:
        assert not next_bb.needs_image_sizes
    finally:
        next_bb.native_aspect(True)
