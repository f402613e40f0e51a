"""Native-aspect anyres (LLaVA-NeXT, LLaVA-OneVision): each image read as its Hugging Face processor reads it (best
pinpoint for its own size, resized keeping aspect and padded, base view, tiles, ``image_sizes`` the original size).
Images of several aspects in one batch, made as the loader makes them: the ids, image-token counts, pixel values and
sizes equal the processor's, the logits the HF model's on the processor's own inputs; a mixed route equals each row
alone; greedy generation of the mixed batch equals the rows alone; a merged export used with its processor gives the
same logits."""

from __future__ import annotations

import numpy as np
import pytest
import test_llava_next
import test_llava_onevision
import torch
from PIL import Image

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data.anyres import anyres_tokens, pad_images
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.family_anyres import llava_next_image, llava_onevision_image

BUILDERS = {"llava_next": test_llava_next.build, "llava_onevision": test_llava_onevision.build}

# wide, tall, square, tiny, and a large wide one (w x h)
PICTURES = [(90, 30), (24, 70), (40, 40), (5, 3), (200, 120)]


@pytest.fixture(scope="module", params=list(BUILDERS))
def folder(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))[2]


@pytest.fixture
def bb(folder):
    return load_backbone(f"hf:{folder}")


def _pictures(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in PICTURES]


def _loaded(bb, pictures):
    """The pictures as the loader ships them (worker decode, collate) and as the device has them."""
    uint8, sizes = pad_images([to_uint8_tensor(p, bb.resize) for p in pictures])
    return bb.preprocess_uint8(uint8), list(sizes)


def _prompt(bb):
    return f"{bb.image_token} caption:"


def test_token_counts_are_the_models_for_every_size(bb):
    inner = bb.model.model
    one = llava_next_image if bb.family == "llava_next" else lambda m, s: llava_onevision_image(m, s)
    for h in (1, 3, 17, 32, 40, 64, 97, 300):
        for w in (1, 5, 20, 33, 64, 120, 500):
            assert anyres_tokens(bb.resize.anyres, (h, w)) == one(inner, (h, w))[0], (h, w)


def test_a_mixed_batch_equals_the_processors_inputs_and_the_models_logits(bb):
    pictures = _pictures()
    images, sizes = _loaded(bb, pictures)
    prompts = [_prompt(bb)] * len(pictures)
    theirs = bb.processor(images=pictures, text=prompts, return_tensors="pt", padding=True)
    assert sizes == [(p.size[1], p.size[0]) for p in pictures] == [tuple(s) for s in theirs["image_sizes"].tolist()]
    ours = bb.lm_collator()(prompts, image_sizes=sizes)
    counts = (ours["input_ids"] == bb.image_token_id).sum(1).tolist()
    assert counts == (theirs["input_ids"] == bb.image_token_id).sum(1).tolist()
    assert len(set(counts)) > 2, counts   # the counts depend on the aspect
    eos = bb.processor.tokenizer.eos_token_id
    for r in range(len(pictures)):
        mine = ours["input_ids"][r][ours["attention_mask"][r].bool()].tolist()
        want = theirs["input_ids"][r][theirs["attention_mask"][r].bool()].tolist()
        assert mine + [eos] == want
    views = bb._vision_inputs(images, sizes)
    assert views["pixel_values"].shape == theirs["pixel_values"].shape
    torch.testing.assert_close(views["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=1e-5)
    assert views["image_sizes"].tolist() == theirs["image_sizes"].tolist()
    with torch.no_grad():
        want = bb.model(**theirs).logits
        got = bb._forward(images, theirs["input_ids"], theirs["attention_mask"], image_sizes=sizes).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _adapted(bb):
    torch.manual_seed(0)
    bb.model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4))
    for n, p in bb.model.named_parameters():
        if "lora" in n.lower() or "mtl" in n.lower():
            p.data.normal_(0, 0.1)
    return bb


def test_a_mixed_route_and_greedy_generation_equal_each_row_alone(bb):
    _adapted(bb)
    pictures = _pictures(1)
    images, sizes = _loaded(bb, pictures)
    prompts = [_prompt(bb)] * len(pictures)
    targets = ["red", "a blue square", "x", "green one", "b"]
    tasks = [0, 1, 1, 0, 1]
    b = bb.lm_collator()(prompts, targets, image_sizes=sizes)
    counts = (b["input_ids"] == bb.image_token_id).sum(1).tolist()
    theirs = bb.processor._get_num_multimodal_tokens(image_sizes=[[p.size[1], p.size[0]] for p in pictures])
    assert counts == theirs["num_image_tokens"]   # the processor's count for each picture's own size
    with torch.no_grad():
        with mlv.route(bb.model, tasks):
            mixed = bb.lm_loss(images, **b, image_sizes=sizes)
            said = bb.generate(images, max_len=4, prompts=prompts, image_sizes=sizes)
        for r, t in enumerate(tasks):
            alone_img, alone_sizes = _loaded(bb, [pictures[r]])
            one = bb.lm_collator()([prompts[r]], [targets[r]], image_sizes=alone_sizes)
            with mlv.route(bb.model, [t]):
                torch.testing.assert_close(mixed[r:r + 1], bb.lm_loss(alone_img, **one, image_sizes=alone_sizes),
                                           atol=1e-5, rtol=1e-5)
                assert said[r] == bb.generate(alone_img, max_len=4, prompts=[prompts[r]], image_sizes=alone_sizes)[0]


def test_the_merged_export_with_its_processor_gives_the_same_logits(bb, folder, tmp_path):
    """The merged checkpoint, fed by its own processor the pictures themselves, gives the routed backbone's logits on
    the loader's views of them."""
    _adapted(bb)
    pictures = _pictures(2)
    images, sizes = _loaded(bb, pictures)
    out = mlv.save_merged(bb.model, "b", tmp_path / "merged", source_dir=folder)
    from transformers import AutoProcessor

    merged = type(bb.model).from_pretrained(str(out), local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(str(out))
    processor.tokenizer.padding_side = "left"
    theirs = processor(images=pictures, text=[_prompt(bb)] * len(pictures), return_tensors="pt", padding=True)
    with torch.no_grad():
        with mlv.route(bb.model, "b"):
            ours = bb._forward(images, theirs["input_ids"], theirs["attention_mask"], image_sizes=sizes).logits
        want = merged(**theirs).logits
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-4)


def test_onevisions_rows_of_several_images_read_their_padded_square_view_as_the_processor(tmp_path):
    """A row of two pictures (each padded square with the image mean and read as that one view, as OneVision's
    processor reads a sample of several) beside a row of one tiled picture: the views the model reads equal the
    processor's, the logits the model's on the processor's nested batch, and each row's loss its own alone.
    (LLaVA-NeXT tiles every image of a row of several, as alone.)"""
    bb = load_backbone(f"hf:{BUILDERS['llava_onevision'](tmp_path)[2]}")
    pictures = _pictures(3)[:3]
    t = bb.image_token
    prompts, targets = [f"{t} {t} same?", f"{t} caption:"], ["yes", "a red"]
    made = [*to_uint8_tensor(tuple(pictures[:2]), bb.resize), to_uint8_tensor(pictures[2], bb.resize)]
    uint8, sizes = pad_images(made)
    images, sizes = bb.preprocess_uint8(uint8), list(sizes)
    theirs = bb.processor(images=[pictures[:2], pictures[2:]], text=prompts, return_tensors="pt", padding=True)
    b = bb.lm_collator()(prompts, targets, image_sizes=sizes)
    count = bb.image_token_id
    assert (b["input_ids"] == count).sum(1).tolist() == (theirs["input_ids"] == count).sum(1).tolist()
    with torch.no_grad():
        views = bb._vision_inputs(images, sizes)["pixel_values"]
        torch.testing.assert_close(views[:2, 0], theirs["pixel_values"][:2, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(views[2], theirs["pixel_values"][2], atol=1e-5, rtol=1e-5)
        want = bb.model(**theirs).logits
        got = bb._forward(images, theirs["input_ids"], theirs["attention_mask"], image_sizes=sizes).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        mixed = bb.lm_loss(images, **b, image_sizes=sizes)
        for r, (lo, hi) in enumerate([(0, 2), (2, 3)]):
            part = pictures[lo:hi]
            one = part[0] if len(part) == 1 else tuple(part)
            made = to_uint8_tensor(one, bb.resize)
            u, s = pad_images(list(made) if isinstance(made, tuple) else [made])
            alone = bb.lm_collator()(prompts[r:r + 1], targets[r:r + 1], image_sizes=list(s))
            want = bb.lm_loss(bb.preprocess_uint8(u), **alone, image_sizes=list(s))
            torch.testing.assert_close(mixed[r:r + 1], want, atol=1e-5, rtol=1e-5)


def test_pairs_beside_single_pictures_route_and_generate_as_each_row_alone(bb):
    """nlvr-style rows of two pictures (LLaVA-NeXT: each tiled at its own aspect; OneVision: each its padded square
    base view) beside rows of one, under a mixed route: losses and greedy generation equal each row alone."""
    _adapted(bb)
    pictures = _pictures(5)
    t = bb.image_token
    rows = [(pictures[0], pictures[1]), (pictures[2],), (pictures[3], pictures[4])]
    prompts = [" ".join([t] * len(r)) + " same?" for r in rows]
    targets, tasks = ["yes", "a red", "no"], [1, 0, 1]

    def load(some):
        made = [to_uint8_tensor(r if len(r) > 1 else r[0], bb.resize) for r in some]
        uint8, sizes = pad_images([x for m in made for x in (m if isinstance(m, tuple) else [m])])
        return bb.preprocess_uint8(uint8), list(sizes)

    images, sizes = load(rows)
    b = bb.lm_collator()(prompts, targets, image_sizes=sizes)
    with torch.no_grad():
        with mlv.route(bb.model, tasks):
            mixed = bb.lm_loss(images, **b, image_sizes=sizes)
            said = bb.generate(images, max_len=3, prompts=prompts, image_sizes=sizes)
        for r, task in enumerate(tasks):
            one_images, one_sizes = load(rows[r:r + 1])
            one = bb.lm_collator()(prompts[r:r + 1], targets[r:r + 1], image_sizes=one_sizes)
            with mlv.route(bb.model, [task]):
                want = bb.lm_loss(one_images, **one, image_sizes=one_sizes)
                torch.testing.assert_close(mixed[r:r + 1], want, atol=1e-5, rtol=1e-5)
                alone = bb.generate(one_images, max_len=3, prompts=prompts[r:r + 1], image_sizes=one_sizes)
                assert said[r] == alone[0]


def test_strips_without_their_sizes_are_refused_by_name(bb):
    """Strips stacked without their sizes are read as images of the canvas's own size (what the loader leaves out
    when every image is of that size) only where that size gives the strips' views."""
    pictures = _pictures()
    images, _ = _loaded(bb, [pictures[0], pictures[2]])   # 3 and 5 views: a 160 x 32 image would have 3
    with pytest.raises(ValueError, match=r"need their images' original sizes, image_sizes="):
        bb._vision_inputs(images)


def test_max_length_is_measured_on_each_images_own_count(bb):
    """lm_collator(max_length) was refused below the C x C square's count (88 tokens in the tiny LLaVA-NeXT, 46 in
    OneVision) although a wide picture's row (34 image tokens with its prompt and answer: 40) fits: each row is
    measured as it is made."""
    pictures = _pictures()[:1]   # 90 x 30
    _, sizes = _loaded(bb, pictures)
    row = bb.lm_collator()([_prompt(bb)], ["a b"], image_sizes=sizes)["input_ids"].shape[1]
    assert row < bb.num_image_tokens + 2   # the square's count: what the check read
    fits = bb.lm_collator(max_length=row)([_prompt(bb)], ["a b"], image_sizes=sizes)
    assert fits["input_ids"].shape[1] == row and (fits["labels"][0, -1] != -100)   # nothing cut
    with pytest.raises(ValueError, match="leaves no room for an answer within max_length"):
        bb.lm_collator(max_length=row - 4)([_prompt(bb)], ["a b"], image_sizes=sizes)


def test_a_token_mismatch_at_the_native_aspect_names_image_sizes(bb):
    """ids built without the image's size (the square's 88 tokens for a 90 x 30 picture that fills 34): the error
    said "Each image fills 88 tokens" and named only the processor's fields; it names image_sizes."""
    images, sizes = _loaded(bb, _pictures()[:1])
    batch = bb.lm_collator()([_prompt(bb)], ["a b"])   # (no image_sizes)
    with pytest.raises(mlv.backbones.BackboneError) as e:
        bb.lm_loss(images, **batch, first_label=3, image_sizes=sizes)
    assert "image_sizes=" in str(e.value) and f"fills {bb.num_image_tokens} " not in str(e.value)
    assert "fills as many" in str(e.value) and "its original size gives" in str(e.value)
