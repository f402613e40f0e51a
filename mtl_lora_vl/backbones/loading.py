"""``load_backbone``: a backbone string -> the Backbone of its family, from local files only.

The string is parsed once (:func:`parse_spec`); ``builtin`` and ``open_clip:`` build with open_clip;
an ``hf:DIR`` is matched against the family table by the class its ``config.json`` names, and loaded
by the Backbone class the table registers for that family (or refused with the table's reason).
"""

from __future__ import annotations

import torch

from .base import Backbone, backbone_class_for
from .hf import hf_dir, hf_model_class
from .hf_clip import HFClipBackbone
from .open_clip import OpenClipBackbone
from .spec import parse_spec

__all__ = ["BACKBONE_CLASSES", "load_backbone"]

# Importing the family modules registers their classes; listed here so the registry is complete.
BACKBONE_CLASSES: tuple[type[Backbone], ...] = (OpenClipBackbone, HFClipBackbone)


def load_backbone(spec: str = "builtin", pretrained: str | None = None,
                  device: str | torch.device = "cpu") -> Backbone:
    """Load a base VL model, its tokenizer and image normalisation from local files.

    ``spec`` is ``builtin``, ``open_clip:NAME`` (with ``pretrained`` = local checkpoint file),
    ``open_clip:/dir`` or ``hf:/dir``. Anything that would need a download fails at once with a message
    saying how to point at local weights. ``pretrained`` with ``builtin`` loads other weights into the
    built-in architecture.
    """
    parsed = parse_spec(spec, pretrained)
    if parsed.kind == "hf":
        return backbone_class_for(hf_model_class(hf_dir(parsed))).load(parsed, device)
    return OpenClipBackbone.load(parsed, device)  # builtin, open_clip:NAME, open_clip:DIR
