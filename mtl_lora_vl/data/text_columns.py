"""Text batches at their own width: the trailing padding columns every row shares, cut on the host.

A backbone whose text tower gives the same embeddings without them (``Backbone.short_text``: a causal tower pooled at
each row's end token) is fed its batches this way by the loader's collate and by ``encode_texts``; cutting on the
host reads the width without a device sync. A leaf.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["drop_padding"]


def drop_padding(tokens: Tensor, pad_id: int, eos_id: int) -> Tensor:
    """``tokens`` without the trailing columns that are ``pad_id`` in every row (one kept where padding is the end
    token itself: the longest row's end). Host tensors: the width is read, which would sync a device."""
    used = (tokens != pad_id).any(0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 0
    width = min(tokens.shape[1], max(1, width + (pad_id == eos_id)))
    return tokens[:, :width].contiguous() if width < tokens.shape[1] else tokens
