"""The contrastive path's embeddings, shared by the kinds: texts (:func:`encode_texts`), images
(:func:`image_embeddings`), CLIP's zero-shot prompt classifier (:func:`prompt_embeddings`) and its one scorer
(:func:`prompt_scores`), and the backbone's logit scale. ``mtl_lora_vl.tasks.base`` exports them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl_lora_vl.adapters.rows import autocast_off
from mtl_lora_vl.data.loader import iter_image_batches
from mtl_lora_vl.data.records import Example
from mtl_lora_vl.precision import autocast

if TYPE_CHECKING:
    from mtl_lora_vl.backbones import Backbone


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: Sequence[str], *, device: torch.device | str,
                 dtype: torch.dtype = torch.float32, batch_size: int = 256) -> Tensor:
    """L2-normalised float32 text embeddings ``(N, D)`` of ``texts``, in chunks of ``batch_size``; for a backbone that
    reads text at its own width (``short_text``), chunks of texts of like length (the embeddings in ``texts`` order)."""
    if not texts:
        raise ValueError("encode_texts got no texts")
    short = getattr(backbone, "short_text", False)   # (a backbone-like object may lack it: the whole context)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if short else list(range(len(texts)))
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = backbone.tokenizer([texts[i] for i in order[start:start + batch_size]])
        tokens = (backbone.drop_text_padding(tokens) if short else tokens).to(device)
        with autocast(device, dtype):
            out.append(backbone.encode_text(tokens).float())
    emb = torch.cat(out)
    if short:   # back in the texts' order
        emb = emb[torch.tensor(order, device=emb.device).argsort()]
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def image_embeddings(backbone: Backbone, examples: Sequence[Example], *, batch_size: int,
                     device: torch.device | str, dtype: torch.dtype = torch.float32,
                     num_workers: int = 0) -> Tensor:
    """L2-normalised float32 image embeddings ``(len(examples), D)``, decoded by the eval loader."""
    out = []
    for images in iter_image_batches(backbone, examples, batch_size=batch_size, device=device, dtype=dtype,
                                     num_workers=num_workers):
        with autocast(device, dtype):
            out.append(backbone.encode_image(images).float())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def prompt_embeddings(backbone: Backbone, names: Sequence[str], templates: Sequence[str], *,
                      device: torch.device | str, dtype: torch.dtype = torch.float32,
                      batch_size: int = 256) -> Tensor:
    """Template-averaged prompt embeddings ``(len(names), D)``: mean over templates, re-normalised.

    This is CLIP's zero-shot classifier: ``template.format(name)`` for every template, embedded,
    normalised, averaged, normalised again.
    """
    if not templates:
        raise ValueError("prompt_embeddings needs at least one template")
    texts = [t.format(n) for n in names for t in templates]
    emb = encode_texts(backbone, texts, device=device, dtype=dtype, batch_size=batch_size)
    emb = emb.view(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def prompt_scores(query: Tensor, prompt_emb: Tensor, scale: float | Tensor) -> Tensor:
    """Logits of prompt matching: ``scale * normalize(query) @ prompt_emb.T``.

    The one scorer of the prompt-matching kinds (classification, VQA), used alike by their zero-shot
    rules and their heads, so that a head initialised from the prompts reproduces the rule exactly.
    """
    with autocast_off(query.device.type):   # fp32 inside a training step's autocast too (as in evaluation)
        return scale * (F.normalize(query.float(), dim=-1) @ prompt_emb.float().t())


def logit_scale_of(backbone: Backbone) -> float:
    """The backbone's (exponentiated) logit scale as a float."""
    scale = backbone.logit_scale
    return float(scale.detach().float().item()) if isinstance(scale, Tensor) else float(scale)
