"""CoCa ``generate`` with a ``max_len`` past the caption decoder's context says so, naming the context: the captions
stop at ``context - 1`` new tokens (``max_len=1000`` gave 19 on the tiny model, unsaid). Every direct call says it; a
task's evaluation (``once_per_task``) says it once."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from vl_tiny import CONTEXT, tiny_backbone

from mtl_lora_vl.backbones.context_warnings import once_per_task


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("coca"), coca=True)


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "caption decoder's context" in r.getMessage()]


def test_max_len_past_the_context_is_said_naming_it(coca, caplog):
    images = torch.randn(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING):
        out = coca.generate(images, max_len=1000)
    assert _said(caplog) == [f"generate: max_len 1000 passes the caption decoder's context of {CONTEXT} tokens (its "
                             f"start token and {CONTEXT - 1} new ones): captions stop at {CONTEXT - 1} tokens; lower "
                             f"max_len to {CONTEXT - 1} or less"]
    assert out == coca.generate(images, max_len=CONTEXT - 1)   # (what it was cut to)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        coca.generate(images, max_len=CONTEXT - 1, beam_size=2)   # the longest the context holds: nothing said
    assert _said(caplog) == []


def test_a_tasks_evaluation_says_it_once(coca, caplog):
    images = torch.randn(1, 3, 32, 32)
    with caplog.at_level(logging.WARNING):
        with once_per_task(coca, SimpleNamespace(name="captioning")):
            for max_len in (30, 1000, 50):
                coca.generate(images, max_len=max_len)
    said = _said(caplog)
    assert len(said) == 1 and said[0].startswith("task 'captioning': generate: max_len 1000 passes"), said
