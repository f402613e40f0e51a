"""The built-in world's ``nlvr`` kind: pairs of scenes with a true-or-false statement (NLVR2-style).

Every statement's truth is re-derived here from the two scene graphs with this file's own parser and facts (not
the generator's), so that a generator bug fails a test; the other kinds and ``all_texts`` are checked against
digests taken on the world before the kind was added.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mtl_lora_vl.backbones.tokenizers import WordTokenizer
from mtl_lora_vl.data import world

ASSET = Path(__file__).resolve().parent.parent / "assets" / "builtin_clip"
MARGIN = 0.1     # this file's own "clearly left of": centres at least 0.1 apart (the world asks for more)
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SIDE = {"left": 0, "right": 1}
COLORS = set(world.COLOR_NAMES)
SHAPES = set(world.SHAPES)


def _holds(a, rel: str, b) -> bool:
    return {"left of": a.x + MARGIN < b.x, "right of": a.x > b.x + MARGIN,
            "above": a.y + MARGIN < b.y, "below": a.y > b.y + MARGIN}[rel]


def _has(scene, color=None, shape=None) -> int:
    """How many objects of ``scene`` have this colour and/or shape."""
    return sum((color is None or o.color == color) and (shape is None or o.shape == shape) for o in scene.objects)


def _thing(phrase: str) -> tuple[str | None, str | None]:
    """'red circle' -> (red, circle); 'circle' -> (None, circle); 'red shape' -> (red, None)."""
    words = phrase.split()
    if len(words) == 2 and words[1] == "shape":
        return words[0], None
    if len(words) == 2:
        return words[0], words[1]
    return None, words[0]


def _counted(noun: str) -> tuple[str | None, str | None]:
    """'shapes' -> any; 'circles' -> circle; 'red shapes' -> red."""
    if noun == "shapes":
        return None, None
    if noun.endswith(" shapes"):
        return noun.split()[0], None
    return None, noun[:-1]


def _truth(scenes, text: str) -> tuple[str, bool]:
    """(statement type, truth) of ``text`` about the (left, right) scenes, from this file's own reading."""
    left, right = scenes
    if m := re.fullmatch(r"the (left|right) image contains an? (\w+) (\w+)", text):
        side, color, shape = m.groups()
        return "existence", _has(scenes[SIDE[side]], color, shape) > 0
    if m := re.fullmatch(r"both images contain an? (.+)", text):
        color, shape = _thing(m.group(1))
        return "both", _has(left, color, shape) > 0 and _has(right, color, shape) > 0
    if m := re.fullmatch(r"neither image contains an? (\w+) (\w+)", text):
        color, shape = m.groups()
        return "neither", _has(left, color, shape) == 0 and _has(right, color, shape) == 0
    if m := re.fullmatch(r"the (left|right) image has more (.+) than the (left|right) image", text):
        a, noun, b = m.groups()
        assert a != b, text
        color, shape = _counted(noun)
        assert _has(left, color, shape) + _has(right, color, shape) > 0, f"counts what the pair lacks: {text}"
        return "count", _has(scenes[SIDE[a]], color, shape) > _has(scenes[SIDE[b]], color, shape)
    if m := re.fullmatch(r"the two images have the same number of (.+)", text):
        color, shape = _counted(m.group(1))
        assert _has(left, color, shape) + _has(right, color, shape) > 0, f"counts what the pair lacks: {text}"
        return "count", _has(left, color, shape) == _has(right, color, shape)
    if m := re.fullmatch(r"in the (left|right) image an? (\w+) (\w+) is (left of|right of|above|below) an? (\w+) (\w+)",
                         text):
        side, c1, s1, rel, c2, s2 = m.groups()
        scene = scenes[SIDE[side]]
        n1, n2 = _has(scene, c1, s1), _has(scene, c2, s2)
        if n1 == 0 or n2 == 0:          # an object it names is not in that image: false
            return "relation", False
        assert n1 == 1 and n2 == 1 and (c1, s1) != (c2, s2), f"relation about objects that are not unique: {text}"
        a = next(o for o in scene.objects if (o.color, o.shape) == (c1, s1))
        b = next(o for o in scene.objects if (o.color, o.shape) == (c2, s2))
        if _holds(a, rel, b):
            return "relation", True
        assert _holds(a, OPPOSITE[rel], b), f"relation statement with an unclear truth: {text} {a} {b}"
        return "relation", False
    raise AssertionError(f"statement of an unknown form: {text!r}")


def _mentions_only_the_pair(scenes, text: str) -> bool:
    colors = {o.color for sc in scenes for o in sc.objects}
    shapes = {o.shape for sc in scenes for o in sc.objects}
    words = set(re.findall(r"\w+", text))
    plural = {w[:-1] for w in words if w[:-1] in SHAPES}
    return (words & COLORS) <= colors and ((words & SHAPES) | plural) <= shapes


# ------------------------------------------------------------------------------------ structure and determinism

def test_pairs_are_deterministic_and_a_prefix():
    a = world.build_split("nlvr", "train", n=40, seed=3)
    assert a.examples == world.build_split("nlvr", "train", n=40, seed=3).examples
    assert world.build_split("nlvr", "train", n=7, seed=3).examples == a.examples[:7]
    other = world.build_split("nlvr", "train", n=40, seed=4)
    assert {e.image for e in a.examples}.isdisjoint({e.image for e in other.examples})
    for i, e in enumerate(a.examples):
        assert e.image_id == f"world-nlvr-train-3-{i:06d}"
        assert isinstance(e.image, tuple) and len(e.image) == 2
        assert all(isinstance(s, world.Scene) and 1 <= len(s.objects) <= 4 for s in e.image)
        assert e.label in (0, 1) and e.meta["label_name"] == ("true" if e.label else "false")
        assert e.question_type in world.STATEMENT_TYPES and e.answers == () and e.captions == ()
    assert a.class_names is None


def test_default_sizes():
    for split in world.SPLITS:
        s = world.build_split("nlvr", split)
        assert len(s.examples) == len({e.image_id for e in s.examples}) == world.DEFAULT_SCENES[("nlvr", split)]


def test_kinds_and_bad_arguments():
    assert "nlvr" in world.KINDS and "nlvr" not in world.VOCAB_KINDS
    assert set(world.KINDS) - set(world.VOCAB_KINDS) == {"nlvr"}
    with pytest.raises(ValueError, match="unknown world kind.*nlvr"):
        world.build_split("nope", "train")
    with pytest.raises(ValueError, match="positive"):
        world.build_split("nlvr", "val", n=0)


def test_both_scenes_render():
    for e in world.build_split("nlvr", "val", n=6, seed=1).examples:
        imgs = [scene.render(64) for scene in e.image]
        assert all(img.mode == "RGB" and img.size == (64, 64) for img in imgs)
        for scene, img in zip(e.image, imgs):     # each object's centre pixel has its colour
            for o in scene.objects:
                y = o.y + (0.25 * o.radius if o.shape == "triangle" else 0.0)
                px = img.getpixel((min(63, int(o.x * 64)), min(63, int(y * 64))))
                assert max(abs(p - w) for p, w in zip(px, world.COLORS[o.color])) < 40, (o, px)


# ------------------------------------------------------------------------------------ truth and balance

def test_every_label_is_the_statements_truth():
    seen = Counter()
    for split in world.SPLITS:
        for e in world.build_split("nlvr", split, n=400, seed=7).examples:
            stype, truth = _truth(e.image, e.text)
            assert stype == e.question_type, (e.text, e.question_type)
            assert int(truth) == e.label, (e.text, e.label, e.image)
            assert _mentions_only_the_pair(e.image, e.text), (e.text, e.image)
            seen[(stype, truth)] += 1
    assert set(seen) == {(t, b) for t in world.STATEMENT_TYPES for b in (False, True)}


def test_types_and_labels_are_balanced():
    examples = world.build_split("nlvr", "train", n=800, seed=0).examples
    by_type = Counter(e.question_type for e in examples)
    true_by_type = Counter(e.question_type for e in examples if e.label == 1)
    assert set(by_type) == set(world.STATEMENT_TYPES)
    for t, n in by_type.items():
        assert 0.14 < n / len(examples) < 0.26, (t, n)
        assert 0.4 < true_by_type[t] / n < 0.6, (t, true_by_type[t], n)
    # the wording (colours and shapes blanked) does not tell the label: each form's true share stays near half
    blank = Counter()
    form_true = Counter()
    for e in examples:
        form = re.sub(r"\b(" + "|".join([*world.COLOR_NAMES, *world.SHAPES]) + r")s?\b", "X", e.text)
        blank[form] += 1
        form_true[form] += e.label
    for form, n in blank.items():
        if n >= 40:
            assert 0.3 < form_true[form] / n < 0.7, (form, form_true[form], n)


# ------------------------------------------------------------------------------------ vocabulary and other kinds

def test_every_statement_word_is_in_the_builtin_vocabulary():
    """As the built-in CLIP's word-level tokenizer splits them; no statement word reads as <unk>."""
    tok = WordTokenizer(ASSET, context_length=32)
    vocab = json.loads((ASSET / "tokenizer.json").read_text())["model"]["vocab"]
    missing = Counter()
    for split in world.SPLITS:
        for e in world.build_split("nlvr", split).examples:
            ids = tok.encode_words(e.text)
            assert ids and tok.unk_id not in ids, e.text
            missing.update(w for w in re.findall(r"\w+|[^\w\s]+", e.text.lower()) if w not in vocab)
            assert len(ids) + 2 <= tok.context_length, e.text     # <sot> statement <eot> fits, nothing truncated
    assert not missing, missing


# Digests taken on the unchanged world (before the nlvr kind was added): the other kinds' examples and
# ``all_texts`` (the committed vocabularies' source) must stay what they were.
_OTHER_KINDS = {
    ("pretrain", "train"): "4fc52ca12645af60ca8765d5c2952215cc0a8612e6d6029959115439c697c49f",
    ("retrieval", "train"): "ab7cdd154ca4a78f99f5fdff95530241fd5ce0cf02ffc30bc5c9e0ec6e1159af",
    ("captioning", "test"): "fd9bfe301716867e81c93fe0e8001e5df00155c803d2b2e00e9aca290683d15d",
    ("vqa", "val"): "8c4277e1bdc08c3f1f1eed9737fc5828384c27aef38b4dd1ad94542f1292e785",
    ("classification", "val"): "67ce3fe00781049da5cc5616db84bf064aafc80acad6b14cae64448d35dedc10",
}
_VQA_VAL_20_TEXTS = "982bc5c3ca70dbb0dbb37f9e298d0b5b1302fc04085989c3020658c62e82130c"
_ALL_TEXTS_0 = "59c8ff6e32c70b0d97461e9e9e3e52605a07a51da42118689c72914c293d492e"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_other_kinds_and_all_texts_are_unchanged():
    for (kind, split), digest in _OTHER_KINDS.items():
        rows = [(e.image, e.image_id, e.text, e.captions, e.answers, e.label, e.question_type)
                for e in world.build_split(kind, split, n=20, seed=1).examples]
        assert _sha(repr(rows)) == digest, (kind, split)
    assert _sha("\n".join(e.text for e in world.build_split("vqa", "val", n=20).examples)) == _VQA_VAL_20_TEXTS
    texts = world.all_texts(0)
    assert _sha("\n".join(texts)) == _ALL_TEXTS_0
    assert not any(t.startswith(("both images", "neither image", "the left image", "in the right image"))
                   for t in texts)
