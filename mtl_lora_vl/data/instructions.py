"""Generic instructions about a scene of the built-in world: questions whose answers the scene's simple captions
state (colour, shape, count, existence, relation, position), several phrasings each (the first is the world's
own). The built-in LLaVA is pretrained on them (``scripts/pretrain_llava.py``), never on the task splits."""

from __future__ import annotations

import random

from . import world
from .instruction_kinds import DEFAULT_KINDS, INSTRUCTION_TYPES, KNOWN_KINDS, PHRASINGS
from .scenes import Scene, unique_objects

__all__ = ["DEFAULT_KINDS", "INSTRUCTION_TYPES", "KNOWN_KINDS", "PHRASINGS", "instruction", "instruction_words"]


def instruction(kind: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """One (question, answer) of ``kind`` about ``scene``, or None when the scene cannot support it."""
    objs = scene.objects
    if kind in ("color", "shape"):   # ask one attribute of the object the other names uniquely
        named = "shape" if kind == "color" else "color"
        cands = unique_objects(objs, lambda o: getattr(o, named))
        if not cands:
            return None
        o = rng.choice(cands)
        return rng.choice(PHRASINGS[kind]).format(**{named: getattr(o, named)}), getattr(o, kind)
    if kind in ("count", "count_total"):
        mode = rng.randrange(3) if kind == "count" else 0
        if mode == 0:
            return rng.choice(PHRASINGS["count_all"]), str(len(objs))
        if mode == 1:   # half the time a shape that is there, so that answers are not mostly 0
            shape = rng.choice(objs).shape if rng.random() < 0.5 else rng.choice(world.SHAPES)
            return rng.choice(PHRASINGS["count_shape"]).format(shape=shape), str(sum(o.shape == shape for o in objs))
        color = rng.choice(objs).color if rng.random() < 0.5 else rng.choice(world.COLOR_NAMES)
        return rng.choice(PHRASINGS["count_color"]).format(color=color), str(sum(o.color == color for o in objs))
    if kind == "existence":
        present = {(o.color, o.shape) for o in objs}
        if rng.random() < 0.5:
            color, shape = rng.choice(sorted(present))
            answer = "yes"
        else:   # a near miss: the colour or the shape of an object that is there
            base = rng.choice(objs)
            absent = [(base.color, s) for s in world.SHAPES] + [(c, base.shape) for c in world.COLOR_NAMES]
            color, shape = rng.choice([p for p in absent if p not in present])
            answer = "no"
        return rng.choice(PHRASINGS["existence"]).format(obj=world.article(f"{color} {shape}")), answer
    if kind == "relation":
        cands = unique_objects(objs, lambda o: (o.color, o.shape))
        pairs = [(a, r, b) for a in cands for b in cands if a is not b for r in world.RELATIONS
                 if world.relation_holds(a, r, b)]
        if not pairs:
            return None
        a, rel, b = rng.choice(pairs)
        truth = rng.random() < 0.5
        q = rng.choice(PHRASINGS["relation"]).format(a=a.name(), rel=rel if truth else world.OPPOSITE[rel], b=b.name())
        return q, "yes" if truth else "no"
    if kind == "position":
        cands = [o for o in unique_objects(objs, lambda o: (o.color, o.shape)) if world.region(o) is not None]
        if not cands:
            return None
        o = rng.choice(cands)
        return rng.choice(PHRASINGS["position"]).format(obj=o.name()), world.region(o)
    raise ValueError(f"unknown instruction kind {kind!r}; known: {', '.join(KNOWN_KINDS)}")


def instruction_words() -> list[str]:
    """Every word the instructions can use (phrasings filled with every shape, colour and relation)."""
    out = [p for ps in PHRASINGS.values() for p in ps]
    out += [*world.SHAPES, *(f"{s}s" for s in world.SHAPES), *world.COLOR_NAMES, *world.RELATIONS,
            "top left right bottom center yes no", *(str(i) for i in range(world.MAX_OBJECTS + 1))]
    return out
