"""KV-cached next-token logits for an open_clip CoCa's caption path (text tower, then the multimodal decoder).

CoCa generates by running its causal text tower and its decoder (self-attention blocks, each followed by
cross-attention to the image tokens) over the whole prefix. Both are causal, so position i never depends on
a later token, and a step only has to run the new token: :class:`CoCaStepper` keeps every self-attention
block's keys and values, and each cross-attention block's image keys and values, computed once. Adapters
apply as in a full forward (the packed in-projection through :func:`packed_projection`, ``out_proj`` and
the MLP as modules), each row under the route that is active (``expanded_rows`` for beams).

Every sequence the search steps is a live beam (finished hypotheses leave for the search's pool), so no
padding mask is needed: each gets exactly the logits of the full forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters.attention import LoRAMultiheadAttention, packed_projection
from ..adapters.generation import expanded_rows
from .beam import beam_search

__all__ = ["CoCaStepper", "caption_ids", "supports_kv_cache"]


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [*model.text.transformer.resblocks, *model.text_decoder.resblocks, *model.text_decoder.cross_attn]


def supports_kv_cache(model: nn.Module) -> bool:
    """True for an open_clip CoCa whose text tower and decoder are batch-first blocks of one packed
    ``nn.MultiheadAttention`` (or its adapted form) with ``ln_1``/``ln_2``/``mlp``: what :class:`CoCaStepper`
    reads. Other layouts (custom attention, sequence-first, a text tower without a causal mask: its early positions
    read later tokens, so each step changes them) decode without a cache."""
    text, decoder = getattr(model, "text", None), getattr(model, "text_decoder", None)
    if text is None or decoder is None or getattr(text, "cls_emb", None) is None:
        return False
    if getattr(text, "attn_mask", None) is None or getattr(decoder, "attn_mask", None) is None:
        return False
    if not (getattr(text.transformer, "batch_first", False) and getattr(decoder, "batch_first", False)):
        return False
    for block in _blocks(model):
        attn = getattr(block, "attn", None)
        packed = isinstance(attn, LoRAMultiheadAttention) or (
            isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None)
        if not (packed and attn.batch_first
                and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"))):
            return False
    return True


@torch.no_grad()
def caption_ids(model: nn.Module, image_embs: Tensor, max_len: int, beam_size: int, bos_id: int, eos_id: int,
                pad_id: int, banned: Iterable[int] = (), use_cache: bool = True) -> Tensor:
    """The caption token ids ``(B, 1 + steps)`` of an open_clip CoCa ``model`` for its decoder's image tokens
    ``image_embs`` (``B`` rows), as :func:`~.beam.beam_search` returns them: greedy (``beam_size=1``) or beams, at most
    ``max_len`` new tokens (the caller keeps them within the context). Under a mixed ``route`` each image's beams use
    its task (``expanded_rows``). With ``use_cache`` (and a layout :func:`supports_kv_cache` takes) each step runs
    only the new token over cached keys and values; without, each step re-runs the whole prefix."""
    batch = image_embs.shape[0]
    image_embs = image_embs.repeat_interleave(beam_size, dim=0)

    def full_step(seqs: Tensor) -> Tensor:
        _, token_embs = model._encode_text(seqs)
        return model.text_decoder(image_embs, token_embs)[:, -1]

    with expanded_rows(model, beam_size):  # the decoder sees beam_size rows per routed image row
        stepper = CoCaStepper(model, image_embs) if use_cache and supports_kv_cache(model) else None
        return beam_search(stepper or full_step, batch, beam_size, max_len, bos_id, eos_id, pad_id, banned=banned,
                           device=image_embs.device, reorder=stepper.reorder if stepper else None)


class CoCaStepper:
    """``step(seqs) -> logits`` of the last position for :func:`~.beam.beam_search`, with a KV cache.

    ``image_embs`` are the decoder's image tokens, one row per sequence (beams already repeated). Each call
    runs only the tokens added since the last one; :meth:`reorder` follows the search's beam choices.
    """

    def __init__(self, model: nn.Module, image_embs: Tensor):
        self.text, self.decoder = model.text, model.text_decoder
        self.dtype = self.text.transformer.get_cast_dtype()
        self.length = 0
        self.cache: list[tuple[Tensor, Tensor] | None] = [None] * (
            len(self.text.transformer.resblocks) + len(self.decoder.resblocks))
        self.image_kv = [self._image_kv(block, image_embs) for block in self.decoder.cross_attn]

    def __call__(self, seqs: Tensor) -> Tensor:
        new = seqs[:, self.length:]
        start, stop = self.length, seqs.shape[1]
        x = self.text.token_embedding(new).to(self.dtype) + self.text.positional_embedding[start:stop].to(self.dtype)
        layer = 0
        for block in self.text.transformer.resblocks:
            x = self._self_block(block, x, layer, start)
            layer += 1
        for block, cross in zip(self.decoder.resblocks, self.decoder.cross_attn):
            x = self._self_block(block, x, layer, start)
            x = self._cross_block(cross, x, *self.image_kv[layer - len(self.text.transformer.resblocks)])
            layer += 1
        self.length = stop
        out = self.decoder.ln_final(x[:, -1])
        return out @ self.decoder.text_projection if self.decoder.text_projection is not None else out

    def reorder(self, beam: Tensor) -> None:
        """Row i of the cache becomes the old row ``beam[i]`` (the sequence beam i continues)."""
        self.cache = [None if kv is None else (kv[0][beam], kv[1][beam]) for kv in self.cache]

    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _heads(x: Tensor, attn: nn.Module) -> Tensor:
        return x.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)  # (N, H, L, hd)

    @staticmethod
    def _merge(o: Tensor) -> Tensor:
        return o.transpose(1, 2).flatten(2)

    def _attend(self, attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
        L, S = q.shape[2], k.shape[2]
        mask = None
        if L > 1:  # several new tokens: each sees the cache and the new tokens up to itself
            mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return attn.out_proj(self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))

    def _self_block(self, block: nn.Module, x: Tensor, layer: int, start: int) -> Tensor:
        attn, E = block.attn, block.attn.embed_dim
        q, k, v = (self._heads(t, attn) for t in packed_projection(attn, block.ln_1(x), slice(0, 3 * E)).chunk(3, -1))
        if self.cache[layer] is not None:
            k, v = torch.cat([self.cache[layer][0], k], dim=2), torch.cat([self.cache[layer][1], v], dim=2)
        self.cache[layer] = (k, v)
        x = x + block.ls_1(self._attend(attn, q, k, v, start))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _image_kv(self, block: nn.Module, image_embs: Tensor) -> tuple[Tensor, Tensor]:
        attn, E = block.attn, block.attn.embed_dim
        kv = block.ln_1_kv(image_embs.to(self.dtype))
        k, v = packed_projection(attn, kv, slice(E, 3 * E)).chunk(2, -1)
        return self._heads(k, attn), self._heads(v, attn)

    def _cross_block(self, block: nn.Module, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attn, E = block.attn, block.attn.embed_dim
        q = self._heads(packed_projection(attn, block.ln_1(x), slice(0, E)), attn)
        x = x + block.ls_1(attn.out_proj(self._merge(F.scaled_dot_product_attention(q, k, v))))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
