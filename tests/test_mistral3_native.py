"""Mistral 3 reading each image at its own size (the default, --image-reading native): the sizes, ids and pixels
equal what transformers' PixtralProcessor makes of the same pictures, several sizes in one batch; routed mixed-task
loss and generation over such a batch equal each task alone; --image-reading square keeps the squash. Tiny model
from its config, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mistral3_tiny import IMAGE_TOKEN, save_tiny_mistral3, tiny_mistral3_backbone
from test_generative_tasks import _attach
from test_nlvr_generative import assert_own_size_pairs_train_as_each_task_alone
from vlm_checks import (
    assert_own_size_generate_per_task,
    assert_own_size_loss_per_task,
    loader_images,
    own_size,
    pictures,
    prompts,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.image_record import image_record
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.resize import ImageResize

SHAPES = [(48, 40), (30, 64), (90, 30), (1, 1), (7, 33)]
LM_SHAPES = [(48, 40), (30, 64), (90, 30), (2, 20), (7, 33)]
TARGETS = ["red", "a blue square", "two", "a circle", "green"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("mistral3_native")


@pytest.fixture
def bb(dirs):
    return tiny_mistral3_backbone(dirs)


def _pil_processor(bb):
    """The backbone's PixtralProcessor on PIL's resampling (``PixtralImageProcessorPil``), as the loader resizes."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    ip = bb.processor.image_processor
    bb.processor.image_processor = PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=ip.patch_size,
                                                            image_mean=ip.image_mean, image_std=ip.image_std)
    return bb.processor


def test_sizes_are_the_pixtral_processors():
    """1 x 1 to 399 x 399 pictures, square or not: the processor's size (longest edge fitted, sides up to 16)."""
    from transformers.models.pixtral.image_processing_pixtral import get_resize_output_image_size

    resize = ImageResize(32, mode="native", factor=16, longest=True)
    big = ImageResize(1540, mode="native", factor=28, longest=True)   # Mistral Small 3.1's
    for h in range(1, 400, 6):
        for w in range(1, 400, 7):
            for r, side, unit in ((resize, 32, 16), (big, 1540, 28)):
                want = get_resize_output_image_size(np.empty((3, h, w)), (side, side), (unit, unit), "channels_first")
                if min(want) > 0:   # (a sliver the processor shrinks to no row at all: one block here)
                    assert r.resized_size(w, h) == want[::-1], (h, w, side)
    assert resize.resized_size(1, 399) == (16, 32) and big.resized_size(4000, 3000) == (1540, 1176)
    with pytest.raises(ValueError, match="longest .* takes no min_pixels"):
        ImageResize(32, mode="native", factor=16, longest=True, max_pixels=1024)


def test_ids_sizes_and_pixels_equal_the_processors(bb):
    """Five pictures of their own sizes in one batch: the collator's ids (rows of [IMG], [IMG_BREAK] / [IMG_END])
    equal PixtralProcessor's id for id, image_sizes too, and the pixels inside each image (its padding is 0 after
    normalising there, the loader's a black picture: the model reads neither)."""
    pics = pictures(SHAPES)
    images, sizes = loader_images(bb, pics)
    text = [f"{IMAGE_TOKEN} caption:"] * len(pics)
    theirs = _pil_processor(bb)(text=text, images=[[p] for p in pics], return_tensors="pt", padding=True)
    assert sizes == [tuple(s) for s in theirs["image_sizes"].tolist()] == [(32, 32), (16, 32), (32, 16), (16, 16),
                                                                            (16, 32)]
    assert images.shape == theirs["pixel_values"].shape == (5, 3, 32, 32)
    for i, (h, w) in enumerate(sizes):
        torch.testing.assert_close(images[i, :, :h, :w], theirs["pixel_values"][i, :, :h, :w], atol=1e-5, rtol=1e-5)
    mine = bb.lm_collator()(text, image_sizes=sizes)
    pad = bb.pad_id
    for row, want, mask in zip(mine["input_ids"].tolist(), theirs["input_ids"].tolist(), theirs["attention_mask"]):
        assert [i for i in row if i != pad] == [i for i, m in zip(want, mask.tolist()) if m], (row, want)
    counts = (mine["input_ids"] == bb.image_token_id).sum(1).tolist()
    assert counts == [4, 2, 2, 1, 2]
    vision = bb._vision_inputs(images, sizes)
    assert vision["image_sizes"].tolist() == theirs["image_sizes"].tolist()


def test_mixed_task_loss_over_images_of_their_own_sizes_equals_each_task_alone(bb):
    _attach(bb, ("a", "b"), std=0.3)
    images, sizes = loader_images(bb, pictures(LM_SHAPES))
    assert len(set(sizes)) == 3   # images of their own sizes on one canvas
    assert_own_size_loss_per_task(bb, images, sizes, TARGETS, [0, 1, 1, 0, 1])


@pytest.mark.parametrize("beams", [1, 2, 3])
def test_routed_generate_over_images_of_their_own_sizes_equals_each_task_alone(bb, beams):
    _attach(bb, ("a", "b"), std=0.3)
    images, sizes = loader_images(bb, pictures(LM_SHAPES[:4]))
    assert len(set(sizes)) == 3
    assert_own_size_generate_per_task(bb, images, sizes, [0, 1, 1, 0], beams)


def test_a_lone_image_of_one_token_reads_as_in_a_batch(bb):
    """A 7 x 7 picture alone (16 x 16: one [IMG] token, as the processor gives it): transformers squeezed the batch's
    one feature row to (D,) and failed ('split_with_sizes expects split_sizes to sum exactly to 32'); now its loss,
    scores and generation equal the same row's beside a larger image."""
    _attach(bb, ("a", "b"), std=0.3)
    images, sizes = loader_images(bb, pictures([(7, 7), (48, 40)]))
    assert sizes[0] == (16, 16)
    p = prompts(bb, 2)
    with torch.no_grad(), mlv.route(bb.model, 1):
        both = bb.lm_loss(images, **bb.lm_collator()(p, TARGETS[:2], image_sizes=sizes), image_sizes=sizes)
        alone = bb.lm_loss(own_size(images, sizes, 0), **bb.lm_collator()(p[:1], TARGETS[:1], image_sizes=sizes[:1]))
        torch.testing.assert_close(alone[0], both[0], atol=1e-5, rtol=1e-5)
        scores = bb.sequence_scores(images, p, ["red", "two"], image_sizes=sizes)
        one = bb.sequence_scores(own_size(images, sizes, 0), p[:1], ["red", "two"])
        torch.testing.assert_close(one[0], scores[0], atol=1e-4, rtol=1e-4)
        assert bb.generate(own_size(images, sizes, 0), max_len=3, prompts=p[:1]) == bb.generate(
            images, max_len=3, prompts=p, image_sizes=sizes)[:1]


def test_the_one_token_hook_is_registered_once_and_kept_by_copies_and_unload(bb):
    """from_model again, attach, deepcopy and unload leave one pixtral_keep_one_row hook on the projector, and a lone
    one-token image still generates on the copy and on the unloaded model."""
    import copy

    from mtl_lora_vl.backbones import Mistral3Backbone
    from mtl_lora_vl.family_images import pixtral_keep_one_row
    from mtl_lora_vl.mtl_lora_model import unload

    def hooks(model):
        return sum(h is pixtral_keep_one_row for h in model.model.multi_modal_projector._forward_hooks.values())

    Mistral3Backbone.from_model(bb.model, bb.processor, bb.name)
    _attach(bb, ("a", "b"), std=0.3)
    twin = copy.deepcopy(bb.model)
    assert hooks(bb.model) == hooks(twin) == 1
    images, sizes = loader_images(bb, pictures([(7, 7)]))
    x = bb.lm_collator()(prompts(bb, 1), image_sizes=sizes)
    with torch.no_grad(), mlv.route(twin, 1):
        twin(pixel_values=images, image_sizes=torch.tensor(sizes), **x)
    unload(bb.model, "b")
    assert hooks(bb.model) == 1 and len(bb.generate(images, max_len=2, prompts=prompts(bb, 1))) == 1


def test_a_backbone_of_an_attached_bare_model_keeps_the_one_token_hook_after_unload(bb, dirs):
    """A bare model attached (attach installs the hook, unload takes its own off) then given to the backbone: the
    backbone found the hook there and left it attach's, so unload took it off under the backbone and a lone
    one-token image failed ('split_with_sizes expects split_sizes to sum exactly to 32'); the backbone keeps it."""
    from transformers import Mistral3ForConditionalGeneration

    from mtl_lora_vl.backbones import Mistral3Backbone
    from mtl_lora_vl.family_images import pixtral_keep_one_row
    from mtl_lora_vl.mtl_lora_model import unload

    bare = Mistral3ForConditionalGeneration.from_pretrained(dirs / "tiny_mistral3").eval()
    mlv.attach(bare, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    wrapped = Mistral3Backbone.from_model(bare, bb.processor, bb.name)
    unload(bare)
    hooks = bare.model.multi_modal_projector._forward_hooks.values()
    assert sum(h is pixtral_keep_one_row for h in hooks) == 1
    images, sizes = loader_images(wrapped, pictures([(7, 7)]))
    assert len(wrapped.generate(images, max_len=2, prompts=prompts(wrapped, 1))) == 1


def test_image_reading_square_keeps_the_squash(dirs):
    folder = dirs / "tiny_mistral3"
    if not (folder / "config.json").is_file():
        save_tiny_mistral3(folder)
    square = load_backbone(f"hf:{folder}", image_reading="square")
    assert square.resize.mode == "squash" and image_record(square.model).reading == "square"
    assert to_uint8_tensor(pictures([(30, 64)])[0], square.resize).shape == (3, 32, 32)
    row = square.lm_collator()([f"{IMAGE_TOKEN} caption:"])["input_ids"][0].tolist()
    assert row.count(square.image_token_id) == 4
    native = load_backbone(f"hf:{folder}", image_reading="native")
    assert native.resize.native and image_record(native.model).reading == "native"


def test_exports_of_a_square_adapter_say_the_processor_reads_pictures_at_their_own_size(dirs, tmp_path, caplog):
    """A merged export (and a LoRA export's README) of an adapter trained with --image-reading square: Pixtral's
    processor, copied into the merged directory, fits each picture within its longest edge and cannot squash it to
    the square, so the merged model reads pictures otherwise than its task was trained -- said as for LLaVA-NeXT.
    A native adapter's exports say nothing."""
    folder = dirs / "tiny_mistral3"
    if not (folder / "config.json").is_file():
        save_tiny_mistral3(folder)
    square = load_backbone(f"hf:{folder}", image_reading="square")
    model = mlv.attach(square.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    with caplog.at_level("WARNING"):
        mlv.save_merged(model, "a", tmp_path / "merged")
    assert "square" in caplog.text and "Mistral3" in caplog.text and "own aspect" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        out = mlv.export_lora(model, "a", tmp_path / "peft", format="plain")
    assert "read on one square" in caplog.text and "Mistral 3" in caplog.text
    caplog.clear()
    native = load_backbone(f"hf:{folder}")
    model = mlv.attach(native.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    with caplog.at_level("WARNING"):
        mlv.save_merged(model, "a", tmp_path / "merged_native")
        mlv.export_lora(model, "a", tmp_path / "peft_native", format="plain")
    assert "square" not in caplog.text and out.is_dir()


def test_a_chat_turn_with_an_image_of_its_own_size_is_the_processors_ids(tmp_path):
    """chat = true on Mistral Small 3.1's template ([SYSTEM_PROMPT] .. [/SYSTEM_PROMPT][INST] .. [/INST], the start
    token written by the template): a VQA turn over a 30 x 64 picture (one row of two [IMG]) gives the processor's ids
    for the same turn, a system message goes where the template writes it, and an answer ends with the end token
    (the template's end of an answer)."""
    from mistral3_tiny import save_chat_mistral3
    from test_chat_template import _chat_spec
    from test_generative_tasks import _split

    from mtl_lora_vl.backbones.chat import ChatWrap
    from mtl_lora_vl.tasks import build_kind, load_spec

    bb = load_backbone(f"hf:{save_chat_mistral3(tmp_path / 'chat')}")
    head = "[SYSTEM_PROMPT]you are a helpful assistant[/SYSTEM_PROMPT][INST]"
    assert bb.chat_wrap() == ChatWrap(head, "[/INST]", head, "")
    assert bb.chat_wrap("answer in one word").before == "[SYSTEM_PROMPT]answer in one word[/SYSTEM_PROMPT][INST]"
    spec = load_spec(_chat_spec(tmp_path, "vqa", "{image}{question}"))
    kind = build_kind(spec, _split(spec, "train", 6), bb)
    example = _split(spec, "val", 1).examples[0]
    prompt = kind.prompt(example)
    pic = pictures([(30, 64)])[0]
    _, sizes = loader_images(bb, [pic])
    assert sizes == [(16, 32)]
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": kind.question(example)}]}]

    def theirs(turns, **kw):
        text = bb.processor.apply_chat_template(turns, tokenize=False, **kw)
        return bb.processor(text=text, images=[pic], add_special_tokens=False)["input_ids"][0]

    tok = bb.processor.tokenizer
    ours = bb.lm_collator()([prompt], image_sizes=sizes)["input_ids"][0].tolist()
    assert tok.convert_ids_to_tokens(ours) == tok.convert_ids_to_tokens(theirs(turn, add_generation_prompt=True))
    assert ours.count(bb.image_token_id) == 2 and ours.count(tok.bos_token_id) == 1
    trained = bb.lm_collator()([prompt], ["red"], image_sizes=sizes)["input_ids"][0].tolist()
    answered = theirs([*turn, {"role": "assistant", "content": [{"type": "text", "text": "red"}]}])
    assert trained == answered.tolist()[:len(trained)] and trained[-1] == tok.eos_token_id


def test_pairs_of_their_own_sizes_train_and_evaluate(bb):
    """NLVR2-style rows of two pictures of different sizes (the nlvr kind) read at their own sizes: each image reaches
    the collator with its own size (no stack, no 'needs images of one size'), the mixed batch's losses are each
    task's alone, and the kind evaluates through the language model."""
    kinds, pairs = assert_own_size_pairs_train_as_each_task_alone(bb, pictures([(48, 40), (30, 64), (90, 30),
                                                                               (40, 40)]))
    with torch.no_grad():
        with mlv.route(bb.model, "nlvr"):
            result = kinds["nlvr"].evaluate(bb, None, pairs, batch_size=2, device="cpu")
    assert result["n"] == 3 and 0 <= result["accuracy"] <= 1


def test_a_pair_given_whole_to_to_uint8_tensor_is_refused_naming_the_fix(bb):
    """A pair passed to to_uint8_tensor at once under the native resize was refused with 'use a backbone that resizes
    to a square' (Mistral 3 and Qwen2-VL read pairs at their own sizes: the loader converts each image alone); the
    message names that and --image-reading square."""
    pair = tuple(pictures([(48, 40), (30, 64)]))
    with pytest.raises(ValueError, match=r"2 images .* convert each alone.*--image-reading square"):
        to_uint8_tensor(pair, bb.resize)
    parts = tuple(to_uint8_tensor(p, bb.resize) for p in pair)
    assert [tuple(p.shape) for p in parts] == [(3, 32, 32), (3, 16, 32)]
