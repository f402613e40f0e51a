"""The Qwen2-VL backbone class (--backbone hf:DIR of a tiny Qwen2-VL / Qwen2.5-VL directory with its processor):
loading, the device-side patches against the processor's, per-row losses, mixed-task routes, routed generate,
cached candidate scores against the full computation (M-RoPE positions), the refusals, and the train and eval
commands end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from qwen_tiny import QWEN_SPECIALS, save_tiny_qwen2vl, tiny_qwen2vl_backbone
from test_generative_tasks import _attach
from vlm_checks import (
    assert_lm_loss_per_row,
    assert_mixed_lm_loss_per_task,
    assert_routed_generate_per_task,
    assert_train_and_eval_commands,
    cached_and_full_scores,
    prompts,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import BackboneError, Qwen2VLBackbone, load_backbone
from mtl_lora_vl.backbones.base import GENERATE, GRAD_CHECKPOINTING, LM_LOGITS
from mtl_lora_vl.backbones.qwen2_vl import patchify, qwen_image_side
from mtl_lora_vl.data.resize import resize_to_square


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen")


@pytest.fixture(params=[False, True], ids=["qwen2", "qwen2.5"])
def bb(request, dirs):
    return tiny_qwen2vl_backbone(dirs, request.param)


def _adapt(bb, tasks=("a", "b")):
    return _attach(bb, tasks, std=0.3)


def _plain_inputs(bb, images, ids):
    """What the processor gives for these rows: its patches, grid and mm_token_type_ids."""
    side = bb.image_size // 8
    return dict(pixel_values=patchify(images, 8, 2, 2), image_grid_thw=torch.tensor([[1, side, side]] * len(images)),
                mm_token_type_ids=(ids == bb.image_token_id).int())


def test_loads_from_a_directory_with_its_processor(bb):
    assert type(bb) is Qwen2VLBackbone and bb.family == "qwen2_vl"
    assert bb.capabilities == {LM_LOGITS, GENERATE, GRAD_CHECKPOINTING}
    assert bb.image_token == "<|image_pad|>" and bb.image_size == 32 and bb.num_image_tokens == 4
    assert bb.resize.mode == "squash" and bb.resize.size == 32
    tok = bb.processor.tokenizer
    vs, ve, img, _ = (tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS)
    row = bb.lm_collator()([f"{bb.image_token} caption:"])["input_ids"][0].tolist()
    at = row.index(vs)
    assert row[at:at + 6] == [vs, img, img, img, img, ve]


def test_the_side_fits_the_processors_pixels():
    assert qwen_image_side(28, 56 * 56, 28 * 28 * 1280) == 448           # the released processors: 256 tokens
    assert qwen_image_side(16, 32 * 32, 32 * 32) == 32
    assert qwen_image_side(28, 56 * 56, 300 * 300) == 280                 # below max_pixels, a multiple of 28
    assert qwen_image_side(28, 500 * 500, None) == 504


def test_device_patches_equal_the_processors(bb):
    """The loader's square (resized in the worker, normalised on the device) cut into patches equals what the
    Qwen processor makes of the same picture."""
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(2)]
    squares = [resize_to_square(p, bb.resize) for p in pics]
    uint8 = torch.stack([torch.from_numpy(np.asarray(s).copy()).permute(2, 0, 1) for s in squares])
    mine = bb._vision_inputs(bb.preprocess_uint8(uint8))
    theirs = bb.processor.image_processor(images=squares, return_tensors="pt")
    torch.testing.assert_close(mine["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=1e-5)
    assert mine["image_grid_thw"].tolist() == theirs["image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\)"):
        bb._vision_inputs(torch.zeros(1, 3, 48, 48))


def test_lm_loss_per_row_equals_each_row_alone_and_the_plain_model(bb):
    assert_lm_loss_per_row(bb, lambda images, ids: _plain_inputs(bb, images, ids))


def test_mixed_task_lm_loss_equals_each_task_alone(bb):
    _adapt(bb)
    assert_mixed_lm_loss_per_task(bb)


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_equals_each_task_alone(bb, beams):
    _adapt(bb)
    assert_routed_generate_per_task(bb, beams, lambda images, ids: _plain_inputs(bb, images, ids))


def test_cached_sequence_scores_equal_the_full_computation(bb):
    """One prefill, then all candidates from the cache: their M-RoPE positions continue each row's text after
    the image (1-D positions were off by up to 0.4 in log-probability, silently)."""
    _adapt(bb)
    cached, _, used = cached_and_full_scores(bb)
    images, p, cands, rows = used["images"], used["prompts"], used["candidates"], used["rows"]
    with torch.no_grad(), mlv.route(bb.model, [1, 0, 1]):
        per_token = bb.sequence_scores(images, p, cands, per_token=True)
    lengths = torch.tensor([[len(c) for c in r] for r in rows], dtype=cached.dtype)
    torch.testing.assert_close(per_token, cached / lengths)
    # and against the plain model on each full sequence, one at a time
    b, c = 2, 1
    one = bb.lm_collator()([p[b]], [cands[c]])
    with torch.no_grad(), mlv.route(bb.model, 1):
        logits = bb.model(input_ids=one["input_ids"], attention_mask=one["attention_mask"],
                          **_plain_inputs(bb, images[b:b + 1], one["input_ids"])).logits[0, :-1]
    labels = one["labels"][0, 1:]
    want = logits.log_softmax(-1)[labels != -100].gather(1, labels[labels != -100, None]).sum()
    torch.testing.assert_close(cached[b, c], want, atol=1e-4, rtol=1e-4)


def test_caption_logits_put_the_vision_tokens_around_the_image(bb):
    tokens = bb.lm_collator()(prompts(bb, 2), ["red", "blue"])["input_ids"][:, -4:]
    with torch.no_grad():
        logits = bb.caption_logits(torch.randn(2, 3, 32, 32), tokens)
    assert logits.shape == (2, 3, bb.vocab_size)


def test_a_wrong_image_token_count_is_refused(bb):
    b = bb.lm_collator()(prompts(bb, 2), ["red", "blue"])
    ids = b["input_ids"].clone()
    ids[0, (ids[0] == bb.image_token_id).nonzero()[0]] = 5
    with pytest.raises(BackboneError, match="row 0 of input_ids has 3 image tokens.*gives 4 features.*lm_collator"):
        bb.lm_loss(torch.randn(2, 3, 32, 32), ids, b["attention_mask"], b["labels"])
    with pytest.raises(BackboneError, match="image tokens do not match the image features.*lm_collator"):
        bb._forward(torch.randn(2, 3, 32, 32), ids, b["attention_mask"])


def test_a_missing_or_disagreeing_processor_is_refused(dirs, tmp_path):
    from transformers import AutoProcessor

    src = dirs / "tiny_qwen2vl"
    if not (src / "config.json").is_file():
        save_tiny_qwen2vl(src)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((src / f).read_bytes())
    with pytest.raises(FileNotFoundError, match="no processor files.*processor.save_pretrained"):
        load_backbone(f"hf:{bare}")
    other = tmp_path / "merge1"   # a processor that merges 1 x 1: 16 tokens per image where the model fills 4
    proc = AutoProcessor.from_pretrained(str(src))
    proc.image_processor.merge_size = 1
    proc.save_pretrained(str(other))
    for f in ("config.json", "model.safetensors"):
        (other / f).write_bytes((src / f).read_bytes())
    with pytest.raises(BackboneError, match="expands '<\\|image_pad\\|>' to 16 tokens but the vision tower gives 4"):
        load_backbone(f"hf:{other}")


def test_train_and_eval_commands(dirs, tmp_path, capsys):
    folder = dirs / "tiny_qwen2vl"
    if not (folder / "config.json").is_file():
        save_tiny_qwen2vl(folder)
    assert_train_and_eval_commands(folder, tmp_path, capsys)


def test_a_directory_without_its_processor_names_its_own_processor_class(tmp_path):
    """A Qwen2-VL directory without its processor was told to save a LlavaProcessor(..., patch_size=...,
    vision_feature_select_strategy=...), which that model does not take."""
    folder = save_tiny_qwen2vl(tmp_path / "q")
    (folder / "processor_config.json").unlink(missing_ok=True)
    (folder / "preprocessor_config.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="no processor files") as e:
        load_backbone(f"hf:{folder}")
    assert "Qwen2VLProcessor" in str(e.value) and "LlavaProcessor" not in str(e.value)
