"""caption_cls on a generative backbone scores each class's target text: two classes the tokenizer reads as one text
(``Red circle`` and ``red circle`` under the built-in LLaVA's lowercasing tokenizer) always tied, so one of them was
never predicted and training taught both the same target, with no word at start-up."""

from __future__ import annotations

import logging

import pytest

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.data import world
from mtl_lora_vl.data.records import Split
from mtl_lora_vl.tasks import build_kind, load_spec

pytestmark = pytest.mark.skipif(not (builtin_llava_dir() / "config.json").is_file(),
                                reason="built-in LLaVA not built (python scripts/pretrain_llava.py)")


@pytest.fixture(scope="module")
def bb():
    return load_backbone("builtin-llava")


def _split(names: list[str] | None = None) -> Split:
    """The built-in world's caption_cls training rows, its class names given as ``names``."""
    spec = load_spec("caption_cls")
    made = world.build_split(spec.data.options.get("world_kind", spec.kind), "train", n=8, seed=0)
    return made if names is None else Split(made.examples, class_names=names)


def test_classes_that_differ_only_in_case_are_refused_naming_both(bb, caplog):
    spec = load_spec("caption_cls")
    names = list(_split().class_names)
    kind = build_kind(spec, _split(names), bb)   # the world's own names: all distinct
    ids = bb.lm_collator().continuation_ids(["x"] * 2, ["a large Red circle", "a large red circle"])
    assert ids[0] == ids[1]   # (the tokenizer lowercases)

    cased = [names[0].capitalize(), *names[1:4], names[0], *names[5:]]   # 'Red circle' ... 'red circle'
    with pytest.raises(ValueError, match="the classes 'Red circle' and 'red circle' are one text to the tokenizer"):
        build_kind(spec, _split(cased), bb)

    with caplog.at_level(logging.WARNING):   # an adapter trained so: its evaluation is told, not stopped
        again = build_kind(spec, None, bb, state={**kind.state(), "class_names": cased})
    assert again.class_names == cased
    assert "the classes 'Red circle' and 'red circle' are one text to the tokenizer" in caplog.text


def test_classes_tied_by_unknown_words_are_told_the_fix_that_works(bb):
    """Class names the built-in LLaVA's word-level tokenizer does not know ('Abyssinian', 'Bengal', 'Birman': a real
    dataset's) are all its <unk>: the refusal said 'rename one of each', which renaming one to another unknown word
    does not fix (and the start-up's own advice for unknown words, a subword backbone, came after it, never said)."""
    spec = load_spec("caption_cls")
    names = ["Abyssinian", "Bengal", "Birman", *_split().class_names[3:]]
    with pytest.raises(ValueError) as e:
        build_kind(spec, _split(names), bb)
    said = str(e.value)
    assert "the classes 'Abyssinian' and 'Bengal' and 'Birman' are one text" in said
    assert "words it does not know, each its unknown token '<unk>'" in said and "lowercases" not in said
    assert "all but one of each are never predicted" in said
    assert said.endswith("use a backbone whose tokenizer reads these names (hf:DIR of a model with a subword "
                         "vocabulary), or name the classes in words it knows (options.class_names)")
    world_names = list(_split().class_names)   # 'Red circle' and 'red circle': no unknown word
    cased = ["Red circle", *world_names[1:4], "red circle", *world_names[5:]]
    with pytest.raises(ValueError, match="it lowercases or normalises them alike.*rename one of each"):
        build_kind(spec, _split(cased), bb)
