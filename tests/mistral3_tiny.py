"""Tiny Mistral 3 (Mistral Small 3.1's layout) from its config alone (no downloads): a Pixtral vision tower of 2
layers, width 32, 8-px patches (a 32 x 32 image is 4 x 4 patches, merged 2 x 2 by the projector's patch merger into
2 x 2 image tokens) and a Mistral decoder of 2 layers, width 32, vocab 96.

The processor writes an image of h x w image tokens as h rows of w ``[IMG]`` each ended by ``[IMG_BREAK]``, the last
by ``[IMG_END]`` instead; the model scatters the image's features over its ``[IMG]`` tokens only.
"""

from __future__ import annotations

import torch
from vl_tiny import left_padded

IMG_ID, BREAK_ID, END_ID = 10, 11, 12
PATCH, MERGE, SIDE = 8, 2, 32


def tiny_mistral3():
    """A bare tiny ``Mistral3ForConditionalGeneration`` (the ids above)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, head_dim=16, image_size=SIDE, patch_size=PATCH)
    text = dict(model_type="mistral", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = Mistral3Config(vision_config=vision, text_config=text, image_token_index=IMG_ID, spatial_merge_size=MERGE,
                         vision_feature_layer=-1)
    return Mistral3ForConditionalGeneration(cfg)


def image_ids(h: int, w: int) -> list[int]:
    """The processor's ids for an image of ``h x w`` pixels: rows of ``[IMG]``, ``[IMG_BREAK]`` / ``[IMG_END]``."""
    rows, cols = h // (PATCH * MERGE), w // (PATCH * MERGE)
    ids = ([IMG_ID] * cols + [BREAK_ID]) * rows
    return [*ids[:-1], END_ID]


def inputs(n: int = 2, text: int = 5, seed: int = 0, sizes: list[tuple[int, int]] | None = None) -> dict:
    """A left-padded batch: ``[bos, image ids, text..]`` per row, one image each on a 32 x 32 canvas, of ``sizes``
    (default: the whole canvas; rows of different lengths), with its ``image_sizes``."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [(SIDE, SIDE)] * n
    rows = [[1, *image_ids(*sizes[i]), *torch.randint(13, 90, (text + 2 * i,), generator=g).tolist()]
            for i in range(n)]
    ids, mask = left_padded(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(n, 3, SIDE, SIDE, generator=g),
                image_sizes=torch.tensor(sizes))
