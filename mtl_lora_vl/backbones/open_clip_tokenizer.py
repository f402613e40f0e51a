"""Which tokenizer an open_clip model reads, from its config and local files only: the built-in word tokenizer, a
Hugging Face tokenizer folder (with open_clip's text cleaning), or open_clip's own BPE; and the checks that the text
tower pools at the tokenizer's end token."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..families import OPEN_CLIP_CONFIG
from .cache import hf_hub_cache, local_folder
from .tokenizers import (
    TOKENIZER_FILES,
    OpenClipBPETokenizer,
    Tokenizer,
    WordTokenizer,
    is_word_tokenizer,
    load_hf_tokenizer,
)

__all__ = ["check_pooling", "folder_tokenizer", "hf_text_tower_message", "open_clip_tokenizer"]

logger = logging.getLogger(__name__)

_BPE_VOCAB = 49408


def folder_tokenizer(folder: Path, text_cfg: object, name: str) -> Path | None:
    """``folder`` (an ``open_clip:DIR``) where its tokenizer files are its model's tokenizer, else None (the one its
    ``text_cfg`` names, or open_clip's BPE). open_clip's own ``get_tokenizer('local-dir:DIR')`` reads the folder's
    files only where ``text_cfg.hf_tokenizer_name`` is set, else its BPE; a hub download of an open_clip model
    (``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``) holds transformers' CLIP tokenizer files beside open_clip's config,
    for transformers. Without ``hf_tokenizer_name`` the folder's files are still its tokenizer where open_clip's BPE
    cannot be: this package's word tokenizer (the built-in CLIP's, a model trained here), a vocabulary of other than
    49408 tokens, a Hugging Face text tower (``hf_model_name``). Otherwise the BPE, as open_clip, and a warning that
    the folder's files are not read."""
    files = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not files:
        return None
    if not isinstance(text_cfg, dict) or any(text_cfg.get(k) for k in ("hf_tokenizer_name", "hf_model_name",
                                                                        "tokenizer_type")):
        return folder   # (a tokenizer_type is refused with its own message)
    if text_cfg.get("vocab_size", _BPE_VOCAB) != _BPE_VOCAB:
        return folder
    if "tokenizer.json" in files and is_word_tokenizer(folder):
        return folder
    logger.warning("%s: its tokenizer files (%s) are not read: its %s names no text_cfg.hf_tokenizer_name, so "
                   "open_clip tokenizes this model with its own BPE (open_clip.get_tokenizer('local-dir:%s')), and so "
                   "does this package (a hub download of an open_clip model holds transformers' tokenizer files beside "
                   "it, for transformers). Where the model was trained with the folder's tokenizer, set "
                   "text_cfg.hf_tokenizer_name to the folder's path", name, ", ".join(files), OPEN_CLIP_CONFIG, folder)
    return None


def open_clip_tokenizer(model_cfg: dict, tokenizer_dir: str | os.PathLike | None, name: str,
                        architecture: str | None = None) -> Tokenizer:
    """The tokenizer an open_clip model config implies, from local files only. ``architecture`` is the registry name
    of an ``open_clip:NAME`` model (whose config open_clip looks up by that name: a SigLIP name means its SigLIP
    tokenizer there, refused here)."""
    text_cfg = model_cfg.get("text_cfg", {})
    _refuse_tokenizer_type(text_cfg, name)
    context_length = int(text_cfg.get("context_length", 77))
    vocab_size = int(text_cfg.get("vocab_size", _BPE_VOCAB))
    hf_name = text_cfg.get("hf_tokenizer_name")
    if tokenizer_dir is None and hf_name:   # a folder; else (no hub text model beside it) a hub id's cached snapshot
        tokenizer_dir = local_folder(str(hf_name), cached=not text_cfg.get("hf_model_name"))
    if tokenizer_dir is not None:
        tdir = Path(tokenizer_dir)
        if (tdir / "tokenizer.json").is_file() and is_word_tokenizer(tdir):
            # cleaned only where the config says (open_clip's default, whitespace, is not how this package trained it)
            clean = _hf_tokenizer_options(text_cfg, name, default_clean=None)["clean"]
            tok: Tokenizer = WordTokenizer(tdir, context_length, clean)
        else:
            tok = load_hf_tokenizer(tdir, context_length, name, **_hf_tokenizer_options(text_cfg, name))
        if tok.vocab_size > vocab_size:
            raise ValueError(
                f"tokenizer in {tdir} has {tok.vocab_size} tokens but model {name} embeds only {vocab_size}; "
                "use the tokenizer the model was trained with, or set text_cfg.vocab_size to at least "
                f"{tok.vocab_size}"
            )
        return tok
    if hf_name or text_cfg.get("hf_model_name"):
        raise ValueError(hf_text_tower_message(name, hf_name or text_cfg.get("hf_model_name"),
                                               cached=not text_cfg.get("hf_model_name")))
    if architecture and "siglip" in architecture.lower():
        raise ValueError(_siglip_message(name, architecture))
    if vocab_size != _BPE_VOCAB:
        fix = (f"load it from a folder (--backbone open_clip:DIR) holding its {OPEN_CLIP_CONFIG}, weights and the "
               "model's Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json), or give its config a "
               "text_cfg.hf_tokenizer_name naming a tokenizer folder" if architecture else
               "put the model's Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) in its "
               "directory, or set text_cfg.hf_tokenizer_name to a tokenizer folder (from Python: "
               "build_open_clip(..., tokenizer_dir=))")
        raise ValueError(f"open_clip model {name} has a {vocab_size}-token vocabulary but no tokenizer was found "
                         f"(open_clip's own has {_BPE_VOCAB}); {fix}")
    from open_clip.tokenizer import SimpleTokenizer

    clean = _tokenizer_kwargs(text_cfg, name, {"clean"}).get("clean", "lower")   # (open_clip's SimpleTokenizer's)
    return OpenClipBPETokenizer(SimpleTokenizer(context_length=context_length, clean=clean), context_length)


#: open_clip's SigLIP sentencepiece vocabularies (its ``SigLipTokenizer``): (size, the Hugging Face copy its own
#: SigLIP configs name as ``hf_tokenizer_name``).
_SIGLIP_VOCABS = {"c4-en": (32000, "timm/ViT-B-16-SigLIP"), "mc4": (250000, "timm/ViT-B-16-SigLIP-i18n-256"),
                  "gemma": (256000, "timm/ViT-B-16-SigLIP2")}


def _siglip_message(name: str, architecture: str) -> str:
    """Why an ``open_clip:NAME`` whose name says SigLIP and whose config names no ``hf_tokenizer_name`` is refused:
    open_clip's ``get_tokenizer`` then builds its ``SigLipTokenizer`` (the vocabulary chosen by the name), downloading
    its sentencepiece file; its BPE (what this package would otherwise use) gives other ids."""
    low = architecture.lower()
    variant = "gemma" if "siglip2" in low else "mc4" if "i18n" in low else "c4-en"   # (open_clip's choice)
    size, hub = _SIGLIP_VOCABS[variant]
    return (f"open_clip model {name}: its config names no text_cfg.hf_tokenizer_name, and for a SigLIP model name "
            f"open_clip then tokenizes with its SigLIP sentencepiece tokenizer {variant!r} ({size} tokens), which it "
            "downloads from storage.googleapis.com; this package loads local files only, and open_clip's BPE would "
            f"give other ids. Set text_cfg.hf_tokenizer_name to the Hugging Face copy open_clip's own SigLIP configs "
            f"name, {hub!r} (in the local Hugging Face cache: fetch it where there is a network, huggingface-cli "
            f"download {hub}; or a local folder of it), and text_cfg.tokenizer_kwargs to {{\"clean\": "
            f"\"canonicalize\"}} as they have: in the config registered for {architecture}, or in the "
            f"{OPEN_CLIP_CONFIG} of a folder loaded with --backbone open_clip:DIR")


def _refuse_tokenizer_type(text_cfg: dict, name: str) -> None:
    """Refuse a ``text_cfg.tokenizer_type`` (newer open_clip: ``"tiktoken"``, with ``tiktoken_name`` the encoding):
    open_clip then tokenizes with it before anything else its config says (its ``hf_tokenizer_name``, its BPE), which
    this package does not reproduce: it would tokenize with the folder's or open_clip's BPE tokenizer, other ids."""
    kind = text_cfg.get("tokenizer_type")
    if kind:
        encoding = f" (encoding {text_cfg['tiktoken_name']!r})" if text_cfg.get("tiktoken_name") else ""
        raise ValueError(f"open_clip model {name}: text_cfg.tokenizer_type = {kind!r}{encoding} is not reproduced "
                         "here (only open_clip's BPE, a Hugging Face tokenizer folder and the word tokenizer); its "
                         "text would be tokenized otherwise than open_clip does. Use a model whose text_cfg has no "
                         "tokenizer_type (its tokenizer given by hf_tokenizer_name or open_clip's BPE)")


def _tokenizer_kwargs(text_cfg: dict, name: str, known: set[str]) -> dict[str, Any]:
    """The config's ``tokenizer_kwargs``, refused where they hold a setting other than ``known`` (open_clip's
    tokenizer would apply it; this package would not), or a ``clean`` open_clip does not know."""
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"open_clip model {name}: text_cfg.tokenizer_kwargs must be a table, got {kwargs!r}")
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"open_clip model {name}: its tokenizer settings {unknown} are not reproduced here (only "
                         f"{' and '.join(sorted(known))}); its text would be tokenized otherwise than open_clip does. "
                         "Remove them from text_cfg.tokenizer_kwargs only where the model was trained without them")
    if kwargs.get("clean", "lower") not in ("canonicalize", "lower", "whitespace"):
        raise ValueError(f"open_clip model {name}: tokenizer_kwargs.clean = {kwargs['clean']!r}; open_clip knows "
                         "'canonicalize', 'lower' and 'whitespace': set it to the one the model was trained with")
    return kwargs


def _hf_tokenizer_options(text_cfg: dict, name: str, default_clean: str | None = "whitespace") -> dict[str, Any]:
    """What open_clip's own ``HFTokenizer`` does with the config's ``tokenizer_kwargs``: its text cleaning
    (``clean``, ``default_clean`` where it names none: None, no cleaning) and ``strip_sep_token``; a
    ``tokenizer_mode`` is refused."""
    from open_clip.tokenizer import get_clean_fn

    if text_cfg.get("tokenizer_mode"):
        raise ValueError(f"open_clip model {name}: its tokenizer settings ['tokenizer_mode'] are not reproduced here "
                         "(only clean and strip_sep_token); its text would be tokenized otherwise than open_clip does")
    kwargs = _tokenizer_kwargs(text_cfg, name, {"clean", "strip_sep_token"})
    clean = kwargs.get("clean", default_clean)
    return {"clean": get_clean_fn(clean) if clean is not None else None,
            "strip_sep": bool(kwargs.get("strip_sep_token", False))}


def check_pooling(model_cfg: dict, tokenizer: Tokenizer, name: str) -> None:
    """Refuse a tokenizer whose end token is not where the text tower pools: open_clip pools text at the highest
    token id by default, which is the end token only in its own BPE."""
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


def hf_text_tower_message(name: str, hf_name: str, cached: bool = False) -> str:
    """Why a model whose text side is a Hugging Face hub model does not load here, and how to give it locally."""
    fetch = (f" (it is not in the local Hugging Face cache, {hf_hub_cache()}: fetch it where there is a network, "
             f"huggingface-cli download {hf_name})" if cached else "")
    return (f"open_clip model {name} uses the Hugging Face tokenizer/text model {hf_name!r}, which would need a "
            f"download{fetch}; this package loads local files only. Or save that model and its tokenizer with "
            "save_pretrained into local folders, set text_cfg.hf_model_name and text_cfg.hf_tokenizer_name in an "
            "open_clip_config.json to those folders' paths and load that folder with --backbone open_clip:DIR")
