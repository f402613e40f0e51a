"""The lm_collator's cut-target warning under torchrun: each rank cuts its own batch's rows and says so with its
rank."""

from __future__ import annotations

import logging

from mtl_lora_vl.log import main_rank_logging


def test_a_rank_cutting_targets_names_itself(llava, caplog, monkeypatch):
    """Each rank collates its own rows: "lm_collator: 1 of 2 targets cut" from two ranks were two lines (equal, or
    counts that differ) that did not say whose batch was cut. Its own batch's count is no warning that every rank
    says alike, so main_rank_logging does not mute it on rank 1 (it did), and at -q (ERROR) it is not said."""
    collate = llava.lm_collator(max_length=llava.num_image_tokens + 6)
    prompt = f"{llava.image_token} caption:"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    said = {}
    for level, muted in ((logging.WARNING, False), (logging.WARNING, True), (logging.ERROR, True)):
        caplog.clear()
        with caplog.at_level(level, logger="mtl_lora_vl"), main_rank_logging(not muted):
            collate([prompt, prompt], ["a large red circle above a small blue square", "red"])
        said[level, muted] = [r.getMessage().split(" targets")[0] for r in caplog.records]
    assert said[logging.WARNING, False] == said[logging.WARNING, True] == ["rank 1: lm_collator: 1 of 2"]
    assert said[logging.ERROR, True] == []
