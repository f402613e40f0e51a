"""Generative VQA targets: an answer tied for a question's top count is a consensus answer too (the alphabetical
tie-break of ``majority_answer`` picks one for the type filter, not for the targets)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, load_spec


def test_answers_tied_for_the_top_count_are_both_drawn(llava):
    spec = load_spec("vqa")
    split = world.build_split(spec.data.options.get("world_kind", spec.kind), "train", n=4, seed=0)
    base = split.examples[0]
    tie = dataclasses.replace(base, answers=("red",) * 5 + ("maroon",) * 5)
    other = dataclasses.replace(split.examples[1], answers=("blue",) * 10)
    kind = build_kind(spec, dataclasses.replace(split, examples=[tie, other]), llava)
    assert kind.consensus == {"red", "maroon", "blue"}
    draws = Counter(kind.sample_lm(tie, d)[1:] for d in range(400))
    # both score 1.0: drawn about equally (was "maroon" every time, "red" never trained)
    assert set(draws) == {("red", 1.0), ("maroon", 1.0)} and min(draws.values()) > 150, draws
