"""caption_cls on a contrastive backbone: classes whose class prompts the text tower's tokenizer reads as the same ids
('Red circle' and 'red circle' under the built-in CLIP's lowercasing tokenizer) get the same zero-shot class embedding
(``torch.equal``), so zero-shot they tie on every image and a tie counts against the true class -- with no word at
start-up. A trained head can still tell them apart, so it is a warning (the generative path refuses them:
test_generative_class_case)."""

from __future__ import annotations

import logging

import pytest
import torch

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data import world
from mtl_lora_vl.data.records import Split
from mtl_lora_vl.tasks import build_kind, load_spec

TIED = "are one text to the tokenizer of backbone 'builtin'"


@pytest.fixture(scope="module")
def bb():
    return load_backbone("builtin", device="cpu")


def _split(names: list[str] | None = None) -> Split:
    """The built-in world's caption_cls training rows, its class names given as ``names``."""
    spec = load_spec("caption_cls")
    made = world.build_split(spec.data.options.get("world_kind", spec.kind), "train", n=8, seed=0)
    return made if names is None else Split(made.examples, class_names=names)


def _said(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "mtl_lora_vl.tasks.classification")


def test_classes_whose_prompts_tokenize_alike_are_warned_about_naming_them(bb, caplog):
    spec = load_spec("caption_cls")
    names = list(_split().class_names)
    with caplog.at_level(logging.WARNING):
        kind = build_kind(spec, _split(), bb)   # the world's own names: nothing new said
    assert TIED not in _said(caplog)

    cased = ["Red circle", *names[1:4], "red circle", *names[5:]]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tied = build_kind(spec, _split(cased), bb)   # built: a trained head can tell them apart
    emb = tied.class_embeddings(bb, device="cpu")
    assert torch.equal(emb[0], emb[4]) and not torch.equal(emb[0], emb[1])   # (the premise: one zero-shot row)
    said = _said(caplog)
    assert f"task 'caption_cls': the classes 'Red circle' and 'red circle' {TIED}" in said
    assert "it lowercases or normalises them alike" in said and "zero-shot their scores tie on every image" in said
    assert ("as a tie counts against the true class none of their images is ever right at top-1 zero-shot (nor in "
            "its per-class accuracy") in said
    made = world.build_split(spec.data.options.get("world_kind", spec.kind), "val", n=64, seed=1)
    ev = Split([ex for ex in made.examples if ex.label in (0, 4)], class_names=cased)   # (as trained)
    out = tied.evaluate(bb, None, ev, batch_size=8, device="cpu")   # (what it says, measured)
    assert out["top1"] == 0.0 and out["per_class/Red circle"] == 0.0 and out["per_class/red circle"] == 0.0
    apart = Split(ev.examples, class_names=names)   # (told apart: some are right)
    assert kind.evaluate(bb, None, apart, batch_size=8, device="cpu")["top1"] > 0
    assert said.endswith("rename one of each (options.class_names) so that their prompts differ, or merge them in "
                         "the data")

    caplog.clear()
    with caplog.at_level(logging.WARNING):   # an adapter trained so, rebuilt for evaluation (zero-shot scored too)
        build_kind(spec, None, bb, state={**kind.state(), "class_names": cased})
    assert f"the classes 'Red circle' and 'red circle' {TIED}" in _said(caplog)


def test_classes_tied_by_unknown_words_are_told_the_fix_that_works(bb, caplog):
    spec = load_spec("caption_cls")
    names = ["Abyssinian", "Bengal", "Birman", *_split().class_names[3:]]
    with caplog.at_level(logging.WARNING):
        build_kind(spec, _split(names), bb)
    said = _said(caplog)
    assert f"the classes 'Abyssinian' and 'Bengal' and 'Birman' {TIED}" in said
    assert "words it does not know, each its unknown token '<unk>'" in said and "lowercases" not in said
    assert said.endswith("use a backbone with a subword tokenizer (open_clip:NAME, hf:DIR), or name the classes in "
                         "words it knows (options.class_names)")


def test_classes_cut_alike_at_the_context_are_told_so(bb, caplog):
    """Names that differ only past the tokenizer's context (32 tokens) are cut to the same ids."""
    spec = load_spec("caption_cls")
    long = "red circle " * 20
    names = [long + "circle", long + "square", *_split().class_names[2:]]
    with caplog.at_level(logging.WARNING):
        build_kind(spec, _split(names), bb)
    said = _said(caplog)
    assert TIED in said and "they fill its context, and what differs is cut off" in said
    assert "lowercases" not in said and "so that their prompts differ within its context" in said
