"""LLaVA-OneVision's ``batch_num_images`` from each row's known image count, not guessed from its image tokens
(review 276). Under the native aspect an image alone may fill exactly as many tokens as two base views of a row of
several: a (1, 8) picture fills 34 on the tiny model, two base views 2 x 17. A batch of a pair row [(1, 8), (40, 40)]
and a row of (1, 8) alone then holds [34, 34] image tokens, which split into its 3 images as [2, 1] or [1, 2]; the
backbone read [1, 2] (the first split found), so the pair row's logits were off by 0.455, silently. The counts now
come from where they are known (the prompts' placeholders: generate, sequence_scores, the training loader's
``lm_image_counts``); a hand-built batch that reads two ways without them is refused by name. Tiny OneVision, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import test_llava_onevision
import torch
from PIL import Image

from mtl_lora_vl.backbones import BackboneError, load_backbone
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.loader import MultiTaskCollate, sizes_kwarg, to_device

SMALL, SQUARE = (1, 8), (40, 40)   # (h, w): SMALL alone fills 2 x several_tokens


@pytest.fixture(scope="module")
def ov(tmp_path_factory):
    return load_backbone(f"hf:{test_llava_onevision.build(tmp_path_factory.mktemp('ov'))[2]}")


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)) for hw in (SMALL, SQUARE, SMALL)]


def _strips(ov, pictures):
    """The loader's strips: the pair's two images (one view each, padded square), then the image alone."""
    return [*to_uint8_tensor(tuple(pictures[:2]), ov.resize), to_uint8_tensor(pictures[2], ov.resize)]


def _images(ov, strips):
    uint8, sizes = pad_images(strips)
    return ov.preprocess_uint8(uint8), [tuple(s) for s in sizes]


def _prompts(ov):
    t = ov.image_token
    return [f"{t}{t} are they the same?", f"{t} caption:"]


def test_the_tiny_model_holds_the_two_way_batch(ov):
    """The premise: the pair row and the row alone hold as many image tokens, which split into 3 images two ways."""
    assert ov.layout.image_tokens(SMALL) == 2 * ov.several_tokens == 34
    assert ov.layout.image_tokens(SQUARE) != 34


def test_a_mixed_batch_of_two_way_rows_gives_each_row_its_own_logits_and_loss(ov, pictures):
    images, sizes = _images(ov, _strips(ov, pictures))
    prompts, targets = _prompts(ov), ["yes", "a small picture"]
    collate = ov.lm_collator()
    batch = collate(prompts, targets, image_sizes=sizes)
    assert (batch["input_ids"] == ov.image_token_id).sum(1).tolist() == [34, 34]
    counts = collate.image_counts(prompts)
    with torch.no_grad():
        got = ov._forward(images, batch["input_ids"], batch["attention_mask"], image_sizes=sizes,
                          image_counts=counts, use_cache=False).logits
        loss = ov.lm_loss(images, batch["input_ids"], batch["attention_mask"], batch["labels"], image_sizes=sizes,
                          image_counts=counts)
        for r, own in enumerate(([0, 1], [2])):
            alone = collate(prompts[r:r + 1], targets[r:r + 1], image_sizes=[sizes[i] for i in own])
            want = ov._forward(images[own], alone["input_ids"], alone["attention_mask"],
                               image_sizes=[sizes[i] for i in own], use_cache=False).logits[0]
            n = alone["input_ids"].shape[1]
            torch.testing.assert_close(got[r, :n], want, rtol=0, atol=1e-5)
            want_loss = ov.lm_loss(images[own], alone["input_ids"], alone["attention_mask"], alone["labels"],
                                   image_sizes=[sizes[i] for i in own])
            torch.testing.assert_close(loss[r], want_loss[0], rtol=0, atol=1e-5)


def test_generation_and_candidate_scores_over_two_way_rows_are_each_rows_own(ov, pictures):
    images, sizes = _images(ov, _strips(ov, pictures))
    prompts, own = _prompts(ov), ([0, 1], [2])
    with torch.no_grad():
        texts = ov.generate(images, 5, prompts=prompts, image_sizes=sizes)
        beams = ov.generate(images, 4, beam_size=2, prompts=prompts, image_sizes=sizes)
        scores = ov.sequence_scores(images, prompts, ["yes", "no way"], image_sizes=sizes)
        for r, idx in enumerate(own):
            one = {"images": images[idx], "prompts": prompts[r:r + 1], "image_sizes": [sizes[i] for i in idx]}
            assert texts[r] == ov.generate(max_len=5, **one)[0]
            assert beams[r] == ov.generate(max_len=4, beam_size=2, **one)[0]
            torch.testing.assert_close(scores[r], ov.sequence_scores(candidates=["yes", "no way"], **one)[0],
                                       rtol=0, atol=1e-5)


def test_the_training_loader_carries_each_rows_image_count_to_lm_loss(ov, pictures):
    """The loader's batch holds ``lm_image_counts`` (its rows' images), and the documented call with them gives
    each row the loss it has alone."""
    strips = _strips(ov, pictures)
    prompts = _prompts(ov)
    rows = [{"task_id": 0, "index": 0, "image": tuple(strips[:2]), "lm": (prompts[0], "yes", 1.0), "lm_end": "",
             "fields": {}},
            {"task_id": 1, "index": 0, "image": strips[2], "lm": (prompts[1], "a picture", 1.0), "lm_end": "",
             "fields": {}}]
    collate = MultiTaskCollate(["nlvr", "captioning"], [False, False], None, lm_collator=ov.lm_collator())
    batch = to_device(collate(rows), "cpu", torch.float32, ov)
    assert batch["lm_image_counts"] == [2, 1]
    with torch.no_grad():
        mixed = ov.lm_loss(batch["images"], **batch["lm"], first_label=batch["lm_first_label"],
                           image_counts=batch["lm_image_counts"],
                           **sizes_kwarg(batch["images"], batch["image_sizes"], ov.needs_image_sizes))
        for r in range(2):
            alone = to_device(collate(rows[r:r + 1]), "cpu", torch.float32, ov)
            want = ov.lm_loss(alone["images"], **alone["lm"],
                              **sizes_kwarg(alone["images"], alone["image_sizes"], ov.needs_image_sizes))
            torch.testing.assert_close(mixed[r], want[0], rtol=0, atol=1e-5)


def test_a_two_way_batch_without_its_counts_is_refused_by_name(ov, pictures):
    """A hand-built batch that reads two ways is refused (it was read as [1, 2]); counts its tokens cannot hold are
    refused too; a batch that reads one way still needs none."""
    images, sizes = _images(ov, _strips(ov, pictures))
    batch = ov.lm_collator()(_prompts(ov), ["yes", "no"], image_sizes=sizes)
    args = (images, batch["input_ids"], batch["attention_mask"], batch["labels"])
    with pytest.raises(BackboneError, match=r"\[34, 34\] image tokens split into the 3 images more than one way.*"
                                            r"pass image_counts="):
        ov.lm_loss(*args, image_sizes=sizes)
    with pytest.raises(BackboneError, match=r"more than one way"):
        ov._forward(images, batch["input_ids"], batch["attention_mask"], image_sizes=sizes, use_cache=False)
    with pytest.raises(BackboneError, match=r"\[34, 34\] image tokens .* not image_counts \[3, 0\]"):
        ov.lm_loss(*args, image_sizes=sizes, image_counts=[3, 0])
    with pytest.raises(BackboneError, match=r"image_counts \[2, 2\] do not give the 2 rows .* the 3 images"):
        ov._forward(images, batch["input_ids"], batch["attention_mask"], image_sizes=sizes, image_counts=[2, 2])
    one_way = ov.lm_collator()(_prompts(ov)[:1], ["yes"], image_sizes=sizes[:2])
    assert ov._row_inputs(one_way["input_ids"], 2, sizes[:2])["batch_num_images"].tolist() == [2]


def test_the_split_of_a_thousand_rows_is_read_or_refused_by_name(ov):
    """The split search recursed once per row: a batch of 1,000 rows read from its ids (lm_loss without image_counts)
    raised a bare RecursionError, whether its rows read one way or two."""
    one = ov.num_image_tokens
    assert ov._images_per_row([one] * 1000, 1000) == [1] * 1000
    with pytest.raises(BackboneError, match="more than one way"):
        ov._images_per_row([34] * 1000, 1001, [SMALL] * 1001)


def test_the_refusal_of_a_big_ambiguous_batch_lists_a_few_rows(ov):
    """The refusal of a batch that reads two ways listed every row's count: 4,400 characters for 1,000 rows. It lists
    the first 8 and how many more, and still names the fix."""
    with pytest.raises(BackboneError) as e:
        ov._images_per_row([34] * 1000, 1001, [SMALL] * 1001)
    said = str(e.value)
    assert "rows of [34, 34, 34, 34, 34, 34, 34, 34, ... 992 more rows] image tokens" in said
    assert "pass image_counts=[...]" in said and len(said) < 600
    with pytest.raises(BackboneError, match=r"rows of \[34, 34\] image tokens"):   # a short batch: every row
        ov._images_per_row([34, 34], 3, [SMALL] * 3)
