"""The kinds of generic instruction about a scene of the built-in world and their phrasings: the table alone, for a
parser to list and check kinds without the world's renderer (PIL); :mod:`mtl_lora_vl.data.instructions` writes them. A
leaf."""

from __future__ import annotations

__all__ = ["DEFAULT_KINDS", "EXTRA_KINDS", "INSTRUCTION_TYPES", "KNOWN_KINDS", "PHRASINGS"]

# Generic instructions about a pretraining scene, several phrasings each (the first is the world's own).
PHRASINGS = {
    "color": ("what color is the {shape}?", "what is the color of the {shape}?", "which color is the {shape}?"),
    "shape": ("what shape is the {color} object?", "what is the shape of the {color} object?",
              "which shape is {color}?"),
    "count_all": ("how many objects are there?", "how many shapes are there?", "how many objects are in the image?"),
    "count_shape": ("how many {shape}s are there?", "how many {shape}s are in the image?"),
    "count_color": ("how many {color} objects are there?", "how many {color} shapes are there?"),
    "existence": ("is there {obj}?", "is there {obj} in the image?", "does the image show {obj}?"),
    "relation": ("is the {a} {rel} the {b}?", "is the {a} {rel} the {b} in the image?"),
    "position": ("where is the {obj}?", "where is the {obj} in the image?"),
}
INSTRUCTION_TYPES = ("color", "shape", "count", "existence", "relation", "position")
# Also accepted by --instruction-types: only "how many objects are there?" (no count of a shape or a colour).
EXTRA_KINDS = ("count_total",)
DEFAULT_KINDS = ("color", "shape", "count", "existence", "position")   # what the committed asset was trained on
KNOWN_KINDS = INSTRUCTION_TYPES + EXTRA_KINDS
