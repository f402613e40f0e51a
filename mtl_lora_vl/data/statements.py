"""The nlvr kind's statements about a (left, right) pair of built-in-world scenes, true or false (NLVR2's flavour).

Each statement needs both images, or the one it names: existence ("the left image contains a red circle"), both,
neither, count ("the left image has more circles than the right image") and relation ("in the right image a red
circle is left of a blue square"). The type and the truth are drawn first, then the statement's form, then pairs of
scenes until one supports a statement of that type, truth and form (see :func:`nlvr_example`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .records import Example
from .scenes import (
    COLOR_NAMES,
    OPPOSITE,
    RELATIONS,
    SHAPES,
    Obj,
    Scene,
    article,
    relation_holds,
    sample_scene,
    unique_objects,
)

#: The nlvr statement types (``Example.question_type``); each is drawn about equally often.
STATEMENT_TYPES: tuple[str, ...] = ("existence", "both", "neither", "count", "relation")
SIDES: tuple[str, ...] = ("left", "right")


def _pick(rng: random.Random, groups: Sequence[Sequence]):
    """A uniform choice among the non-empty ``groups``, then within it; None when all are empty."""
    groups = [g for g in groups if g]
    return rng.choice(rng.choice(groups)) if groups else None


def _pairs_of(scene: Scene) -> set[tuple[str, str]]:
    return {(o.color, o.shape) for o in scene.objects}


def _statement(stype: str, truth: bool, scenes: tuple[Scene, Scene], rng: random.Random) -> str | None:
    """An nlvr statement of type ``stype`` about the (left, right) pair that is ``truth``, or None when the pair
    cannot support one. False statements name colours and shapes of the pair, and most need both images (or the
    named one) to be told false: an object of the other image, an attribute that only one image has.

    Each branch draws its form (side, wording, what is counted) from ``rng`` before it looks at the scenes, and
    the caller gives every try of one example a generator in the same state: the form is then the same whatever
    pairs were drawn again, so it does not tell the label (a shared colour and shape, say, is rare)."""
    if stype == "existence":
        side = rng.randrange(2)
        named, other = _pairs_of(scenes[side]), _pairs_of(scenes[1 - side])
        if truth:
            color, shape = rng.choice(sorted(named))
        else:
            # An object of the other image, or a near miss of one of this image's: its colour or its shape with
            # a shape or a colour of the pair.
            colors = {c for c, _ in named | other}
            shapes = {s for _, s in named | other}
            near = {(c, s2) for c, _ in named for s2 in shapes} | {(c2, s) for _, s in named for c2 in colors}
            pick = _pick(rng, [sorted(other - named), sorted(near - named)])
            if pick is None:
                return None
            color, shape = pick
        return f"the {SIDES[side]} image contains {article(f'{color} {shape}')}"
    if stype == "both":
        # Colour and shape, shape only or colour only ("a red shape"); false: only one image has it.
        key = rng.choice([lambda o: f"{o.color} {o.shape}", lambda o: o.shape, lambda o: f"{o.color} shape"])
        left, right = ({key(o) for o in sc.objects} for sc in scenes)
        cands = sorted(left & right) if truth else sorted(left ^ right)
        return f"both images contain {article(rng.choice(cands))}" if cands else None
    if stype == "neither":
        left, right = _pairs_of(scenes[0]), _pairs_of(scenes[1])
        if truth:   # a colour and a shape of the pair that no object of either image has together
            colors = {c for c, _ in left | right}
            shapes = {s for _, s in left | right}
            cands = sorted({(c, s) for c in colors for s in shapes} - left - right)
        else:       # an object of exactly one image
            cands = sorted(left ^ right)
        if not cands:
            return None
        color, shape = rng.choice(cands)
        return f"neither image contains {article(f'{color} {shape}')}"
    if stype == "count":
        subjects = [[("shapes", lambda o: True)],
                    [(f"{s}s", lambda o, s=s: o.shape == s) for s in SHAPES],
                    [(f"{c} shapes", lambda o, c=c: o.color == c) for c in COLOR_NAMES]]
        more = rng.random() < 0.5
        a = rng.randrange(2)
        cands = []
        for noun, pred in rng.choice(subjects):
            counts = [sum(map(pred, sc.objects)) for sc in scenes]
            if sum(counts) == 0:    # name only what the pair shows
                continue
            holds = counts[a] > counts[1 - a] if more else counts[0] == counts[1]
            if holds == truth:
                cands.append(noun)
        if not cands:
            return None
        noun = rng.choice(cands)
        if more:
            return f"the {SIDES[a]} image has more {noun} than the {SIDES[1 - a]} image"
        return f"the two images have the same number of {noun}"
    if stype == "relation":
        side = rng.randrange(2)

        def facts(scene: Scene) -> list[tuple[Obj, str, Obj]]:   # between objects unique by colour and shape
            cands = unique_objects(scene.objects, lambda o: (o.color, o.shape))
            return [(a, r, b) for a in cands for b in cands if a is not b for r in RELATIONS if relation_holds(a, r, b)]

        here = facts(scenes[side])
        if truth:
            if not here:
                return None
            a, rel, b = rng.choice(here)
        else:
            # The opposite of a fact of this image, or a fact of the other image about objects not both here.
            named = _pairs_of(scenes[side])
            borrowed = [(a, r, b) for a, r, b in facts(scenes[1 - side])
                        if (a.color, a.shape) not in named or (b.color, b.shape) not in named]
            flipped = [(a, OPPOSITE[r], b) for a, r, b in here]
            fact = _pick(rng, [flipped, borrowed])
            if fact is None:
                return None
            a, rel, b = fact
        return f"in the {SIDES[side]} image {article(a.name())} is {rel} {article(b.name())}"
    raise ValueError(f"unknown statement type {stype!r}; known: {', '.join(STATEMENT_TYPES)}")


def nlvr_example(image_id: str, rng: random.Random) -> Example:
    """One nlvr example: the type, the label and the statement's form are drawn first, then pairs of scenes until
    one supports a statement of that type, truth and form."""
    stype = rng.choice(STATEMENT_TYPES)
    truth = rng.random() < 0.5
    form_seed = rng.getrandbits(64)
    while True:
        scenes = (sample_scene("nlvr", rng), sample_scene("nlvr", rng))
        text = _statement(stype, truth, scenes, random.Random(form_seed))
        if text is not None:
            return Example(scenes, image_id, text=text, label=int(truth), question_type=stype,
                           meta={"label_name": "true" if truth else "false"})
