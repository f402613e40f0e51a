"""Tokenizers as CLIP-style callables: texts -> fixed-length ``(N, L)`` LongTensor, plus ``decode``.

Three kinds, one shape (:class:`Tokenizer`): the package's small word-level tokenizer
(:class:`WordTokenizer`, built by :func:`build_word_tokenizer`), open_clip's bundled BPE
(:class:`OpenClipBPETokenizer`) and any local ``transformers`` tokenizer (:class:`HFTokenizer`).
Every one carries ``pad_id``, ``bos_id``, ``eos_id``, ``vocab_size`` and ``context_length``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = [
    "EOT",
    "PAD",
    "SOT",
    "SPECIAL_TOKENS",
    "UNK",
    "HFTokenizer",
    "OpenClipBPETokenizer",
    "Tokenizer",
    "WordTokenizer",
    "build_word_tokenizer",
    "cut_texts",
    "is_word_tokenizer",
    "load_hf_tokenizer",
]

# Special tokens of the word-level tokenizer, in id order (pad=0, sot=1, eot=2, unk=3).
PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
SPECIAL_TOKENS = (PAD, SOT, EOT, UNK)

_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:'])")
# The pre-tokenizer splits "don't" / "cube's" at the apostrophe: its contraction tails are joined back on.
_CONTRACTION = re.compile(r"(\w)'\s+(t|s|d|m|re|ve|ll)\b")


class Tokenizer(Protocol):
    """What a backbone's tokenizer offers: ``tok(texts)`` -> ``(N, context_length)`` ids, and ``decode``."""

    context_length: int
    pad_id: int
    bos_id: int | None
    eos_id: int
    vocab_size: int
    #: The texts it reads as special tokens (an end token inside a caption ends it: the text tower pools there).
    special_tokens: tuple[str, ...]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor: ...

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        """The text of ``token_ids``, without the begin, end and padding tokens."""


def _tidy(text: str) -> str:
    """Join word-level tokens back into a readable sentence ("a red cube ." -> "a red cube.", "don ' t" -> "don't")."""
    return _CONTRACTION.sub(r"\1'\2", _SPACE_BEFORE_PUNCT.sub(r"\1", text)).strip()


def _strip_ids(token_ids: Sequence[int] | Tensor, bos_id: int | None, eos_id: int, pad_id: int) -> list[int]:
    """Drop a leading start token, cut at the first end token, drop padding."""
    ids = token_ids.tolist() if isinstance(token_ids, Tensor) else [int(i) for i in token_ids]
    if ids and bos_id is not None and ids[0] == bos_id:
        ids = ids[1:]
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return [i for i in ids if i != pad_id and i != bos_id]


class WordTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer (``tokenizer.json``) as a CLIP-style callable.

    ``tok(["a red circle."])`` gives a LongTensor ``(N, context_length)``: ``<sot> words <eot>`` then
    ``<pad>``; text longer than the context is truncated but always keeps its ``<eot>``, which the
    text tower pools at. ``clean``: an open_clip model's text cleaning (its ``tokenizer_kwargs``), or None.
    """

    def __init__(self, tokenizer_dir: str | os.PathLike, context_length: int,
                 clean: Callable[[str], str] | None = None) -> None:
        from tokenizers import Tokenizer as _HFTok

        path = Path(tokenizer_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {path} not found; a word-level tokenizer directory needs tokenizer.json "
                "(build one with mtl_lora_vl.backbones.build_word_tokenizer)"
            )
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (<sot> and <eot>), got {context_length}")
        self.dir = Path(tokenizer_dir)
        self.context_length = int(context_length)
        self.clean = clean
        self._tok = _HFTok.from_file(str(path))
        ids = {t: self._tok.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer {path} lacks the special tokens {missing}; expected {list(SPECIAL_TOKENS)}")
        self.pad_id: int = ids[PAD]
        self.bos_id: int | None = ids[SOT]
        self.eos_id: int = ids[EOT]
        self.unk_id: int = ids[UNK]
        self.vocab_size: int = self._tok.get_vocab_size()
        self.special_tokens: tuple[str, ...] = SPECIAL_TOKENS
        self._tok.no_padding()
        self._tok.no_truncation()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else int(context_length)
        if length < 2:   # (a shape mismatch deep in the copy below)
            raise ValueError(f"context_length must be at least 2 (<sot> and <eot>), got {context_length}")
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        texts = [self.clean(t) for t in texts] if self.clean is not None else list(texts)
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        for row, enc in enumerate(encodings):
            ids = [self.bos_id, *enc.ids[: length - 2], self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def encode_words(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (for vocabulary checks)."""
        return self._tok.encode(self.clean(text) if self.clean is not None else text, add_special_tokens=False).ids

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        """The words of ``token_ids`` (an unknown id as the unknown word), without begin, end and padding tokens."""
        ids = _strip_ids(token_ids, self.bos_id, self.eos_id, self.pad_id)
        words = [self._tok.id_to_token(i) or UNK for i in ids]
        return _tidy(" ".join(words))


def build_word_tokenizer(words: Iterable[str], out_dir: str | os.PathLike, context_length: int = 32) -> Path:
    """Build a small word-level tokenizer over ``words`` and save it as a Hugging Face tokenizer directory.

    The vocabulary is pad/sot/eot/unk (ids 0-3) followed by the sorted distinct lower-cased words;
    input text is NFD-normalised, accent-stripped, lower-cased and split at whitespace and punctuation.
    Writes ``tokenizer.json`` and ``tokenizer_config.json`` (loadable by ``transformers.AutoTokenizer``
    and by open_clip's local-dir tokenizer). Returns ``out_dir``.
    """
    from tokenizers import Tokenizer as _HFTok
    from tokenizers import normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing

    normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    vocab_words: set[str] = set()
    for w in words:
        for piece, _ in pre.pre_tokenize_str(normalizer.normalize_str(str(w))):
            if piece:
                vocab_words.add(piece)
    vocab_words -= set(SPECIAL_TOKENS)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(vocab_words):
        vocab[w] = len(vocab)

    tok = _HFTok(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = TemplateProcessing(
        single=f"{SOT} $A {EOT}", pair=f"{SOT} $A {EOT} $B {EOT}",
        special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])],
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD,
        "bos_token": SOT,
        "eos_token": EOT,
        "unk_token": UNK,
        "model_max_length": int(context_length),
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def is_word_tokenizer(tdir: Path) -> bool:
    """True when ``tdir/tokenizer.json`` is a word-level tokenizer with this package's special tokens."""
    try:
        data = json.loads((tdir / "tokenizer.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"tokenizer file {tdir / 'tokenizer.json'} is unreadable or not JSON: {e}") from e
    vocab = data.get("model", {}).get("vocab", {})
    return data.get("model", {}).get("type") == "WordLevel" and all(t in vocab for t in SPECIAL_TOKENS)


class OpenClipBPETokenizer:
    """open_clip's bundled BPE ``SimpleTokenizer`` with the id fields a Backbone needs."""

    def __init__(self, tok: Any, context_length: int) -> None:
        self._tok = tok
        self.context_length = int(context_length)
        self.pad_id = 0
        self.bos_id: int | None = int(tok.sot_token_id)
        self.eos_id = int(tok.eot_token_id)
        self.vocab_size = int(tok.vocab_size)
        self.special_tokens = tuple(str(tok.decoder[i]) for i in tok.all_special_ids if i in tok.decoder)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else int(context_length)
        if length < 1:   # (0 was taken as the default context)
            raise ValueError(f"context_length must be at least 1 (the end token), got {context_length}")
        return self._tok(list(texts), context_length=length)

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        """open_clip's decoding of ``token_ids``, without begin, end and padding tokens."""
        ids = _strip_ids(token_ids, self.bos_id, self.eos_id, self.pad_id)
        return self._tok.decode(ids).strip()


class HFTokenizer:
    """A ``transformers`` tokenizer (local directory) as a fixed-length CLIP-style callable. ``clean`` and
    ``strip_sep``: an open_clip model's ``tokenizer_kwargs`` (its text cleaning; separator tokens written as 0),
    so that its text tower reads the ids open_clip's own tokenizer gives it."""

    def __init__(self, tok: Any, context_length: int, clean: Callable[[str], str] | None = None,
                 strip_sep: bool = False) -> None:
        self._tok = tok
        self.context_length = int(context_length)
        self.clean = clean
        self.strip_sep = strip_sep
        end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if end is None:  # text embeddings pool at the end token and captions stop at it
            where = getattr(tok, "name_or_path", "") or ""
            missing = bool(where) and Path(where).is_dir() and not (Path(where) / "tokenizer_config.json").is_file()
            raise ValueError(f"the tokenizer {where or type(tok).__name__} has neither an end-of-sequence nor a "
                             "separator token; " + ("its folder has no tokenizer_config.json (which names them): copy "
                             "the model's" if missing else "set eos_token in its tokenizer_config.json"))
        self.eos_id = int(end)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.bos_id: int | None = None if bos is None else int(bos)
        self.vocab_size = len(tok)
        # the start and end tokens, which change what the text tower reads (it pools at the end token); not every
        # special token: a CLIP tokenizer converted from open_clip names "!" its pad token
        self.special_tokens = tuple(dict.fromkeys(str(tok.convert_ids_to_tokens(i))
                                                  for i in (self.bos_id, self.eos_id) if i is not None))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else int(context_length)
        if length < 1:
            raise ValueError(f"context_length must be at least 1 (the end token), got {context_length}")
        texts = [self.clean(t) for t in texts] if self.clean is not None else list(texts)
        if not texts:   # (transformers' fast tokenizers fail on an empty batch with an IndexError)
            return torch.full((0, length), self.pad_id, dtype=torch.long)
        rows = self._tok(texts, truncation=True, max_length=length)["input_ids"]
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, ids in enumerate(rows):
            # Every row ends in the end token (pooling and teacher forcing read it), right after its last
            # token: put back the one truncation cut off, add the one a language model's tokenizer leaves
            # out; padding on the right, whichever side the tokenizer pads.
            body = list(ids[:-1] if ids and ids[-1] == self.eos_id else ids)[:length - 1]
            out[i, :len(body) + 1] = torch.tensor([*body, self.eos_id])
        sep = self._tok.sep_token_id
        if self.strip_sep and sep is not None:
            out[out == sep] = 0
        return out

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        """The Hugging Face tokenizer's decoding of ``token_ids``, special tokens skipped."""
        ids = _strip_ids(token_ids, self.bos_id, self.eos_id, self.pad_id)
        return self._tok.decode(ids, skip_special_tokens=True).strip()


def cut_texts(tok: Tokenizer, texts: Sequence[str], batch: int = 512) -> int:
    """How many of ``texts`` ``tok`` cuts at its context length: a row differs from the same text tokenised with
    room to spare (its end token put back over a word), or that one runs past the context."""
    context, cut = tok.context_length, 0
    for at in range(0, len(texts), batch):
        part = list(texts[at:at + batch])
        fitted, roomy = tok(part), tok(part, context_length=4 * context)
        cut += int(((fitted != roomy[:, :context]).any(1) | (roomy[:, context:] != tok.pad_id).any(1)).sum())
    return cut


#: Files one of which a ``transformers`` tokenizer folder holds (fast, BPE, WordPiece, SentencePiece vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")


def load_hf_tokenizer(tdir: Path, context_length: int, name: str, clean: Callable[[str], str] | None = None,
                      strip_sep: bool = False) -> HFTokenizer:
    """A local ``transformers`` tokenizer directory as an :class:`HFTokenizer` (``local_files_only``)."""
    if not tdir.is_dir():
        raise FileNotFoundError(f"tokenizer directory {tdir} for {name} does not exist")
    if not any((tdir / f).is_file() for f in TOKENIZER_FILES):
        # transformers 5 builds an empty tokenizer (2 tokens) from config.json alone: every text would be "<unk>"
        raise ValueError(f"{tdir} has no tokenizer files for {name} ({', '.join(TOKENIZER_FILES)}); save them beside "
                         "the model with tokenizer.save_pretrained(DIR)")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
    except Exception as e:  # transformers raises many types here; name the folder and the fix
        raise ValueError(
            f"could not load a tokenizer from {tdir} for {name}: {e}. The folder needs the tokenizer "
            "files saved by tokenizer.save_pretrained (tokenizer.json or vocab.json + merges.txt)"
        ) from e
    return HFTokenizer(tok, context_length, clean, strip_sep)
