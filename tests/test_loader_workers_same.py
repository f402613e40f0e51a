"""Two loader workers make the same batches as the main process, field for field (retrieval's image_key and
text_key, tokens, pixels), on tasks smaller than a batch; a loader restored from a worker loader's state
continues with the same batches."""

from __future__ import annotations

import json

import pytest
import torch
from vl_tiny import tiny_backbone

from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskLoader
from mtl_lora_vl.tasks import build_kind, resolve_tasks


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    clip = tiny_backbone(tmp_path_factory.mktemp("clip"))
    specs = resolve_tasks("vqa,retrieval,caption_cls")
    splits = [world.build_split(s.kind, "train", n=n, seed=0) for s, n in zip(specs, [1, 2, 5])]
    return clip, [build_kind(s, sp, clip) for s, sp in zip(specs, splits)], splits


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_two_workers_make_the_main_process_batches_and_resume_from_them(parts):
    clip, kinds, splits = parts

    def loader(**kw):
        return MultiTaskLoader(kinds, splits, clip, batch_size=5, steps=4, seed=7, **kw)

    alone = list(loader())
    assert all({"image_key", "text_key"} <= set(b["tasks"]["retrieval"]) for b in alone)
    two = loader(num_workers=2)
    try:
        it = iter(two)
        first = next(it)
        state = json.loads(json.dumps(two.state_dict()))
        rest = list(it)
    finally:
        two.close()
    assert all(_same(x, y) for x, y in zip(alone, [first, *rest])) and len(rest) == 3
    resumed = loader()
    resumed.load_state_dict(state)
    assert all(_same(x, y) for x, y in zip(alone[1:], list(resumed)))
