"""LLaVA-OneVision whose image alone fills an exact multiple of an image of a row of several (review 300). A 16-px
tower of 8-px patches, pinpoints up to 32 px, ``"anyres_max_1"``: the 32-px canvas fills 10 tokens, a base view of a
pair 5, so a pair row's ids read as one image. Such a model took one image per prompt (warned at load, nlvr refused);
with each row's image count carried (the prompts' placeholders, the loader's ``lm_image_counts``) it takes nlvr's pairs
beside one-image rows: a mixed training step gives each task its loss alone, and mixed-batch logits, candidate
scores and greedy / beam generation are each row's alone. (The released model, 7,371 and 730 tokens, is not such a
model.) Tiny OneVision from configs, CPU."""

from __future__ import annotations

import pytest
import test_llava_onevision as t
import torch
from test_generative_tasks import _attach, _collate, _model
from test_nlvr_generative import _images, _kinds, _split

from mtl_lora_vl.adapters.scopes import route
from mtl_lora_vl.backbones import BackboneError, load_backbone
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.loader import TaskDataset
from mtl_lora_vl.data.records import image_parts
from mtl_lora_vl.tasks.generative import candidate_scores

CONFIG = dict(SIDE=16, PATCH=8, PINPOINTS=[[16, 32], [32, 16], [32, 32]], ASPECT="anyres_max_1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CONFIG.items():
            mp.setattr(t, k, v)
        return t.build(tmp_path_factory.mktemp("ov_multiple") / "ov")[2]


@pytest.fixture(params=[True, False], ids=["native", "square"])
def ov(request, folder):
    bb = load_backbone(f"hf:{folder}")
    bb.native_aspect(request.param)
    return bb


def _rows(kinds, bb, per_task=3):
    """Loader rows of each task's first examples, read as the backbone reads images (strips at the native aspect)."""
    return [dict(TaskDataset(kind, _split(kind.name, 6), bb.resize)[i], task_id=t)
            for t, kind in enumerate(kinds.values()) for i in range(per_task)]


def _pictures(bb, single, pair) -> tuple[torch.Tensor, list | None]:
    """One image, the pair's two, one image: normalised as the loaders make them, with their sizes (native)."""
    if bb.resize.anyres is None:
        return _images(bb, [single[0], pair, single[1]]), None
    left, right = (p.image for p in image_parts(pair))
    strips = [to_uint8_tensor(single[0].image, bb.resize), *to_uint8_tensor((left, right), bb.resize),
              to_uint8_tensor(single[1].image, bb.resize)]
    uint8, sizes = pad_images(strips)
    return bb.preprocess_uint8(uint8), [tuple(s) for s in sizes]


def test_the_tiny_model_fills_a_multiple_and_takes_pairs(folder):
    bb = load_backbone(f"hf:{folder}")
    assert (bb.num_image_tokens, bb.several_tokens, bb.image_size, bb.tile_size) == (10, 5, 32, 16)
    assert bb.several_images   # (was False: one image per prompt)
    assert set(_kinds(bb)) == {"nlvr", "vqa", "caption_cls"}   # nlvr was refused at start-up


def test_a_mixed_pair_batch_trains_a_step_as_each_task_alone(ov):
    kinds = _kinds(ov)
    _attach(ov, kinds)
    rows = _rows(kinds, ov)
    model = _model(ov, kinds)
    batch = _collate(kinds, ov, rows)
    assert batch["lm_image_counts"] == [2] * 3 + [1] * 6
    with torch.no_grad():
        _, mixed = model(batch)
        for i, name in enumerate(kinds):
            _, alone = model(_collate(kinds, ov, [r for r in rows if r["task_id"] == i]))
            assert mixed[name].item() == pytest.approx(alone[name].item(), rel=0, abs=1e-5), name
    loss, _ = model.train()(batch)
    loss.backward()
    grads = [p.grad for n, p in ov.model.named_parameters() if p.requires_grad and "vision" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_mixed_logits_scores_and_generation_are_each_rows_own(ov):
    """A pair row between two one-image rows: [10, 10, 10] image tokens for 4 images, which read three ways."""
    kinds = _kinds(ov, ("nlvr", "vqa"))
    _attach(ov, kinds)
    pair, single = _split("nlvr", 1).examples[0], _split("nlvr", 3).examples[1:]
    single = [image_parts(ex)[0] for ex in single]
    images, sizes = _pictures(ov, single, pair)
    t_ = ov.image_token
    prompts = [f"{t_} what is it?", kinds["nlvr"].prompt(pair), f"{t_} caption:"]
    own, tasks = ([0], [1, 2], [3]), ["vqa", "nlvr", "vqa"]
    collate = ov.lm_collator()
    batch = collate(prompts, ["a", "yes", "b"], image_sizes=sizes)
    assert (batch["input_ids"] == ov.image_token_id).sum(1).tolist() == [10, 10, 10]
    with torch.no_grad(), route(ov.model, tasks):
        logits = ov._forward(images, batch["input_ids"], batch["attention_mask"], image_sizes=sizes,
                             image_counts=collate.image_counts(prompts), use_cache=False).logits
        with pytest.raises(BackboneError, match="more than one way"):   # (without the counts: read three ways)
            ov._forward(images, batch["input_ids"], batch["attention_mask"], image_sizes=sizes, use_cache=False)
        texts = ov.generate(images, 4, prompts=prompts, image_sizes=sizes)
        beams = ov.generate(images, 3, beam_size=2, prompts=prompts, image_sizes=sizes)
        scores = ov.sequence_scores(images, prompts, ["no", "yes"], image_sizes=sizes)
    for r, (idx, task) in enumerate(zip(own, tasks)):
        one = {"images": images[idx], "prompts": prompts[r:r + 1],
               "image_sizes": None if sizes is None else [sizes[i] for i in idx]}
        alone = collate(prompts[r:r + 1], ["a", "yes", "b"][r:r + 1], image_sizes=one["image_sizes"])
        n = alone["input_ids"].shape[1]
        with torch.no_grad(), route(ov.model, task):
            want = ov._forward(images[idx], alone["input_ids"], alone["attention_mask"],
                               image_sizes=one["image_sizes"], use_cache=False).logits[0]
            torch.testing.assert_close(logits[r, :n], want, rtol=0, atol=1e-5)
            assert texts[r] == ov.generate(max_len=4, **one)[0]
            assert beams[r] == ov.generate(max_len=3, beam_size=2, **one)[0]
            torch.testing.assert_close(scores[r], ov.sequence_scores(candidates=["no", "yes"], **one)[0],
                                       rtol=0, atol=1e-5)
    ov.set_grad_checkpointing(True)   # (training's full-sequence scoring: each row's images repeated per candidate)
    ov.model.train()
    try:
        with route(ov.model, tasks):
            full = ov.sequence_scores(images, prompts, ["no", "yes"], image_sizes=sizes)
    finally:
        ov.model.eval()
        ov.set_grad_checkpointing(False)
    torch.testing.assert_close(full.detach(), scores, rtol=0, atol=1e-5)


def test_nlvr_scores_pairs_through_candidate_scores(ov):
    """The nlvr kind's generative scoring (candidate_scores over pair batches) equals each pair scored alone."""
    kind = _kinds(ov, ("nlvr",))["nlvr"]
    examples = _split("nlvr", 3).examples
    with torch.no_grad():
        together = kind.scores(ov, None, examples, batch_size=8, device="cpu")
        alone = torch.cat([candidate_scores(ov, [ex], [kind.prompt(ex)], ["no", "yes"], batch_size=2, device="cpu")
                           for ex in examples])
    torch.testing.assert_close(together, alone[:, 1] - alone[:, 0], rtol=0, atol=1e-5)
