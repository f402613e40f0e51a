"""How each family's forward lays its images out over its rows: the functions the family table
(:mod:`mtl_lora_vl.families`) names as a family's ``row_images`` (images, or anyres tiles, per input row, from the
rows' image tokens) and ``image_rows`` (patch rows per image of a packing vision tower); the anyres families'
per-image token arithmetic is :mod:`mtl_lora_vl.family_anyres`'s.

A leaf module, as the table is (it imports nothing from the package but :mod:`.family_anyres`, a leaf too; torch and
transformers only inside the functions that run on a model).
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

from .family_anyres import llava_next_image, llava_onevision_image, llava_onevision_video_tokens

__all__ = ["CountsOnly", "PerCall", "idefics3_row_images", "image_token_rows", "keep_mends", "llava_next_row_tiles",
           "llava_onevision_row_tiles", "mend_outputs", "pixtral_image_rows", "pixtral_keep_one_row",
           "pixtral_row_images", "qwen_image_rows", "qwen_row_images"]


class CountsOnly(list):
    """Images per row that can be checked (one per row) but not used to route several per row; ``why`` says why."""

    def __init__(self, counts: list[float], why: str) -> None:
        super().__init__(counts)
        self.why = why


_ENCODED = "their features were made before the call (mm_encoder_outputs), under the caller's route"
ImageCount = Callable[[Any, bool], tuple[int, int]]   # an anyres image's (tokens, views) from its size and tiling


def qwen_image_rows(args: tuple, kwargs: dict, module: Any = None, host: dict[str, list] | None = None) -> list[int]:
    """Patches per image of a Qwen2-VL vision tower call, ``visual(pixel_values, grid_thw=...)``: t·h·w. ``host``:
    host copies of the forward's vision inputs (:meth:`~.adapters.row_images.RowImagesCheck.host_inputs`): its
    ``image_grid_thw`` is taken, without reading the call's grid, where it has the grid's rows and its patches add
    up to the call's (a video call's grid, or a beam search's repeated images, read their own)."""
    grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
    given = (host or {}).get("image_grid_thw")
    if given is not None and len(given) == grid.shape[0]:
        rows = [int(t) * int(h) * int(w) for t, h, w in given]
        patches = kwargs.get("hidden_states", args[0] if args else None)
        if patches is not None and sum(rows) == patches.shape[0]:
            return rows
    return [int(t) * int(h) * int(w) for t, h, w in grid.tolist()]


def pixtral_image_rows(args: tuple, kwargs: dict, module: Any, host: dict[str, list] | None = None) -> list[int]:
    """Patches per image of a Mistral 3 call of its Pixtral vision tower, ``vision_tower(pixel_values, image_sizes)``,
    or of its projector, ``multi_modal_projector(features, image_sizes)``: (h / patch)·(w / patch) each (an image
    without a size fills its whole canvas, as the tower reads it). ``host``: host copies of the forward's vision
    inputs; its ``image_sizes`` are taken, without reading the call's (one read per image), where they have the
    call's images and fit the tower's canvas, or add up to the projector's patches."""
    sizes = kwargs["image_sizes"] if "image_sizes" in kwargs else args[1] if len(args) > 1 else None
    patch = int(getattr(module, "patch_size", None) or module.patch_merger.patch_size)
    x = kwargs.get("pixel_values", args[0] if args else None)
    given = (host or {}).get("image_sizes")
    if sizes is None:   # (each image fills the canvas: nothing to read, and no host size to take)
        sizes = [tuple(x.shape[-2:])] * x.shape[0]
    elif given is not None and len(given) == len(sizes) and x is not None:
        rows = [(int(h) // patch) * (int(w) // patch) for h, w in given]
        H, W = x.shape[-2:]
        fits = all(h <= H and w <= W for h, w in given) if x.dim() == 4 else sum(rows) == H
        if fits:
            return rows
    sizes = sizes.tolist() if hasattr(sizes, "tolist") else sizes   # (one read, not one per image)
    return [(int(h) // patch) * (int(w) // patch) for h, w in (s.tolist() if hasattr(s, "tolist") else s
                                                               for s in sizes)]


def pixtral_row_images(model: Any, args: tuple, kwargs: dict, image_counts: list[int] | None = None
                       ) -> list[float] | None:
    """Images per row of a Mistral 3 forward: each row's image tokens matched in order to the images' token counts
    ((h / d)·(w / d) for ``d`` = patch x spatial merge, from ``image_sizes``: Pixtral reads each image at its own
    size), also for images encoded before the call (a :class:`CountsOnly`: one per row of sizes that differ was read
    as [1.33, 0.67] and refused); without ``image_sizes`` (every image fills its canvas) as :func:`image_token_rows`.
    ``image_counts``: each row's images from the host, taken without reading the ids where pixel values are given
    and they add up to the images (their batch's shape), as :func:`image_token_rows` takes them."""
    sizes = _forward_input(model, args, kwargs, "image_sizes")
    pixels = _forward_input(model, args, kwargs, "pixel_values")
    encoded = pixels is None
    features = (_forward_input(model, args, kwargs, "mm_encoder_outputs") or {}).get("image")
    if sizes is None or encoded and features is None:
        return image_token_rows(model, args, kwargs, image_counts)
    if image_counts is not None and pixels.dim() == 4 and len(sizes) == pixels.shape[0]:
        given = _given_rows(model, args, kwargs, image_counts)   # (a placeholder is one image: no crops)
        if sum(given) == pixels.shape[0]:
            return given
    tokens = _token_rows(model, args, kwargs, model.config.image_token_id)
    if tokens is None:
        return None
    d = int(model.config.vision_config.patch_size) * int(model.config.spatial_merge_size)
    sizes = sizes.tolist() if hasattr(sizes, "tolist") else sizes
    per_row = _rows_of_images(tokens, [(int(h) // d) * (int(w) // d) for h, w in sizes])
    counts = [len(whole) + part if part else len(whole) for whole, part in per_row]
    return CountsOnly(counts, _ENCODED) if encoded else counts


def pixtral_keep_one_row(module: Any, args: tuple, out: Any) -> Any:
    """Forward hook on Mistral 3's projector: its features of a batch of one image token in all, ``(1, D)``, as
    ``(1, 1, D)``; any other output as it is (None). transformers' ``get_image_features`` squeezes ``(1, D)`` to
    ``(D,)`` and then fails to split it (``split_with_sizes expects split_sizes to sum exactly to D``: one picture
    of at most patch x merge pixels alone, which the processor gives one token); its ``squeeze(0)`` leaves the row
    it needs from ``(1, 1, D)``. A transformers that kept the axis reads ``(1, 1, D)`` as ``(1, D)``: its token
    check and ``masked_scatter`` count elements (the logits equal, checked on 5.25 with the squeeze taken out)."""
    return out.unsqueeze(0) if out.dim() == 2 and out.shape[0] == 1 else None


def mend_outputs(model: Any, mends: tuple[tuple[str, Callable[[Any, tuple, Any], Any]], ...]) -> list[Any]:
    """Register each ``(regex, hook)`` of a family's ``mends`` as a forward hook on every module of ``model`` whose
    name the regex finds and that lacks that hook; returns the new hooks' handles (what attach's unload removes)."""
    return [module.register_forward_hook(hook) for pattern, hook in mends for name, module in model.named_modules()
            if re.search(pattern, name) and not any(h is hook for h in module._forward_hooks.values())]


def keep_mends(model: Any, mends: tuple[tuple[str, Callable[[Any, tuple, Any], Any]], ...]) -> None:
    """``model``'s ``mends`` for good (a backbone's): installed where missing, and those ``attach`` installed on a
    bare model before the backbone took it taken off its list, so that its unload leaves them (the backbone reads
    through them, as one that wrapped the bare model first)."""
    mend_outputs(model, mends)
    hooks = [hook for _, hook in mends]
    kept = {(id(m._forward_hooks), key) for m in model.modules() for key, h in m._forward_hooks.items()
            if any(h is hook for hook in hooks)}
    for module in model.modules():
        info = module.__dict__.get("_mtl_lora")   # (attach's record: its hooks' handles, which unload removes)
        if info is not None:
            info.hooks[:] = [h for h in info.hooks if (id(h.hooks_dict_ref()), h.id) not in kept]


def _forward_input(model: Any, args: tuple, kwargs: dict, name: str) -> Any:
    """The argument ``name`` of a call ``model(*args, **kwargs)``, given by keyword or position (None: not given)."""
    if name in kwargs or not args:
        return kwargs.get(name)
    params = list(inspect.signature(model.forward).parameters)
    i = params.index(name) if name in params else len(args)
    return args[i] if i < len(args) else None


def _token_rows(model: Any, args: tuple, kwargs: dict, token: int) -> list[int] | None:
    """How often each row of a forward holds ``token``: in its ``input_ids``, else in its ``inputs_embeds`` (rows
    equal to the token's embedding, as the models find their image tokens then), read to the host. None: neither
    given."""
    counts = _token_counts(model, args, kwargs, [token])
    return None if counts is None else counts[0].tolist()


def qwen_row_images(model: Any, args: tuple, kwargs: dict, image_counts: list[int] | None = None
                    ) -> list[float] | None:
    """Images and videos per row of a Qwen2-VL forward (None without pixel values of either or their encoder
    outputs). With each kind's grid (``image_grid_thw``, ``video_grid_thw``), each row's image tokens and video
    tokens are matched, in order, to the images' and videos' token counts (t·h·w / merge²; a row that starts or ends
    inside one counts the part it holds), as a :class:`PerCall`: the model encodes its images in one call of its
    vision tower and its videos in the next. Without a grid, each row's ``<|vision_start|>`` tokens are counted (the
    processor writes one per image, a hand-written prompt may not); counts of images and videos together, or of a
    kind encoded before the call other than one per row, are :class:`CountsOnly`.

    ``image_counts``: each row's images from the host, as :func:`image_token_rows` takes them: for images alone
    (pixel values, no videos) taken without reading the ids where they add up to the grid's images (its shape);
    else the ids are read as without them."""
    pixels = {k: _forward_input(model, args, kwargs, p) for k, p in (("image", "pixel_values"),
                                                                    ("video", "pixel_values_videos"))}
    encoded = _forward_input(model, args, kwargs, "mm_encoder_outputs") or {}
    kinds = [k for k in ("image", "video") if pixels[k] is not None or encoded.get(k) is not None]
    if not kinds:
        return None
    grid = _forward_input(model, args, kwargs, "image_grid_thw")
    if image_counts is not None and kinds == ["image"] and pixels["image"] is not None and grid is not None:
        given = _given_rows(model, args, kwargs, image_counts)   # (a placeholder is one image: no crops)
        if sum(given) == grid.shape[0]:
            return given   # (the packed tower checks its call's images against them)
    grids = [_forward_input(model, args, kwargs, f"{k}_grid_thw") for k in kinds]
    tokens = _token_counts(model, args, kwargs, [getattr(model.config, f"{k}_token_id") for k in kinds])
    if tokens is None or any(g is None for g in grids):
        counts = _token_rows(model, args, kwargs, model.config.vision_start_token_id)
        if counts is None or kinds == ["image"] and pixels["image"] is not None:
            return counts
        return CountsOnly(counts, "they count images and videos together (by their <|vision_start|> tokens)"
                          if len(kinds) > 1 else _ENCODED)
    import torch  # (the table itself needs no torch)

    merge = int(model.config.vision_config.spatial_merge_size) ** 2
    both = torch.cat([*(g.reshape(-1).to(tokens) for g in grids), tokens.reshape(-1)]).tolist()   # one device read
    calls, start = [], 0
    for kind, grid in zip(kinds, grids):
        g, start = both[start:start + grid.numel()], start + grid.numel()
        patches = [int(t * h * w) for t, h, w in zip(g[0::3], g[1::3], g[2::3])]
        calls.append((kind, patches, [int(p) // merge for p in patches]))
    rows = len(both[start:]) // len(kinds)
    per_kind = []
    for i, (kind, patches, sizes) in enumerate(calls):
        row_tokens = both[start + i * rows:start + (i + 1) * rows]
        counts = [len(whole) + part if part else len(whole) for whole, part in _rows_of_images(row_tokens, sizes)]
        if pixels[kind] is None and any(n != 1 for n in counts):
            return CountsOnly(counts, _ENCODED)
        per_kind.append((kind, patches, counts))
    routed = [c for c in per_kind if pixels[c[0]] is not None]
    return PerCall(routed) if routed else per_kind[0][2]


class PerCall(list):
    """Images per row of a forward whose vision tower runs once per kind of input, in the model's order (Qwen2-VL,
    LLaVA-OneVision: its images, then its videos): the list is each row's images and videos together; ``calls``
    holds, per tower call, its kind, each of its images' patches as a packing tower reads them (None for a tower
    that takes a batch: its size is checked against the counts) and its images (or views) per row."""

    def __init__(self, calls: list[tuple[str, list[int] | None, list[float]]]) -> None:
        super().__init__(sum(n) for n in zip(*(counts for _, _, counts in calls)))
        self.calls = calls


def _token_counts(model: Any, args: tuple, kwargs: dict, tokens: list[int]) -> Any:
    """How often each row of a forward holds each of ``tokens``, a ``(len(tokens), rows)`` tensor (not read from
    the device), as :func:`_token_rows` finds them. None: neither ``input_ids`` nor ``inputs_embeds`` given."""
    ids = _forward_input(model, args, kwargs, "input_ids")
    if ids is not None:
        return (ids[None] == ids.new_tensor(tokens)[:, None, None]).sum(-1)
    embeds = _forward_input(model, args, kwargs, "inputs_embeds")
    if embeds is None:
        return None
    one = model.get_input_embeddings()(embeds.new_tensor(tokens).long()).to(embeds.dtype)
    return (embeds[None] == one[:, None, None]).all(-1).sum(-1)


def _rows_of_images(row_tokens: list[int], image_tokens: list[int]) -> list[tuple[list[int], float]]:
    """Each row's images, its image tokens (``row_tokens``, rows in order) matched in order to the images' token
    counts: the images it holds whole, and the parts of images it starts or ends inside (as a number of images)."""
    spans = list(zip([0, *itertools.accumulate(image_tokens)], itertools.accumulate(image_tokens)))
    out, start = [], 0
    for tokens in row_tokens:
        stop = start + tokens
        whole = [i for i, (a, b) in enumerate(spans) if start <= a and b <= stop]
        part = sum(max(0, min(b, stop) - max(a, start)) / (b - a) for a, b in spans if not start <= a < b <= stop)
        out.append((whole, part))
        start = stop
    return out


def llava_next_row_tiles(model: Any, args: tuple, kwargs: dict, image_counts: list[int] | None = None
                         ) -> list[float] | None:
    """What a LLaVA-NeXT forward's vision tower gets per row: each image is its base view plus a grid of tiles
    (anyres, from its ``image_sizes`` row and ``image_grid_pinpoints``), so each row's image tokens are matched in
    order to the images' token counts (:func:`llava_next_image`) and the row's tiles summed. A row holding part of
    an image gives its images (not whole); images encoded before the call give a :class:`CountsOnly` of images.
    None without images. ``image_counts``: each row's images from the host, taken for the ids where they add up to
    the images (``image_sizes``' rows), as :func:`image_token_rows` takes them."""
    strategy = _forward_input(model, args, kwargs, "vision_feature_select_strategy")
    return _anyres_row_tiles(model, args, kwargs, lambda size, tiled: llava_next_image(model, size, strategy),
                             image_counts=image_counts)


def llava_onevision_row_tiles(model: Any, args: tuple, kwargs: dict, image_counts: list[int] | None = None
                              ) -> list[float] | None:
    """What a LLaVA-OneVision forward's vision tower gets per row: its images' tiles, counted as LLaVA-NeXT's, each
    image's token count by :func:`llava_onevision_image` (an image of a row of several, by ``batch_num_images``, is
    its base view alone). With videos, a :class:`PerCall`: the model encodes its images (tiles) in one call of its
    tower and projector and its videos (frames) in the next, so each row's video tokens are matched in order to the
    videos' token counts (:func:`llava_onevision_video_tokens`) and the row's frames counted apart (a row holding
    part of a video gives its videos, not whole). None without images or videos. ``image_counts``: each row's
    images from the host, taken for the image tokens as :func:`llava_next_row_tiles` takes them.

    A large image's tokens depend on the ``vision_aspect_ratio`` its encoding packs by: transformers (5.25) encodes
    a ``generate``'s images by the call's (its ``get_image_features`` takes generate's arguments) and a forward's by
    the config's (the forward takes the argument and does not pass it on). So where the call gives one other than
    the config's, the rows' image tokens are read by the config's and else by the call's: the one whose images fill
    them exactly, each whole in a row (at most one can: the images' token total differs)."""
    import torch

    per_row = _forward_input(model, args, kwargs, "batch_num_images")
    # as get_image_features: without batch_num_images every image has its tiles; with it, only a row's only image
    tiled = None if per_row is None else [n == 1 for n in torch.as_tensor(per_row).tolist() for _ in range(n)]
    own, given = model.config.vision_aspect_ratio, _forward_input(model, args, kwargs, "vision_aspect_ratio")
    readings = [own, *([given] if given is not None and given != own else [])]
    tiles = _anyres_row_tiles(model, args, kwargs, [lambda size, t, a=a: llava_onevision_image(model, size, t, a)
                                                    for a in readings], tiled, image_counts)
    videos = _forward_input(model, args, kwargs, "pixel_values_videos")
    tokens = None if videos is None else _token_rows(model, args, kwargs, model.config.video_token_id)
    if tokens is None:
        return tiles
    if isinstance(tiles, CountsOnly) and any(n != 1 for n in tiles):
        return tiles   # (images encoded before the call, other than one per row: refused as without videos)
    frames = int(videos.shape[1])
    per_video = _rows_of_images(tokens, [llava_onevision_video_tokens(model, frames)] * int(videos.shape[0]))
    parts = any(part for _, part in per_video)
    counts = [len(whole) + part if parts else len(whole) * frames for whole, part in per_video]
    calls = [] if tiles is None or isinstance(tiles, CountsOnly) else [("image", None, tiles)]
    return PerCall([*calls, ("video", None, counts)])


def _anyres_row_tiles(model: Any, args: tuple, kwargs: dict, image: ImageCount | Sequence[ImageCount],
                      tiled: list[bool] | None = None, image_counts: list[int] | None = None) -> list[float] | None:
    """Tiles per row of an anyres forward (LLaVA-NeXT, LLaVA-OneVision): each row's image tokens matched in order to
    the images' token counts, ``image(size, tiled)`` giving an image's (tokens, tiles) from its ``image_sizes`` row
    (``tiled[i]``: image i has its tiles; default all), once per distinct size in the call; several ``image``
    readings (the same tiles, other token counts): the first whose images fill the rows' image tokens exactly, each
    whole in a row, else the first. ``image_counts``: each row's images from the host (a placeholder is one image,
    its tiles its views), taken without reading the ids where pixel values are given and the counts add up to the
    images."""
    pixels = _forward_input(model, args, kwargs, "pixel_values")
    encoded = (_forward_input(model, args, kwargs, "mm_encoder_outputs") or {}).get("image")
    sizes = _forward_input(model, args, kwargs, "image_sizes")
    if (pixels is None and encoded is None) or sizes is None:
        return None
    readings = list(image) if isinstance(image, Sequence) else [image]
    given = None if image_counts is None or pixels is None else _given_rows(model, args, kwargs, image_counts)
    if given is not None and sum(given) == len(sizes):
        counted = _anyres_images(sizes, readings[0], tiled)
        ends = list(itertools.accumulate(given))
        return [sum(n for _, n in counted[end - k:end]) for k, end in zip(given, ends)]
    tokens = _token_rows(model, args, kwargs, model.config.image_token_id)
    if tokens is None:
        return None
    for i, read in enumerate(readings):
        split = _anyres_images(sizes, read, tiled)
        rows = _rows_of_images(tokens, [n for n, _ in split])
        if not i:   # (the first reading: kept where none fills the rows)
            counted, per_row = split, rows
        # (every image whole in a row, and no token left over: a reading of fewer tokens per image can fit them
        # all in the first rows, the last rows' tokens over)
        if sum(n for n, _ in split) == sum(tokens) and not any(part for _, part in rows):
            counted, per_row = split, rows
            break
    if encoded is not None or any(part for _, part in per_row):
        images = [len(whole) + part if part else len(whole) for whole, part in per_row]
        return CountsOnly(images, _ENCODED) if encoded is not None else images
    return [sum(counted[i][1] for i in whole) for whole, _ in per_row]


def _anyres_images(sizes: Any, image: ImageCount, tiled: list[bool] | None) -> list[tuple[int, int]]:
    """Each image's (tokens, tiles) of an anyres forward, by ``image(size, tiled)`` once per distinct size."""
    import torch

    seen: dict[tuple, tuple[int, int]] = {}
    counted = []
    # (tensor rows, as the model reads them: its unpadding's arithmetic; one read of the device)
    for i, size in enumerate(torch.as_tensor(sizes).cpu()):
        key = (*size.tolist(), tiled is None or tiled[i])
        if key not in seen:
            seen[key] = image(size, key[-1])
        counted.append(seen[key])
    return counted


def _images_given(model: Any, args: tuple, kwargs: dict, rows_of_features: bool = False) -> int | None:
    """How many images a forward gets: as pixel values, or already encoded (``mm_encoder_outputs["image"]``, one
    feature tensor per image: what ``generate`` passes the prefill, or a caller who encoded them under a route;
    ``rows_of_features``: one per row, its images' features flattened, so the images are counted by the vision
    tower's output, ``last_hidden_state``, one item per image)."""
    pixels = _forward_input(model, args, kwargs, "pixel_values")
    if pixels is None:
        encoded = (_forward_input(model, args, kwargs, "mm_encoder_outputs") or {}).get("image")
        tower = getattr(encoded, "last_hidden_state", None) if rows_of_features else None
        features = getattr(encoded, "pooler_output", None) if tower is None else tower
        return None if features is None else len(features)
    if pixels.dim() == 4:   # (images, 3, H, W)
        return pixels.shape[0]
    if pixels.dim() == 5:   # (rows, images per row, 3, H, W): Idefics3 drops the all-zero images that pad short rows
        return int((pixels.flatten(2) != 0).any(-1).sum())
    return None


def _given_rows(model: Any, args: tuple, kwargs: dict, image_counts: list[int]) -> list[int]:
    """``image_counts`` (each row's images, from the caller) checked against the forward's rows: a whole number
    of images (none or more) per row, for as many rows as its ids (or embeddings) have."""
    ids = _forward_input(model, args, kwargs, "input_ids")
    ids = _forward_input(model, args, kwargs, "inputs_embeds") if ids is None else ids
    given = [int(k) for k in image_counts]
    if ids is not None and len(given) != ids.shape[0] or given != list(image_counts) or min(given, default=0) < 0:
        rows = "" if ids is None else f" the {ids.shape[0]} rows of"
        raise ValueError(f"image_counts {list(image_counts)} do not give{rows} the forward each row's image count; "
                         "pass each row's images (the image placeholders its prompt holds), rows in order")
    return given


def idefics3_row_images(model: Any, args: tuple, kwargs: dict) -> list[float] | None:
    """As :func:`image_token_rows`, for Idefics3 / SmolVLM, whose encoded images (``get_image_features``'s
    ``pooler_output``) hold one item per row, not per image: they are counted by the vision tower's output (counted
    by item, two rows of two images each passed for one image per row)."""
    return image_token_rows(model, args, kwargs, rows_of_features=True)


def image_token_rows(model: Any, args: tuple, kwargs: dict, image_counts: list[int] | None = None,
                     rows_of_features: bool = False) -> list[float] | None:
    """Images per row of a forward of a model in which every image fills as many image tokens as the others (LLaVA,
    PaliGemma, Gemma 3, Idefics3 and its crops): each row's image tokens over one image's, that being all rows'
    image tokens over the images given (:class:`CountsOnly` for images encoded before the call). None without
    images, or where the counts do not divide (the model refuses those itself).

    ``image_counts``: each row's images (its prompt's placeholders) as the caller knows them on the host, taken
    without reading the ids where they add up to the images given (read from their shape: a (images, 3, H, W)
    batch, or encoded features): each placeholder is at least one image, so then exactly one, in row order. Else
    (crops: more images than placeholders) the ids are read as without them. A count for other rows than the
    forward's is refused. ``rows_of_features``: encoded images hold one item per row (:func:`idefics3_row_images`)."""
    pixels = _forward_input(model, args, kwargs, "pixel_values")
    if image_counts is not None and (pixels is None or pixels.dim() == 4):   # (its images: a shape, not a read)
        images = _images_given(model, args, kwargs, rows_of_features)
        given = _given_rows(model, args, kwargs, image_counts)
        if images is not None and sum(given) == images:
            return given if pixels is not None else CountsOnly(given, _ENCODED)
    images = _images_given(model, args, kwargs, rows_of_features)
    if images is None:
        return None
    cfg = model.config
    token = getattr(cfg, "image_token_id", None)
    token = getattr(cfg, "image_token_index", None) if token is None else token
    counts = _token_rows(model, args, kwargs, token)
    if counts is None:
        return None
    total = sum(counts)
    if not images or not total or total % images:
        return None
    per = total // images
    out = [c // per if c % per == 0 else c / per for c in counts]
    return CountsOnly(out, _ENCODED) if pixels is None else out
