"""Greedy and beam-search decoding over any next-token function (used by the CoCa caption decoder).

:func:`beam_search` knows nothing of models: it calls ``step(seqs)`` for the logits of the last
position of each sequence and keeps the ``beam_size`` best continuations per input row, scored by
summed log-probability normalised by length. ``beam_size=1`` is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["beam_search"]


@torch.no_grad()
def beam_search(step: Callable[[Tensor], Tensor], batch: int, beam_size: int, max_len: int, bos_id: int,
                eos_id: int, pad_id: int, banned: Iterable[int] = (), device: str | torch.device = "cpu",
                reorder: Callable[[Tensor], None] | None = None) -> Tensor:
    """The best sequence per input row, ``(batch, 1 + steps)`` starting with ``bos_id``.

    ``step(seqs)`` gets ``(batch * beam_size, t)`` token ids (rows of one input are consecutive) and
    returns ``(batch * beam_size, vocab)`` logits for the next token. Tokens in ``banned`` are never
    chosen; a finished beam (one that produced ``eos_id``) only appends ``pad_id``, at no cost.
    ``reorder(beam)``, when given, is called with the ``(batch * beam_size,)`` indices of the sequences each
    new beam continues (a KV cache reorders its rows with it) before the next ``step``.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    k = beam_size
    seqs = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep only one alive at first
    done = torch.zeros(batch * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * k, device=device)
    banned = sorted(set(banned) - {eos_id})
    offsets = torch.arange(batch, device=device).unsqueeze(1) * k
    for _ in range(max_len):
        logp = step(seqs).float().log_softmax(dim=-1)
        vocab = logp.shape[-1]
        logp[:, banned] = float("-inf")
        logp[done] = float("-inf")
        logp[done, pad_id] = 0.0
        top, idx = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab).topk(k, dim=-1)
        beam = (idx // vocab + offsets).reshape(-1)
        token = (idx % vocab).reshape(-1)
        seqs = torch.cat([seqs[beam], token.unsqueeze(1)], dim=1)
        if reorder is not None:
            reorder(beam)
        was_done = done[beam]
        lengths = lengths[beam] + (~was_done).float()
        done = was_done | (token == eos_id)
        scores = top
        if bool(done.all()):
            break
    norm = (scores.reshape(-1) / lengths.clamp(min=1)).reshape(batch, k)
    norm = torch.where(torch.isfinite(norm), norm, torch.full_like(norm, float("-inf")))
    best = norm.argmax(dim=1) + offsets.squeeze(1)
    return seqs[best]
