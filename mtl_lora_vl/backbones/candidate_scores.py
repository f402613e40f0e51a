"""Scoring candidate continuations after each row's prompt on a Hugging Face VLM (``HFVLMBackbone.sequence_scores``):
one prefill of the prompts, then every candidate of every row in one batched step from the KV cache (``B·C``
language-model rows, routed like beams); or, where transformers drops the cache (activation checkpointing in
training), the ``B·C`` full sequences. The functions take the backbone as ``self`` (its ``_scores_cached`` /
``_scores_full``)."""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.generation import expanded_rows
from .lm_collate import IGNORE_INDEX

if TYPE_CHECKING:
    from .hf_vlm import HFVLMBackbone

__all__ = ["scores_cached", "scores_full", "target_logprobs"]


@functools.cache
def _cache_kwarg(model_cls: type) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.24, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def scores_cached(self: HFVLMBackbone, images: Tensor, batch: dict[str, Tensor], cands: list[list[list[int]]],
                  sizes: list[tuple[int, int]] | None = None, image_counts: Sequence[int] | None = None,
                  per_token: bool = False) -> Tensor:
    """``(B, C)`` log-probabilities of each row's candidate id lists ``cands`` after its prompt (``batch``, the
    collated prompts; ``image_counts``: each row's images): one prefill, then all ``B·C`` continuations in one step
    from the repeated cache. ``per_token``: each divided by its candidate's token count, counted on the device from
    the labels already there (a count list sent over as torch.tensor(..., device=cuda) waited for the scoring)."""
    B, C = len(cands), len(cands[0])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prefill = self._prefill_positions(mask)
    out = self._forward(images, ids, mask, **({} if prefill is None else {"position_ids": prefill}), use_cache=True,
                        logits_to_keep=1, image_sizes=sizes, image_counts=image_counts)
    width = max(len(c) for row in cands for c in row)
    labels = torch.full((B * C, width), IGNORE_INDEX, dtype=torch.long)
    for i, toks in enumerate(c for row in cands for c in row):   # row b*C + c: candidate c of image b
        labels[i, :len(toks)] = torch.tensor(toks)
    # made on the host, sent in one copy that does not wait for the device's queued work (the prefill): a
    # torch.tensor(..., device=cuda) or .to(cuda) copies with a stream synchronise, twice a call before
    labels = labels.to(ids.device, non_blocking=True)
    first = out.logits[:, -1].float().log_softmax(-1).gather(1, labels[:, 0].view(B, C))  # (B, C)
    if width == 1:   # (one token each: per_token's counts are all 1)
        return first
    step_ids = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, self.pad_id)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values   # named cache from transformers 5.24
    cache.batch_repeat_interleave(C)
    step_mask = torch.cat([mask.repeat_interleave(C, 0), (labels[:, :-1] != IGNORE_INDEX).long()], 1)
    positions = self._step_positions(step_mask, ids.shape[1], C)
    kwargs = {"token_type_ids": torch.ones_like(step_ids)} if self.prefix_lm else {}
    with expanded_rows(self.model, C):
        kwargs[_cache_kwarg(type(self.model))] = cache
        logits = self.model(input_ids=step_ids, attention_mask=step_mask, position_ids=positions,
                            use_cache=True, **kwargs).logits
    rest, counts = target_logprobs(logits, labels[:, 1:])
    scores = first + rest.view(B, C)
    return scores / (counts.view(B, C) + 1) if per_token else scores   # (+1: the first token, scored above)

def scores_full(self: HFVLMBackbone, images: Tensor, prompts: Sequence[str], cands: list[list[list[int]]],
                 sizes: list[tuple[int, int]] | None = None, per_token: bool = False) -> Tensor:
    """:func:`scores_cached` without a cache: each row's prompt and each candidate as one full sequence."""
    B, C = len(cands), len(cands[0])
    collate = self.lm_collator()
    rows = collate.prompt_rows(prompts, self._sizes_of(images, sizes)).rows
    full = collate._right_padded([p for p in rows for _ in range(C)], [c for row in cands for c in row])
    full = {k: v.to(images.device) for k, v in full.items()}
    # each row's images (several per prompt: a row's placeholders, in order), repeated for its C sequences
    held = collate.image_counts(prompts) if images.shape[0] != B else [1] * B
    starts = [0, *itertools.accumulate(held)]
    index = [i for b in range(B) for _ in range(C) for i in range(starts[b], starts[b] + held[b])]
    with expanded_rows(self.model, C):
        out = self._forward(images[index], full["input_ids"], full["attention_mask"],
                            labels=full["labels"], use_cache=False, image_counts=[k for k in held for _ in range(C)],
                            image_sizes=None if sizes is None else [sizes[i] for i in index])
    sums, counts = target_logprobs(out.logits[:, :-1], full["labels"][:, 1:])
    return (sums / counts if per_token else sums).view(B, C)


def target_logprobs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row sum of the log-probabilities of the labelled ``targets`` (``logits[:, i]`` predicts
    ``targets[:, i]``; -100 is skipped), fp32, and the per-row count of labelled tokens."""
    valid = targets != IGNORE_INDEX
    logp = -F.cross_entropy(logits.float().flatten(0, 1), targets.clamp(min=0).flatten(), reduction="none")
    logp = logp.view(targets.shape) * valid
    return logp.sum(dim=1), valid.sum(dim=1)
