"""The built-in world: a seeded, deterministic generator of scenes of coloured shapes (DESIGN §6).

It lets the whole pipeline (pretraining a tiny CLIP, zero-shot evaluation, multi-task adaptation)
run offline on a CPU. A scene is a small scene graph (:class:`Scene`) of objects, each with a shape,
a colour, a size and a position; it is rendered with PIL only when a loader worker asks for pixels.

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
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .records import Example, Split

# ----------------------------------------------------------------------------------------------
# Vocabulary of the world
# ----------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 85, 225),
    "yellow": (240, 200, 25),
    "purple": (140, 60, 190),
    "gray": (125, 125, 125),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: dict[str, float] = {"small": 0.085, "large": 0.15}   # radius as a fraction of the image side
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((248, 248, 248), (236, 240, 248), (248, 242, 232))
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_MARGIN = 0.12      # centres must differ by this much (fraction of the side) for a relation to hold
REGION_MARGIN = 0.05        # a position caption needs the centre this far from a third-line
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "existence", "relation")
QUESTIONS_PER_SCENE = 3
CAPTIONS_PER_IMAGE = 5
MAX_OBJECTS = 5
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
DEFAULT_IMAGE_SIZE = 64

#: The kinds whose texts make the built-in backbones' vocabularies (:func:`all_texts`): the world as it was when
#: the committed assets were built. A kind added later is not in it, so that the asset scripts still rebuild them.
VOCAB_KINDS: tuple[str, ...] = ("pretrain", "retrieval", "vqa", "classification", "captioning")
KINDS: tuple[str, ...] = (*VOCAB_KINDS, "nlvr")
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Default number of scenes per (kind, split). Examples per scene: retrieval/captioning train: one per
#: caption (up to five; 7.5 % of images have three or four), val/test: one per image; vqa: three questions;
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

# Objects per scene (inclusive range) for each kind.
_OBJECT_RANGE = {"pretrain": (1, 2), "retrieval": (2, 4), "captioning": (2, 4), "vqa": (2, 5),
                 "classification": (2, 4), "nlvr": (1, 4)}

#: The nlvr statement types (``Example.question_type``); each is drawn about equally often.
STATEMENT_TYPES: tuple[str, ...] = ("existence", "both", "neither", "count", "relation")
SIDES: tuple[str, ...] = ("left", "right")

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
# Scene graph and rendering
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Obj:
    """One object: shape, colour and size names, centre (x right, y down) as fractions of the side."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def name(self, with_size: bool = False) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A scene graph: a background colour and a tuple of :class:`Obj`. Small and picklable."""

    objects: tuple[Obj, ...]
    background: tuple[int, int, int] = BACKGROUNDS[0]

    def render(self, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
        """Draw the scene as a ``size`` x ``size`` RGB image (supersampled, so edges are smooth).

        The same scene and size always give the same bytes.
        """
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"Scene.render: size must be an int >= 8 pixels, got {size!r}")
        ss = 4 if size <= 96 else 3 if size <= 160 else 2
        side = size * ss
        img = Image.new("RGB", (side, side), self.background)
        draw = ImageDraw.Draw(img)
        for obj in self.objects:
            _draw(draw, obj, side)
        return img.resize((size, size), Image.Resampling.LANCZOS)


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, side: int) -> None:
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        h = r * 0.86
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known shapes: {', '.join(SHAPES)}")


# ----------------------------------------------------------------------------------------------
# Facts about a scene (used to write texts; tests re-derive them independently)
# ----------------------------------------------------------------------------------------------

def relation_holds(a: Obj, rel: str, b: Obj) -> bool:
    """Whether "a {rel} b" clearly holds (centres differ by more than :data:`RELATION_MARGIN`)."""
    if rel == "left of":
        return a.x < b.x - RELATION_MARGIN
    if rel == "right of":
        return a.x > b.x + RELATION_MARGIN
    if rel == "above":
        return a.y < b.y - RELATION_MARGIN
    if rel == "below":
        return a.y > b.y + RELATION_MARGIN
    raise ValueError(f"unknown relation {rel!r}; known: {', '.join(RELATIONS)}")


#: Each relation's opposite (a false relation question asks it).
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def region(obj: Obj) -> str | None:
    """'top left', 'center', 'bottom', ... by thirds of the image; None when the centre is near a third-line."""
    def third(v: float) -> int | None:
        for line in (1 / 3, 2 / 3):
            if abs(v - line) < REGION_MARGIN:
                return None
        return 0 if v < 1 / 3 else 1 if v < 2 / 3 else 2

    col, row = third(obj.x), third(obj.y)
    if col is None or row is None:
        return None
    vertical = ("top", "", "bottom")[row]
    horizontal = ("left", "", "right")[col]
    return " ".join(w for w in (vertical, horizontal) if w) or "center"


def article(phrase: str) -> str:
    """``phrase`` with its indefinite article ('a red circle', 'an orange square')."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ----------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------

def _place(rng: random.Random, specs: Sequence[tuple[str, str, str]]) -> tuple[Obj, ...] | None:
    """Put non-overlapping objects (shape, colour, size) at random positions; None when 50 tries fail."""
    for _ in range(50):
        objs: list[Obj] = []
        for shape, color, size in specs:
            r = SIZES[size]
            lo, hi = r + 0.03, 1 - r - 0.03
            for _ in range(60):
                x, y = round(rng.uniform(lo, hi), 3), round(rng.uniform(lo, hi), 3)
                if all((x - o.x) ** 2 + (y - o.y) ** 2 >= (r + o.radius + 0.04) ** 2 for o in objs):
                    objs.append(Obj(shape, color, size, x, y))
                    break
            else:
                break
        if len(objs) == len(specs):
            return tuple(objs)
    return None


def _random_spec(rng: random.Random, size: str | None = None) -> tuple[str, str, str]:
    return rng.choice(SHAPES), rng.choice(COLOR_NAMES), size or rng.choice(tuple(SIZES))


def _sample_scene(kind: str, rng: random.Random) -> Scene:
    """A random scene of ``kind``; objects that do not fit without overlap (say five large ones) are drawn
    again from the same generator, so every seed gives a split (and a scene that fits is what it was)."""
    lo, hi = _OBJECT_RANGE[kind]
    while True:
        n = rng.randint(lo, hi)
        if kind == "classification":
            specs = [_random_spec(rng, "large")] + [_random_spec(rng, "small") for _ in range(n - 1)]
        else:
            specs = []
            while len(specs) < n:
                spec = _random_spec(rng)
                # Captions name objects by size, colour and shape: two identical objects would leave nothing to say.
                if kind not in ("retrieval", "captioning") or spec not in specs:
                    specs.append(spec)
        objects = _place(rng, specs)
        if objects is not None:
            return Scene(objects, rng.choice(BACKGROUNDS))


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
    return f"{NUMBER_WORDS[n]} {noun}: " + _join([article(o.name(True)) for o in scene.objects])


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


def _unique(objs: Sequence[Obj], key) -> list[Obj]:
    counts: dict = {}
    for o in objs:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return [o for o in objs if counts[key(o)] == 1]


def _question(qtype: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """A (question, canonical answer) of the given type, or None when the scene cannot support it."""
    objs = scene.objects
    if qtype == "color":
        cands = _unique(objs, lambda o: o.shape)
        if not cands:
            return None
        o = rng.choice(cands)
        return f"what color is the {o.shape}?", o.color
    if qtype == "shape":
        cands = _unique(objs, lambda o: o.color)
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
        cands = _unique(objs, lambda o: (o.color, o.shape))
        pairs = [(a, r, b) for a in cands for b in cands if a is not b for r in RELATIONS if relation_holds(a, r, b)]
        if not pairs:
            return None
        a, rel, b = rng.choice(pairs)
        truth = rng.random() < 0.5
        asked = rel if truth else OPPOSITE[rel]
        return f"is the {a.name()} {asked} the {b.name()}?", "yes" if truth else "no"
    raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")


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
            cands = _unique(scene.objects, lambda o: (o.color, o.shape))
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


def _nlvr_example(image_id: str, rng: random.Random) -> Example:
    """One nlvr example: the type, the label and the statement's form are drawn first, then pairs of scenes until
    one supports a statement of that type, truth and form."""
    stype = rng.choice(STATEMENT_TYPES)
    truth = rng.random() < 0.5
    form_seed = rng.getrandbits(64)
    while True:
        scenes = (_sample_scene("nlvr", rng), _sample_scene("nlvr", rng))
        text = _statement(stype, truth, scenes, random.Random(form_seed))
        if text is not None:
            return Example(scenes, image_id, text=text, label=int(truth), question_type=stype,
                           meta={"label_name": "true" if truth else "false"})


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
    * ``vqa``: three distinct questions per scene, of different types where the scene allows, ``answers`` ten, ``question_type`` set,
      ``meta["answer"]`` the canonical answer.
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
    base = _base_seed(kind, split, int(seed))
    examples: list[Example] = []
    for i in range(n):
        rng = random.Random((base << 24) + i)
        image_id = f"world-{kind}-{split}-{seed}-{i:06d}"
        if kind == "nlvr":
            examples.append(_nlvr_example(image_id, rng))
            continue
        scene = _sample_scene(kind, rng)
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
