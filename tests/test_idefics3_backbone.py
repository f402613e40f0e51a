"""The Idefics3 backbone class (--backbone hf:DIR of a tiny Idefics3 / SmolVLM directory with its processor), reading
images unsplit (native_aspect(False); split, the default: test_idefics3_split.py): loading, the collator's ids and
the device pixels against the processor's, per-row losses, mixed-task routes, routed generate, cached candidate
scores, the refusals, and the train and eval commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from idefics3_tiny import (
    IDEFICS3_SPECIALS,
    _num2words,  # noqa: F401 (an autouse fixture)
    save_tiny_idefics3,
    tiny_idefics3_backbone,
)
from PIL import Image
from test_generative_tasks import _attach
from vlm_checks import (
    assert_lm_loss_per_row,
    assert_mixed_lm_loss_per_task,
    assert_routed_generate_per_task,
    assert_train_and_eval_commands,
    cached_and_full_scores,
    one_image_token_short,
    pictures,
    square_images,
)

from mtl_lora_vl.backbones import BackboneError, Idefics3Backbone, load_backbone
from mtl_lora_vl.backbones.base import GENERATE, GRAD_CHECKPOINTING, LM_LOGITS


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("idefics3")


@pytest.fixture(params=[False, True], ids=["idefics3", "smolvlm"])
def bb(request, dirs):
    bb = tiny_idefics3_backbone(dirs, request.param)
    bb.native_aspect(False)   # these tests give square images without sizes
    return bb


def _adapt(bb, tasks=("a", "b")):
    return _attach(bb, tasks, std=0.3)


def test_loads_from_a_directory_with_its_processor_and_reads_unsplit_squares(bb, dirs):
    assert type(bb) is Idefics3Backbone and bb.family == "idefics3"
    assert bb.capabilities == {LM_LOGITS, GENERATE, GRAD_CHECKPOINTING}
    assert bb.image_token == "<image>" and bb.image_size == 32 and bb.num_image_tokens == 4
    assert bb.resize.mode == "squash" and bb.resize.size == 32 and bb.resize.interpolation == "lanczos"
    saved = json.loads(next(dirs.glob("tiny_*/processor_config.json")).read_text())
    assert saved["image_processor"]["do_image_splitting"] is True          # as released
    assert bb.processor.image_processor.do_image_splitting is False         # native_aspect(False): one view
    tok = bb.processor.tokenizer
    fake, img, _, glob = (tok.convert_tokens_to_ids(t) for t in IDEFICS3_SPECIALS)
    row = bb.lm_collator()([f"{bb.image_token} caption:"])["input_ids"][0].tolist()
    at = row.index(fake)
    assert row[at:at + 7] == [fake, glob, img, img, img, img, fake]


def test_the_collators_ids_and_the_device_pixels_equal_the_processors(bb):
    """For the same prompt and picture, the processor (splitting off, as the backbone sets it) writes the ids the
    collator writes (plus the end token the test tokenizer appends), and its pixels are the device's."""
    pics = pictures([(48, 40)] * 2)
    squares, mine = square_images(bb, pics)
    for p in (f"{bb.image_token} caption:", f"question: what colour is the circle? {bb.image_token} answer:"):
        ours = bb.lm_collator()([p])["input_ids"][0].tolist()
        theirs = bb.processor(images=[pics[0]], text=[p], return_tensors="pt")["input_ids"][0].tolist()
        assert ours + [bb.processor.tokenizer.eos_token_id] == theirs
    # (the processor first scales the longest edge to size["longest_edge"], 128 here: at the square's own side
    # that step keeps the square, and the pixels are the same)
    theirs = bb.processor.image_processor(images=[[s] for s in squares], size={"longest_edge": 32}, return_tensors="pt")
    assert theirs["pixel_values"].shape == (2, 1, 3, 32, 32)
    torch.testing.assert_close(bb._vision_inputs(mine)["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\)"):
        bb._vision_inputs(torch.zeros(1, 3, 48, 48))


def test_lm_loss_per_row_equals_each_row_alone_and_the_plain_model(bb):
    assert_lm_loss_per_row(bb, lambda images, ids: dict(pixel_values=images[:, None]))


def test_mixed_task_lm_loss_equals_each_task_alone(bb):
    _adapt(bb)
    assert_mixed_lm_loss_per_task(bb)


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_equals_each_task_alone(bb, beams):
    _adapt(bb)
    assert_routed_generate_per_task(bb, beams, lambda images, ids: dict(pixel_values=images[:, None]))


def test_cached_sequence_scores_equal_the_full_computation(bb):
    _adapt(bb)
    cached_and_full_scores(bb)


def test_a_wrong_image_token_count_or_a_blank_image_is_refused(bb):
    ids, b = one_image_token_short(bb)
    with pytest.raises(BackboneError, match="row 0 of input_ids has 3 image tokens.*gives 4 features.*lm_collator"):
        bb.lm_loss(torch.randn(2, 3, 32, 32), ids, b["attention_mask"], b["labels"])
    images = torch.randn(2, 3, 32, 32)
    images[1] = 0   # Idefics3 takes it for padding and drops it
    with pytest.raises(BackboneError, match="normalised pixels are all 0"):
        bb._forward(images, b["input_ids"], b["attention_mask"])


def test_the_square_and_its_token_count_follow_the_processor_and_the_connector():
    """384 px in 14-px patches are 27 per side (the convolution drops 6 px), folded 3 x 3: 81 tokens, as the
    released SmolVLM-2.2B processor says (a rule of whole patch x scale blocks refused it)."""
    from types import SimpleNamespace as NS

    cfg = NS(vision_config=NS(image_size=384, patch_size=14), scale_factor=3)
    side = Idefics3Backbone._image_side(cfg, NS(max_image_size={"longest_edge": 384}), "x")
    assert side == 384 and Idefics3Backbone._image_tokens(NS(config=cfg), side) == 81
    cfg = NS(vision_config=NS(image_size=512, patch_size=16), scale_factor=4)   # SmolVLM-256M
    assert Idefics3Backbone._image_tokens(NS(config=cfg), Idefics3Backbone._image_side(cfg, NS(), "x")) == 64
    with pytest.raises(BackboneError, match=r"max_image_size \(400\) gives 25 patches.*scale_factor \(4\)"):
        Idefics3Backbone._image_side(cfg, NS(max_image_size={"longest_edge": 400}), "x")


def test_a_processor_whose_token_count_disagrees_is_refused(dirs, tmp_path):
    from transformers import AutoProcessor

    src = dirs / "tiny_idefics3"
    if not (src / "config.json").is_file():
        save_tiny_idefics3(src)
    other = tmp_path / "seq9"
    proc = AutoProcessor.from_pretrained(str(src))
    proc.image_seq_len = 9
    proc.save_pretrained(str(other))
    for f in ("config.json", "model.safetensors"):
        (other / f).write_bytes((src / f).read_bytes())
    with pytest.raises(BackboneError, match="expands '<image>' to 9 tokens but the vision tower gives 4.*image_seq_len "
                                            "to 4"):
        load_backbone(f"hf:{other}")


def test_train_and_eval_commands(dirs, tmp_path, capsys):
    folder = dirs / "tiny_idefics3"
    if not (folder / "config.json").is_file():
        save_tiny_idefics3(folder)
    assert_train_and_eval_commands(folder, tmp_path, capsys)


def _edit_processor(folder, edit):
    cfg = json.loads((folder / "processor_config.json").read_text())
    edit(cfg["image_processor"])
    (folder / "processor_config.json").write_text(json.dumps(cfg))


def _merged_ids(tmp_path, split: bool) -> tuple[list[int], list[int], object]:
    """A tiny Idefics3's merged export (the backbone reading images split or not): the ids its own processor writes
    for a 48 x 64 picture, the backbone's for it, and the backbone."""
    from transformers import AutoProcessor

    import mtl_lora_vl as mlv

    folder = save_tiny_idefics3(tmp_path / "idefics3")
    assert json.loads((folder / "processor_config.json").read_text())["image_processor"]["do_image_splitting"]
    bb = load_backbone(f"hf:{folder}")
    bb.native_aspect(split)
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    out = mlv.save_merged(model, "a", tmp_path / "merged")
    prompt = f"{bb.image_token} question: what colour is the circle ? answer:"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    ids = AutoProcessor.from_pretrained(out)(images=[img], text=[prompt])["input_ids"][0]
    ids = ids[:-1] if ids[-1] == bb.eos_id else ids   # the tiny word-level tokenizer appends its end token
    return ids, bb.lm_collator()([prompt], image_sizes=[(48, 64)])["input_ids"][0].tolist(), bb


def test_a_merged_directory_reads_images_as_the_task_was_trained(tmp_path):
    """save_merged copies the source folder's processor, whose image splitting is on, and the backbone splits
    images as it does (by default): the merged folder's processor writes the ids the backbone trained on (helper
    154: when the backbone read images unsplit, the copied processor's 147 ids stood against training's 19)."""
    theirs, ours, bb = _merged_ids(tmp_path, split=True)
    assert theirs == ours and theirs.count(bb.image_token_id) == 4 * 13   # 3 x 4 crops and the global image, 4 each


def test_a_merged_directory_of_an_unsplit_adapter_reads_its_images_unsplit(tmp_path):
    """An adapter trained after native_aspect(False) (unsplit squares): its merged folder's processor has splitting
    off, so it writes the ids the backbone trained on (the source's files would split: 4 x 13 tokens, not 4)."""
    theirs, ours, bb = _merged_ids(tmp_path, split=False)
    assert theirs == ours and theirs.count(bb.image_token_id) == 4


def test_a_max_image_size_other_than_the_towers_names_it(tmp_path):
    """max_image_size 48 on a tower built for 32: the fix named was 'set its image_seq_len to 9', which would load
    and feed 48-px images to a 32-px tower; the processor's max_image_size is what differs (helper 154)."""
    folder = save_tiny_idefics3(tmp_path / "idefics3")
    _edit_processor(folder, lambda c: c.update(max_image_size={"longest_edge": 48}))
    with pytest.raises(BackboneError, match=r"48x48 \(max_image_size\) where the vision tower was built for 32x32.*"
                                            r"set max_image_size to \{'longest_edge': 32\}") as e:
        load_backbone(f"hf:{folder}")
    assert "image_seq_len" not in str(e.value)


def test_a_merged_processor_without_the_splitting_field_splits_as_the_backbone(tmp_path):
    """A processor file without do_image_splitting loads with the processor's default, True: the backbone splits
    images too, and the merged folder's processor still does (helper 157 found it split where the backbone, then,
    did not)."""
    from transformers import AutoProcessor

    import mtl_lora_vl as mlv

    folder = save_tiny_idefics3(tmp_path / "idefics3")
    _edit_processor(folder, lambda c: c.pop("do_image_splitting"))
    assert AutoProcessor.from_pretrained(folder).image_processor.do_image_splitting is True
    bb = load_backbone(f"hf:{folder}")
    assert bb.resize.mode == "anyres" and bb.processor.image_processor.do_image_splitting is True
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    out = mlv.save_merged(model, "a", tmp_path / "merged")
    assert AutoProcessor.from_pretrained(out).image_processor.do_image_splitting is True
