"""The built-in world's splits at their default sizes: what a test split shares with the splits a model learns from.

The built-in backbones were pretrained on the ``pretrain`` split (``scripts/pretrain_backbone.py``,
``scripts/pretrain_llava.py``), and a task is trained on its own ``train`` split; neither may hold a test scene.
Near-duplicates (same objects, centres within the same 0.04 cell, about 2.5 px at 64 px) are pinned as they are
today: only one-object nlvr scenes meet pretraining ones, at the rate two independent draws give (48 kinds of
one-object scene), and never a whole test pair. Also: the same seed gives the same bytes under any PYTHONHASHSEED.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mtl_lora_vl.data import world

ROOT = Path(__file__).resolve().parent.parent
CELL = 0.04


def _scenes(kind: str, split: str, seed: int = 0) -> list[world.Scene]:
    return [s for e in world.build_split(kind, split, seed=seed).examples
            for s in (e.image if isinstance(e.image, tuple) else (e.image,))]


def _near(scene: world.Scene) -> tuple:
    return tuple(sorted((o.shape, o.color, o.size, round(o.x / CELL), round(o.y / CELL)) for o in scene.objects))


def test_no_test_or_val_scene_is_in_pretraining_or_another_split():
    pretrain = _scenes("pretrain", "train")
    seen = {("pretrain", "train"): set(pretrain)}
    for kind in world.KINDS[1:]:
        for split in world.SPLITS:
            seen[(kind, split)] = set(_scenes(kind, split))
    for key, scenes in seen.items():
        for other, prev in seen.items():
            if other != key:
                assert scenes.isdisjoint(prev), f"{key} shares a scene with {other}"


def test_near_duplicates_of_pretraining_are_only_chance_one_object_nlvr_scenes():
    pretrain0 = {_near(s) for s in _scenes("pretrain", "train")}
    pretrain1 = {_near(s) for s in _scenes("pretrain", "train", seed=1)}   # an independent draw
    for kind in ("retrieval", "captioning", "vqa", "classification"):
        assert not any(_near(s) in pretrain0 for s in _scenes(kind, "test")), kind
    nlvr = _scenes("nlvr", "test")
    hits = [s for s in nlvr if _near(s) in pretrain0]
    assert all(len(s.objects) == 1 for s in hits)
    chance = sum(_near(s) in pretrain1 for s in nlvr)
    assert len(hits) == 77 and abs(len(hits) - chance) < 25, (len(hits), chance)


def test_no_nlvr_test_pair_nearly_repeats_a_train_pair():
    train = {frozenset((_near(e.image[0]), _near(e.image[1]))) for e in world.build_split("nlvr", "train").examples}
    test = world.build_split("nlvr", "test").examples
    assert not [e.image_id for e in test if frozenset((_near(e.image[0]), _near(e.image[1]))) in train]


_DIGEST = """
import hashlib, random
from mtl_lora_vl.data import instructions, world
h = hashlib.sha256()
for kind in world.KINDS:
    for split in (["train"] if kind == "pretrain" else world.SPLITS):
        rows = world.build_split(kind, split, n=40, seed=2).examples
        h.update(repr([(e.image, e.image_id, e.text, e.captions, e.answers, e.label, e.question_type,
                        sorted(e.meta.items())) for e in rows]).encode())
        first = rows[0].image
        h.update(b"".join(s.render(64).tobytes() for s in (first if isinstance(first, tuple) else (first,))))
rng = random.Random(0)
for e in world.build_split("pretrain", "train", n=40).examples:
    h.update(repr([instructions.instruction(k, e.image, rng) for k in instructions.KNOWN_KINDS]).encode())
print(h.hexdigest())
"""


def _digest(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _DIGEST], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_same_seed_same_bytes_across_processes_and_hash_seeds():
    here: dict = {}
    exec(compile(_DIGEST.replace("print(h.hexdigest())", "digest = h.hexdigest()"), "<digest>", "exec"), here)
    assert _digest("4242") == here["digest"]   # this process has another (random, or the runner's) hash seed
