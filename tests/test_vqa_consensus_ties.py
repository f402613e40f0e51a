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


def test_a_question_whose_humans_all_disagree_adds_no_consensus_answer(llava):
    """Every answer of a question whose ten humans all answered differently ties at one: counted as ties, each became
    a consensus answer (review 359), so the rare "yep" of "yes" x 9 + "yep" was drawn 256 times in 1,000 with weight
    0.3. Such a question has no majority; it still trains, drawing from its own answers."""
    spec = load_spec("vqa")
    split = world.build_split(spec.data.options.get("world_kind", spec.kind), "train", n=4, seed=0)
    yes = dataclasses.replace(split.examples[0], answers=("yes",) * 9 + ("yep",))
    spread = ("yep", "fine", "maybe", "no", "ok", "sure", "what", "where", "who", "why")
    scattered = dataclasses.replace(split.examples[1], answers=spread)
    kind = build_kind(spec, dataclasses.replace(split, examples=[yes, scattered]), llava)
    assert kind.consensus == {"yes"}
    assert {kind.sample_lm(yes, d)[1:] for d in range(200)} == {("yes", 1.0)}
    assert {kind.sample_lm(scattered, d)[1] for d in range(400)} == set(spread)   # none in consensus: all drawn
