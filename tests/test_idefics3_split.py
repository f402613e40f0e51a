"""Idefics3 / SmolVLM images split as their released processors split them (do_image_splitting on): one mixed batch
of pictures of several aspects (wide, tall, square, tiny, larger than size["longest_edge"]) gets the processor's
ids, image-token counts and pixel values, and the HF model's logits on the processor's inputs; mixed-task routes and
greedy generation equal each row alone; a merged export read with its own processor gives the same logits; NLVR2's
pairs are split as the processor splits a sample of two images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from idefics3_tiny import (
    _num2words,  # noqa: F401 (an autouse fixture)
    save_tiny_idefics3,
    tiny_idefics3_backbone,
)
from PIL import Image
from test_generative_tasks import _attach

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor

# (h, w): wide, tall, square, tiny, larger than the longest edge (128) both ways
SIZES = [(40, 150), (160, 30), (50, 50), (5, 7), (300, 260)]
PROMPTS = ["{} caption:", "question: what colour is the circle ? {} answer:"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("idefics3_split")


@pytest.fixture(params=[False, True], ids=["idefics3", "smolvlm"])
def bb(request, dirs):
    return tiny_idefics3_backbone(dirs, request.param)


def _pictures(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _batch(bb, pictures):
    """What the loader workers and the device make of the pictures: normalised strips on one canvas, and sizes."""
    canvas, sizes = pad_images([to_uint8_tensor(p, bb.resize) for p in pictures])
    return bb.preprocess_uint8(canvas), list(sizes)


def _prompts(bb, n):
    return [PROMPTS[i % 2].format(bb.image_token) for i in range(n)]


def _theirs(bb, pictures, prompt):
    """The processor's inputs for one row (the tiny tokenizer's appended end token dropped)."""
    out = bb.processor(images=[list(pictures)], text=[prompt], return_tensors="pt")
    if out["input_ids"][0, -1] == bb.eos_id:
        out["input_ids"], out["attention_mask"] = out["input_ids"][:, :-1], out["attention_mask"][:, :-1]
    return out


def test_splitting_is_the_default_and_the_unsplit_reading_stays_reachable(bb):
    assert bb.resize.mode == "anyres" and bb.geometry is not None
    assert bb.processor.image_processor.do_image_splitting is True
    grid = {s: bb.geometry.grid(s) for s in SIZES}
    assert grid == {(40, 150): (2, 4), (160, 30): (4, 1), (50, 50): (4, 4), (5, 7): (3, 4), (300, 260): (4, 4)}
    bb.native_aspect(False)
    try:
        assert bb.resize.mode == "squash" and bb.processor.image_processor.do_image_splitting is False
        row = bb.lm_collator()([f"{bb.image_token} caption:"])["input_ids"][0].tolist()
        assert row.count(bb.image_token_id) == bb.num_image_tokens == 4
    finally:
        bb.native_aspect(True)


def test_a_mixed_batch_has_the_processors_ids_pixels_and_the_models_logits(bb):
    pics = _pictures()
    pixels, sizes = _batch(bb, pics)
    prompts = _prompts(bb, len(pics))
    ours = bb.lm_collator()(prompts, image_sizes=sizes)
    views = bb._vision_inputs(pixels, sizes)["pixel_values"]
    with torch.no_grad():
        logits = bb._forward(pixels, ours["input_ids"], ours["attention_mask"], image_sizes=sizes).logits
    counts = []
    for r, (pic, prompt) in enumerate(zip(pics, prompts)):
        theirs = _theirs(bb, [pic], prompt)
        ids = ours["input_ids"][r][ours["attention_mask"][r].bool()]
        assert ids.tolist() == theirs["input_ids"][0].tolist(), r
        counts.append(int((ids == bb.image_token_id).sum()))
        v = theirs["pixel_values"].shape[1]
        torch.testing.assert_close(views[r, :v], theirs["pixel_values"][0], atol=1e-6, rtol=0)
        assert not views[r, v:].any()   # the crops past the image's own: zeros, dropped by the model
        with torch.no_grad():
            ref = bb.model(**theirs).logits[0]
        torch.testing.assert_close(logits[r, -ids.numel():], ref, atol=1e-4, rtol=1e-4)
    assert counts == [4 * bb.geometry.views(s) for s in sizes] == [36, 20, 68, 52, 68]


def test_mixed_routes_and_greedy_generation_equal_each_row_alone(bb):
    _attach(bb, ("a", "b"), std=0.3)
    pics = _pictures(seed=1)
    pixels, sizes = _batch(bb, pics)
    prompts = _prompts(bb, len(pics))
    route = [0, 1, 1, 0, 1]
    b = bb.lm_collator()(prompts, ["red circle"] * len(pics), image_sizes=sizes)
    with torch.no_grad():
        with mlv.route(bb.model, route):
            mixed = bb.lm_loss(pixels, b["input_ids"], b["attention_mask"], b["labels"], image_sizes=sizes)
            texts = bb.generate(pixels, max_len=5, prompts=prompts, image_sizes=sizes)
        for r, t in enumerate(route):
            one, size = _batch(bb, [pics[r]])
            alone = bb.lm_collator()([prompts[r]], ["red circle"], image_sizes=size)
            with mlv.route(bb.model, t):
                loss = bb.lm_loss(one, alone["input_ids"], alone["attention_mask"], alone["labels"], image_sizes=size)
                assert bb.generate(one, max_len=5, prompts=[prompts[r]], image_sizes=size) == [texts[r]], r
            torch.testing.assert_close(mixed[r], loss[0], atol=1e-5, rtol=1e-5)


def test_nlvr_pairs_are_split_as_the_processor_splits_a_sample_of_two(bb):
    pics = _pictures([(40, 150), (160, 30), (5, 7), (300, 260)], seed=2)
    pixels, sizes = _batch(bb, pics)
    prompt = f"left {bb.image_token} right {bb.image_token} statement: true or false ?"
    ours = bb.lm_collator()([prompt, prompt], image_sizes=sizes)
    with torch.no_grad():
        logits = bb._forward(pixels, ours["input_ids"], ours["attention_mask"], image_sizes=sizes).logits
    for r in range(2):
        theirs = _theirs(bb, pics[2 * r:2 * r + 2], prompt)
        ids = ours["input_ids"][r][ours["attention_mask"][r].bool()]
        assert ids.tolist() == theirs["input_ids"][0].tolist()
        with torch.no_grad():
            ref = bb.model(**theirs).logits[0]
        torch.testing.assert_close(logits[r, -ids.numel():], ref, atol=1e-4, rtol=1e-4)


def test_a_merged_export_with_its_own_processor_gives_the_same_logits(tmp_path):
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    folder = save_tiny_idefics3(tmp_path / "idefics3")
    bb = _attach(load_backbone(f"hf:{folder}"), ("a", "b"), std=0.3)
    out = mlv.save_merged(bb.model, "b", tmp_path / "merged")
    processor = AutoProcessor.from_pretrained(out)
    merged = Idefics3ForConditionalGeneration.from_pretrained(out).eval()
    assert processor.image_processor.do_image_splitting is True
    pics = _pictures(seed=3)
    pixels, sizes = _batch(bb, pics)
    prompts = _prompts(bb, len(pics))
    ours = bb.lm_collator()(prompts, image_sizes=sizes)
    with torch.no_grad(), mlv.route(bb.model, 1):
        logits = bb._forward(pixels, ours["input_ids"], ours["attention_mask"], image_sizes=sizes).logits
    for r, (pic, prompt) in enumerate(zip(pics, prompts)):
        theirs = processor(images=[[pic]], text=[prompt], return_tensors="pt")
        n = int(ours["attention_mask"][r].sum())
        with torch.no_grad():
            ref = merged(**theirs).logits[0, :n]
        torch.testing.assert_close(logits[r, -n:], ref, atol=1e-4, rtol=1e-4)


def test_squares_without_sizes_name_the_fix(bb):
    ids = bb.lm_collator()([f"{bb.image_token} caption:"], image_sizes=[(32, 32)])
    with pytest.raises(ValueError, match=r"image_sizes=.*native_aspect\(False\)"):
        bb._forward(torch.randn(1, 3, 32, 32), ids["input_ids"], ids["attention_mask"])


@pytest.mark.parametrize("size", [(0, 5), (5, 0), (-3, 5), ("a", 4), (2.5, 7)])
def test_a_bad_image_size_is_named(bb, size):
    """Review 204: (0, 5) raised a bare ZeroDivisionError, (5, 0) and (-3, 5) were taken (39 and 36 ids), ('a', 4)
    gave int()'s message, (2.5, 7) was cut to 2."""
    with pytest.raises(ValueError, match=r"image size .* is no \(h, w\) of two positive whole numbers"):
        bb.lm_collator()([f"{bb.image_token} caption:"], image_sizes=[size])


def test_an_odd_longest_edge_gives_each_crop_its_tag():
    """The processor rounds an odd longest edge up to even, so an image's side can be L + 1, one crop more than L
    gives (L = 99, M = 33: 4 x 4 crops): the crop tags ran out (IndexError), or a column read another row's tag."""
    from mtl_lora_vl.data.splits import SplitGeometry

    n = SplitGeometry(33, 99, 1, 0, (), (), (), (), ()).most_grid
    assert n == 4
    geo = SplitGeometry(33, 99, 1, 7, (1,), (2,), tuple((100 + r * 10 + c,) for r in range(n) for c in range(n)),
                        (3,), (4,))
    rows, cols = geo.grid((5, 5))
    tags = [i for i in geo.image_ids((5, 5)) if i >= 100]
    assert tags == [100 + r * 10 + c for r in range(rows) for c in range(cols)]


def test_lm_loss_on_strips_without_their_sizes_names_image_sizes(bb):
    """Review 204: lm_loss on the loader's strips without image_sizes said to build the ids with lm_collator (they
    were right) and counted the features of a made-up picture of the strip's shape."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 150, 3), dtype=np.uint8))
    canvas, sizes = pad_images([to_uint8_tensor(picture, bb.resize)])
    b = bb.lm_collator()([f"{bb.image_token} caption:"], ["a red circle"], image_sizes=list(sizes))
    with pytest.raises(ValueError, match=r"strips of views.*give image_sizes="):
        bb.lm_loss(bb.preprocess_uint8(canvas), b["input_ids"], b["attention_mask"], b["labels"])
