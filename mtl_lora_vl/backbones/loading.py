"""``load_backbone``: a backbone string -> the Backbone of its family, from local files only.

The string is parsed once (:func:`parse_spec`); ``builtin`` and ``open_clip:`` build with open_clip;
an ``hf:DIR`` (and ``builtin-llava``, a directory shipped with the package) is matched against the family table by the
class its ``config.json`` names, and loaded by the Backbone class the table registers for that family (or refused with
the table's reason).
"""

from __future__ import annotations

import torch

from .base import Backbone, BackboneError, backbone_class_for

# Imported for their side effect: each family module registers its classes (@register_backbone) in the registry
# backbone_class_for reads, so load_backbone does not rely on the package __init__ having imported them.
from .gemma3 import Gemma3Backbone  # noqa: F401
from .hf import hf_dir, hf_model_class
from .hf_clip import HFClipBackbone  # noqa: F401
from .hf_vlm import HFVLMBackbone  # noqa: F401
from .idefics3 import Idefics3Backbone  # noqa: F401
from .image_reading import read_images
from .open_clip import OpenClipBackbone
from .paligemma import PaliGemmaBackbone  # noqa: F401
from .qwen2_vl import Qwen2VLBackbone  # noqa: F401
from .spec import parse_spec

__all__ = ["load_backbone"]


def load_backbone(spec: str = "builtin", pretrained: str | None = None,
                  device: str | torch.device = "cpu", base_dtype: str = "auto",
                  image_max_pixels: int | None = None, image_reading: str | None = None, *,
                  pretrained_as: str = "pretrained") -> Backbone:
    """Load a base VL model, its tokenizer and image normalisation from local files.

    ``spec`` is ``builtin``, ``builtin-llava``, ``open_clip:NAME`` (with ``pretrained`` = local checkpoint
    file), ``open_clip:/dir`` or ``hf:/dir``. Anything that would need a download fails at once with a message
    saying how to point at local weights. ``pretrained`` with ``builtin`` loads other weights into the
    built-in architecture. ``base_dtype`` (``auto`` | ``fp32`` | ``bf16`` | ``fp16``) is the dtype of the base
    weights: ``auto`` is bf16 for a language model on a GPU and fp32 otherwise (see ``resolve_base_dtype``).
    ``image_max_pixels``: the largest image area for a backbone that keeps each image's own size (Qwen2-VL:
    ``Qwen2VLBackbone.limit_pixels``); refused for backbones that take fixed squares. ``image_reading``:
    "native" or "square" for a backbone that can read each image either way (LLaVA-NeXT, LLaVA-OneVision,
    Idefics3 / SmolVLM: :func:`~.image_reading.read_images`); None keeps the backbone's default.
    ``pretrained_as``: what messages call ``pretrained`` (this argument's name; ``--pretrained`` where a command
    line gave it, :func:`~mtl_lora_vl.wording.given_as`).
    """
    parsed = parse_spec(spec, pretrained, pretrained_as=pretrained_as)
    if parsed.is_hf_dir:
        folder = hf_dir(parsed)
        model_cls = hf_model_class(folder)
        try:
            backbone_cls = backbone_class_for(model_cls)
        except BackboneError as e:   # the table's refusal names the class, not where it was read
            raise BackboneError(f"{parsed.text}: {folder / 'config.json'} names a model this package cannot load as a "
                                f"backbone: {e}. Give a directory of one of those families instead") from e
        bb = backbone_cls.load(parsed, device, base_dtype=base_dtype)
    else:
        bb = OpenClipBackbone.load(parsed, device, base_dtype=base_dtype)  # builtin, open_clip:NAME, open_clip:DIR
    if image_max_pixels is not None:
        limit = getattr(bb, "limit_pixels", None)
        if limit is None or not bb.resize.native:
            # (an adapter's recorded area never comes here: load_pretrained applies it once the family is checked)
            raise BackboneError(f"image_max_pixels {image_max_pixels} (--image-max-pixels) applies to backbones that "
                                "keep each image's own size (Qwen2-VL / Qwen2.5-VL); "
                                f"{bb.name} takes {bb.image_size}x{bb.image_size} images: leave the option out, or "
                                "load a Qwen2-VL / Qwen2.5-VL model (hf:DIR)")
        limit(int(image_max_pixels))
    if image_reading is not None:
        read_images(bb, image_reading)
    return bb
