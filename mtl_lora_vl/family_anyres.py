"""The per-image token arithmetic of the anyres families (LLaVA-NeXT, LLaVA-OneVision): how many language-model
tokens, and how many vision-tower views (base view and tiles), one image of a given size fills, by the model's own
arithmetic, kept per model in its ``__dict__``; and the tokens of one OneVision video. The row counting of
:mod:`mtl_lora_vl.family_images` and the anyres backbones (:mod:`mtl_lora_vl.backbones.llava_next`) share it.

A leaf module (it imports nothing from the package; torch and transformers only inside the functions that run on a
model).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["llava_next_image", "llava_onevision_image", "llava_onevision_video_tokens", "view_tokens"]


def view_tokens(model: Any, strategy: str | None) -> int:
    """Features of one anyres view (base view or tile): the tower's positions, grid² and a CLS (CLIP) or grid² alone
    (SigLIP), the CLS dropped under ``"default"``. The model lays a tile's features out as a grid x grid square, so
    any other number is refused here, naming the strategy to use (the model's own forward fails on a reshape)."""
    cfg = model.config
    grid = cfg.vision_config.image_size // cfg.vision_config.patch_size
    tower = model.vision_tower
    embeddings = getattr(getattr(tower, "vision_model", tower), "embeddings", None)
    strategy = strategy or cfg.vision_feature_select_strategy
    positions = int(getattr(embeddings, "num_positions", grid * grid + 1))
    n = positions - (strategy == "default")
    if n != grid * grid:
        fix = "default" if positions == grid * grid + 1 else "full" if positions == grid * grid else None
        raise ValueError(f"vision_feature_select_strategy {strategy!r} gives {n} features per tile of a tower with "
                         f"{positions} positions, where the model lays a tile out as {grid} x {grid} = {grid * grid}"
                         + (f"; set it to {fix!r} in config.json (and the processor)" if fix else ""))
    return n


def llava_next_image(model: Any, size: Any, strategy: str | None = None) -> tuple[int, int]:
    """One LLaVA-NeXT image of ``size`` (its ``image_sizes`` row, ``(h, w)``) in ``model`` (the multimodal model, with
    its ``vision_tower``): the language-model tokens it fills and the views the vision tower reads (base view and
    tiles), by the model's own arithmetic: base patches, then the tile grid unpadded to the image's aspect with a
    newline token per row."""
    import torch
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
        unpad_image,
    )

    cfg = model.config
    side, pins, patch = cfg.vision_config.image_size, cfg.image_grid_pinpoints, cfg.vision_config.patch_size
    size = torch.as_tensor(size)
    strategy = strategy or cfg.vision_feature_select_strategy
    key = (*size.tolist(), strategy, repr(pins), side, patch)   # (the config fields it reads: an edit counts afresh)
    known = model.__dict__.setdefault("_mtl_lora_next_images", {})   # (the model's own: no state of ours)
    if key not in known:   # (~30 us of CPU, most of it config reads, per distinct size of every mixed forward)
        rows, cols = get_anyres_image_grid_shape(size.tolist(), pins, side)
        grid = side // patch
        _, uh, uw = unpad_image(torch.empty(0, rows * grid, cols * grid, device="meta"), size).shape
        known[key] = (view_tokens(model, strategy) + uh * (uw + 1),
                      int(image_size_to_num_patches(size.tolist(), pins, side)))
    return known[key]


def llava_onevision_image(model: Any, size: Any, tiled: bool = True, aspect: str | None = None) -> tuple[int, int]:
    """One LLaVA-OneVision image of ``size`` in ``model`` (the inner multimodal model): its tokens and views, by the
    model's own ``pack_image_features`` on meta tensors (a large tile grid's features interpolated down past
    ``aspect``, the ``vision_aspect_ratio`` its encoding packs by: default the config's); ``tiled`` False: the base
    view alone (an image of a row of several)."""
    import torch
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    cfg = model.config
    size = torch.as_tensor(size)
    aspect = cfg.vision_aspect_ratio if aspect is None else aspect
    # (the config fields it reads in the key: a model whose config is edited counts afresh)
    key = (*size.tolist(), bool(tiled), repr(cfg.image_grid_pinpoints), cfg.vision_config.image_size,
           cfg.vision_config.patch_size, aspect, cfg.vision_feature_select_strategy)
    known = model.__dict__.setdefault("_mtl_lora_onevision_images", {})   # (the model's own: no state of ours)
    if key not in known:   # (the meta interpolation of a large tile grid: 5 ms of CPU, on every mixed forward)
        views = image_size_to_num_patches(size.tolist(), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
        views = int(views) if tiled else 1
        packed, _ = model.pack_image_features([torch.empty(views, view_tokens(model, None), 1, device="meta")],
                                              size[None], image_newline=torch.empty(1, device="meta"),
                                              vision_aspect_ratio=aspect)
        known[key] = int(packed[0].shape[0]), views
    return known[key]


def llava_onevision_video_tokens(model: Any, frames: int) -> int:
    """The tokens one LLaVA-OneVision video of ``frames`` frames fills, by the model's ``apply_pooling``: each
    frame's grid x grid features pooled to ceil(grid / 2)², and a newline after the video."""
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    return frames * math.ceil(grid / 2) ** 2 + 1
