"""Base vision-language models behind one small interface.

A :class:`Backbone` bundles a base model (open_clip ``CLIP``/``CustomTextCLIP``/``CoCa`` or a Hugging
Face ``CLIPModel``) with its tokenizer and image normalisation, so that task heads, loaders and the
trainer never branch on the model family. Adapters are attached to ``Backbone.model`` in place by
:func:`mtl_lora_vl.attach`; the encode methods call the (possibly adapted) model, so they see the
adapters and the routing scope.

Everything loads from local files only. Spec strings accepted by :func:`load_backbone`:

* ``builtin`` -- the package's small pretrained CLIP (``assets/builtin_clip``), offline, CPU-sized;
* ``open_clip:NAME`` with ``pretrained=/path/to/checkpoint`` -- an open_clip architecture by name;
* ``open_clip:DIR`` -- a directory with ``open_clip_config.json`` and weights (open_clip's local-dir);
* ``hf:DIR`` -- a local Hugging Face ``CLIPModel`` directory (``save_pretrained`` layout).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "SPEC_FORMS",
    "WordTokenizer",
    "builtin_dir",
    "build_open_clip",
    "build_word_tokenizer",
    "load_backbone",
]

SPEC_FORMS = (
    "'builtin' (the package's small pretrained CLIP), "
    "'open_clip:NAME' with --pretrained /path/to/checkpoint (e.g. open_clip:ViT-B-32 --pretrained "
    "/models/vit_b_32.bin), 'open_clip:/path/to/dir' (a folder with open_clip_config.json and weights), "
    "or 'hf:/path/to/dir' (a local Hugging Face CLIPModel directory)"
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Special tokens of the word-level tokenizer, in id order (pad=0, sot=1, eot=2, unk=3).
PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
SPECIAL_TOKENS = (PAD, SOT, EOT, UNK)

_BUILTIN_SUBDIR = "builtin_clip"
_BUILTIN_WEIGHTS = "model.safetensors"
_BUILTIN_CONFIG = "open_clip_config.json"


# --------------------------------------------------------------------------------------------------
# Offline guard
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Make Hugging Face libraries refuse network access while loading; restore afterwards."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    constants = None
    saved_const = None
    try:
        import huggingface_hub.constants as constants  # type: ignore[no-redef]

        saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
        constants.HF_HUB_OFFLINE = True
    except ImportError:
        constants = None
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------

_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:'])")


def _tidy(text: str) -> str:
    """Join word-level tokens back into a readable sentence ("a red cube ." -> "a red cube.")."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip()


class WordTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer (``tokenizer.json``) as a CLIP-style callable.

    ``tok(["a red circle."])`` gives a LongTensor ``(N, context_length)``: ``<sot> words <eot>`` then
    ``<pad>``; text longer than the context is truncated but always keeps its ``<eot>``, which the
    text tower pools at.
    """

    def __init__(self, tokenizer_dir: str | os.PathLike, context_length: int) -> None:
        from tokenizers import Tokenizer

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
        self._tok = Tokenizer.from_file(str(path))
        ids = {t: self._tok.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer {path} lacks the special tokens {missing}; expected {list(SPECIAL_TOKENS)}")
        self.pad_id: int = ids[PAD]
        self.bos_id: int | None = ids[SOT]
        self.eos_id: int = ids[EOT]
        self.unk_id: int = ids[UNK]
        self.vocab_size: int = self._tok.get_vocab_size()
        self._tok.no_padding()
        self._tok.no_truncation()
        self._special = {self.pad_id, self.bos_id, self.eos_id}

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        for row, enc in enumerate(encodings):
            ids = [self.bos_id, *enc.ids[: length - 2], self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def encode_words(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (for vocabulary checks)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        ids = _strip_ids(token_ids, self.bos_id, self.eos_id, self.pad_id)
        words = [self._tok.id_to_token(i) or UNK for i in ids]
        return _tidy(" ".join(words))


def _strip_ids(token_ids: Sequence[int] | Tensor, bos_id: int | None, eos_id: int, pad_id: int) -> list[int]:
    """Drop a leading start token, cut at the first end token, drop padding."""
    ids = token_ids.tolist() if isinstance(token_ids, Tensor) else [int(i) for i in token_ids]
    if ids and bos_id is not None and ids[0] == bos_id:
        ids = ids[1:]
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return [i for i in ids if i != pad_id and i != bos_id]


def build_word_tokenizer(words: Iterable[str], out_dir: str | os.PathLike, context_length: int = 32) -> Path:
    """Build a small word-level tokenizer over ``words`` and save it as a Hugging Face tokenizer directory.

    The vocabulary is pad/sot/eot/unk (ids 0-3) followed by the sorted distinct lower-cased words;
    input text is NFD-normalised, accent-stripped, lower-cased and split at whitespace and punctuation.
    Writes ``tokenizer.json`` and ``tokenizer_config.json`` (loadable by ``transformers.AutoTokenizer``
    and by open_clip's local-dir tokenizer). Returns ``out_dir``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
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

    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
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


class _OpenClipTokenizer:
    """open_clip's bundled BPE ``SimpleTokenizer`` with the id fields a Backbone needs."""

    def __init__(self, tok: Any, context_length: int) -> None:
        self._tok = tok
        self.context_length = int(context_length)
        self.pad_id = 0
        self.bos_id: int | None = int(tok.sot_token_id)
        self.eos_id = int(tok.eot_token_id)
        self.vocab_size = int(tok.vocab_size)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tok(list(texts), context_length=context_length or self.context_length)

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        ids = _strip_ids(token_ids, self.bos_id, self.eos_id, self.pad_id)
        return self._tok.decode(ids).strip()


class _HFTokenizer:
    """A ``transformers`` tokenizer (local directory) as a fixed-length CLIP-style callable."""

    def __init__(self, tok: Any, context_length: int) -> None:
        self._tok = tok
        self.context_length = int(context_length)
        self.eos_id = int(tok.eos_token_id) if tok.eos_token_id is not None else int(tok.sep_token_id)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.bos_id: int | None = None if bos is None else int(bos)
        self.vocab_size = len(tok)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        enc = self._tok(list(texts), padding="max_length", truncation=True, max_length=length,
                        return_tensors="pt")
        ids = enc["input_ids"].long()
        # Truncation may cut the end token off long texts; pooling needs it, so put it back.
        has_eos = (ids == self.eos_id).any(dim=1)
        ids[~has_eos, -1] = self.eos_id
        return ids

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        ids = _strip_ids(token_ids, self.bos_id, self.eos_id, self.pad_id)
        return self._tok.decode(ids, skip_special_tokens=True).strip()


# --------------------------------------------------------------------------------------------------
# The Backbone
# --------------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A base VL model with its tokenizer and image normalisation (see the module docstring)."""

    model: nn.Module
    family: str                      # "open_clip" | "hf_clip"
    name: str                        # "builtin", "open_clip:ViT-B-32", "hf:/path/to/dir"
    tokenizer: Callable[..., Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    pad_id: int
    bos_id: int | None
    eos_id: int
    context_length: int = 77
    vocab_size: int = 0
    _norm_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---------------------------------------------------------------------------------- encoders
    def encode_image(self, images: Tensor) -> Tensor:
        """Normalised float images ``(B, 3, H, W)`` -> L2-normalised image embeddings ``(B, D)``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_image expects float images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.family == "open_clip":
            feats = self.model.encode_image(images)
        else:
            pooled = self.model.vision_model(pixel_values=images).pooler_output
            feats = self.model.visual_projection(pooled)
        if isinstance(feats, tuple):
            feats = feats[0]
        return F.normalize(feats, dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids ``(N, L)`` (L <= context_length; shorter is padded) -> L2-normalised ``(N, D)``."""
        tokens = self._fit_tokens(tokens)
        if self.family == "open_clip":
            feats = self.model.encode_text(tokens)
        else:
            pooled = self.model.text_model(input_ids=tokens).pooler_output
            feats = self.model.text_projection(pooled)
        if isinstance(feats, tuple):
            feats = feats[0]
        return F.normalize(feats, dim=-1)

    def _fit_tokens(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"text tokens must be a (N, L) LongTensor, got shape {tuple(tokens.shape)}")
        if tokens.dtype != torch.long:
            tokens = tokens.long()
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"text tokens have length {length} but {self.name} has context length {self.context_length}; "
                "tokenize with backbone.tokenizer, which truncates to the context length"
            )
        if length < self.context_length and self.family == "open_clip" and not self.has_decoder:
            # open_clip's CLIP adds its full positional table, so it needs exactly context_length tokens.
            tokens = F.pad(tokens, (0, self.context_length - length), value=self.pad_id)
        return tokens

    @property
    def logit_scale(self) -> Tensor:
        """The model's contrastive temperature, exponentiated (a scalar tensor)."""
        return self.model.logit_scale.exp().reshape(())

    @property
    def has_decoder(self) -> bool:
        """True when the model has a caption decoder (open_clip CoCa)."""
        return hasattr(self.model, "text_decoder") and hasattr(self.model, "_encode_image")

    # ---------------------------------------------------------------------------------- captioning
    def _require_decoder(self, what: str) -> None:
        if not self.has_decoder:
            raise ValueError(
                f"{what} needs a caption decoder, but backbone {self.name!r} ({type(self.model).__name__}) "
                "has none; use an open_clip CoCa model (e.g. --backbone open_clip:coca_ViT-B-32 --pretrained "
                "/path/to/coca.bin), or score captions by retrieval instead"
            )

    def _decoder_logits(self, image_embs: Tensor, tokens: Tensor) -> Tensor:
        _, token_embs = self.model._encode_text(tokens)
        return self.model.text_decoder(image_embs, token_embs)

    def caption_logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced decoder logits ``(B, L-1, vocab)``; position i predicts ``tokens[:, i + 1]``."""
        self._require_decoder("caption_logits")
        if tokens.dim() != 2 or tokens.shape[1] < 2:
            raise ValueError(f"caption tokens must be (B, L) with L >= 2, got shape {tuple(tokens.shape)}")
        if tokens.shape[0] != images.shape[0]:
            raise ValueError(f"caption_logits got {images.shape[0]} images but {tokens.shape[0]} token rows")
        tokens = self._fit_tokens(tokens)
        _, image_embs = self.model._encode_image(images)
        _, token_embs = self.model._encode_text(tokens)
        return self.model.text_decoder(image_embs, token_embs[:, :-1])

    @torch.no_grad()
    def generate(self, images: Tensor, max_len: int = 20, beam_size: int = 1) -> list[str]:
        """Decode one caption per image: greedy (``beam_size=1``) or beam search with length normalisation."""
        self._require_decoder("generate")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if self.bos_id is None:
            raise ValueError(f"backbone {self.name!r} has no start token; cannot generate")
        max_len = max(1, min(int(max_len), self.context_length - 1))
        _, image_embs = self.model._encode_image(images)
        batch, k = images.shape[0], beam_size
        image_embs = image_embs.repeat_interleave(k, dim=0)
        device = image_embs.device
        seqs = torch.full((batch * k, 1), self.bos_id, dtype=torch.long, device=device)
        scores = torch.full((batch, k), float("-inf"), device=device)
        scores[:, 0] = 0.0
        done = torch.zeros(batch * k, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch * k, device=device)
        unk = getattr(self.tokenizer, "unk_id", None)
        banned = sorted({self.pad_id, self.bos_id, *(() if unk is None else (unk,))} - {self.eos_id})
        for _ in range(max_len):
            logits = self._decoder_logits(image_embs, seqs)[:, -1].float()
            vocab = logits.shape[-1]
            logp = logits.log_softmax(dim=-1)
            logp[:, banned] = float("-inf")
            # A finished beam may only append padding, at no cost, so its score stays put.
            logp[done] = float("-inf")
            logp[done, self.pad_id] = 0.0
            cand = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab)
            top, idx = cand.topk(k, dim=-1)
            beam = idx // vocab + torch.arange(batch, device=device).unsqueeze(1) * k
            token = (idx % vocab).reshape(-1)
            beam = beam.reshape(-1)
            seqs = torch.cat([seqs[beam], token.unsqueeze(1)], dim=1)
            was_done = done[beam]
            lengths = lengths[beam] + (~was_done).float()
            done = was_done | (token == self.eos_id)
            scores = top
            if bool(done.all()):
                break
        norm = (scores.reshape(-1) / lengths.clamp(min=1)).reshape(batch, k)
        norm = torch.where(torch.isfinite(norm), norm, torch.full_like(norm, float("-inf")))
        best = norm.argmax(dim=1) + torch.arange(batch, device=device) * k
        return [self.decode(seqs[i]) for i in best.tolist()]

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        """Token ids -> text (start token dropped, cut at the end token, padding removed)."""
        decode = getattr(self.tokenizer, "decode", None)
        if decode is None:
            raise ValueError(f"the tokenizer of backbone {self.name!r} cannot decode token ids")
        return decode(token_ids)

    # ---------------------------------------------------------------------------------- images
    def preprocess_uint8(self, images_uint8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """uint8 images ``(B, 3, H, W)`` -> normalised ``dtype`` tensor on the same device.

        Conversion runs on the images' device (do it after the host-to-device copy); images whose size
        differs from ``image_size`` are resized there with antialiasing.
        """
        if images_uint8.dtype != torch.uint8:
            raise ValueError(f"preprocess_uint8 expects uint8 images, got dtype {images_uint8.dtype}")
        if images_uint8.dim() == 3:
            images_uint8 = images_uint8.unsqueeze(0)
        if images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(f"preprocess_uint8 expects images of shape (B, 3, H, W), got {tuple(images_uint8.shape)}")
        device = images_uint8.device
        key = str(device)
        if key not in self._norm_cache:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self._norm_cache[key] = (mean, std)
        mean, std = self._norm_cache[key]
        x = images_uint8.float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return ((x - mean) / std).to(dtype)

    def to(self, device: str | torch.device) -> Backbone:
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self


# --------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------


def _as_triple(v: Any, what: str) -> tuple[float, float, float]:
    vals = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
    if len(vals) != 3:
        raise ValueError(f"{what} must have 3 values (RGB), got {v!r}")
    return vals  # type: ignore[return-value]


def _open_clip_class(model_cfg: dict) -> type[nn.Module]:
    import open_clip

    text_cfg = model_cfg.get("text_cfg", {})
    custom = bool(model_cfg.get("custom_text", False)) or bool(text_cfg.get("hf_model_name"))
    if "multimodal_cfg" in model_cfg:
        return open_clip.CoCa
    return open_clip.CustomTextCLIP if custom else open_clip.CLIP


def _tokenizer_for_open_clip(model_cfg: dict, tokenizer_dir: str | os.PathLike | None, name: str) -> Any:
    """Pick the tokenizer an open_clip model config implies, from local files only."""
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    vocab_size = int(text_cfg.get("vocab_size", 49408))
    hf_name = text_cfg.get("hf_tokenizer_name")
    if tokenizer_dir is None and hf_name and Path(str(hf_name)).is_dir():
        tokenizer_dir = hf_name
    if tokenizer_dir is not None:
        tdir = Path(tokenizer_dir)
        if (tdir / "tokenizer.json").is_file() and _is_word_tokenizer(tdir):
            tok: Any = WordTokenizer(tdir, context_length)
        else:
            tok = _load_hf_tokenizer(tdir, context_length, name)
        if tok.vocab_size > vocab_size:
            raise ValueError(
                f"tokenizer in {tdir} has {tok.vocab_size} tokens but model {name} embeds only {vocab_size}; "
                "use the tokenizer the model was trained with, or set text_cfg.vocab_size to at least "
                f"{tok.vocab_size}"
            )
        return tok
    if hf_name or text_cfg.get("hf_model_name"):
        raise ValueError(
            f"open_clip model {name} uses the Hugging Face tokenizer/text model "
            f"{hf_name or text_cfg.get('hf_model_name')!r}, which would need a download; this package loads "
            "local files only. Save that model as an open_clip local directory (open_clip_config.json, weights "
            "and tokenizer files) and pass --backbone open_clip:/path/to/dir"
        )
    if vocab_size != 49408:
        raise ValueError(
            f"open_clip model {name} has a {vocab_size}-token vocabulary but no tokenizer was given; pass "
            "tokenizer_dir (a Hugging Face tokenizer directory) or set text_cfg.hf_tokenizer_name to one"
        )
    from open_clip.tokenizer import SimpleTokenizer

    return _OpenClipTokenizer(SimpleTokenizer(context_length=context_length), context_length)


def _is_word_tokenizer(tdir: Path) -> bool:
    try:
        data = json.loads((tdir / "tokenizer.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"tokenizer file {tdir / 'tokenizer.json'} is unreadable or not JSON: {e}") from e
    vocab = data.get("model", {}).get("vocab", {})
    return data.get("model", {}).get("type") == "WordLevel" and all(t in vocab for t in SPECIAL_TOKENS)


def _load_hf_tokenizer(tdir: Path, context_length: int, name: str) -> _HFTokenizer:
    if not tdir.is_dir():
        raise FileNotFoundError(f"tokenizer directory {tdir} for {name} does not exist")
    from transformers import AutoTokenizer

    with _offline():
        try:
            tok = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
        except Exception as e:  # transformers raises many types here; name the folder and the fix
            raise ValueError(
                f"could not load a tokenizer from {tdir} for {name}: {e}. The folder needs the tokenizer "
                "files saved by tokenizer.save_pretrained (tokenizer.json or vocab.json + merges.txt)"
            ) from e
    return _HFTokenizer(tok, context_length)


def _image_size(visual: nn.Module, fallback: Any) -> int:
    size = getattr(visual, "image_size", fallback)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square image size {size} is not supported")
        size = size[0]
    return int(size)


def _open_clip_backbone(model: nn.Module, model_cfg: dict, preprocess_cfg: dict, tokenizer: Any,
                        name: str) -> Backbone:
    text_cfg = model_cfg.get("text_cfg", {})
    vision_cfg = model_cfg.get("vision_cfg", {})
    context_length = int(text_cfg.get("context_length", getattr(tokenizer, "context_length", 77)))
    return Backbone(
        model=model,
        family="open_clip",
        name=name,
        tokenizer=tokenizer,
        image_size=_image_size(model.visual, vision_cfg.get("image_size", 224)),
        mean=_as_triple(preprocess_cfg.get("mean", OPENAI_MEAN), "preprocess_cfg.mean"),
        std=_as_triple(preprocess_cfg.get("std", OPENAI_STD), "preprocess_cfg.std"),
        embed_dim=int(model_cfg["embed_dim"]),
        pad_id=int(tokenizer.pad_id),
        bos_id=tokenizer.bos_id,
        eos_id=int(tokenizer.eos_id),
        context_length=context_length,
        vocab_size=int(text_cfg.get("vocab_size", tokenizer.vocab_size)),
    )


def _split_config(config: dict) -> tuple[dict, dict]:
    if not isinstance(config, dict):
        raise TypeError(f"open_clip config must be a dict, got {type(config).__name__}")
    if "model_cfg" in config:
        return dict(config["model_cfg"]), dict(config.get("preprocess_cfg", {}))
    if "embed_dim" not in config or "vision_cfg" not in config or "text_cfg" not in config:
        raise ValueError(
            "open_clip config needs embed_dim, vision_cfg and text_cfg (a model config), or the "
            "{'model_cfg': ..., 'preprocess_cfg': ...} shape of open_clip_config.json"
        )
    return dict(config), {}


def _check_pooling(model_cfg: dict, tokenizer: Any, name: str) -> None:
    """open_clip pools text at the highest token id by default; that is the end token only in its BPE."""
    text_cfg = model_cfg.get("text_cfg", {})
    if "multimodal_cfg" in model_cfg or text_cfg.get("embed_cls") or text_cfg.get("hf_model_name"):
        return
    pool = text_cfg.get("pool_type", "argmax")
    if pool == "eos" and int(text_cfg.get("eos_id", 2)) != int(tokenizer.eos_id):
        raise ValueError(
            f"model {name} pools text at eos_id={text_cfg.get('eos_id', 2)} but its tokenizer's end token is "
            f"{tokenizer.eos_id}; set text_cfg.eos_id to {tokenizer.eos_id}"
        )
    if pool == "argmax" and int(tokenizer.eos_id) != int(tokenizer.vocab_size) - 1:
        raise ValueError(
            f"model {name} pools text at the highest token id (pool_type='argmax'), but its tokenizer's end "
            f"token {tokenizer.eos_id} is not the highest id; set text_cfg.pool_type='eos' and "
            f"text_cfg.eos_id={tokenizer.eos_id}"
        )


def build_open_clip(config: dict, tokenizer_dir: str | os.PathLike | None = None, name: str = "open_clip:custom",
                    device: str | torch.device = "cpu") -> Backbone:
    """Build a freshly initialised open_clip model from an in-memory config dict.

    ``config`` is an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg`` and, for CoCa,
    ``multimodal_cfg``) or the ``{"model_cfg": ..., "preprocess_cfg": ...}`` shape of
    ``open_clip_config.json``. ``tokenizer_dir`` is a Hugging Face tokenizer directory (e.g. from
    :func:`build_word_tokenizer`); without it the config's local ``hf_tokenizer_name`` or open_clip's
    bundled BPE tokenizer is used. Used for tiny test models and by the built-in loader.
    """
    model_cfg, preprocess_cfg = _split_config(config)
    tokenizer = _tokenizer_for_open_clip(model_cfg, tokenizer_dir, name)
    _check_pooling(model_cfg, tokenizer, name)
    cls = _open_clip_class(model_cfg)
    kwargs = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    with _offline():
        model = cls(**kwargs)
    decoder = getattr(model, "text_decoder", None)
    if isinstance(getattr(decoder, "text_projection", None), nn.Parameter):
        # open_clip's CoCa leaves its decoder's output projection as torch.empty (its init_parameters is
        # never called); give a fresh model a proper init so its logits are finite and reproducible.
        nn.init.normal_(decoder.text_projection, std=int(decoder.width) ** -0.5)
    model.to(device)
    return _open_clip_backbone(model, model_cfg, preprocess_cfg, tokenizer, name)


def _load_state(model: nn.Module, path: Path, what: str) -> None:
    """Load a safetensors (or weights-only torch) state dict into ``model``, casting to its dtypes."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise ValueError(f"{what} weights {path} are unreadable ({e}); re-create or re-download them") from e
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{what} weights {path} do not fit the model architecture: {e}") from e


# --------------------------------------------------------------------------------------------------
# The built-in backbone
# --------------------------------------------------------------------------------------------------


def builtin_dir() -> Path:
    """Folder of the built-in backbone: ``mtl_lora_vl/assets/builtin_clip`` (installed wheel) if it has a
    config, else ``<repo>/assets/builtin_clip`` (checkout)."""
    candidates = []
    try:
        from importlib.resources import files

        candidates.append(Path(str(files("mtl_lora_vl") / "assets" / _BUILTIN_SUBDIR)))
    except (ModuleNotFoundError, TypeError):
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "assets" / _BUILTIN_SUBDIR)
    for c in candidates:
        if (c / _BUILTIN_CONFIG).is_file():
            return c
    return candidates[-1]


def _load_builtin(pretrained: str | None, device: str | torch.device) -> Backbone:
    folder = builtin_dir()
    config_path = folder / _BUILTIN_CONFIG
    weights = Path(pretrained) if pretrained else folder / _BUILTIN_WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        missing = config_path if not config_path.is_file() else weights
        raise FileNotFoundError(
            f"the built-in backbone is missing {missing}. Build it once with "
            "`python scripts/pretrain_backbone.py` (about 10 minutes on 2 CPU cores), which writes "
            f"{folder}/{{open_clip_config.json,model.safetensors,tokenizer.json,tokenizer_config.json}}"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); re-run python scripts/pretrain_backbone.py") from e
    bb = build_open_clip(config, tokenizer_dir=folder, name="builtin")
    _load_state(bb.model, weights, "built-in backbone")
    bb.model.float().eval()
    return bb.to(device)


# --------------------------------------------------------------------------------------------------
# open_clip by name / local dir
# --------------------------------------------------------------------------------------------------


def _load_open_clip(name: str, pretrained: str | None, device: str | torch.device) -> Backbone:
    import open_clip
    from open_clip.factory import get_model_config

    spec = f"open_clip:{name}"
    local = Path(name).expanduser()
    if local.is_dir():
        if pretrained:
            raise ValueError(f"{spec} is a local directory with its own weights; drop --pretrained {pretrained}")
        config_path = local / _BUILTIN_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{local} has no open_clip_config.json; an open_clip model directory needs open_clip_config.json "
                "({'model_cfg': ..., 'preprocess_cfg': ...}) plus weights (open_clip_model.safetensors or "
                "model.safetensors) and, for a non-BPE vocabulary, the tokenizer files"
            )
        config = json.loads(config_path.read_text())
        model_cfg, _ = _split_config(config)
        tokenizer_dir = local if (local / "tokenizer.json").is_file() or (local / "vocab.json").is_file() else None
        bb = build_open_clip(config, tokenizer_dir=tokenizer_dir, name=spec)
        from open_clip.factory import _find_checkpoint_in_dir

        ckpt = _find_checkpoint_in_dir(local)
        if ckpt is None:
            raise FileNotFoundError(f"no weights (*.safetensors, *.bin, *.pth) found in {local}")
        _load_state(bb.model, Path(ckpt), spec)
        bb.model.float().eval()
        return bb.to(device)

    model_cfg = get_model_config(name)
    if model_cfg is None:
        known = ", ".join(open_clip.list_models()[:12])
        raise ValueError(
            f"unknown open_clip model {name!r}; use a name from open_clip.list_models() (e.g. {known}, ...) "
            f"or a local directory. Accepted backbone forms: {SPEC_FORMS}"
        )
    if not pretrained:
        raise ValueError(
            f"backbone {spec} needs local weights: this package never downloads. Pass the checkpoint file, e.g. "
            f"`--backbone {spec} --pretrained /path/to/open_clip_pytorch_model.bin` "
            "(load_backbone(spec, pretrained=PATH)), or use a local Hugging Face directory with "
            "`--backbone hf:/path/to/dir`"
        )
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"--pretrained {pretrained!r} for {spec} is not a local file; pretrained tags such as 'openai' or "
            "'laion2b_s34b_b79k' would need a download, which this package never does. Download the checkpoint "
            "elsewhere and pass its path: --pretrained /path/to/open_clip_pytorch_model.bin"
        )
    tokenizer = _tokenizer_for_open_clip(model_cfg, None, spec)
    with _offline():
        try:
            model = open_clip.create_model(name, pretrained=str(path), device=device, weights_only=True)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(
                f"could not load {path} as open_clip {name} weights: {e}. Check that the checkpoint was "
                f"made for {name} (open_clip.list_pretrained() shows which names go with which checkpoints)"
            ) from e
    model.eval()
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return _open_clip_backbone(model, model_cfg, pp, tokenizer, spec)


# --------------------------------------------------------------------------------------------------
# Hugging Face CLIPModel
# --------------------------------------------------------------------------------------------------


def _hf_image_stats(folder: Path, vision_size: int) -> tuple[tuple, tuple, int]:
    mean, std, size = OPENAI_MEAN, OPENAI_STD, vision_size
    pp = folder / "preprocessor_config.json"
    if pp.is_file():
        try:
            data = json.loads(pp.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{pp} is not valid JSON: {e}") from e
        mean = _as_triple(data.get("image_mean", mean), f"{pp}: image_mean")
        std = _as_triple(data.get("image_std", std), f"{pp}: image_std")
    return mean, std, size


def _load_hf(folder_spec: str, pretrained: str | None, device: str | torch.device) -> Backbone:
    if pretrained:
        raise ValueError(f"--pretrained is only for open_clip:NAME; hf:{folder_spec} loads its own weights")
    folder = Path(folder_spec).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"hf:{folder_spec} is not a local directory; hf: takes a folder written by "
            "CLIPModel.save_pretrained (config.json + model.safetensors + tokenizer files). Hub model ids "
            "would need a download, which this package never does"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; save the model there with CLIPModel.save_pretrained")
    from transformers import CLIPConfig, CLIPModel

    with _offline():
        try:
            config = CLIPConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # wrong model type, malformed json, ...
            raise ValueError(f"{folder}/config.json is not a Hugging Face CLIP config: {e}") from e
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
    context_length = int(config.text_config.max_position_embeddings)
    tokenizer = _load_hf_tokenizer(folder, context_length, f"hf:{folder}")
    if tokenizer.vocab_size > config.text_config.vocab_size:
        raise ValueError(
            f"tokenizer in {folder} has {tokenizer.vocab_size} tokens but the text model embeds only "
            f"{config.text_config.vocab_size}; save the matching tokenizer into {folder}"
        )
    mean, std, size = _hf_image_stats(folder, int(config.vision_config.image_size))
    model.eval().to(device)
    return Backbone(
        model=model,
        family="hf_clip",
        name=f"hf:{folder}",
        tokenizer=tokenizer,
        image_size=size,
        mean=mean,
        std=std,
        embed_dim=int(config.projection_dim),
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        context_length=context_length,
        vocab_size=int(config.text_config.vocab_size),
    )


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def load_backbone(spec: str = "builtin", pretrained: str | None = None,
                  device: str | torch.device = "cpu") -> Backbone:
    """Load a base VL model, its tokenizer and image normalisation from local files.

    ``spec`` is ``builtin``, ``open_clip:NAME`` (with ``pretrained`` = local checkpoint file),
    ``open_clip:/dir`` or ``hf:/dir``. Anything that would need a download fails at once with a message
    saying how to point at local weights. ``pretrained`` with ``builtin`` loads other weights into the
    built-in architecture.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"backbone spec must be a non-empty string; accepted forms: {SPEC_FORMS}")
    spec = spec.strip()
    if spec == "builtin":
        return _load_builtin(pretrained, device)
    if spec.startswith("open_clip:"):
        name = spec[len("open_clip:"):]
        if not name:
            raise ValueError(f"'open_clip:' needs a model name or directory; accepted forms: {SPEC_FORMS}")
        return _load_open_clip(name, pretrained, device)
    if spec.startswith("hf:"):
        folder = spec[len("hf:"):]
        if not folder:
            raise ValueError(f"'hf:' needs a local directory; accepted forms: {SPEC_FORMS}")
        return _load_hf(folder, pretrained, device)
    raise ValueError(f"unknown backbone spec {spec!r}; accepted forms: {SPEC_FORMS}")
