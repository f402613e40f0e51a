"""The lm_collator's cut-target warning under torchrun: each rank cuts its own batch's rows and says so with its
rank."""

from __future__ import annotations


def test_a_rank_cutting_targets_names_itself(llava, caplog, monkeypatch):
    """Each rank collates its own rows: "lm_collator: 1 of 2 targets cut" from two ranks were two lines (equal, or
    counts that differ) that did not say whose batch was cut."""
    collate = llava.lm_collator(max_length=llava.num_image_tokens + 6)
    prompt = f"{llava.image_token} caption:"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with caplog.at_level("WARNING", logger="mtl_lora_vl"):
        collate([prompt, prompt], ["a large red circle above a small blue square", "red"])
    assert [r.getMessage().split(" targets")[0] for r in caplog.records] == ["rank 1: lm_collator: 1 of 2"]
