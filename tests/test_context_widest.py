"""The language model's context warnings: within a task's evaluations (``once_per_task``) the one line is of the
widest call, not the first past the context; and the training rows measured at start-up (``warn_lm_context``) are
spread over the split, not its first ``limit``."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest

from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.backbones.context_warnings import once_per_task, warn_past_context, warn_scored_past_context
from mtl_lora_vl.data import world
from mtl_lora_vl.data.records import Split
from mtl_lora_vl.log import main_rank_logging


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "context of 100" in r.getMessage()]


def test_a_task_s_context_line_is_of_its_widest_call(caplog):
    """An evaluation's batches past the context: 110, then 190, then 130 tokens wide. The line said once for the task
    read 'prompts of up to 105 tokens' (the first batch's), hiding the 185-token prompts."""
    bb, task = SimpleNamespace(lm_context=100), SimpleNamespace(name="t")
    cands = [[[1, 2, 3], [4, 5]]]   # the longest: 3 tokens
    with caplog.at_level(logging.WARNING):
        with once_per_task(bb, task):
            for width in (107, 187, 127, 90):
                warn_scored_past_context(bb, width, cands)
                warn_past_context(bb, width, 5, "generate")
            assert _said(caplog) == []   # (said when the task's evaluation ends)
    said = _said(caplog)
    assert len(said) == 2, said
    assert said[0].startswith("task 't': sequence_scores: prompts of up to 187 tokens and candidates of up to 3 tokens")
    assert said[1].startswith("task 't': generate: prompts of up to 187 tokens plus 5 new ones")
    assert all(s.endswith("(said once for this task, of its widest call)") for s in said)

    caplog.clear()   # the task's next evaluation (adapted after zero-shot): nothing new unless wider
    with caplog.at_level(logging.WARNING):
        with once_per_task(bb, task):
            warn_scored_past_context(bb, 150, cands)
        assert _said(caplog) == []
        with once_per_task(bb, task):
            warn_scored_past_context(bb, 200, cands)
    said = _said(caplog)
    assert len(said) == 1 and "prompts of up to 200 tokens" in said[0]

    caplog.clear()   # outside a task's evaluation: every call says it, as it comes
    with caplog.at_level(logging.WARNING):
        warn_past_context(bb, 120, 5, "generate")
        warn_past_context(bb, 110, 5, "generate")
    assert [s.split(" tokens")[0] for s in _said(caplog)] == ["generate: prompts of up to 120",
                                                             "generate: prompts of up to 110"]


def test_each_tasks_context_line_names_its_task(caplog):
    """A run's tasks' lines are said as each task's evaluation ends: at the end of a tiny Idefics3 run on vqa and
    captioning two lines read 'generate: prompts of up to 123 tokens plus 8 new ones ... (said once for this task, of
    its widest call)' and '... 111 tokens plus 20 new ones ...', neither saying which task was 'this task'. Each names
    it."""
    bb = SimpleNamespace(lm_context=100)
    with caplog.at_level(logging.WARNING):
        for name, width in (("vqa", 123), ("captioning", 111)):
            with once_per_task(bb, SimpleNamespace(name=name)):
                warn_past_context(bb, width, 8, "generate")
    said = _said(caplog)
    assert [s.split(": generate: ")[0] for s in said] == ["task 'vqa'", "task 'captioning'"], said


def test_a_rank_says_its_own_calls_past_the_context(caplog, monkeypatch):
    """Under torchrun a task's evaluation is sharded and only rank 0 speaks (``main_rank_logging``): the context line
    was rank 0's alone, so rows past the context in rank 1's shard were never told (and rank 0's widest call was
    told as the task's). Each rank now says its own, as it says its substitute images."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    bb, task = SimpleNamespace(lm_context=100), SimpleNamespace(name="t")
    with caplog.at_level(logging.WARNING), main_rank_logging(False):   # rank 1, muted for the set-up's words
        with once_per_task(bb, task):
            warn_scored_past_context(bb, 187, [[[1, 2, 3]]])
        warn_past_context(bb, 120, 5, "generate")   # (outside a task's evaluation: as it comes)
    said = _said(caplog)
    assert len(said) == 2, said
    assert said[0].startswith("rank 1: task 't': sequence_scores: prompts of up to 187 tokens")
    assert said[1].startswith("rank 1: generate: prompts of up to 120 tokens")


@pytest.mark.skipif(not (builtin_llava_dir() / "config.json").is_file(),
                    reason="built-in LLaVA not built (python scripts/pretrain_llava.py)")
def test_the_training_rows_measured_are_spread_over_the_split(caplog):
    """A captioning split of 40 rows whose last 8 captions pass the built-in LLaVA's 256 positions, measured 10 at a
    time: the first 10 rows were measured, so nothing was said."""
    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.tasks import build_kind, load_spec

    bb = load_backbone("builtin-llava")
    spec = load_spec("captioning")
    rows = world.build_split(spec.data.options.get("world_kind", spec.kind), "train", n=40, seed=0).examples[:40]
    long = " ".join(["red square"] * 150)
    rows = [*rows[:32], *(dataclasses.replace(ex, text=long, captions=(long,)) for ex in rows[32:])]
    kind = build_kind(spec, Split(rows[:4]), bb)
    with caplog.at_level(logging.WARNING):
        kind.warn_lm_context(rows[:32], bb, limit=10)
        assert "longer than the language model's context" not in caplog.text
        kind.warn_lm_context(rows, bb, limit=10)
    assert (f"task 'captioning': 2 of 10 (spread evenly over the split) of its 40 training rows are longer than the "
            f"language model's context of {bb.lm_context} tokens") in caplog.text
