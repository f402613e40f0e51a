"""Which fields of a family's Hugging Face processor set how many image tokens it writes per image: the functions the
family table (:mod:`mtl_lora_vl.families`) names as a family's ``count_fields``. Each takes the processor, the
model's config and the count the model fills (``n``), and says what to set, with the model's own figures.

A leaf module, as the table is (it imports nothing from the package).
"""

from __future__ import annotations

from typing import Any

__all__ = ["gemma3_fields", "idefics3_fields", "llava_fields", "llava_onevision_fields", "paligemma_fields",
           "pixtral_fields", "qwen_fields"]


def _vision(config: Any, name: str) -> Any:
    """``config.vision_config.<name>`` ("?" where the config does not say)."""
    value = getattr(getattr(config, "vision_config", None), name, None)
    return "?" if value is None else value


def _field(size: Any, name: str) -> Any:
    """``size[name]`` of a size field (a dict, or an object with that attribute), else None."""
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def llava_fields(processor: Any, config: Any, n: int) -> str:
    """LLaVA / LLaVA-NeXT: the vision tower's patch, its CLS token and whether the processor drops it."""
    return ("fix its patch_size, num_additional_image_tokens and vision_feature_select_strategy to match the model "
            f"(LLaVA's processor fields: the model's vision_config.patch_size is {_vision(config, 'patch_size')}, "
            f"its vision_feature_select_strategy {getattr(config, 'vision_feature_select_strategy', '?')!r})")


def llava_onevision_fields(processor: Any, config: Any, n: int) -> str:
    """LLaVA-OneVision: the base view's patch count (``num_image_tokens``) and the CLS-dropping strategy."""
    side, patch = _vision(config, "image_size"), _vision(config, "patch_size")
    patches = f" = {(side // patch) ** 2}" if isinstance(side, int) and isinstance(patch, int) and patch else ""
    return ("fix its num_image_tokens (the vision tower's patches per view, (vision_config.image_size / patch_size)²"
            f"{patches}, plus 1 for a tower with a CLS token) and vision_feature_select_strategy (the model's is "
            f"{getattr(config, 'vision_feature_select_strategy', '?')!r}) to match the model (LLaVA-OneVision's "
            "processor fields)")


def paligemma_fields(processor: Any, config: Any, n: int) -> str:
    """PaliGemma: the count is read from its image processor's ``image_seq_length``."""
    return f"set its image processor's image_seq_length to {n}"


def gemma3_fields(processor: Any, config: Any, n: int) -> str:
    """Gemma 3: the processor's ``image_seq_length``, the model's ``mm_tokens_per_image``."""
    return f"set its image_seq_length to {n}, the model's config.mm_tokens_per_image"


def idefics3_fields(processor: Any, config: Any, n: int) -> str:
    """Idefics3 / SmolVLM: tokens per crop, and whether the image processor splits images into crops; first, an
    image side (``max_image_size``) other than the vision tower's (a count fitted to it would feed the tower images
    of another size)."""
    side = _field(getattr(getattr(processor, "image_processor", None), "max_image_size", None), "longest_edge")
    tower = _vision(config, "image_size")
    if isinstance(side, int) and isinstance(tower, int) and side != tower:
        return (f"its images are {side}x{side} (max_image_size) where the vision tower was built for {tower}x{tower} "
                f"(config.vision_config.image_size); set max_image_size to {{'longest_edge': {tower}}}")
    return (f"set its image_seq_len to {n} and its image processor's do_image_splitting as the backbone's "
            "(backbone.processor: on where images are split, the default; off for unsplit squares)")


def pixtral_fields(processor: Any, config: Any, n: int) -> str:
    """Mistral 3 (Pixtral): the patch and its merge, which count each picture's tokens from its own size."""
    return (f"set its patch_size (now {getattr(processor, 'patch_size', '?')}) and spatial_merge_size (now "
            f"{getattr(processor, 'spatial_merge_size', '?')}) to the model's vision_config.patch_size "
            f"({_vision(config, 'patch_size')}) and spatial_merge_size ({getattr(config, 'spatial_merge_size', '?')}) "
            "(Pixtral's processor fields)")


def qwen_fields(processor: Any, config: Any, n: int) -> str:
    """Qwen2-VL: its image processor's patch and merge, which count each image's tokens from its own size."""
    image_processor = getattr(processor, "image_processor", None)
    return (f"set its image processor's patch_size (now {getattr(image_processor, 'patch_size', '?')}) and merge_size "
            f"(now {getattr(image_processor, 'merge_size', '?')}) to the model's vision_config.patch_size "
            f"({_vision(config, 'patch_size')}) and spatial_merge_size ({_vision(config, 'spatial_merge_size')})")
