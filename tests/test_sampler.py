"""Multi-task batch sampler: proportions, round robin, epochs, determinism, resume, DDP shards."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

from mtl_lora_vl.data.sampler import MultiTaskBatchSampler, floored_shares, task_probabilities


def _task_counts(batches) -> Counter:
    return Counter(t for b in batches for t, _ in b)


def _take(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


@pytest.mark.parametrize("strategy,temperature", [("proportional", 1.0), ("temperature", 2.0), ("temperature", 4.0)])
def test_mixed_frequencies_match_target(strategy, temperature):
    sizes = [100, 400, 1500]
    s = MultiTaskBatchSampler(sizes, 20, strategy=strategy, temperature=temperature, mode="mixed", seed=1)
    p = task_probabilities(sizes, strategy, temperature)
    counts = _task_counts(_take(s, 400))
    total = sum(counts.values())
    assert total == 400 * 20
    for t, pt in enumerate(p):
        assert abs(counts[t] / total - pt) < 0.005


def test_temperature_probabilities():
    p = task_probabilities([100, 400], "temperature", 2.0)   # sqrt: 10 : 20
    assert p == pytest.approx([1 / 3, 2 / 3])
    assert task_probabilities([100, 400], "temperature", 1.0) == pytest.approx([0.2, 0.8])
    assert task_probabilities([100, 400], "round_robin") == [0.5, 0.5]
    # a very low temperature: n ** (1/T) overflowed ("(34, 'Numerical result out of range')")
    assert task_probabilities([40000, 20000, 1], "temperature", 0.01) == pytest.approx([1.0, 0.0, 0.0])


@pytest.mark.parametrize("strategy", ["proportional", "temperature"])
def test_homogeneous_frequencies_match_target(strategy):
    sizes = [200, 300, 500]
    s = MultiTaskBatchSampler(sizes, 4, strategy=strategy, temperature=2.0, mode="homogeneous", seed=3)
    batches = _take(s, 4000)
    assert all(len({t for t, _ in b}) == 1 and len(b) == 4 for b in batches)
    steps = Counter(b[0][0] for b in batches)
    for t, pt in enumerate(task_probabilities(sizes, strategy, 2.0)):
        assert abs(steps[t] / 4000 - pt) < 0.03


def test_round_robin_cycles_exactly():
    s = MultiTaskBatchSampler([5, 50, 500], 6, strategy="round_robin", mode="homogeneous")
    assert [b[0][0] for b in _take(s, 9)] == [0, 1, 2] * 3
    m = MultiTaskBatchSampler([5, 50, 500], 10, strategy="round_robin", mode="mixed")
    per_step = [Counter(t for t, _ in b) for b in _take(m, 6)]
    assert all(sorted(c.values()) == [3, 3, 4] for c in per_step)
    # the extra slot rotates over the tasks
    assert [max(c, key=c.get) for c in per_step[:3]] == [0, 1, 2]


@pytest.mark.parametrize("strategy", ["round_robin", "proportional"])
def test_a_homogeneous_step_of_accumulated_micro_batches_holds_one_task(strategy):
    """With --accumulate N every micro-batch of an optimizer step holds the step's task (review 182: each drew its
    own, so a "homogeneous" step mixed tasks and weighted each by its share of the draws); per_step=1 is unchanged."""
    one = [b[0][0] for b in _take(MultiTaskBatchSampler([40, 60, 80], 4, strategy=strategy, mode="homogeneous",
                                                       seed=1), 12)]
    three = [b[0][0] for b in _take(MultiTaskBatchSampler([40, 60, 80], 4, strategy=strategy, mode="homogeneous",
                                                         seed=1, per_step=3), 36)]
    assert three == [t for t in one for _ in range(3)]
    if strategy == "round_robin":
        assert one == [0, 1, 2] * 4
    with pytest.raises(ValueError, match="per_step"):
        MultiTaskBatchSampler([4], 2, per_step=0)
    saved = MultiTaskBatchSampler([4, 5], 2, mode="homogeneous", per_step=2).state_dict()
    with pytest.raises(ValueError, match=r"per_step=2 but this sampler has per_step=1"):
        MultiTaskBatchSampler([4, 5], 2, mode="homogeneous").load_state_dict(saved)
    del saved["per_step"]   # a checkpoint from before: it loads, and says its draws change (review 184)
    with pytest.warns(UserWarning, match="draws one per step"):
        MultiTaskBatchSampler([4, 5], 2, mode="homogeneous", per_step=2).load_state_dict(saved)


def test_mixed_batches_hold_every_task_and_are_grouped():
    s = MultiTaskBatchSampler([5000, 3, 40], 8, strategy="proportional", mode="mixed", seed=0)
    for b in _take(s, 50):
        tasks = [t for t, _ in b]
        assert set(tasks) == {0, 1, 2} and len(b) == 8
        assert tasks == sorted(tasks)


@pytest.mark.parametrize("sizes,b", [([1000, 1000, 10], 4), ([500, 450, 50], 4), ([4000, 3000, 3000, 100], 8),
                                     ([100, 1, 1, 1], 4), ([10, 10, 9000], 8)])
def test_every_task_floor_keeps_the_other_tasks_shares_in_proportion(sizes, b):
    """A task below 1/b gets 1/b of every batch; the others share the rest in proportion to p (two tasks of
    one size get the same share: the lowest-index one used to give up the floor's sample, 0.25 against 0.50)."""
    s = MultiTaskBatchSampler(sizes, b, strategy="proportional", mode="mixed", seed=0)
    p, floor = s.probabilities, 1 / b
    low = [i for i, x in enumerate(s.shares) if x == floor]
    assert sum(s.shares) == pytest.approx(1) and all(x >= floor for x in s.shares)
    hi = [i for i in range(len(sizes)) if i not in low]
    if hi:  # ([100, 1, 1, 1], 4): every task at the floor
        assert [s.shares[i] / p[i] for i in hi] == pytest.approx([s.shares[hi[0]] / p[hi[0]]] * len(hi))
    steps = 2000
    counts = Counter()
    for batch in _take(s, steps):
        c = Counter(t for t, _ in batch)
        assert set(c) == set(range(len(sizes))) and sum(c.values()) == b
        counts.update(c)
    for i, share in enumerate(s.shares):
        assert counts[i] / (steps * b) == pytest.approx(share, abs=1e-3)
    assert max(abs(x) for x in s._credits) < 2  # the loans are paid back: no drift


@pytest.mark.parametrize(("sizes", "b"), [([1000, 1000, 10], 1), ([100, 1000, 10000], 2), ([5, 7, 9, 11], 3)])
def test_batches_smaller_than_the_task_count_keep_their_size_and_shares(sizes, b):
    # Fewer rows than tasks: a task's credit could stay negative after a row taken ahead of it, and was
    # floored to -1 rows, which made b + 1-row batches and gave the small task up to 29x its share.
    batches = list(MultiTaskBatchSampler(sizes, b, strategy="proportional", steps=3000))
    assert {len(batch) for batch in batches} == {b}
    counts = Counter(task for batch in batches for task, _ in batch)
    total = sum(sizes)
    for task, size in enumerate(sizes):
        assert counts[task] / (3000 * b) == pytest.approx(size / total, abs=2e-3)


def test_shares_are_the_probabilities_when_no_task_is_below_the_floor():
    s = MultiTaskBatchSampler([6000, 7314, 3000], 16, strategy="proportional", mode="mixed", seed=0)
    assert s.shares == s.probabilities  # bit for bit: the built-in jobs' batches are unchanged
    assert floored_shares([0.5, 0.45, 0.05], 4) == pytest.approx([0.75 * 0.5 / 0.95, 0.75 * 0.45 / 0.95, 0.25])
    # 0.13 falls below on the 2nd pass
    assert floored_shares([0.8, 0.13, 0.07], 8) == pytest.approx([0.75, 0.125, 0.125])


def test_each_task_walks_epochs_without_replacement():
    s = MultiTaskBatchSampler([10, 7], 5, strategy="round_robin", mode="homogeneous", seed=0)
    batches = _take(s, 8)
    task0 = [i for b in batches for t, i in b if t == 0]      # 4 batches of 5 = two epochs of 10
    assert sorted(task0[:10]) == list(range(10)) and sorted(task0[10:20]) == list(range(10))
    assert task0[:10] != task0[10:20]                           # reshuffled per epoch
    task1 = [i for b in batches for t, i in b if t == 1]      # 20 draws over epochs of 7
    assert sorted(task1[:7]) == list(range(7)) and sorted(task1[7:14]) == list(range(7))


def test_deterministic_from_seed():
    a = _take(MultiTaskBatchSampler([30, 60], 8, seed=5), 20)
    b = _take(MultiTaskBatchSampler([30, 60], 8, seed=5), 20)
    c = _take(MultiTaskBatchSampler([30, 60], 8, seed=6), 20)
    assert a == b and a != c
    h1 = _take(MultiTaskBatchSampler([30, 60], 8, mode="homogeneous", seed=5), 20)
    h2 = _take(MultiTaskBatchSampler([30, 60], 8, mode="homogeneous", seed=5), 20)
    assert h1 == h2


@pytest.mark.parametrize("mode", ["mixed", "homogeneous"])
def test_state_restore_gives_identical_batches(mode):
    ref = MultiTaskBatchSampler([13, 29, 50], 7, strategy="temperature", mode=mode, seed=2, steps=30)
    _take(ref, 11)
    state = json.loads(json.dumps(ref.state_dict()))           # JSON-able
    expected = list(ref)
    resumed = MultiTaskBatchSampler([13, 29, 50], 7, strategy="temperature", mode=mode, seed=2, steps=30)
    resumed.load_state_dict(state)
    assert len(resumed) == 19
    assert list(resumed) == expected


def test_state_at_an_earlier_step():
    s = MultiTaskBatchSampler([20, 20], 6, seed=0)
    batches = _take(s, 10)
    r = MultiTaskBatchSampler([20, 20], 6, seed=0)
    r.load_state_dict(s.state_dict(step=4))
    assert _take(r, 6) == batches[4:]


def test_state_from_another_configuration_is_refused():
    s = MultiTaskBatchSampler([20, 20], 6, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        MultiTaskBatchSampler([20, 20], 8, seed=0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="sizes"):
        MultiTaskBatchSampler([20, 21], 6, seed=0).load_state_dict(s.state_dict())


@pytest.mark.parametrize("mode", ["mixed", "homogeneous"])
def test_ddp_shards_are_disjoint_with_equal_composition(mode):
    world = 3
    ranks = [MultiTaskBatchSampler([90, 150, 300], 6, mode=mode, seed=4, rank=r, world_size=world)
             for r in range(world)]
    for _ in range(10):   # ten steps stay within every task's first epoch
        batches = [s.next_batch() for s in ranks]
        comps = [Counter(t for t, _ in b) for b in batches]
        assert all(c == comps[0] for c in comps)
        rows = [x for b in batches for x in b]
        assert len(rows) == len(set(rows)) == 6 * world


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="no examples"):
        MultiTaskBatchSampler([10, 0], 4)
    with pytest.raises(ValueError, match="batch mode"):
        MultiTaskBatchSampler([10], 4, mode="fancy")
    with pytest.raises(ValueError, match="sampling strategy"):
        MultiTaskBatchSampler([10], 4, strategy="fancy")
    with pytest.raises(ValueError, match="rank"):
        MultiTaskBatchSampler([10], 4, rank=2, world_size=2)
    with pytest.raises(TypeError, match="endless"):
        len(MultiTaskBatchSampler([10], 4))


def _check_floor_and_ceil(sizes, b, steps=2000, **kw):
    s = MultiTaskBatchSampler(sizes, b, mode="mixed", seed=0, **kw)
    totals = Counter()
    for _ in range(steps):
        counts = Counter(t for t, _ in s.next_batch())
        totals.update(counts)
        for t, p in enumerate(s.shares):
            assert math.floor(b * p + 1e-9) <= counts.get(t, 0) <= math.ceil(b * p - 1e-9), (sizes, b, kw, t, counts)
    for t, p in enumerate(s.shares):   # the long-run shares stay exact: the credits are bounded
        assert abs(totals[t] - steps * b * p) < 2, (t, totals[t], steps * b * p)


@pytest.mark.parametrize(("sizes", "b", "kw"), [
    ([100, 300, 600], 8, {"every_task": False}),
    ([5, 7, 11, 13], 10, {"every_task": False}),
    ([3, 5, 7], 16, {"every_task": False}),
    ([3, 5, 7], 16, {}),
    ([6000, 7323, 3000], 32, {"strategy": "temperature", "temperature": 2.0}),   # the method benchmark's grid
    ([6000, 7323, 3000], 64, {"strategy": "temperature", "temperature": 2.0}),
    ([500, 300, 7, 1], 7, {"strategy": "temperature", "temperature": 5.0}),
])
def test_mixed_batch_counts_stay_within_floor_and_ceil_of_the_share(sizes, b, kw):
    """Each mixed batch holds floor or ceil of batch_size * share rows of a task. Giving the leftover rows to the
    smallest remainders made batches of 2 and 6 rows where the shares ask for 2.4 and 4.8; carrying the credit
    of a task that took the extra row below zero then rounded it down the next time: [3, 5, 7] at b=16 gave
    task 0 (share 3.2) two rows in 133 of 2000 batches, and the benchmark's b=32 grid 117 of 2000 batches
    outside floor/ceil (found by helper 140)."""
    _check_floor_and_ceil(sizes, b, **kw)


def test_mixed_batch_counts_stay_within_floor_and_ceil_on_random_configs():
    rng = random.Random(0)
    for _ in range(150):
        sizes = [rng.choice([1, 2, 3, 5, 7, 10, 13, 50, 100, 300, 1000, 5000]) for _ in range(rng.randint(2, 5))]
        _check_floor_and_ceil(sizes, rng.randint(1, 33), steps=400,
                              strategy=rng.choice(["proportional", "temperature"]),
                              temperature=rng.choice([0.5, 2.0, 5.0]), every_task=rng.random() < 0.7)


def test_a_state_saved_with_a_negative_credit_still_loads_and_recovers():
    """States saved before the floor/ceil allocation could hold credits down to -1; they load and the shares
    come back to floor/ceil at once (the credit only orders who gets the leftover rows)."""
    s = MultiTaskBatchSampler([3, 5, 7], 16, mode="mixed", seed=0)
    state = s.state_dict()
    state["credits"] = [-0.6, 0.4, 0.2]
    s.load_state_dict(state)
    for _ in range(50):
        counts = Counter(t for t, _ in s.next_batch())
        assert all(math.floor(16 * p + 1e-9) <= counts[t] <= math.ceil(16 * p) for t, p in enumerate(s.shares))


def test_a_state_saved_with_another_every_task_is_refused():
    state = MultiTaskBatchSampler([3, 5, 7], 16, mode="mixed", every_task=False).state_dict()
    with pytest.raises(ValueError, match="every_task=False"):
        MultiTaskBatchSampler([3, 5, 7], 16, mode="mixed").load_state_dict(state)
    del state["every_task"]    # a state saved before every_task was recorded still loads
    MultiTaskBatchSampler([3, 5, 7], 16, mode="mixed").load_state_dict(state)
