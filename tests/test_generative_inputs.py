"""Review 191: bad input on the generative path that was accepted silently -- a bare string of targets or ends
(read letter by letter), a candidate holding the image placeholder, and generation past the language model's
context (now warned about)."""
import dataclasses
import logging

import pytest
import torch

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, load_spec


@pytest.fixture(scope="module")
def bb():
    b = load_backbone("builtin-llava")
    b.model.eval()
    return b


def test_a_bare_string_of_targets_is_refused_not_read_letter_by_letter(bb):
    """prompts refuse a bare string; targets took "red" as the three targets 'r', 'e', 'd' (3 prompts)."""
    tok = bb.image_token
    with pytest.raises((TypeError, ValueError), match="string"):
        bb.lm_collator()([f"{tok} a", f"{tok} b", f"{tok} c"], "red")


def test_a_bare_string_of_ends_is_refused_not_read_letter_by_letter(bb):
    """ends="</s>" for 4 rows ended them with '<', '/', 's', '>' (<unk> here), silently."""
    tok = bb.image_token
    with pytest.raises((TypeError, ValueError), match="string"):
        bb.lm_collator()([f"{tok} a"] * 4, ["red"] * 4, ends="</s>")


def test_a_candidate_holding_the_image_placeholder_is_refused(bb):
    """generate never writes the image token, the kinds refuse it in class names, and the no-cache path fails on the
    count; the cached path scored 'red <image>' silently (the image token's bare embedding, no image)."""
    tok = bb.image_token
    images = torch.randn(1, 3, bb.image_size, bb.image_size)
    with pytest.raises(ValueError):
        bb.sequence_scores(images, [f"{tok} a"], ["red", f"red {tok}"])


def test_generating_past_the_language_models_context_is_said(bb, caplog):
    """A 309-token prompt on the 256-position built-in LLaVA generated '' with no word; training rows that long
    are warned about (warn_lm_context), evaluation prompts and prompt + max_len are not checked."""
    tok = bb.image_token
    long = tok + " question:" + " what colour is the cube ?" * 40 + " answer:"
    images = torch.randn(1, 3, bb.image_size, bb.image_size)
    with caplog.at_level(logging.WARNING):
        try:
            bb.generate(images, max_len=4, prompts=[long])
        except ValueError as e:   # an error naming the context would do as well
            assert "context" in str(e)
            return
    assert any("context" in r.getMessage() for r in caplog.records)


def test_scoring_candidates_past_the_language_models_context_is_said(bb, caplog):
    """generate and the training rows say when a row passes the 256 positions of the built-in LLaVA; candidate
    scoring (classification, NLVR) scored a 309-token prompt's candidates there with no word, so an evaluation of a
    saved adapter (no training rows read) ranked classes on positions the model never saw, silently."""
    tok = bb.image_token
    images = torch.randn(1, 3, bb.image_size, bb.image_size)
    with caplog.at_level(logging.WARNING):
        bb.sequence_scores(images, [f"{tok} caption:"], ["a large red circle", "a small blue square"])
        assert not any("context" in r.getMessage() for r in caplog.records)
        long = tok + " question:" + " what colour is the cube ?" * 40 + " answer:"
        bb.sequence_scores(images, [long], ["a large red circle", "yes"])
    said = [r.getMessage() for r in caplog.records if "context" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("sequence_scores: prompts of up to ")
    assert "candidates of up to 5 tokens (their end token included) pass the language model's context of 256" in said[0]


@pytest.mark.parametrize("task", ["caption_cls", "vqa"])
def test_a_task_evaluated_past_the_context_is_told_once_not_on_every_batch(bb, task, caplog):
    """sequence_scores and generate say when a call passes the built-in LLaVA's 256 positions; an evaluation calls them
    once a batch (and a group of candidates), so caption_cls with a 307-token prompt printed the same line 88 times
    for 64 rows (vqa: 12), again on every pass. Within a task's evaluations it is said once; a direct call still
    says it every time."""
    spec = load_spec(task)
    spec = dataclasses.replace(spec, generative={**spec.generative, "prompt": "{image} " + "what is it ? " * 80})
    made = spec.data.options.get("world_kind", spec.kind)
    kind = build_kind(spec, world.build_split(made, "train", n=4, seed=0), bb)
    val = world.build_split(made, "val", n=6, seed=0)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):   # zero-shot, then again (adapted, a validation)
            kind.evaluate(bb, None, val, batch_size=2, device="cpu")
    said = [r.getMessage() for r in caplog.records if "pass the language model's context of 256" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("(said once for this task, of its widest call)"), said
    caplog.clear()
    images = torch.randn(1, 3, bb.image_size, bb.image_size)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            bb.sequence_scores(images, [bb.image_token + " what is it ?" * 80], ["red", "blue"])
    assert sum("context of 256" in r.getMessage() for r in caplog.records) == 2
