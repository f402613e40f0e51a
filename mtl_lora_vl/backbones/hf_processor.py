"""The processor of a local vision-language model directory: loading it, and checking that it expands the
image placeholder to as many tokens as the model's vision tower fills (a mismatch fails deep inside
``generate``, or silently shifts every text token)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.scopes import disabled
from ..data.resize import size_fields
from ..families import Family
from ..whole_files import read_whole
from .base import OPENAI_MEAN, OPENAI_STD, BackboneError, as_rgb
from .tokenizers import TOKENIZER_FILES as _TOKENIZER_FILES

__all__ = ["check_processor_count", "count_image_tokens", "load_processor", "pixel_normalisation", "square_side"]

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def square_side(size: Any, name: str) -> int:
    """The side of a square image size (an int, or a list of equal sides); a non-square size is refused."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise BackboneError(f"{name}: non-square image size {size} is not supported")
        size = size[0]
    return int(size)


@torch.no_grad()
def count_image_tokens(model: nn.Module, image_size: int) -> int:
    """How many language-model tokens one image fills: one vision pass over a blank image (adapters off)."""
    p = next(model.parameters())
    blank = torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype)
    info = getattr(model, "_mtl_lora", None)
    with disabled(model) if info is not None and info.router.merged_task is None else nullcontext():
        out = model.get_image_features(pixel_values=blank)
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, (list, tuple)):
        return int(feats[0].shape[0])
    return int(feats.shape[-2])


def check_processor_count(processor: Any, image_size: int, n_image: int, name: str, config: Any = None,
                          family: Family | None = None) -> None:
    """Refuse a processor that expands the image placeholder to another count than the model fills, naming the
    processor fields to fix: an image side other than the vision tower's, else the fields the family table's
    ``count_fields`` names (``config``: the model's, for its figures; ``family``: the model's)."""
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is None or getattr(processor, "patch_size", 1) is None:
        return
    try:
        data = counter(image_sizes=[[image_size, image_size]])
    except (AttributeError, KeyError, TypeError, ValueError):
        return
    said = data.get("num_image_tokens") if isinstance(data, dict) else getattr(data, "num_image_tokens", None)
    if said and int(said[0]) != n_image:
        said = int(said[0])
        made = _processor_side(getattr(processor, "image_processor", None))
        tower = getattr(getattr(config, "vision_config", None), "image_size", None)
        side = tower if isinstance(tower, int) else image_size   # (an anyres canvas holds tiles of the tower's side)
        if made is not None and made != side:
            fix = (f"its image processor makes {made}x{made} images where the vision tower takes {side}x{side} "
                   f"(config.vision_config.image_size); set its size / crop_size to {side}")
        else:
            fix = _count_fields(processor, config, n_image, family)
        raise BackboneError(
            f"{name}: the processor expands {getattr(processor, 'image_token', '<image>')!r} to {said} tokens but the "
            f"vision tower gives {n_image} features per image; fix the processor ({fix}) and save it again with "
            "processor.save_pretrained(DIR)"
        )


def edit_image_processor_files(folder: Path, edit: Callable[[dict], None]) -> None:
    """Apply ``edit`` to the image processor's fields in ``folder``'s processor files (``processor_config.json``'s
    ``image_processor``, transformers 5; ``preprocessor_config.json``), rewriting a file only if they change."""
    for name, nested in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(read_whole(path))
        fields = data.get(nested) if nested else data
        if not isinstance(fields, dict):
            continue
        before = json.dumps(fields, sort_keys=True)
        edit(fields)
        if json.dumps(fields, sort_keys=True) != before:
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def mismatch_fix(layout: Any, processor: Any = None, config: Any = None, family: Family | None = None) -> str:
    """What to do when Hugging Face finds the prompts' image tokens and the image features differ in number
    (``layout``: the backbone's :class:`.lm_collate.PromptLayout`; ``processor`` / ``config`` / ``family``: the
    model's, for the fields of its family that set the count, as the family table names them)."""
    tokens = f"tokens {layout.image_token!r} (id {layout.image_token_id})"
    if layout.token_side:   # a native-resolution model: each image's own count
        u = layout.token_side
        return (f"Each image fills (h/{u})·(w/{u}) {tokens} for its own size (h, w): give images of different sizes "
                "on one canvas with image_sizes=[(h, w), ...] (mtl_lora_vl.data.loader.pad_images makes both) and "
                "build input_ids with backbone.lm_collator()(..., image_sizes=...); a processor of your own must have "
                "the model's patch_size and merge_size")
    n = layout.num_image_tokens
    if getattr(layout, "anyres", None) is not None:   # at its own aspect: LLaVA-NeXT's tiles, Idefics3's crops
        return (f"Each image read at its own aspect fills as many {tokens} as its original size gives ({n} for the "
                "square canvas): give the loader's strips with image_sizes=[(h, w), ...] "
                "(mtl_lora_vl.data.anyres.pad_images makes both) and build input_ids with "
                "backbone.lm_collator()(..., image_sizes=...); when using the processor yourself, "
                f"{_count_fields(processor, config, n, family)}")
    return (f"Each image fills {n} {tokens} per row; build input_ids with backbone.lm_collator(), or, when using the "
            f"processor yourself, {_count_fields(processor, config, n, family)}")


def pixel_normalisation(image_processor: Any, name: str) -> tuple[tuple[float, float, float],
                                                                 tuple[float, float, float]]:
    """The mean and std that make the loader's ``levels / 255`` what the image processor makes of 8-bit levels:
    ``(levels · f - image_mean) / image_std`` with ``f`` its ``rescale_factor`` (1 where ``do_rescale`` is false; no
    mean and std where ``do_normalize`` is), that is ``(levels / 255 - mean) / std`` with mean and std divided by
    ``255 f``, so any factor is followed exactly. A factor or std that is not a positive number is refused.
    ``image_processor``: the object, or its fields (a ``preprocessor_config.json``) as a dict."""
    get = image_processor.get if isinstance(image_processor, dict) else functools.partial(getattr, image_processor)
    factor = get("rescale_factor", 1 / 255) if get("do_rescale", True) is not False else 1
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor) or factor <= 0:
        raise BackboneError(f"{name}: the image processor's rescale_factor {factor!r} is not a positive number (8-bit "
                            "levels are multiplied by it); save the processor with rescale_factor=1/255")
    scale = 255 * factor
    if get("do_normalize", True) is False:
        return (0.0, 0.0, 0.0), (1 / scale,) * 3
    mean = as_rgb(get("image_mean", None) or OPENAI_MEAN, f"{name}: image_mean")
    std = as_rgb(get("image_std", None) or OPENAI_STD, f"{name}: image_std")
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise BackboneError(f"{name}: the image processor's image_std {list(std)} must be positive numbers (images "
                            "are divided by it); save the processor with the std the model was trained with")
    return tuple(m / scale for m in mean), tuple(s / scale for s in std)   # type: ignore[return-value]


def _count_fields(processor: Any, config: Any, n: int, family: Family | None) -> str:
    """The processor fields that set how many image tokens it writes per image: the family table's
    ``count_fields`` of the model's family."""
    if family is not None and family.count_fields is not None:
        return family.count_fields(processor, config, n)
    return (f"set the fields that count its image tokens so that it writes {n} per image, as the model's config says "
            "(the model is of no family in mtl_lora_vl.FAMILIES)")


def _processor_side(image_processor: Any) -> int | None:
    """The square side an image processor's output has (its crop, else its exact size), when it says."""
    if image_processor is None:
        return None
    fields = [size_fields(getattr(image_processor, "size", None))]
    if getattr(image_processor, "do_center_crop", False):
        fields.insert(0, size_fields(getattr(image_processor, "crop_size", None)))
    for f in fields:
        if "height" in f and f.get("height") == f.get("width"):
            return int(f["height"])
    return None


def _processor_class(folder: Path) -> str:
    """The processor class transformers pairs with the directory's ``model_type`` (else a generic name)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        model_type = json.loads(read_whole(folder / "config.json")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    return PROCESSOR_MAPPING_NAMES.get(model_type) or "the model's processor"


def load_processor(folder: Path, what: str) -> Any:
    """The ``AutoProcessor`` of a local model directory; a clear error when its files are missing."""
    if not any((folder / f).is_file() for f in _PROCESSOR_FILES):
        raise FileNotFoundError(
            f"{what}: {folder} has no processor files ({' or '.join(_PROCESSOR_FILES)}); a vision-language model "
            "directory needs its processor beside the weights: processor.save_pretrained(DIR) with the "
            f"{_processor_class(folder)} the model was trained with"
        )
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):   # (tokenizer_config.json holds no vocabulary)
        raise FileNotFoundError(
            f"{what}: {folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer there with "
            "processor.save_pretrained(DIR) or tokenizer.save_pretrained(DIR)"
        )
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises many types here; name the folder and the fix
        raise ValueError(f"{what}: could not load the processor from {folder} ({e}); save it again with "
                         "processor.save_pretrained(DIR)") from e

