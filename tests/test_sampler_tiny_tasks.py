"""The multi-task sampler on tasks smaller than a batch (one of a single example), odd batch sizes and 1-5 tasks:
every task gets its share over a run, and a sampler restored at ANY step (JSON state) makes the same batches."""

from __future__ import annotations

import json

import pytest

from mtl_lora_vl.data.sampler import MultiTaskBatchSampler


@pytest.mark.parametrize("sizes", [[1], [1, 2], [1, 3, 500], [2, 1, 7, 40], [5, 1, 1, 9, 300]])
@pytest.mark.parametrize("b", [3, 7])
def test_every_task_gets_its_share_over_2000_odd_batches(sizes, b):
    s = MultiTaskBatchSampler(sizes, b, steps=2000, seed=3)
    counts = [0] * len(sizes)
    for batch in s:
        assert len(batch) == b and all(0 <= i < sizes[t] for t, i in batch)
        if b >= len(sizes):
            assert {t for t, _ in batch} == set(range(len(sizes)))   # every task in every mixed batch
        for t, _ in batch:
            counts[t] += 1
    assert all(abs(c / (2000 * b) - p) < 1e-3 for c, p in zip(counts, s.shares))


@pytest.mark.parametrize("kw", [{"mode": "mixed"}, {"mode": "homogeneous", "per_step": 2},
                                {"mode": "mixed", "strategy": "round_robin", "world_size": 2, "rank": 1}])
def test_a_restore_at_any_step_repeats_the_batches(kw):
    sizes, b, steps = [1, 2, 7], 5, 40
    full = list(MultiTaskBatchSampler(sizes, b, steps=steps, seed=9, **kw))
    live = MultiTaskBatchSampler(sizes, b, steps=steps, seed=9, **kw)
    for k in range(steps + 1):
        restored = MultiTaskBatchSampler(sizes, b, steps=steps, seed=9, **kw)
        restored.load_state_dict(json.loads(json.dumps(live.state_dict())))
        assert list(restored) == full[k:], k
        if k < steps:
            assert live.next_batch() == full[k]
