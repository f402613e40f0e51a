"""Texts a subword tokenizer cuts at the text tower's context (77 tokens for CLIP) are counted at start-up and warned
about, as the word-level tokenizer's cut texts always were: open_clip's BPE and a Hugging Face tokenizer cut as
silently as it does. Bundled / built tokenizers, no downloads."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from mtl_lora_vl.backbones.tokenizers import (
    EOT,
    SOT,
    UNK,
    HFTokenizer,
    OpenClipBPETokenizer,
    build_word_tokenizer,
    cut_texts,
)
from mtl_lora_vl.tasks import load_spec
from mtl_lora_vl.tasks.texts import warn_text_coverage

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "the"]


def _texts(n_words: list[int]) -> list[str]:
    return [" ".join(WORDS[i % len(WORDS)] for i in range(n)) for n in n_words]


@pytest.fixture(params=["open_clip", "hf", "hf_pad_is_end"])
def tokenizer(request, tmp_path):
    """A tokenizer of context 8 (start and end tokens included: 6 words fit)."""
    if request.param == "open_clip":
        import open_clip

        return OpenClipBPETokenizer(open_clip.get_tokenizer("ViT-B-32"), 8)
    from transformers import PreTrainedTokenizerFast

    folder = build_word_tokenizer(WORDS, tmp_path, 8)
    pad = EOT if request.param == "hf_pad_is_end" else "<pad>"   # (OpenAI's CLIP pads with its end token)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token=EOT, bos_token=SOT,
                                 pad_token=pad, unk_token=UNK)
    hf._tokenizer.post_processor = None
    return HFTokenizer(hf, 8)


def test_cut_texts_counts_exactly_the_texts_past_the_context(tokenizer):
    fits = tokenizer(_texts([1]))[0]
    start = 1 if tokenizer.bos_id is not None and int(fits[0]) == tokenizer.bos_id else 0
    room = tokenizer.context_length - start - 1   # words that fit beside the start and end tokens
    assert cut_texts(tokenizer, _texts([1, room - 1, room])) == 0
    assert cut_texts(tokenizer, _texts([room + 1])) == 1
    assert cut_texts(tokenizer, _texts([room, room + 1, 3 * room, 40])) == 3
    assert cut_texts(tokenizer, _texts([room + 1] * 5), batch=2) == 5   # counted across batches


def test_a_contrastive_task_with_long_captions_is_warned_about(tokenizer, caplog):
    backbone = SimpleNamespace(tokenizer=tokenizer, name="t", supports=lambda capability: capability != "generate")
    with caplog.at_level(logging.WARNING):
        warn_text_coverage(load_spec("retrieval"), _texts([2, 3, 30, 31]), backbone)
    assert "2 of its 4 distinct training texts are longer than the text tower's context of 8 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_text_coverage(load_spec("retrieval"), _texts([2, 3]), backbone)
    assert "context" not in caplog.text


def test_many_texts_are_measured_on_a_sample_spread_over_them(tokenizer, caplog, monkeypatch):
    """Past MEASURED_TEXTS distinct texts a sample is measured (start-up time), spread over the sorted texts: the
    first ones alphabetically would all start alike."""
    import mtl_lora_vl.tasks.texts as texts

    monkeypatch.setattr(texts, "MEASURED_TEXTS", 4)
    backbone = SimpleNamespace(tokenizer=tokenizer, name="t", supports=lambda capability: capability != "generate")
    short = [f"a {w}" for w in WORDS[1:6]]                     # sorted first
    long = [f"the {w} " + _texts([30])[0] for w in WORDS[1:6]]  # sorted last: the first 4 would hold none
    with caplog.at_level(logging.WARNING):
        warn_text_coverage(load_spec("retrieval"), short + long, backbone)
    assert "2 of 4 measured (one in 3) of its 10 distinct training texts are longer" in caplog.text
