"""The Qwen2-VL backbone class (--backbone hf:DIR of a tiny Qwen2-VL / Qwen2.5-VL directory with its processor):
loading, the device-side patches against the processor's, per-row losses, mixed-task routes, routed generate,
cached candidate scores against the full computation (M-RoPE positions), the refusals, and the train and eval
commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from qwen_tiny import QWEN_SPECIALS, save_tiny_qwen2vl, tiny_qwen2vl_backbone
from test_generative_tasks import _attach, _small_spec, assert_eval_repeats

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import BackboneError, Qwen2VLBackbone, load_backbone
from mtl_lora_vl.backbones.base import GENERATE, GRAD_CHECKPOINTING, LM_LOGITS
from mtl_lora_vl.backbones.qwen2_vl import patchify, qwen_image_side
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.data.resize import resize_to_square


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen")


@pytest.fixture(params=[False, True], ids=["qwen2", "qwen2.5"])
def bb(request, dirs):
    return tiny_qwen2vl_backbone(dirs, request.param)


def prompts(bb, n=3):
    base = ["question: what colour is the circle? answer:", "caption:", "how many objects are there? answer:"]
    return [f"{bb.image_token} {base[i % len(base)]}" for i in range(n)]


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
    p = prompts(bb, 3)
    targets = ["red", "a blue square left of a red circle", "two"]
    b = bb.lm_collator()(p, targets)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        loss = bb.lm_loss(images, **b)
        assert loss.shape == (3,)
        for r in range(3):
            one = bb.lm_collator()(p[r:r + 1], targets[r:r + 1])
            torch.testing.assert_close(bb.lm_loss(images[r:r + 1], **one)[0], loss[r], atol=1e-5, rtol=1e-5)
        logits = bb.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          **_plain_inputs(bb, images, b["input_ids"])).logits
    for r in range(3):
        ce = F.cross_entropy(logits[r, :-1], b["labels"][r, 1:], ignore_index=-100)
        torch.testing.assert_close(loss[r], ce, atol=1e-5, rtol=1e-5)


def test_mixed_task_lm_loss_equals_each_task_alone(bb):
    _adapt(bb)
    p = prompts(bb, 4)
    targets = ["red", "a blue square", "two", "a circle"]
    b = bb.lm_collator()(p, targets)
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    ids = [0, 1, 1, 0]
    with torch.no_grad():
        with mlv.route(bb.model, ids):
            mixed = bb.lm_loss(images, **b)
        for t in (0, 1):
            with mlv.route(bb.model, t):
                alone = bb.lm_loss(images, **b)
            rows = [i for i, x in enumerate(ids) if x == t]
            torch.testing.assert_close(mixed[rows], alone[rows], atol=1e-5, rtol=1e-5)
        with mlv.route(bb.model, 1):
            other = bb.lm_loss(images, **b)
    assert (mixed[[0, 3]] - other[[0, 3]]).abs().max() > 1e-4   # the routes differ


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_equals_each_task_alone(bb, beams):
    _adapt(bb)
    torch.manual_seed(2)
    images = torch.randn(3, 3, 32, 32)
    p = prompts(bb, 3)
    with torch.no_grad():
        each = []
        for t in (0, 1):
            with mlv.route(bb.model, t):
                each.append(bb.generate(images, max_len=4, beam_size=beams, prompts=p))
        with mlv.route(bb.model, [0, 1, 0]):
            routed = bb.generate(images, max_len=4, beam_size=beams, prompts=p)
    assert routed == [each[0][0], each[1][1], each[0][2]]
    batch = bb.lm_collator()(p)
    with torch.no_grad(), mlv.route(bb.model, 0):   # the same as Hugging Face generate on the processor's inputs
        ids = bb.model.generate(**batch, **_plain_inputs(bb, images, batch["input_ids"]), max_new_tokens=4,
                                num_beams=beams, do_sample=False, pad_token_id=bb.pad_id, eos_token_id=bb.eos_id)
    tok = bb.processor.tokenizer
    assert each[0] == [tok.decode(r, skip_special_tokens=True).strip() for r in ids[:, batch["input_ids"].shape[1]:]]


def test_cached_sequence_scores_equal_the_full_computation(bb):
    """One prefill, then all candidates from the cache: their M-RoPE positions continue each row's text after
    the image (1-D positions were off by up to 0.4 in log-probability, silently)."""
    _adapt(bb)
    torch.manual_seed(3)
    images = torch.randn(3, 3, 32, 32)
    p = prompts(bb, 3)   # prompts of three lengths: left padding in the prefill
    cands = ["red", "a blue square", "two circles"]
    col = bb.lm_collator()
    rows = [[[*c, bb.eos_id] for c in col.continuation_ids([t] * 3, cands)] for t in col.prompt_texts(p)]
    with torch.no_grad(), mlv.route(bb.model, [1, 0, 1]):
        cached = bb.sequence_scores(images, p, cands)
        full = bb._scores_full(images, p, rows)
        per_token = bb.sequence_scores(images, p, cands, per_token=True)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    lengths = torch.tensor([[len(c) for c in r] for r in rows], dtype=cached.dtype)
    torch.testing.assert_close(per_token, cached / lengths)
    # and against the plain model on each full sequence, one at a time
    b, c = 2, 1
    one = col([p[b]], [cands[c]])
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
    out = tmp_path / "run"
    tasks = ",".join(_small_spec(tmp_path, t) for t in ("vqa", "captioning"))
    code = train_main(["--backbone", f"hf:{folder}", "--tasks", tasks, "--steps", "2", "--workers", "0",
                       "--log-every", "1", "--warmup", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "eval.json").read_text())
    for name, metric in (("vqa", "vqa_accuracy"), ("captioning", "bleu4")):
        r = result["tasks"][name]
        assert r["metric"] == metric and 0 <= r["zero_shot"] <= 1 and 0 <= r["adapted"] <= 1
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/vqa", "loss/captioning"} <= set(logged[-1])
    assert_eval_repeats(out / "adapter", tmp_path / "ev", result)
