"""open_clip text towers run on the columns that hold text, not on the whole context.

open_clip's ``encode_text`` takes exactly ``context_length`` tokens (it adds its whole positional table), so a batch
of 10-token captions runs 77 (CLIP) or 32 (the built-in) positions through every layer. In a tower with a causal
mask that pools at its end token (or the first position) the positions after a row's end token change nothing
before it, so the padding columns that every row of a batch shares can be dropped: the same embeddings (up to
float rounding) for a fraction of the work. :func:`short_text_tower` says which towers allow it (not SigLIP's, which
attends both ways and pools the last position, nor CoCa's, whose CLS token takes the position after the last
column); :func:`encode_short_text` is open_clip's ``encode_text`` at the batch's own width, and
:func:`~..data.text_columns.drop_padding` cuts the columns on the host, where the tokens are made (no device sync).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import Backbone

__all__ = ["OpenClipText", "encode_short_text", "short_text_tower"]

#: Pooling rules that read a position at or before each row's end token.
_POOLS = ("argmax", "eos", "first")


def _tower(model: nn.Module) -> tuple[Any, str, int | None] | None:
    """(the module holding the text parts, its pooling, its end id) of a CLIP / CustomTextCLIP, else None."""
    text = getattr(model, "text", None)
    if text is not None:   # CustomTextCLIP: open_clip's own TextTransformer, or an HF / timm tower (None)
        if type(text).__name__ != "TextTransformer" or text.cls_emb is not None or text.use_pad_mask:
            return None
        return text, text.pool_type, getattr(text, "eos_id", None)
    if all(hasattr(model, k) for k in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
        return model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
    return None


def short_text_tower(model: nn.Module, pad_id: int, eos_id: int) -> bool:
    """Whether ``model``'s text tower gives the same embeddings with the padding columns every row shares left out:
    a causal mask, pooling at or before the end token, and (for ``argmax`` pooling) padding that is no higher an id
    than the end token."""
    tower = _tower(model)
    if tower is None:
        return False
    parts, pool, _ = tower
    return getattr(parts, "attn_mask", None) is not None and pool in _POOLS and (pool != "argmax" or pad_id <= eos_id)


def encode_short_text(model: nn.Module, tokens: Tensor) -> Tensor:
    """open_clip's ``encode_text`` for ``(N, L)`` tokens, ``L <= context_length`` (see :func:`short_text_tower`)."""
    from open_clip.transformer import text_global_pool  # (open_clip is imported when a model is built)

    tower = _tower(model)
    assert tower is not None, "encode_short_text needs a tower short_text_tower accepts"
    parts, pool, eos = tower
    n = tokens.shape[1]
    cast = parts.transformer.get_cast_dtype()
    x = parts.token_embedding(tokens).to(cast) + parts.positional_embedding[:n].to(cast)
    x = parts.ln_final(parts.transformer(x, attn_mask=parts.attn_mask[:n, :n]))
    pooled = text_global_pool(x, tokens, pool, eos_token_id=eos)
    proj = parts.text_projection
    if proj is None:
        return pooled
    return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


class OpenClipText:
    """Mixin before :class:`~.base.Backbone` for open_clip's CLIP / CustomTextCLIP: text at the batch's width where
    the tower allows it (``short_text``), else at the whole context as open_clip's ``encode_text`` takes it."""

    @property
    def short_text(self: Backbone) -> bool:
        """Whether text runs at the batch's own width (:func:`short_text_tower`: a causal tower pooled at the end)."""
        return short_text_tower(self.model, self.pad_id, self.eos_id)

    @property
    def pads_to_context(self: Backbone) -> bool:
        """Whether tokens must be padded to the whole context: open_clip's own ``encode_text`` adds its whole
        positional table (where :attr:`short_text` is False)."""
        return not self.short_text

    def _text_features(self: Backbone, tokens: Tensor) -> Tensor:
        feats = encode_short_text(self.model, tokens) if self.short_text else self.model.encode_text(tokens)
        return feats[0] if isinstance(feats, tuple) else feats
