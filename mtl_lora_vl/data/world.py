"""The built-in world: a seeded, deterministic generator of scenes of coloured shapes (DESIGN §6).

It lets the whole pipeline (pretraining a tiny CLIP, zero-shot evaluation, multi-task adaptation)
run offline on a CPU. A scene is a small scene graph (:class:`Scene`) of objects, each with a shape,
a colour, a size and a position; it is rendered with PIL only when a loader worker asks for pixels. The scenes
themselves (vocabulary, scene graph, rendering, sampling) are :mod:`mtl_lora_vl.data.scenes`, the nlvr statements
:mod:`mtl_lora_vl.data.statements`; this module writes the tasks' texts and builds the splits.

The task kinds need different visual facts, so that they compete for a shared low-rank space:

* ``retrieval`` / ``captioning`` — binding colour+shape with **relations and positions**: up to five
  captions per image such as "a red circle left of a blue square", "a small gray diamond at the top
  right" and a listing caption "three shapes: a large red circle, a small blue square and ...".
* ``vqa`` — **colour, shape, count, existence, relation** questions, three per scene, ten human-like
  answers each (mostly the canonical answer, sometimes a synonym: "grey"/"gray", "two"/"2", "yep").
* ``classification`` — **size**: every scene holds exactly one large object and one to three small
  distractors (which may share its colour or shape); the class is the large object's
  "{colour} {shape}" (6 x 4 = 24 classes, readable in "a photo of a {}.").
* ``pretrain`` — simpler scenes of one or two objects with simple captions (colour, shape, size, a
  relation or a position, a count of one or two), so that a CLIP pretrained on it has zero-shot skill
  on each task while crowded scenes, counts above two and distractors leave room for adaptation.
* ``nlvr`` — **reasoning over a pair of images** (NLVR2's flavour): one true-or-false statement per
  (left, right) pair of scenes that needs both images or the named one: "the left image contains a red
  circle", "both images contain a triangle", "neither image contains a blue square", "the left image has
  more circles than the right image", "in the right image a red circle is left of a blue square".
  Labels are 1 (true) / 0 (false), balanced within each statement type. Its texts are not in
  :func:`all_texts` (the committed vocabularies predate it), but every word is in the built-in CLIP's.

Scenes of different (kind, split, seed) come from different random streams, and scene ``i`` of a
split depends only on ``(kind, split, seed, i)``, so a smaller ``n`` gives a prefix of a larger one.
Default sizes are in :data:`DEFAULT_SCENES` (number of scenes -- of scene pairs for ``nlvr``; see
:func:`build_split` for how many examples a scene gives).

An example with several images (``nlvr``) has ``image`` = a tuple of image sources, in order (left, right).
"""

from __future__ import annotations

import hashlib
import random

from .records import Example, Split
from .scenes import (
    BACKGROUNDS,
    COLOR_NAMES,
    COLORS,
    DEFAULT_IMAGE_SIZE,
    MAX_OBJECTS,
    OPPOSITE,
    REGION_MARGIN,
    RELATION_MARGIN,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    article,
    join_and,
    region,
    relation_holds,
    sample_scene,
    unique_objects,
)
from .statements import STATEMENT_TYPES, nlvr_example

# The scenes' names, read here as ``world.X`` (the instruction data, scripts and tests do).
__all__ = ["ANSWER_SYNONYMS", "BACKGROUNDS", "COLORS", "COLOR_NAMES", "DEFAULT_IMAGE_SIZE", "DEFAULT_SCENES", "KINDS",
           "MAX_OBJECTS", "OPPOSITE", "REGION_MARGIN", "RELATIONS", "RELATION_MARGIN", "SHAPES", "SIZES", "SPLITS",
           "STATEMENT_TYPES", "VOCAB_KINDS", "Obj", "Scene", "all_texts", "article", "build_split", "class_names",
           "region", "relation_holds", "vqa_answers"]

# ----------------------------------------------------------------------------------------------
# Vocabulary of the world
# ----------------------------------------------------------------------------------------------

QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "existence", "relation")
QUESTIONS_PER_SCENE = 3
CAPTIONS_PER_IMAGE = 5
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")


#: The kinds whose texts make the built-in backbones' vocabularies (:func:`all_texts`): the world as it was when
#: the committed assets were built. A kind added later is not in it, so that the asset scripts still rebuild them.
VOCAB_KINDS: tuple[str, ...] = ("pretrain", "retrieval", "vqa", "classification", "captioning")
KINDS: tuple[str, ...] = (*VOCAB_KINDS, "nlvr")
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Default number of scenes per (kind, split). Examples per scene: retrieval/captioning train: one per
#: caption (up to five; about 9 % of images have three or four), val/test: one per image; vqa: three questions;
#: classification and pretrain: one; nlvr: one statement per pair of scenes (the sizes count pairs: 3000 pairs
#: are 6000 scenes to render per epoch, as vqa's 6000 train examples are; 400 / 800 pairs ~ vqa's 900 / 1800).
DEFAULT_SCENES: dict[tuple[str, str], int] = {
    ("pretrain", "train"): 8000,
    ("retrieval", "train"): 1500, ("retrieval", "val"): 250, ("retrieval", "test"): 500,
    ("captioning", "train"): 1500, ("captioning", "val"): 250, ("captioning", "test"): 500,
    ("vqa", "train"): 2000, ("vqa", "val"): 300, ("vqa", "test"): 600,
    ("classification", "train"): 3000, ("classification", "val"): 500, ("classification", "test"): 1000,
    ("nlvr", "train"): 3000, ("nlvr", "val"): 400, ("nlvr", "test"): 800,
}

# Answer synonyms that a "human" may give instead of the canonical answer; all are true.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "gray": ("grey",), "purple": ("violet",), "yes": ("yep", "yeah"), "no": ("nope",),
    **{shape: (f"a {shape}", f"the {shape}") for shape in SHAPES},
    **{str(i): (word,) for i, word in enumerate(NUMBER_WORDS)},
}


def class_names() -> list[str]:
    """The 24 classification classes, "{colour} {shape}", in label order."""
    return [f"{c} {s}" for c in COLOR_NAMES for s in SHAPES]


def vqa_answers() -> list[str]:
    """Every canonical VQA answer of the world (synonyms normalise to, or are listed in, :data:`ANSWER_SYNONYMS`)."""
    return [*COLOR_NAMES, *SHAPES, *(str(i) for i in range(MAX_OBJECTS + 1)), "yes", "no"]


ANSWER_SYNONYMS: dict[str, tuple[str, ...]] = dict(_SYNONYMS)


# ----------------------------------------------------------------------------------------------
# Texts
# ----------------------------------------------------------------------------------------------

def _relation_captions(scene: Scene, rng: random.Random) -> list[str]:
    """Every true "a X {relation} a Y" caption; sizes are named when colour+shape alone is ambiguous."""
    out = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b or a.name(True) == b.name(True):
                continue
            with_size = a.name() == b.name() or rng.random() < 0.3
            for rel in RELATIONS:
                if relation_holds(a, rel, b):
                    out.append(f"{article(a.name(with_size))} {rel} {article(b.name(with_size))}")
    return out


def _position_captions(scene: Scene) -> list[str]:
    out = []
    for o in scene.objects:
        reg = region(o)
        if reg is not None:
            out.append(f"{article(o.name(True))} {'in the' if reg == 'center' else 'at the'} {reg}")
    return out


def _listing_caption(scene: Scene) -> str:
    n = len(scene.objects)
    noun = "shape" if n == 1 else "shapes"
    return f"{NUMBER_WORDS[n]} {noun}: " + join_and([article(o.name(True)) for o in scene.objects])


def _captions(scene: Scene, rng: random.Random) -> tuple[str, ...]:
    """Up to five distinct true captions; the listing caption is always one of them."""
    others = list(dict.fromkeys(_relation_captions(scene, rng) + _position_captions(scene)))
    rng.shuffle(others)
    caps = [_listing_caption(scene)] + others[: CAPTIONS_PER_IMAGE - 1]
    rng.shuffle(caps)
    return tuple(caps)


def _pretrain_captions(scene: Scene, rng: random.Random) -> tuple[str, ...]:
    objs = scene.objects
    caps = [article(o.name(rng.random() < 0.5)) for o in objs]
    if len(objs) == 1:
        o = objs[0]
        caps += [f"a photo of {article(o.name())}.", f"one {o.name()}", f"one shape: {article(o.name(True))}"]
    else:
        caps += [f"{article(objs[0].name())} and {article(objs[1].name())}", _listing_caption(scene)]
        caps += _relation_captions(scene, rng)
    caps += _position_captions(scene)
    caps.append(f"{len(objs)} {'shape' if len(objs) == 1 else 'shapes'}")   # digits, as VQA count answers are
    return tuple(dict.fromkeys(caps))


def _human_answers(answer: str, rng: random.Random) -> tuple[str, ...]:
    """Ten answers: at least seven canonical, the rest synonyms when the answer has any."""
    syn = _SYNONYMS.get(answer, ())
    n_canon = rng.choice((10, 10, 9, 9, 8, 7)) if syn else 10
    answers = [answer] * n_canon + [rng.choice(syn) for _ in range(10 - n_canon)]
    rng.shuffle(answers)
    return tuple(answers)


def _question(qtype: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """A (question, canonical answer) of the given type, or None when the scene cannot support it."""
    objs = scene.objects
    if qtype == "color":
        cands = unique_objects(objs, lambda o: o.shape)
        if not cands:
            return None
        o = rng.choice(cands)
        return f"what color is the {o.shape}?", o.color
    if qtype == "shape":
        cands = unique_objects(objs, lambda o: o.color)
        if not cands:
            return None
        o = rng.choice(cands)
        return f"what shape is the {o.color} object?", o.shape
    if qtype == "count":
        mode = rng.randrange(3)
        if mode == 0:
            return "how many objects are there?", str(len(objs))
        if mode == 1:
            shape = rng.choice(SHAPES)
            return f"how many {shape}s are there?", str(sum(o.shape == shape for o in objs))
        color = rng.choice(COLOR_NAMES)
        return f"how many {color} objects are there?", str(sum(o.color == color for o in objs))
    if qtype == "existence":
        present = {(o.color, o.shape) for o in objs}
        if rng.random() < 0.5:
            color, shape = rng.choice(sorted(present))
            return f"is there {article(f'{color} {shape}')}?", "yes"
        # A near miss: keep the colour or the shape of an object that is there.
        base = rng.choice(objs)
        absent = [(base.color, s) for s in SHAPES] + [(c, base.shape) for c in COLOR_NAMES]
        absent = [p for p in absent if p not in present]
        color, shape = rng.choice(absent)
        return f"is there {article(f'{color} {shape}')}?", "no"
    if qtype == "relation":
        cands = unique_objects(objs, lambda o: (o.color, o.shape))
        pairs = [(a, r, b) for a in cands for b in cands if a is not b for r in RELATIONS if relation_holds(a, r, b)]
        if not pairs:
            return None
        a, rel, b = rng.choice(pairs)
        truth = rng.random() < 0.5
        asked = rel if truth else OPPOSITE[rel]
        return f"is the {a.name()} {asked} the {b.name()}?", "yes" if truth else "no"
    raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------

def _base_seed(kind: str, split: str, seed: int) -> int:
    digest = hashlib.sha256(f"mtl-lora-vl/world/{kind}/{split}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def build_split(kind: str, split: str, n: int | None = None, seed: int = 0) -> Split:
    """Generate ``n`` scenes (default :data:`DEFAULT_SCENES`) of one task kind and split.

    Returns a :class:`Split` whose examples carry a :class:`Scene` as ``image``:

    * ``pretrain`` (train only): one example per scene, ``text`` one simple caption, ``captions`` all.
    * ``retrieval`` / ``captioning``: train gives one example per (image, caption); val/test one per
      image with ``text`` its first caption. ``captions`` always holds all of the image's captions.
    * ``vqa``: three distinct questions per scene, of different types where the scene allows, ``answers`` ten,
      ``question_type`` set, ``meta["answer"]`` the canonical answer.
    * ``classification``: one example per scene, ``label`` the class of the large object,
      ``Split.class_names`` = :func:`class_names`.
    * ``nlvr``: ``n`` counts pairs of scenes; one example per pair, ``image`` the tuple ``(left, right)`` of
      :class:`Scene` (one to four objects each), ``text`` a statement about them, ``label`` 1 (true) or 0
      (false), ``question_type`` its type (one of :data:`STATEMENT_TYPES`, each about equally often, true and
      false about equally often within each), ``meta["label_name"]`` "true" / "false".
    """
    if kind not in KINDS:
        raise ValueError(f"unknown world kind {kind!r}; choose one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if kind == "pretrain" and split != "train":
        raise ValueError(f"the pretrain kind has only a 'train' split (got {split!r}); evaluate on a task kind")
    if n is None:
        n = DEFAULT_SCENES[(kind, split)]
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"build_split: n must be a positive number of scenes, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):   # 1.9 drew seed 1's scenes under ids of "1.9"
        raise ValueError(f"build_split: seed must be an int, got {seed!r}")
    base = _base_seed(kind, split, seed)
    examples: list[Example] = []
    for i in range(n):
        rng = random.Random((base << 24) + i)
        image_id = f"world-{kind}-{split}-{seed}-{i:06d}"
        if kind == "nlvr":
            examples.append(nlvr_example(image_id, rng))
            continue
        scene = sample_scene(kind, rng)
        examples.extend(_examples(kind, split, scene, image_id, rng))
    return Split(examples, class_names=class_names() if kind == "classification" else None)


def all_texts(seed: int = 0) -> list[str]:
    """Every word-bearing string of the world -- pretraining's split and every other kind's three: class names,
    questions, captions, answers -- in a fixed order. The built-in backbones' vocabularies are made from it.

    Only the kinds of :data:`VOCAB_KINDS` (those the committed assets were built from) count: ``nlvr`` is left
    out, so that the asset scripts still rebuild the committed vocabularies (its words are all in them)."""
    texts: list[str] = []
    pairs = [("pretrain", "train")] + [(k, s) for k in VOCAB_KINDS if k != "pretrain" for s in SPLITS]
    for kind, split in pairs:
        s = build_split(kind, split, seed=seed)
        texts.extend(s.class_names or [])
        for ex in s.examples:
            texts.extend([ex.text] if ex.text else [])
            texts.extend(ex.captions)
            texts.extend(ex.answers)
    return texts


def _examples(kind: str, split: str, scene: Scene, image_id: str, rng: random.Random) -> list[Example]:
    if kind == "pretrain":
        caps = _pretrain_captions(scene, rng)
        return [Example(scene, image_id, text=rng.choice(caps), captions=caps)]
    if kind in ("retrieval", "captioning"):
        caps = _captions(scene, rng)
        if split == "train":
            return [Example(scene, image_id, text=c, captions=caps) for c in caps]
        return [Example(scene, image_id, text=caps[0], captions=caps)]
    if kind == "classification":
        large = next(o for o in scene.objects if o.size == "large")
        label = COLOR_NAMES.index(large.color) * len(SHAPES) + SHAPES.index(large.shape)
        return [Example(scene, image_id, label=label, meta={"class_name": large.name()})]
    # vqa: distinct types first; scenes that support fewer than three types (e.g. two identical
    # objects) get further count/existence questions, which every scene supports.
    types = list(QUESTION_TYPES)
    rng.shuffle(types)
    types += [rng.choice(("count", "existence")) for _ in range(4 * QUESTIONS_PER_SCENE)]
    out: list[Example] = []
    asked: set[str] = set()
    for qtype in types:
        qa = _question(qtype, scene, rng)
        if qa is None or qa[0] in asked:
            continue
        question, answer = qa
        asked.add(question)
        out.append(Example(scene, image_id, text=question, answers=_human_answers(answer, rng),
                           question_type=qtype, meta={"answer": answer}))
        if len(out) == QUESTIONS_PER_SCENE:
            break
    return out
