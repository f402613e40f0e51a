"""Candidate scoring with more candidates than the batch size (helper 220): ``candidate_scores`` gave every
``sequence_scores`` call all C candidates of at least one image, so a call scored C sequences (each repeating the
prompt's KV cache) whatever ``batch_size`` was -- ImageNet's 1,000 classes on LLaVA-1.5-7B would copy a ~590-token
cache (~0.3 GiB) 1,000 times, and no batch size bounded it. The candidates now go in groups of ``batch_size``."""

from __future__ import annotations

import torch

from mtl_lora_vl.data import world
from mtl_lora_vl.tasks.generative import candidate_scores


def test_more_candidates_than_the_batch_size_are_scored_in_groups_with_the_same_scores(llava, monkeypatch):
    split = world.build_split("classification", "test", n=3, seed=0)
    examples = split.examples[:3]
    candidates = [f"a large {name}" for name in split.class_names[:7]]
    prompts = [f"{llava.image_token} caption:"] * len(examples)
    whole = candidate_scores(llava, examples, prompts, candidates, batch_size=64, device="cpu")

    rows, real = [], llava.sequence_scores

    def counted(images, prompts, candidates, **kwargs):
        rows.append(len(prompts) * len(candidates))
        return real(images, prompts, candidates, **kwargs)

    monkeypatch.setattr(llava, "sequence_scores", counted)
    for per_token in (False, True):
        rows.clear()
        got = candidate_scores(llava, examples, prompts, candidates, batch_size=3, device="cpu", per_token=per_token)
        assert rows and max(rows) <= 3, rows   # was [7, 7, 7]: every call scored all the candidates of an image
        want = whole if not per_token else candidate_scores(llava, examples, prompts, candidates, batch_size=64,
                                                            device="cpu", per_token=True)
        assert got.shape == (3, 7)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    rows.clear()
    candidate_scores(llava, examples, prompts, candidates[:2], batch_size=4, device="cpu")
    assert rows == [4, 2]   # no more candidates than the batch size: images in chunks of batch_size // C, as before
