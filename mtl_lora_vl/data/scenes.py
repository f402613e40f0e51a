"""The built-in world's scenes: its vocabulary of shapes and colours, the scene graph and its rendering, the facts a
scene holds (relations, regions) and the random sampling of scenes per task kind.

A leaf below :mod:`mtl_lora_vl.data.world` (the tasks' texts and splits) and :mod:`mtl_lora_vl.data.statements` (the
nlvr kind's statements about a pair of scenes), which both build on it; ``world`` re-exports its public names.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------
# Vocabulary of the scenes
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
MAX_OBJECTS = 5
DEFAULT_IMAGE_SIZE = 64

# Objects per scene (inclusive range) for each kind.
_OBJECT_RANGE = {"pretrain": (1, 2), "retrieval": (2, 4), "captioning": (2, 4), "vqa": (2, 5),
                 "classification": (2, 4), "nlvr": (1, 4)}


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
        """The object's radius, a fraction of the side (its size's)."""
        return SIZES[self.size]

    def name(self, with_size: bool = False) -> str:
        """How a text names it: "red circle", or "large red circle" ``with_size``."""
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


def join_and(items: Sequence[str]) -> str:
    """``items`` as one listing: "a", "a and b", "a, b and c"."""
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


def sample_scene(kind: str, rng: random.Random) -> Scene:
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


def unique_objects(objs: Sequence[Obj], key: Callable[[Obj], Hashable]) -> list[Obj]:
    """The objects whose ``key`` (a shape, a colour, ...) no other object of ``objs`` shares: those a text can name
    by it alone. In their order in ``objs``."""
    counts: dict = {}
    for o in objs:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return [o for o in objs if counts[key(o)] == 1]
