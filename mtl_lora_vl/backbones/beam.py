"""Greedy and beam-search decoding over any next-token function (used by the CoCa caption decoder).

:func:`beam_search` knows nothing of models: it calls ``step(seqs)`` for the logits of the last
position of each sequence. It searches as Hugging Face ``generate`` does (``num_beams=k``,
``early_stopping=False``): each step keeps the ``k`` best continuations that do not end the sequence as
the live beams, and a continuation that ends it (``eos_id``, when it ranks among the ``k`` best) becomes
a finished hypothesis in a pool of the ``k`` best, scored by summed log-probability divided by its length
(end token included). A row stops once its pool is full and its best live beam, divided by its current
length, cannot beat the pool's worst; at ``max_len`` the live beams join the pool. The best of the pool is
returned. ``beam_size=1`` is greedy decoding.
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
    """The best sequence per input row, ``(batch, 1 + steps)`` starting with ``bos_id``, ``pad_id`` after its end.

    ``step(seqs)`` gets ``(batch * beam_size, t)`` token ids (rows of one input are consecutive) and
    returns ``(batch * beam_size, vocab)`` logits for the next token. Tokens in ``banned`` are never
    chosen. ``reorder(beam)``, when given, is called with the ``(batch * beam_size,)`` indices of the
    sequences each new live beam continues (a KV cache reorders its rows with it) before the next ``step``.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    k = beam_size
    seqs = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep only one alive at first
    banned = sorted(set(banned) - {eos_id})
    offsets = torch.arange(batch, device=device).unsqueeze(1) * k
    pools: list[list[tuple[float, Tensor]]] = [[] for _ in range(batch)]
    finished = [False] * batch
    for t in range(1, max_len + 1):
        logp = step(seqs).float().log_softmax(dim=-1)
        vocab = logp.shape[-1]
        logp[:, banned] = float("-inf")
        cand, idx = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab).topk(min(2 * k, k * vocab), dim=-1)
        source, token = idx // vocab + offsets, idx % vocab
        ends = token == eos_id
        # Ends ranked among the k best join the pool (one end per beam: the 2k best hold k that go on).
        for r, j in (ends[:, :k] & torch.isfinite(cand[:, :k])).nonzero().tolist():
            if not finished[r]:
                hyp = torch.cat([seqs[source[r, j]], token[r, j:j + 1]])
                _keep_best(pools[r], float(cand[r, j]) / t, hyp, k)
        scores, pos = cand.masked_fill(ends, float("-inf")).topk(k, dim=-1)
        beam = source.gather(1, pos).reshape(-1)
        seqs = torch.cat([seqs[beam], token.gather(1, pos).reshape(-1, 1)], dim=1)
        if reorder is not None:
            reorder(beam)
        best_live = scores[:, 0].tolist()
        for r in range(batch):
            pool = pools[r]
            if not finished[r] and len(pool) == k and min(s for s, _ in pool) >= best_live[r] / t:
                finished[r] = True
        if all(finished):
            break
    for r in range(batch):
        if not finished[r]:  # max_len reached: the live beams compete with the finished ones
            for j in range(k):
                if torch.isfinite(scores[r, j]):
                    _keep_best(pools[r], float(scores[r, j]) / (seqs.shape[1] - 1), seqs[r * k + j], k)
    best = [max(pool, key=lambda sh: sh[0])[1] if pool else seqs[r * k] for r, pool in enumerate(pools)]
    out = torch.full((batch, max(len(h) for h in best)), pad_id, dtype=torch.long, device=device)
    for r, hyp in enumerate(best):
        out[r, :len(hyp)] = hyp
    return out


def _keep_best(pool: list[tuple[float, Tensor]], score: float, hyp: Tensor, k: int) -> None:
    """Add a finished hypothesis to a pool that keeps the ``k`` best (the earlier one wins a tie)."""
    if len(pool) < k:
        pool.append((score, hyp))
        return
    worst = min(range(k), key=lambda i: pool[i][0])
    if score > pool[worst][0]:
        pool[worst] = (score, hyp)
