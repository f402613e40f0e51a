"""The family table: the one place that names model families and what the package knows of each.

A leaf module (it imports nothing from the package), so adapters, backbones and exports can all
read it without import cycles.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    """A model family: its classes (matched anywhere in the MRO) and default targets per tower."""

    name: str
    classes: tuple[str, ...]
    targets: dict[str, tuple[str, ...]]
    packed_qkv: str | None = None  # regex of Linear layers whose output is [q; k; v]


_OC_BLOCK = r"\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"
_HF_CLIP_BLOCK = r"\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$"

FAMILIES: tuple[Family, ...] = (
    Family(
        "open_clip",
        ("CLIP", "CustomTextCLIP", "CoCa"),
        {
            "image": (r"^visual\.transformer" + _OC_BLOCK,),
            "text": (r"^(text\.)?transformer" + _OC_BLOCK, r"^text_decoder\.(resblocks|cross_attn)\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"),
        },
    ),
    Family(
        "hf_clip",
        ("CLIPModel",),
        {"image": (r"^vision_model" + _HF_CLIP_BLOCK,), "text": (r"^text_model" + _HF_CLIP_BLOCK,)},
    ),
    Family(
        "llava",
        ("LlavaForConditionalGeneration",),
        {
            "image": (r"(^|\.)vision_tower(\.\w+)*" + _HF_CLIP_BLOCK,),
            "text": (r"(^|\.)language_model\.(.*\.)?layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$",),
        },
    ),
    Family(
        "timm_vit",
        ("VisionTransformer",),
        {"image": (r"^blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)$",)},
        packed_qkv=r"(^|\.)qkv$",
    ),
)


def find_family(model: nn.Module) -> Family | None:
    """The first family one of whose class names appears in ``type(model)``'s MRO."""
    mro = [c.__name__ for c in type(model).__mro__]
    for fam in FAMILIES:
        if any(c in mro for c in fam.classes):
            return fam
    return None


