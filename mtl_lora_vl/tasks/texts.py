"""What a task's texts must be for its backbone's tokenizer: no special tokens in them (:func:`special_texts`, which
the task kinds refuse in rows, class names, templates and prompts), and words and lengths the tokenizer can read
(:func:`warn_text_coverage`, said once at start-up)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mtl_lora_vl.backbones.tokenizers import cut_texts
from mtl_lora_vl.data.records import Split
from mtl_lora_vl.tasks.generative import uses_language_model
from mtl_lora_vl.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from mtl_lora_vl.backbones import Backbone

__all__ = ["MEASURED_TEXTS", "NormalizedSpecials", "lone_surrogate", "special_texts", "split_texts",
           "warn_text_coverage"]

logger = logging.getLogger(__name__)


def special_texts(backbone: Backbone, generative: bool) -> tuple[str, ...]:
    """The texts ``backbone``'s tokenizer reads as special tokens: a language model's (and its image placeholder and
    markers) on the generative path (added tokens marked special too: Gemma's ``<end_of_turn>`` is none of the named
    ones; the image markers its ``generate`` never writes, Idefics3's ``<row_r_col_c>`` crop tags, special or not),
    the text tower's tokenizer's otherwise (an end token inside a caption ends it there)."""
    if generative:
        tok = getattr(getattr(backbone, "hf_processor", None), "tokenizer", None)
        added = [t.content for t in (getattr(tok, "added_tokens_decoder", None) or {}).values()
                 if getattr(t, "special", False) and _markup(t.content)]
        found = {str(t) for t in [*(getattr(tok, "all_special_tokens", None) or []), *added] if t}
        found.add(str(backbone.image_token))
        markers = getattr(backbone, "marker_texts", None)   # image markers generate never writes (crop tags)
        found.update(t for t in (markers() if callable(markers) else ()) if _markup(t))
    else:
        found = set(getattr(getattr(backbone, "tokenizer", None), "special_tokens", ()))
    return tuple(sorted(found))


class NormalizedSpecials:
    """The special texts a Hugging Face tokenizer matches in the text as its normaliser leaves it (added tokens with
    ``normalized=True``, as Idefics3's crop tags are): under a lowercasing normaliser ``<ROW_1_COL_1>`` is read as
    ``<row_1_col_1>``, which a literal search of the text misses. Calling it gives the special text a text holds so
    (None: none)."""

    def __init__(self, backbone: Backbone, generative: bool, specials: Iterable[str]) -> None:
        tok = getattr(getattr(backbone, "hf_processor", None), "tokenizer", None) if generative else None
        normalizer = getattr(getattr(tok, "backend_tokenizer", None), "normalizer", None)
        wanted = set(specials)
        normalized = [t.content for t in (getattr(tok, "added_tokens_decoder", None) or {}).values()
                      if getattr(t, "normalized", False) and t.content in wanted] if normalizer is not None else []
        self._normalize = normalizer.normalize_str if normalized else None
        self._by_form = {self._normalize(t): t for t in normalized} if self._normalize else {}
        forms = sorted((f for f in self._by_form if f), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, forms))) if forms else None

    def __call__(self, text: str | None) -> str | None:
        if not text or self._pattern is None or self._normalize is None:
            return None
        found = self._pattern.search(self._normalize(text))
        return self._by_form[found.group(0)] if found else None


def _markup(token: str) -> bool:
    """A control token's text (``<end_of_turn>``, ``[multimodal]``): no space in it and not a plain word, so that an
    added token a vocabulary marks special but writes as ordinary text (a whitespace run, a word) refuses nothing."""
    return bool(token) and not token.isalnum() and not any(c.isspace() for c in token)


def lone_surrogate(text: str | None) -> str | None:
    """The first lone surrogate (U+D800..U+DFFF) ``text`` holds, else None (one encode, in C, for the usual text)."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError as e:
        return e.object[e.start]
    return None


def split_texts(split: Split) -> set[str]:
    """The distinct texts of a split's examples (texts, captions, answers)."""
    return {t for ex in split.examples for t in (ex.text, *ex.captions, *ex.answers) if t}


#: Distinct texts a subword tokenizer tokenises at start-up (twice) to count those its context cuts: about 2 s.
MEASURED_TEXTS = 5_000


def warn_text_coverage(spec: TaskSpec, texts: Iterable[str], backbone: Backbone, what: str = "training texts") -> None:
    """Say when a word-level tokenizer (the built-in backbones', 450 words) cannot read a task's ``texts`` (``what``
    they are, for the message): words it does not know become ``<unk>``, and texts longer than its context are
    cut, so captions in another language or long ones -- or class names -- collapse into the same tokens and the
    task trains nothing, silently otherwise. A subword tokenizer (open_clip's BPE, a Hugging Face CLIP's) knows every
    word but cuts at its context (77 tokens) as silently: the texts it cuts are counted too. On a language model (no
    text tower) its own tokenizer's unknown words are counted (the built-in LLaVA's is word-level too)."""
    tok = getattr(backbone, "tokenizer", None)
    texts = sorted(set(texts))
    where = f"task {spec.name!r}" + (f" ({spec.source_file})" if spec.source_file else "")
    if texts and uses_language_model(backbone):   # no text tower: the language model's tokenizer reads the texts
        _warn_lm_unknown(where, texts, backbone, what)   # (its context: warn_lm_context measures the rows)
        return
    if not texts or not hasattr(tok, "context_length"):
        return
    if not (hasattr(tok, "encode_words") and hasattr(tok, "unk_id")):   # a subword tokenizer reads any text, but cuts
        every = -(-len(texts) // MEASURED_TEXTS)   # a sample spread over the sorted texts, not their first ones
        measured = texts[::every]
        cut = cut_texts(tok, measured)
        if cut:
            logger.warning("%s: %d of %s%d distinct %s are longer than the text tower's context of %d tokens and are "
                           "cut; what follows the cut is not read", where, cut,
                           f"{len(measured)} measured (one in {every}) of its " if every > 1 else "its ",
                           len(texts), what, tok.context_length)
        return
    ids = [tok.encode_words(t) for t in texts]
    unknown = sum(tok.unk_id in row for row in ids)
    cut = sum(len(row) > tok.context_length - 2 for row in ids)
    if unknown:
        logger.warning("%s: %d of its %d distinct %s hold words the %s tokenizer does not know (they become <unk>, "
                       "e.g. %r); texts that differ only there look the same to the model: use a backbone with a "
                       "subword tokenizer (open_clip:NAME, hf:DIR) for this data", where, unknown, len(texts), what,
                       backbone.name, next(t for t, r in zip(texts, ids) if tok.unk_id in r))
    if cut:
        logger.warning("%s: %d of its %d distinct %s are longer than the tokenizer's context of %d tokens and are "
                       "cut; texts that differ only after the cut look the same to the model",
                       where, cut, len(texts), what, tok.context_length)


def _warn_lm_unknown(where: str, texts: list[str], backbone: Backbone, what: str) -> None:
    """Say when the language model's tokenizer reads some of ``texts`` (sorted, distinct) as its unknown token (the
    built-in LLaVA's word-level one, 450 words): class targets that differ only there are the same candidate ids and
    tie on every image, and a target holding it trains the model to write a token that decodes to nothing. A sample
    of :data:`MEASURED_TEXTS` is read; a tokenizer without an unknown token (byte-level BPE) reads every text."""
    tok = getattr(getattr(backbone, "hf_processor", None), "tokenizer", None)
    unk = getattr(tok, "unk_token_id", None)
    if not isinstance(unk, int) or not callable(tok):
        return
    every = -(-len(texts) // MEASURED_TEXTS)   # a sample spread over the sorted texts, not their first ones
    measured = texts[::every]
    held = [t for t, ids in zip(measured, tok(measured, add_special_tokens=False)["input_ids"]) if unk in ids]
    if held:
        some = f"{len(measured)} measured (one in {every}) of its " if every > 1 else "its "
        logger.warning("%s: %d of %s%d distinct %s hold words the language model's tokenizer does not know (they "
                       "become %r, e.g. %r); texts that differ only there look the same to the model, and a target "
                       "holding one is trained to write a token that decodes to nothing: use a backbone whose "
                       "tokenizer reads this data (hf:DIR of a model with a subword vocabulary)", where, len(held),
                       some, len(texts), what, tok.unk_token, held[0])
