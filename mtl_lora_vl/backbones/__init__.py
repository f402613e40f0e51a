"""Base vision-language models behind one interface, loaded from local files."""

from .core import (
           SPEC_FORMS,
           Backbone,
           WordTokenizer,
           build_open_clip,
           build_word_tokenizer,
           builtin_dir,
           load_backbone,
)

__all__ = ["SPEC_FORMS", "Backbone", "WordTokenizer", "build_open_clip", "build_word_tokenizer", "builtin_dir",
           "load_backbone"]
