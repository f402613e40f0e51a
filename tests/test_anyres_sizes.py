"""The native aspect's sizes (review 202): a strip of views does not say what size its picture was, so a strip
without its size is refused, not read as a picture of the strip's own shape; the loader and evaluation always pass
the sizes of such a backbone's images. Tiny LLaVA-NeXT, CPU."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import test_llava_next
import test_llava_onevision
import torch
from PIL import Image

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.loader import sizes_kwarg


@pytest.fixture(scope="module")
def next_bb(tmp_path_factory):
    return load_backbone(f"hf:{test_llava_next.build(tmp_path_factory.mktemp('next'))[2]}")


@pytest.fixture(scope="module")
def ov_bb(tmp_path_factory):
    return load_backbone(f"hf:{test_llava_onevision.build(tmp_path_factory.mktemp('ov'))[2]}")


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


def test_the_context_warning_counts_each_image_by_its_own_size(ov_bb, tmp_path, caplog):
    """warn_lm_context measured rows with num_image_tokens (the square canvas's count, 46 here; 7,371 released), but a
    OneVision image at its own aspect fills more (64 x 24: 56 here; released 1920 x 768: 8,154, 1248 x 1026: 8,765),
    so rows past the context were not named (review 202). Each image is counted by its header's size now."""
    from mtl_lora_vl.data.readers import read_split
    from mtl_lora_vl.tasks import build_kind, load_spec

    bb = ov_bb
    for i in range(4):
        _picture(64, 24, i).save(tmp_path / f"{i}.png")
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "caption": "a red circle"}) + "\n"
                                                 for i in range(4)))
    (tmp_path / "caps.toml").write_text('name = "caps"\nkind = "captioning"\n[data]\nformat = "jsonl"\n'
                                        + "".join(f'[data.{s}]\nfile = "caps.jsonl"\n'
                                                  for s in ("train", "val", "test")))
    split = read_split("jsonl", tmp_path, file="caps.jsonl")
    kind = build_kind(load_spec(str(tmp_path / "caps.toml")), split, bb)
    col = bb.lm_collator()
    prompt, target = kind.sample_lm(split.examples[0], 0)[:2]
    native = col([prompt], [target], image_sizes=[(64, 24)])["input_ids"].shape[1]
    square = col([prompt], [target])["input_ids"].shape[1]
    assert native - square == 56 - bb.num_image_tokens == 10
    cfg = bb.model.config.get_text_config()
    old = cfg.max_position_embeddings
    cfg.max_position_embeddings = square      # every row (native) is 10 tokens past it
    try:
        with caplog.at_level(logging.WARNING):
            kind.warn_lm_context(split.examples, bb)
    finally:
        cfg.max_position_embeddings = old
    assert "longer than the language model's context" in caplog.text


def test_an_images_size_from_its_header_is_the_loaders_upright_one(tmp_path):
    """The context warning reads each image's size from its header: an EXIF quarter turn swaps the sides, as the
    loader turns the picture upright."""
    from mtl_lora_vl.data.images import load_image, upright_size

    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 degrees clockwise to show
    _picture(10, 30).save(tmp_path / "turned.jpg", exif=exif)
    _picture(10, 30).save(tmp_path / "plain.png")
    for name in ("turned.jpg", "plain.png"):
        w, h = load_image(tmp_path / name).size
        assert upright_size(tmp_path / name) == (h, w)
    assert upright_size(tmp_path / "turned.jpg") == (30, 10)
