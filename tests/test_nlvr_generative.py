"""Prompts of several images (NLVR2's pair) on the language-model path: a tiny LLaVA built from a config through the
real backbone class -- the prompt layout, mixed-task losses, routed scoring and generation, the refusals."""

from __future__ import annotations

import pytest
import torch
from test_generative_tasks import _attach, _collate, _model

from mtl_lora_vl.adapters.scopes import route
from mtl_lora_vl.backbones import BackboneError, load_backbone
from mtl_lora_vl.backbones.lm_collate import IGNORE_INDEX
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import TaskDataset
from mtl_lora_vl.data.records import Example, Split, image_parts
from mtl_lora_vl.tasks import build_kind, load_spec

TASKS = ("nlvr", "vqa", "caption_cls")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen")


@pytest.fixture(params=["llava", "qwen2", "qwen2.5", "gemma3", "idefics3", "llava_next", "llava_onevision",
                        "paligemma"])
def pair_bb(request, llava_dir, qwen_dir):
    """A fresh backbone of each family whose prompts take several images (``several_images``)."""
    if request.param == "llava":
        return load_backbone(f"hf:{llava_dir}", device="cpu")
    if request.param == "paligemma":
        from llava_tiny import tiny_llava_backbone

        return tiny_llava_backbone(qwen_dir, "paligemma")
    if request.param in ("llava_next", "llava_onevision"):
        return _llava_next(qwen_dir, onevision=request.param == "llava_onevision")
    if request.param == "gemma3":
        from gemma3_tiny import tiny_gemma3_backbone

        return tiny_gemma3_backbone(qwen_dir)
    if request.param == "idefics3":
        from idefics3_tiny import tiny_idefics3_backbone

        bb = tiny_idefics3_backbone(qwen_dir)
        bb.native_aspect(False)   # square images without sizes here (split pairs: test_idefics3_split.py)
        return bb
    from qwen_tiny import tiny_qwen2vl_backbone

    return tiny_qwen2vl_backbone(qwen_dir, v25=request.param == "qwen2.5")


def _split(name: str, n: int):
    kind = {"caption_cls": "classification"}.get(name, name)
    return world.build_split(kind, "train", n=n, seed=0)


def assert_own_size_pairs_train_as_each_task_alone(bb, pics: list) -> tuple[dict, Split]:
    """Three nlvr rows pairing ``pics`` (four, of different sizes) beside two vqa rows, on a backbone reading each
    image at its own size: a pair's images reach the collator as two of their own sizes (no stack), and the mixed
    batch's losses are each task's alone. Returns the kinds and the pairs' split."""
    pairs = Split([Example((pics[i], pics[i + 1]), f"p{i}", text="both images contain a square", label=i % 2)
                   for i in range(3)])
    kinds = {"nlvr": build_kind(load_spec("nlvr"), pairs, bb),
             "vqa": build_kind(load_spec("vqa"), _split("vqa", 4), bb)}
    _attach(bb, kinds)
    rows = [dict(TaskDataset(kinds["nlvr"], pairs, bb.resize)[i], task_id=0) for i in range(3)]
    rows += [dict(TaskDataset(kinds["vqa"], _split("vqa", 4), bb.resize)[i], task_id=1) for i in range(2)]
    assert isinstance(rows[0]["image"], tuple) and rows[0]["image"][0].shape != rows[0]["image"][1].shape
    model = _model(bb, kinds)
    with torch.no_grad():
        batch = _collate(kinds, bb, rows)
        assert len(batch["image_sizes"]) == 3 * 2 + 2 and len(set(batch["image_sizes"])) > 2
        _, mixed = model(batch)
        for t, name in enumerate(kinds):
            _, alone = model(_collate(kinds, bb, [r for r in rows if r["task_id"] == t]))
            assert mixed[name].item() == pytest.approx(alone[name].item(), rel=1e-4, abs=1e-5), name
    return kinds, pairs


def _kinds(backbone, names=TASKS):
    return {n: build_kind(load_spec(n), _split(n, 6), backbone) for n in names}


def _rows(kinds, backbone, per_task=3):
    rows = []
    for t, kind in enumerate(kinds.values()):
        ds = TaskDataset(kind, _split(kind.name, 6), backbone.image_size)
        rows += [dict(ds[i], task_id=t) for i in range(per_task)]
    return rows


def _images(backbone, examples):
    """The examples' images, each pair's left then right, normalised as the loaders make them."""
    from mtl_lora_vl.data.images import to_uint8_tensor

    parts = [p.image for ex in examples for p in image_parts(ex)]
    return backbone.preprocess_uint8(torch.stack([to_uint8_tensor(p, backbone.resize) for p in parts]), torch.float32)


def test_a_pair_prompt_holds_each_image_s_tokens_where_its_placeholder_is(llava):
    kind = _kinds(llava, ("nlvr",))["nlvr"]
    ex = _split("nlvr", 1).examples[0]
    prompt, target, weight = kind.sample_lm(ex, 0)
    assert prompt.count(llava.image_token) == 2 and target == ("yes" if ex.label else "no") and weight == 1.0
    batch = llava.lm_collator()([prompt], [target])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    image = (ids == llava.image_token_id).nonzero().flatten().tolist()
    T = llava.num_image_tokens
    assert image == list(range(len(llava.prefix_ids), len(llava.prefix_ids) + 2 * T))   # both images' tokens, in place
    assert (labels[: len(ids) - 2] == IGNORE_INDEX).all() and (labels[-2:] != IGNORE_INDEX).all()
    with pytest.raises(ValueError, match=r"lm_collator: 1 prompts hold 2 image placeholders but 1 image sizes"):
        llava.lm_collator()([prompt], image_sizes=[(32, 32)])


def test_mixed_batch_task_losses_equal_each_task_alone(pair_bb):
    """Pair rows beside one-image rows: one language-model pass, each task's loss equal to its rows' alone -- the
    pair rows' two images must take their row's task in the vision tower."""
    llava = pair_bb
    kinds = _kinds(llava)
    _attach(llava, kinds)
    rows = _rows(kinds, llava)
    model = _model(llava, kinds)
    with torch.no_grad():
        batch = _collate(kinds, llava, rows)
        assert batch["images"].shape[0] == 3 * 2 + 3 + 3
        _, mixed = model(batch)
        for t, name in enumerate(kinds):
            _, alone = model(_collate(kinds, llava, [r for r in rows if r["task_id"] == t]))
            assert mixed[name].item() == pytest.approx(alone[name].item(), rel=1e-4, abs=1e-5), name
        # routing matters: the pair rows under vqa's adapters (scored by vqa's loss, a plain mean) give another loss
        _, other = model(_collate(kinds, llava, [dict(r, task_id=1) for r in rows if r["task_id"] == 0]))
    assert abs(other["vqa"].item() - mixed["nlvr"].item()) > 1e-4
    loss, _ = model.train()(_collate(kinds, llava, rows))
    loss.backward()
    assert all(p.grad is not None for n, p in llava.model.named_parameters() if p.requires_grad and "vision" in n)


def test_routed_scores_of_pairs_equal_each_rows_task_alone_cached_and_full(pair_bb):
    """``sequence_scores`` over pair prompts of two tasks under one mixed route equals each row under its own task;
    the full-sequence path (activation checkpointing in training) gives the cached one's scores."""
    llava = pair_bb
    kinds = _kinds(llava, ("nlvr", "vqa"))
    _attach(llava, kinds)
    kind = kinds["nlvr"]
    examples = _split("nlvr", 4).examples
    images = _images(llava, examples)
    prompts = [kind.prompt(ex) for ex in examples]
    ids = ["nlvr", "vqa", "vqa", "nlvr"]
    with torch.no_grad(), route(llava.model, ids):
        mixed = llava.sequence_scores(images, prompts, ["no", "yes"])
    for i, task in enumerate(ids):
        with torch.no_grad(), route(llava.model, task):
            alone = llava.sequence_scores(images[2 * i:2 * i + 2], prompts[i:i + 1], ["no", "yes"])
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), route(llava.model, "vqa"):
        other = llava.sequence_scores(images[:2], prompts[:1], ["no", "yes"])
    assert (other - mixed[:1]).abs().max() > 1e-4   # the route matters
    llava.set_grad_checkpointing(True)
    llava.model.train()
    try:
        with route(llava.model, ids):
            full = llava.sequence_scores(images, prompts, ["no", "yes"])
    finally:
        llava.model.eval()
        llava.set_grad_checkpointing(False)
    torch.testing.assert_close(full.detach(), mixed, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_over_pairs_is_routed_per_row(pair_bb, beams):
    """Greedy and beam search over pair prompts under a mixed route give each row its task's tokens alone (transformers
    encodes the images before it repeats the rows for beams, each row's images together: review 174)."""
    llava = pair_bb
    kinds = _kinds(llava, ("nlvr", "vqa"))
    _attach(llava, kinds)
    examples = _split("nlvr", 3).examples
    images = _images(llava, examples)
    prompts = [kinds["nlvr"].prompt(ex) for ex in examples]
    ids = ["vqa", "nlvr", "vqa"]
    with torch.no_grad(), route(llava.model, ids):
        mixed = llava.generate(images, max_len=4, prompts=prompts, beam_size=beams)
    for i, task in enumerate(ids):
        with torch.no_grad(), route(llava.model, task):
            one = llava.generate(images[2 * i:2 * i + 2], max_len=4, prompts=prompts[i:i + 1], beam_size=beams)
        assert one == mixed[i:i + 1]
    # each beam reads the row's own two images: the first step's beam scores are greedy's log-probabilities
    batch = llava.lm_collator()(prompts[:1])
    inputs = {**llava._vision_inputs(images[:2]), **batch, **llava._extra_inputs(batch["input_ids"], None),
              **llava._row_inputs(batch["input_ids"], 2)}
    kw = dict(max_new_tokens=1, do_sample=False, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad(), route(llava.model, "nlvr"):
        greedy = torch.log_softmax(llava.model.generate(**inputs, **kw).scores[0][0].float(), -1)
        beam = llava.model.generate(**inputs, **kw, num_beams=3).scores[0][0].float()
    torch.testing.assert_close(beam, greedy, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"6 images but the 2 prompts hold 4 image placeholders"):
        llava.generate(images, max_len=4, prompts=prompts[:2])


def test_beams_over_pairs_are_refused_where_transformers_repeats_each_image(llava, monkeypatch):
    examples = _split("nlvr", 1).examples
    prompts = [_kinds(llava, ("nlvr",))["nlvr"].prompt(ex) for ex in examples]
    monkeypatch.setattr(type(llava.model), "_supports_mm_encoder_outputs", lambda self: False)
    with pytest.raises(ValueError, match="beam search over prompts of several images needs a transformers"):
        llava.generate(_images(llava, examples), max_len=2, prompts=prompts, beam_size=2)


def _grads(llava, model, batch):
    llava.model.zero_grad(set_to_none=True)
    loss, _ = model(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in llava.model.named_parameters() if p.grad is not None}


def test_checkpointed_mixed_pair_batch_gives_the_same_loss_and_grads(llava):
    """Activation checkpointing (recomputed in backward, the route replayed) over pair rows beside one-image rows of
    two other tasks: the loss and every adapter's gradient, vision tower included, as without (review 174)."""
    kinds = _kinds(llava)
    _attach(llava, kinds)
    rows = _rows(kinds, llava)
    model = _model(llava, kinds).train()
    loss0, g0 = _grads(llava, model, _collate(kinds, llava, rows))
    llava.set_grad_checkpointing(True)
    model.train()   # (reads may_recompute)
    try:
        assert model.recompute
        loss1, g1 = _grads(llava, model, _collate(kinds, llava, rows))
    finally:
        llava.set_grad_checkpointing(False)
    assert loss1.item() == pytest.approx(loss0.item(), rel=1e-5)
    assert g0.keys() == g1.keys() and any("vision" in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


def test_scores_of_pair_and_one_image_prompts_in_one_call(llava):
    """One ``sequence_scores`` call over a pair prompt between two one-image prompts (images [1, 2, 1]) under a mixed
    route: cached and full-sequence scores equal each row alone (review 174)."""
    kinds = _kinds(llava, ("nlvr", "vqa"))
    _attach(llava, kinds)
    pairs = _split("nlvr", 2).examples
    pimg = _images(llava, pairs)
    tok = llava.image_token
    prompts = [f"{tok} question: what is this? answer:", kinds["nlvr"].prompt(pairs[0]),
               f"{tok} question: how many shapes? answer:"]
    images = torch.cat([pimg[2:3], pimg[0:2], pimg[3:4]])
    ids, spans, cands = ["vqa", "nlvr", "vqa"], [(0, 1), (1, 3), (3, 4)], ["no", "yes", "red"]
    with torch.no_grad(), route(llava.model, ids):
        mixed = llava.sequence_scores(images, prompts, cands)
    for i, (task, (a, b)) in enumerate(zip(ids, spans)):
        with torch.no_grad(), route(llava.model, task):
            alone = llava.sequence_scores(images[a:b], prompts[i:i + 1], cands)
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=1e-4, atol=1e-5)
    llava.set_grad_checkpointing(True)
    llava.model.train()
    try:
        with route(llava.model, ids):
            full = llava.sequence_scores(images, prompts, cands)
    finally:
        llava.model.eval()
        llava.set_grad_checkpointing(False)
    torch.testing.assert_close(full.detach(), mixed, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_exports_of_an_nlvr_task_score_pairs_as_the_routed_model(family, llava_dir, tmp_path):
    """The merged export and the PEFT export (``set_adapter``) give pair rows the routed model's logits (PaliGemma:
    its token_type_ids too, review 181)."""
    from llava_tiny import save_tiny_paligemma
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    import mtl_lora_vl as mlv

    folder = llava_dir if family == "llava" else save_tiny_paligemma(tmp_path / "pali")
    bb = load_backbone(f"hf:{folder}", device="cpu")
    kinds = _kinds(bb, ("nlvr", "vqa"))
    _attach(bb, kinds)
    examples = _split("nlvr", 2).examples
    images = _images(bb, examples)
    batch = bb.lm_collator()([kinds["nlvr"].prompt(ex) for ex in examples])
    batch.update(bb._extra_inputs(batch["input_ids"], None))
    with torch.no_grad(), route(bb.model, "nlvr"):
        want = bb.model(pixel_values=images, **batch).logits
    merged = AutoModelForImageTextToText.from_pretrained(
        mlv.save_merged(bb.model, "nlvr", tmp_path / "merged", source_dir=folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=images, **batch).logits, want, rtol=1e-4, atol=1e-4)
    out = mlv.export_lora(bb.model, ["nlvr", "vqa"], tmp_path / "peft")
    peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(folder).eval(),
                                     str(out / "nlvr"), adapter_name="nlvr")
    peft.eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(pixel_values=images, **batch).logits, want, rtol=1e-4, atol=1e-4)
    readme = (out / "README.md").read_text()
    assert "rows of one image each" in readme and "(rows of several images, NLVR2's pairs, too)" in readme


def test_the_context_warning_counts_both_images_tokens(llava, caplog, monkeypatch):
    import logging

    kind = _kinds(llava, ("nlvr",))["nlvr"]
    T = llava.num_image_tokens
    monkeypatch.setattr(type(llava), "lm_context", property(lambda self: 2 * T + 5), raising=False)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.tasks.base"):
        kind.warn_lm_context(_split("nlvr", 4).examples, llava)
    assert f"its {2 * T} image tokens" in caplog.text, caplog.text


def test_nlvr_evaluates_through_the_language_model_zero_shot_and_adapted(llava):
    kinds = _kinds(llava, ("nlvr", "vqa"))
    kind = kinds["nlvr"]
    split = world.build_split("nlvr", "val", n=8)
    zero = kind.evaluate(llava, None, split, batch_size=4, device="cpu")
    scores = kind.scores(llava, None, split.examples, batch_size=3, device="cpu")
    want = sum(bool(s > 0) == (ex.label == 1) for s, ex in zip(scores, split.examples)) / 8
    assert zero["n"] == 8 and zero["accuracy"] == pytest.approx(want)
    _attach(llava, kinds, std=0.5)
    with route(llava.model, "nlvr"):
        adapted = kind.scores(llava, kind.build_head(llava), split.examples, batch_size=4, device="cpu")
    assert (adapted - scores).abs().max() > 1e-3


def _llava_next(folder, onevision: bool = False):
    """A loaded tiny LLaVA-NeXT (or LLaVA-OneVision) from a directory under ``folder`` (built once)."""
    name = "llava_onevision" if onevision else "llava_next"
    if not (folder / name / "config.json").is_file():
        import importlib

        importlib.import_module(f"test_{name}").build(folder / name)
    bb = load_backbone(f"hf:{folder / name}")
    # these tests stack the families' images without their sizes: square canvases (pairs at their own aspect, with
    # the loader's sizes: test_anyres_native.py)
    bb.native_aspect(False)
    return bb


def test_a_language_model_path_of_one_image_per_prompt_refuses_nlvr(llava_dir, monkeypatch):
    """Every family here takes pairs; a backbone class whose prompts take one image (``several_images`` False) is
    refused by name, and its collator refuses a prompt of two placeholders."""
    backbone = load_backbone(f"hf:{llava_dir}", device="cpu")
    monkeypatch.setattr(type(backbone), "several_images", False)
    with pytest.raises(BackboneError, match=r"reads two images per row.*takes one image per prompt.*builtin-llava"):
        build_kind(load_spec("nlvr"), _split("nlvr", 2), backbone)
    with pytest.raises(ValueError, match=r"has 2 image placeholders .* every prompt needs exactly one,"):
        backbone.lm_collator()([f"{backbone.image_token} {backbone.image_token} x"])


def test_onevision_whose_one_image_count_is_a_multiple_of_a_base_view_takes_pairs(tmp_path, monkeypatch, caplog):
    """A 16-px SigLIP tower of 8-px patches and one 16-px pinpoint: an image alone fills 10 tokens, an image of a row
    of several 5, so a pair row's 10 tokens read as one image and failed in HF ("tokens: 10, features: 20"; review
    183). It took one image per prompt (nlvr refused) until each row's image count was carried (review 300): it
    takes nlvr, and a pair row beside a one-image row reads as its counts say (tests/test_onevision_multiple_counts.py
    for a 32-px canvas)."""
    import logging

    import test_llava_onevision as t

    for k, v in dict(SIDE=16, PATCH=8, PINPOINTS=[[16, 16]], ASPECT="anyres_max_1").items():
        monkeypatch.setattr(t, k, v)
    t.build(tmp_path / "ov", "siglip", "full")
    with caplog.at_level(logging.INFO):
        bb = load_backbone(f"hf:{tmp_path / 'ov'}")
    assert (bb.num_image_tokens, bb.several_tokens, bb.several_images) == (10, 5, True)
    assert "told apart by their image counts" in caplog.text
    kind = build_kind(load_spec("nlvr"), _split("nlvr", 2), bb)   # (refused before)
    bb.native_aspect(False)   # (square canvases without sizes)
    pair, alone = _split("nlvr", 2).examples
    prompts = [kind.prompt(pair), f"{bb.image_token} what is it?"]
    images = _images(bb, [pair, image_parts(alone)[0]])
    batch = bb.lm_collator()(prompts)
    assert (batch["input_ids"] == bb.image_token_id).sum(1).tolist() == [10, 10]
    with torch.no_grad():
        mixed = bb.sequence_scores(images, prompts, ["no", "yes"])
        for r, idx in enumerate(([0, 1], [2])):
            one = bb.sequence_scores(images[idx], prompts[r:r + 1], ["no", "yes"])
            torch.testing.assert_close(mixed[r:r + 1], one, rtol=0, atol=1e-5)


def test_a_miscounted_onevision_pair_row_is_named_in_base_views(tmp_path):
    """Three placeholders for a pair's two images: the message said the images' "[46, 46] features" (tiled), a
    count a row of several never holds on this backbone (review 183)."""
    bb = _llava_next(tmp_path, onevision=True)
    examples = _split("nlvr", 1).examples
    t = bb.image_token
    b = bb.lm_collator()([f"{t}{t}{t} x"], ["no"])
    with pytest.raises(BackboneError, match=rf"\[{3 * bb.several_tokens}\] image tokens .* {bb.several_tokens} per "
                                            r"image of a row of several .* the 2 images given"):
        bb.lm_loss(_images(bb, examples), b["input_ids"], b["attention_mask"], b["labels"])


def test_onevision_pairs_are_its_processors_multi_image_layout_beside_anyres_rows(tmp_path):
    """LLaVA-OneVision takes nlvr (it was refused: review 176) in the model's own layout of a sample of several
    images: a pair row's two images are their base views alone (16 features + a newline each, no tiles), a one-image
    row keeps its base view and tiles (46 tokens for the 64-px canvas). A batch of a pair row and a one-image row is
    the processor's own ids, token for token, given the same squares nested per row (it writes ``batch_num_images``
    [2, 1]), and our forward's logits are the HF model's on the processor's inputs (the base views within one 8-bit
    level of its resize)."""
    from PIL import Image

    from mtl_lora_vl.data.images import to_uint8_tensor

    bb = _llava_next(tmp_path, onevision=True)
    assert type(bb).several_images is True
    kind = build_kind(load_spec("nlvr"), _split("nlvr", 2), bb)   # no longer refused
    pair = _split("nlvr", 2).examples[0]
    squares = [to_uint8_tensor(p.image, bb.resize) for p in image_parts(pair)]
    squares.append(to_uint8_tensor(image_parts(_split("nlvr", 2).examples[1])[0].image, bb.resize))
    images = bb.preprocess_uint8(torch.stack(squares), torch.float32)
    prompts = [kind.prompt(pair), f"{bb.image_token} question: what colour is the circle? answer:"]
    batch = bb.lm_collator()(prompts)
    assert (batch["input_ids"] == bb.image_token_id).sum(1).tolist() == [2 * 17, 46] == [2 * bb.several_tokens,
                                                                                        bb.num_image_tokens]
    pil = [Image.fromarray(s.permute(1, 2, 0).numpy()) for s in squares]
    theirs = bb.processor(images=[pil[:2], pil[2:]], text=prompts, return_tensors="pt", padding=True)
    assert theirs["batch_num_images"].tolist() == [2, 1]
    eos, pad = bb.processor.tokenizer.eos_token_id, bb.pad_id
    for r in range(2):
        ours = [t for t, m in zip(batch["input_ids"][r].tolist(), batch["attention_mask"][r].tolist()) if m]
        mine = [t for t, m in zip(theirs["input_ids"][r].tolist(), theirs["attention_mask"][r].tolist()) if m]
        assert ours + [eos] == mine, r
    assert bb._row_inputs(batch["input_ids"], 3)["batch_num_images"].tolist() == [2, 1]
    views = bb._vision_inputs(images)
    assert views["image_sizes"].tolist() == theirs["image_sizes"].tolist()
    level = 1 / 255 / min(bb.std)
    assert (views["pixel_values"][:, 0] - theirs["pixel_values"][:, 0]).abs().max() <= level + 1e-5
    # the HF model on the processor's own inputs (its end token dropped), against our forward over our ids
    n = theirs["input_ids"].shape[1] - 1
    keep = theirs["attention_mask"][:, :n].clone()
    ids = theirs["input_ids"][:, :n].masked_fill(theirs["input_ids"][:, :n] == eos, pad)
    keep[ids == pad] = 0
    with torch.no_grad():
        want = bb.model(input_ids=ids, attention_mask=keep, pixel_values=theirs["pixel_values"],
                        image_sizes=theirs["image_sizes"], batch_num_images=theirs["batch_num_images"]).logits
        got = bb._forward(images, batch["input_ids"], batch["attention_mask"], use_cache=False).logits
    for r in range(2):
        a = want[r][keep[r].bool()]
        b = got[r][batch["attention_mask"][r].bool()]
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
    # and each row alone is the same row in the batch (the pair's images are read as a pair either way)
    with torch.no_grad():
        alone = bb._forward(images[:2], bb.lm_collator()(prompts[:1])["input_ids"],
                            bb.lm_collator()(prompts[:1])["attention_mask"], use_cache=False).logits[0, -1]
    torch.testing.assert_close(alone, got[0, -1], rtol=1e-4, atol=1e-4)
    # a pair row in the tiled layout (each image 46 tokens) is refused, not read as four images' views
    tiled = bb.lm_collator()([f"{bb.image_token} x", f"{bb.image_token} y"], ["no", "yes"])
    joined = torch.cat([tiled["input_ids"][0, :-2], tiled["input_ids"][1, len(bb.prefix_ids):]])[None]
    with pytest.raises(BackboneError, match=r"\[92\] image tokens .* base view alone, 17 tokens"):
        bb.lm_loss(images[:2], joined, torch.ones_like(joined), joined)


def test_the_ids_check_names_rows_of_several_images(llava):
    images = _images(llava, _split("nlvr", 2).examples)
    batch = llava.lm_collator()([f"{llava.image_token} {llava.image_token} a", f"{llava.image_token} b"], ["c", "d"])
    with pytest.raises(BackboneError, match=r"hold \[32, 16\] image tokens .* do not split into the 4 images' \[16,"):
        llava.lm_loss(images, batch["input_ids"], batch["attention_mask"], batch["labels"])


def test_the_commands_train_and_evaluate_nlvr_on_the_builtin_llava(tmp_path):
    """``train --backbone builtin-llava --tasks nlvr,vqa`` (small splits), then the saved adapter scores the same on a
    fresh base through ``eval``."""
    import json

    from mtl_lora_vl.cli import eval_main, train_main

    specs = []
    for name, limit in (("nlvr", 6), ("vqa", 6)):
        text = (f'name = "{name}"\nkind = "{name}"\n[data]\nsource = "builtin"\n[data.train]\nn = 12\n[data.val]\n'
                f'n = 3\n[data.test]\nn = 3\n[generative]\neval_limit = {limit}\n')
        (tmp_path / f"{name}.toml").write_text(text)
        specs.append(str(tmp_path / f"{name}.toml"))
    run, ev = tmp_path / "run", tmp_path / "ev"
    common = ["--backbone", "builtin-llava", "--tasks", ",".join(specs)]
    assert train_main([*common, "--steps", "2", "--batch-size", "6", "--warmup", "0", "--workers", "0",
                       "--eval-batch-size", "8", "--out", str(run), "-q"]) == 0
    result = json.loads((run / "eval.json").read_text())["tasks"]["nlvr"]
    assert result["metric"] == "accuracy" and result["n"] == 3
    assert eval_main(["--adapter", str(run / "adapter"), "--tasks", ",".join(specs), "--batch-size", "8",
                      "--out", str(ev), "-q"]) == 0
    again = json.loads((ev / "eval.json").read_text())["tasks"]["nlvr"]
    for when in ("zero_shot", "adapted"):
        assert again["details"][when] == pytest.approx(result["details"][when])


def test_qwen_pairs_of_their_own_sizes_train_as_each_task_alone(qwen_dir):
    """Qwen2-VL reads each image at its own aspect: a pair's images of different sizes reach the collator as two
    images with their own sizes (no stack), fill their own token counts, and the mixed batch's losses are each task's
    alone."""
    from PIL import Image
    from qwen_tiny import tiny_qwen2vl_backbone

    bb = tiny_qwen2vl_backbone(qwen_dir)
    pics = [Image.new("RGB", size, (40 * i, 90, 200 - 30 * i)) for i, size in enumerate([(40, 48), (64, 30),
                                                                                          (30, 90), (40, 40)])]
    assert_own_size_pairs_train_as_each_task_alone(bb, pics)


def test_a_chat_pair_turn_is_the_templates_ids(tmp_path):
    """``chat = true`` on Gemma 3's own template: the kind writes a turn's images back to back, as the template does
    ('<end_of_image>\\n\\n\\n\\n<start_of_image>', one newline-run token); joined by a space they were two
    '\\n\\n' (and a space token between the images on a byte-level tokenizer) -- review 176."""
    from gemma3_tiny import save_chat_gemma3
    from test_chat_template import _chat_spec

    bb = load_backbone(f"hf:{save_chat_gemma3(tmp_path / 'g3')}")
    spec = load_spec(_chat_spec(tmp_path, "nlvr", "{images}question: is it true that {statement}? answer:"))
    kind = build_kind(spec, _split("nlvr", 6), bb)
    ex = world.build_split("nlvr", "val", n=1).examples[0]
    ours = bb.lm_collator()([kind.prompt(ex)])["input_ids"][0].tolist()
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                         {"type": "text", "text": f"question: is it true that {ex.text}? answer:"}]}]
    text = bb.processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    theirs = bb.processor(text=text, images=[[torch.zeros(3, 32, 32)] * 2], add_special_tokens=False)["input_ids"][0]
    tok = bb.processor.tokenizer
    assert tok.convert_ids_to_tokens(ours) == tok.convert_ids_to_tokens(list(theirs))


def test_pair_prompts_as_many_as_the_images_are_named_by_their_placeholders(llava):
    """2 images, 2 prompts of two placeholders each: the message named image sizes the caller never gave; and
    lm_loss's per-row message said the placeholder goes in "once" (review 176)."""
    img = llava.image_token
    pair = f"{img}{img} question: is it true that red? answer:"
    images = torch.randn(2, 3, llava.image_size, llava.image_size)
    with pytest.raises(ValueError, match=r"generate: 2 images but the 2 prompts hold 4 image placeholders"):
        llava.generate(images, max_len=2, prompts=[pair, pair])
    with pytest.raises(ValueError, match=r"sequence_scores: 2 images but the 2 prompts hold 4 image placeholders"):
        llava.sequence_scores(images, [pair, pair], ["no", "yes"])
    with pytest.raises(BackboneError, match=r"once per image"):
        llava.lm_loss(images, **llava.lm_collator()([pair, pair], ["yes", "no"]))


def test_lm_loss_takes_rows_of_two_no_and_one_image(llava):
    """Rows holding [2, 0, 1] images (3 images for 3 rows; a text-only row) are whole images per row, taken in order:
    the ids check accepts them (it compared row i with image i when the counts matched; review 176)."""
    col = llava.lm_collator()
    img = llava.image_token
    pair = col([f"{img}{img} question: is it true that red? answer:"], ["yes"])
    one = col([f"{img} caption:"], ["red"])
    text = [*llava.prefix_ids, *llava.processor.tokenizer("caption: red", add_special_tokens=False)["input_ids"]]
    rows = [pair["input_ids"][0].tolist(), text + [llava.eos_id], one["input_ids"][0].tolist()]
    W = max(map(len, rows))
    ids, mask = torch.full((3, W), llava.pad_id), torch.zeros(3, W, dtype=torch.long)
    labels = torch.full((3, W), -100)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        labels[i, len(r) - 2:len(r)] = torch.tensor(r[-2:])
    loss = llava.lm_loss(torch.randn(3, 3, llava.image_size, llava.image_size), ids, mask, labels)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
