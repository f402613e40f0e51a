"""Mixed-task generation: one task id per input row through every decoding step, with the KV cache and beams.

Tiny LLaVA and PaliGemma from configs with random non-zero adapters: a mixed batch generates, row by row,
what each task's rows generate alone; a merged single-task model generates what routing gives; the layers
stay strict outside a generate call.
"""

from __future__ import annotations

import copy

import pytest
import torch
from llava_tiny import tiny_llava_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.generation import expanded_rows, generation_rows
from mtl_lora_vl.families import family_named

TASKS = ["vqa", "captioning", "classes"]
PROMPTS = ["question: what colour is the circle? answer:", "caption:", "class:", "how many objects are there? answer:",
           "caption: a", "question: which shape is left? answer:"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("gen")


def adapted(dirs, family, method="mtl_lora"):
    bb = tiny_llava_backbone(dirs, family)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2, method=method))
    torch.manual_seed(1)
    with torch.no_grad():
        for bank in bb.model._mtl_lora.layers.values():
            bank.lora_B.normal_(std=0.3)
            if hasattr(bank, "lora_lambda"):
                bank.lora_lambda.add_(torch.randn_like(bank.lora_lambda) * 0.5)
            if hasattr(bank, "lora_w"):
                bank.lora_w.normal_(std=1.0)
    return bb


def inputs(bb, n=6):
    torch.manual_seed(2)
    images = torch.randn(n, 3, 32, 32)
    prompts = [f"{bb.image_token} {PROMPTS[i % len(PROMPTS)]}" for i in range(n)]
    return images, prompts


@pytest.mark.parametrize("family", ["llava", "paligemma"])
@pytest.mark.parametrize("beams", [1, 3])
def test_mixed_generation_equals_each_task_alone(dirs, family, beams):
    bb = adapted(dirs, family)
    images, prompts = inputs(bb)
    ids = torch.tensor([0, 1, 2, 1, 0, 2])
    with mlv.route(bb.model, ids):
        mixed = bb.generate(images, max_len=6, beam_size=beams, prompts=prompts)
    for t in range(len(TASKS)):
        rows = (ids == t).nonzero().flatten().tolist()
        with mlv.route(bb.model, TASKS[t]):
            alone = bb.generate(images[rows], max_len=6, beam_size=beams, prompts=[prompts[r] for r in rows])
        assert [mixed[r] for r in rows] == alone, (TASKS[t], rows)
    with mlv.disabled(bb.model):
        base = bb.generate(images, max_len=6, beam_size=beams, prompts=prompts)
    assert base != mixed  # the adapters change what is generated
    assert bb.model._mtl_lora.router.current is None  # every scope closed, the expansion with its call


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_direct_hf_generate_under_route(dirs, family):
    """The user API: ``with route(model, ids): model.generate(input_ids=..., pixel_values=..., ...)``, here with
    num_beams=3 and num_return_sequences=2 (3 language-model rows per input row, 2 returned)."""
    bb = adapted(dirs, family)
    images, prompts = inputs(bb, 4)
    batch = bb.lm_collator()(prompts)
    extra = {"token_type_ids": torch.zeros_like(batch["input_ids"])} if bb.prefix_lm else {}
    kw = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=bb.pad_id)
    ids = torch.tensor([2, 0, 1, 0])
    eos = bb.model.generation_config.eos_token_id
    # what beam search writes after a row's end: the pad id, or the first end id where the pad id is 0 (Hugging Face
    # tests `pad_token_id or eos_token_id[0]`)
    fill = torch.tensor([bb.pad_id, *([eos] if isinstance(eos, int) else eos or [])])
    with mlv.route(bb.model, ids):
        mixed = bb.model.generate(**batch, **extra, pixel_values=images, **kw)
    assert mixed.shape[0] == 8
    for r in range(4):
        one = {k: v[r:r + 1] for k, v in {**batch, **extra}.items()}
        with mlv.route(bb.model, TASKS[int(ids[r])]):
            alone = bb.model.generate(**one, pixel_values=images[r:r + 1], **kw)
        got = mixed[2 * r:2 * r + 2, batch["input_ids"].shape[1]:]
        want = alone[:, batch["input_ids"].shape[1]:]
        n = min(got.shape[1], want.shape[1])  # alone may stop earlier; the rest of the mixed rows is padding
        assert torch.equal(got[:, :n], want[:, :n]) and torch.isin(got[:, n:], fill).all()


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_merged_generation_equals_routed(dirs, family):
    bb = adapted(dirs, family)
    images, prompts = inputs(bb, 4)
    for beams in (1, 2):
        with mlv.route(bb.model, "captioning"):
            routed = bb.generate(images, max_len=6, beam_size=beams, prompts=prompts)
        mlv.merge(bb.model, "captioning")
        try:
            merged = bb.generate(images, max_len=6, beam_size=beams, prompts=prompts)
        finally:
            mlv.unmerge(bb.model)
        assert merged == routed


def test_candidates_scored_per_row_task(dirs):
    bb = adapted(dirs, "llava")
    images, prompts = inputs(bb, 3)
    cands = ["red", "a blue square", "two"]
    ids = torch.tensor([1, 0, 2])
    with mlv.route(bb.model, ids):
        mixed = bb.sequence_scores(images, prompts, cands)
    for r in range(3):
        with mlv.route(bb.model, TASKS[int(ids[r])]):
            alone = bb.sequence_scores(images[r:r + 1], prompts[r:r + 1], cands)
        torch.testing.assert_close(mixed[r:r + 1], alone, rtol=1e-4, atol=1e-4)


def test_layers_stay_strict_outside_generation(dirs):
    bb = adapted(dirs, "llava")
    images, prompts = inputs(bb, 4)
    b = bb.lm_collator()(prompts[:2] * 2, ["red", "blue"] * 2)
    bb.model.train()
    with (mlv.route(bb.model, torch.tensor([0, 1])),
          pytest.raises(mlv.RoutingError, match="routed 2 task ids but the batch")):
        bb.lm_loss(images, **b)  # 4 rows = 2 x 2 routed ids: refused in training
    with mlv.route(bb.model, torch.tensor([0, 1])), expanded_rows(bb.model, 2):
        bb.lm_loss(images, **b)  # the same batch inside an expansion scope of this model is routed
    other = adapted(dirs, "llava")
    with mlv.route(bb.model, torch.tensor([0, 1])), expanded_rows(other.model, 2), \
            pytest.raises(mlv.RoutingError, match="routed 2 task ids"):
        bb.lm_loss(images, **b)  # another model's scope does not loosen this one
    with mlv.route(bb.model, torch.tensor([0, 1])), expanded_rows(bb.model, 3), \
            pytest.raises(mlv.RoutingError, match="routed 2 task ids"):
        bb.lm_loss(images, **b)  # exactly k times, not any multiple
    bb.model.eval()


def test_generation_rows_and_copies(dirs):
    bb = adapted(dirs, "llava")
    m = bb.model
    assert generation_rows(m, {}) == 1
    assert generation_rows(m, {"num_beams": 3, "num_return_sequences": 2}) == 3
    assert generation_rows(m, {"do_sample": True, "num_return_sequences": 2}) == 2
    from transformers import GenerationConfig

    assert generation_rows(m, {"generation_config": GenerationConfig(num_beams=4)}) == 4
    # A GenerationConfig leaves num_beams None and generate takes the model's: so must the adapters.
    beams, m.generation_config.num_beams = m.generation_config.num_beams, 3
    try:
        assert generation_rows(m, {"generation_config": GenerationConfig(max_new_tokens=3)}) == 3
        assert generation_rows(m, {"generation_config": GenerationConfig(num_beams=2)}) == 2
        images, prompts = inputs(bb, 2)
        batch = bb.lm_collator()(prompts)
        with mlv.route(m, torch.tensor([0, 2])):
            got = m.generate(**batch, pixel_values=images,
                             generation_config=GenerationConfig(max_new_tokens=3, pad_token_id=bb.pad_id))
            want = m.generate(**batch, pixel_values=images, max_new_tokens=3, num_beams=3, pad_token_id=bb.pad_id)
            # HF's generate(inputs, generation_config, ...): the config given by position sets the beams too
            # (it was not read: "routed 2 task ids but the batch here has 4 samples")
            two = GenerationConfig(max_new_tokens=3, num_beams=2, pad_token_id=bb.pad_id)
            by_place = m.generate(batch["input_ids"], two, attention_mask=batch["attention_mask"],
                                  pixel_values=images)
            by_name = m.generate(**batch, pixel_values=images, generation_config=two)
        assert torch.equal(got, want) and torch.equal(by_place, by_name)
    finally:
        m.generation_config.num_beams = beams
    assert type(m).__name__ == "LlavaForConditionalGeneration" and "generate" in vars(m)
    images, prompts = inputs(bb, 2)
    with mlv.route(m, torch.tensor([0, 2])):
        want = bb.generate(images, max_len=4, beam_size=2, prompts=prompts)
    twin = copy.deepcopy(m)
    assert twin.generate.model is twin  # the copy routes through its own router
    with mlv.route(twin, torch.tensor([0, 2])):
        got = type(bb).from_model(twin, bb.processor).generate(images, max_len=4, beam_size=2, prompts=prompts)
    assert got == want


def _adapted_coca(tmp_path):
    from vl_tiny import tiny_backbone

    bb = tiny_backbone(tmp_path, coca=True)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    torch.manual_seed(1)
    with torch.no_grad():
        for bank in bb.model._mtl_lora.layers.values():
            bank.lora_B.normal_(std=0.3)
            bank.lora_w.normal_()
    bb.model.eval()
    return bb


@pytest.mark.parametrize("beams", [1, 3])
def test_coca_mixed_generation_equals_each_task_alone(tmp_path, beams):
    bb = _adapted_coca(tmp_path)
    images = torch.randn(4, 3, 32, 32)
    ids = torch.tensor([2, 0, 1, 0])
    with mlv.route(bb.model, ids):
        mixed = bb.generate(images, max_len=5, beam_size=beams)
    for t in range(3):
        rows = (ids == t).nonzero().flatten().tolist()
        with mlv.route(bb.model, TASKS[t]):
            assert [mixed[r] for r in rows] == bb.generate(images[rows], max_len=5, beam_size=beams)


def test_coca_kv_cache_steps_equal_the_full_forward_under_a_mixed_route(tmp_path):
    """Feeding a prefix in pieces (3 tokens, then one at a time, then a beam reorder) through the cached
    stepper gives the full forward's last-position logits at every length, adapters routed per row."""
    from mtl_lora_vl.backbones.coca_decoding import CoCaStepper, supports_kv_cache

    bb = _adapted_coca(tmp_path)
    assert supports_kv_cache(bb.model)
    # two images x two beams: rows (0, 1) are image 0 under task 2, rows (2, 3) image 1 under task 0
    images, ids = torch.randn(2, 3, 32, 32).repeat_interleave(2, 0), torch.tensor([2, 2, 0, 0])
    seqs = torch.randint(5, bb.tokenizer.vocab_size, (4, 7))

    def full(seqs):
        return bb.model.text_decoder(image_embs, bb.model._encode_text(seqs)[1])[:, -1]

    with torch.no_grad(), mlv.route(bb.model, ids):
        _, image_embs = bb.model._encode_image(images)
        stepper = CoCaStepper(bb.model, image_embs)
        for stop in (3, 4, 5, 6):
            torch.testing.assert_close(stepper(seqs[:, :stop]), full(seqs[:, :stop]), rtol=1e-5, atol=1e-5)
        keep = torch.tensor([1, 1, 3, 2])  # each new beam continues a beam of its own image
        stepper.reorder(keep)
        seqs = torch.cat([seqs[keep, :6], seqs[:, 6:7]], dim=1)
        torch.testing.assert_close(stepper(seqs), full(seqs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_coca_generation_with_the_cache_equals_without_and_skips_the_prefix(tmp_path, beams, monkeypatch):
    bb = _adapted_coca(tmp_path)
    images, ids = torch.randn(4, 3, 32, 32), torch.tensor([2, 0, 1, 0])
    with mlv.route(bb.model, ids):
        plain = bb.generate(images, max_len=6, beam_size=beams, use_cache=False)
    calls = []
    real = type(bb.model.text).forward
    monkeypatch.setattr(type(bb.model.text), "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with mlv.route(bb.model, ids):
        cached = bb.generate(images, max_len=6, beam_size=beams)
    assert cached == plain
    assert calls == []  # the text tower never re-ran a prefix


def test_candidate_scores_train_under_checkpointing_with_backward_outside_the_route(dirs):
    """The B·C rows of sequence_scores' no-cache path are recomputed in backward with the expanded route."""
    bb = adapted(dirs, "llava")
    images, prompts = inputs(bb, 3)
    cands = ["red", "a blue square"]
    ids = torch.tensor([1, 0, 2])
    with mlv.route(bb.model, ids):
        want = bb.sequence_scores(images, prompts, cands)
    bb.set_grad_checkpointing(True)
    bb.model.train()
    try:
        with mlv.route(bb.model, ids):
            got = bb.sequence_scores(images, prompts, cands)
        got.logsumexp(1).sum().backward()  # outside the scope: recomputation replays the B·C route
    finally:
        bb.model.eval()
        bb.set_grad_checkpointing(False)
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-4)
    grads = [b.lora_B.grad for b in bb.model._mtl_lora.layers.values()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kw", [dict(num_beams=2), dict(do_sample=True, num_return_sequences=2)])
def test_generate_refuses_a_route_of_fewer_ids_than_input_rows_on_vision_only_adapters(dirs, kw):
    """Adapters on the vision tower only: a route of 2 ids for 4 input rows with 2 beams (or 2 returned sequences)
    was taken by the tower as 2 rows per id (images 0, 1 under task 0 and 2, 3 under task 1), silently; the
    language model, which would have refused 8 rows, has no adapters. Refused now, before generating."""
    bb = tiny_llava_backbone(dirs, "llava")
    vision = list(family_named("llava").targets["image"])
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=TASKS, r=4, targets={"image": vision}))
    images, prompts = inputs(bb, 4)
    batch = bb.lm_collator()(prompts)
    with mlv.route(bb.model, [0, 1]), pytest.raises(mlv.RoutingError,
                                                    match="routed 2 task ids but the batch has 4 input rows"):
        bb.model.generate(**batch, pixel_values=images, max_new_tokens=2, pad_token_id=bb.pad_id, **kw)
    with mlv.route(bb.model, [0, 1]), pytest.raises(mlv.RoutingError, match="routed 2 task ids but the batch has 4"):
        bb.generate(images, max_len=2, beam_size=2, prompts=prompts)
    with mlv.route(bb.model, [0, 1, 2, 1]):   # one id per input row still generates
        assert bb.model.generate(**batch, pixel_values=images, max_new_tokens=2, pad_token_id=bb.pad_id,
                                 **kw).shape[0] == 4 * kw.get("num_return_sequences", 1)


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_on_a_worker_thread_inside_the_callers_route(dirs, beams):
    """A route opened on one thread routes forwards run on another (a thread pool serving requests). With beams the
    routed ``generate`` widens that route for its k rows per input; that widening opened a new claimed scope on the
    worker thread and was refused as "routed from several threads at once", while greedy (k = 1) worked."""
    import threading

    bb = adapted(dirs, "llava")
    images, prompts = inputs(bb, 3)
    ids = torch.tensor([1, 0, 2])
    with mlv.route(bb.model, ids):
        want = bb.generate(images, max_len=5, beam_size=beams, prompts=prompts)
    got, errors = [], []

    def work():
        try:
            got.extend(bb.generate(images, max_len=5, beam_size=beams, prompts=prompts))
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    with mlv.route(bb.model, ids):
        t = threading.Thread(target=work)
        t.start()
        t.join()
        assert bb.model._mtl_lora.router.current.batch_size == 3   # the caller's route, not the widened one
    assert not errors and got == want
    router = bb.model._mtl_lora.router
    assert router.current is None and router.thread is None
