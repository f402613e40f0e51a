"""The adapted ``nn.MultiheadAttention``: adapters on the packed ``[q; k; v]`` in-projection and on ``out_proj``.

open_clip's towers (and CoCa's decoder) attend through ``nn.MultiheadAttention``, whose in-projection is
one packed weight and which PyTorch runs in a fused kernel that no adapter can reach into. The
replacement here computes q, k and v through an :class:`~.layers.AdapterBank` (slices of the packed
projection can be left unadapted, ``qkv_slices``) and attends with ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MTLLoRAConfig
from ..precision import adapter_dtype
from .layers import AdapterBank, KeepsReplaced, LoRALinear


class LoRAMultiheadAttention(KeepsReplaced):
    """Drop-in replacement for ``nn.MultiheadAttention`` with adapters on the packed in-projection
    (``in_proj``) and on ``out_proj``. Attention runs through ``F.scaled_dot_product_attention`` and
    the adapters act on activations, so no full weight is rebuilt per step. State-dict keys of the
    base module (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``) stay.
    """

    def __init__(self, base: nn.MultiheadAttention, cfg: MTLLoRAConfig):
        super().__init__()
        if not base._qkv_same_embed_dim:
            raise ValueError(
                "nn.MultiheadAttention with kdim/vdim different from embed_dim (separate q/k/v weights) is "
                "not supported; leave it out of targets"
            )
        if base.bias_k is not None or base.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
        self.embed_dim, self.num_heads = base.embed_dim, base.num_heads
        self.head_dim = base.head_dim
        self.kdim, self.vdim, self._qkv_same_embed_dim = base.kdim, base.vdim, True
        self.batch_first, self.dropout = base.batch_first, base.dropout
        self.in_proj_weight = base.in_proj_weight
        self.in_proj_bias = base.in_proj_bias
        slices = tuple(c in cfg.qkv_slices for c in "qkv")
        self.in_proj = AdapterBank(self.embed_dim, 3 * self.embed_dim, cfg, slices, device=base.in_proj_weight.device,
                                   dtype=adapter_dtype(base.in_proj_weight.dtype))
        self.out_proj = LoRALinear(base.out_proj, cfg)
        self.__dict__["original"] = base   # (not a submodule) what ``unload`` puts back: its class and hooks kept

    def adapted_weights(self) -> list[tuple[AdapterBank, nn.Parameter]]:
        """(bank, base weight it updates) pairs, for merging: the packed in-projection (``out_proj`` merges itself)."""
        return [(self.in_proj, self.in_proj_weight)]

    def project(self, x: torch.Tensor, part: slice) -> torch.Tensor:
        """Rows ``part`` of the packed ``[q; k; v]`` in-projection applied to ``x``, adapters included."""
        b = self.in_proj_bias[part] if self.in_proj_bias is not None else None
        return self.in_proj.linear(x, self.in_proj_weight[part], b, rows=part)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        E, H, hd = self.embed_dim, self.num_heads, self.head_dim
        same_kv, same_qkv = key is value, query is key and key is value  # before any transpose makes copies
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        Bsz, L, S = query.shape[0], query.shape[1], key.shape[1]
        if same_qkv:
            q, k, v = self.project(query, slice(0, 3 * E)).chunk(3, dim=-1)
        elif same_kv:
            q = self.project(query, slice(0, E))
            k, v = self.project(key, slice(E, 3 * E)).chunk(2, dim=-1)
        else:
            q, k, v = (self.project(t, slice(i * E, (i + 1) * E)) for i, t in enumerate((query, key, value)))
        q, k, v = (t.unflatten(-1, (H, hd)).transpose(1, 2) for t in (q, k, v))  # (B, H, len, hd)
        if is_causal and attn_mask is None and key_padding_mask is not None:   # (merged with it, not dropped)
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
        mask = _merge_masks(attn_mask, key_padding_mask, Bsz, H, L, S, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            attn = F.dropout(torch.softmax(scores, dim=-1), p)   # torch returns the weights after dropout too
            weights = attn.mean(dim=1) if average_attn_weights else attn
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(Bsz, L, E))
        if not batched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _merge_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    B: int,
    H: int,
    L: int,
    S: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = blocked; float: added) as one additive float mask."""

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (L, S):
                raise ValueError(f"attn_mask: 2-D shape must be {(L, S)}, got {tuple(attn_mask.shape)}")
            mask = additive(attn_mask)
        elif attn_mask.dim() == 3:
            if tuple(attn_mask.shape) != (B * H, L, S):
                raise ValueError(f"attn_mask: 3-D shape must be {(B * H, L, S)}, got {tuple(attn_mask.shape)}")
            mask = additive(attn_mask).view(B, H, L, S)
        else:
            raise ValueError(f"attn_mask: must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (B, S):
            raise ValueError(f"key_padding_mask: shape must be {(B, S)}, got {tuple(key_padding_mask.shape)}")
        kpm = additive(key_padding_mask).view(B, 1, 1, S)
        mask = kpm if mask is None else mask + kpm
    return mask


def packed_projection(attn: nn.Module, x: torch.Tensor, part: slice) -> torch.Tensor:
    """Rows ``part`` of an attention module's packed ``[q; k; v]`` in-projection applied to ``x``: with the
    adapters for a :class:`LoRAMultiheadAttention`, the plain weights for an ``nn.MultiheadAttention``
    (incremental decoding projects one new token at a time, outside the module's ``forward``)."""
    if isinstance(attn, LoRAMultiheadAttention):
        return attn.project(x, part)
    bias = attn.in_proj_bias[part] if attn.in_proj_bias is not None else None
    return F.linear(x, attn.in_proj_weight[part], bias)
