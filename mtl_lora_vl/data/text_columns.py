"""Text batches on the host: the trailing padding columns every row shares, cut; each row's key, read from its ids.

A backbone whose text tower gives the same embeddings without them (``Backbone.short_text``: a causal tower pooled at
each row's end token) is fed its batches this way by the loader's collate and by ``encode_texts``; cutting on the
host reads the width without a device sync. A leaf.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["drop_padding", "row_keys"]


def drop_padding(tokens: Tensor, pad_id: int, eos_id: int) -> Tensor:
    """``tokens`` without the trailing columns that are ``pad_id`` in every row (one kept where padding is the end
    token itself: the longest row's end). Host tensors: the width is read, which would sync a device."""
    used = (tokens != pad_id).any(0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 0
    width = min(tokens.shape[1], max(1, width + (pad_id == eos_id)))
    return tokens[:, :width].contiguous() if width < tokens.shape[1] else tokens


def row_keys(tokens: Tensor) -> Tensor:
    """A 63-bit key per row of full-width token ids ``(N, L)``, equal for rows of equal ids, so for texts the text
    tower cannot tell apart ("a red cube." / "a red cube ."): retrieval's in-batch negatives leave them out. Stable
    in every worker, rank and run (a hash of the ids' bytes); the rows must be the tokenizer's, not cut by
    :func:`drop_padding` (whose width depends on the batch)."""
    rows = tokens.to(torch.long).contiguous().numpy()
    return torch.tensor([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") >> 1
                         for r in rows], dtype=torch.long)
