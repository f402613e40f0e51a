"""Review 226: the word-level tokenizer's decode joins contractions back ("don ' t" -> "don't")."""

from __future__ import annotations

from mtl_lora_vl.backbones import WordTokenizer, build_word_tokenizer
from mtl_lora_vl.metrics import vqa_accuracy

TEXTS = ["i don't know", "the cube's side is red", "it's a circle", "we're left, they'll be right", "i'm here",
         "the dogs' toys", "a red cube."]


def test_contractions_decode_as_written(tmp_path):
    """Its pre-tokenizer splits "don't" into don / ' / t, and decode gave "don' t": a CoCa on a word tokenizer of the
    user's captions answered "i don' t know", whose VQA accuracy against "i don't know" is 0 (1 written so); a plural
    possessive before a word ("dogs' toys") keeps its space."""
    tok = WordTokenizer(build_word_tokenizer(TEXTS, tmp_path, context_length=16), 16)
    decoded = [tok.decode(row) for row in tok(TEXTS)]
    assert decoded == TEXTS
    assert vqa_accuracy(decoded[0], [TEXTS[0]] * 10) == 1.0
