"""Backbone strings (``--backbone``), parsed once into a typed :class:`BackboneSpec`.

Forms: ``builtin``; ``builtin-llava`` (the built-in tiny LLaVA, a Hugging Face directory loaded like
``hf:DIR``); ``open_clip:NAME`` (an architecture name, weights from ``--pretrained FILE``, or
``--pretrained TAG`` when the tag's weights are in open_clip's local cache); ``open_clip:DIR`` (an
open_clip local directory with its own weights); ``hf:DIR`` (a local Hugging Face model directory) or
``hf:ORG/NAME`` (a hub id whose snapshot is in the local Hugging Face cache: ``path`` is that snapshot,
``name`` the id; see :mod:`.cache`). Loaders, adapter files and the export script all read the same parse.
"""

from __future__ import annotations

import difflib
import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..families import OPEN_CLIP_CONFIG
from ..wording import given_as
from .builtin import BUILTIN_LLAVA_NAME, BUILTIN_NAME, builtin_dir, builtin_llava_dir
from .cache import hub_id_snapshot

__all__ = ["SPEC_FORMS", "BackboneSpec", "SpecKind", "parse_spec"]

SPEC_FORMS = (
    "'builtin' (the package's small pretrained CLIP), 'builtin-llava' (the package's tiny LLaVA), "
    "'open_clip:NAME' with --pretrained /path/to/checkpoint (e.g. open_clip:ViT-B-32 --pretrained "
    "/models/vit_b_32.bin, or a pretrained tag already in open_clip's local cache), 'open_clip:/path/to/dir' "
    "(a folder with open_clip_config.json and weights; 'open_clip:hf-hub:ORG/NAME' when that folder is in the local "
    "Hugging Face cache), or 'hf:/path/to/dir' (a local Hugging Face CLIP, LLaVA, LLaVA-NeXT, LLaVA-OneVision, "
    "PaliGemma, Gemma 3, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM or Mistral 3 directory; 'hf:ORG/NAME' when that "
    "model is in the local Hugging Face cache)"
)

SpecKind = Literal["builtin", "builtin_llava", "open_clip", "open_clip_dir", "hf"]
_OPEN_CLIP, _HF = "open_clip:", "hf:"


@dataclass(frozen=True)
class BackboneSpec:
    """One parsed backbone string.

    ``kind`` is ``builtin``, ``open_clip`` (by architecture ``name``), ``open_clip_dir``, ``hf`` or
    ``builtin_llava`` (the last three with a local ``path``; a cached hub model also has its hub id in
    ``name``; ``builtin_llava`` is a Hugging Face directory that ships with the package, so it loads by the
    ``hf`` code); ``pretrained`` is the weights file given beside it (``open_clip`` and
    ``builtin`` only), ``pretrained_as`` the name it was given by (``pretrained``, ``--pretrained``,
    ``base.pretrained``: what its messages call it); ``text`` is the string as given (stripped).
    """

    kind: SpecKind
    text: str
    name: str = ""
    path: Path | None = None
    pretrained: str | None = None
    pretrained_as: str = field(default="pretrained", compare=False)

    @property
    def is_hf_dir(self) -> bool:
        """True when ``path`` is a Hugging Face ``save_pretrained`` directory (``hf:DIR`` and ``builtin-llava``)."""
        return self.kind in ("hf", "builtin_llava")

    @property
    def label(self) -> str:
        """The name a loaded backbone carries: ``builtin``, ``open_clip:NAME`` / ``open_clip:DIR``, ``hf:DIR``."""
        if self.kind == "hf":
            return f"{_HF}{self.name or self.path}"
        return self.text

    @property
    def architecture(self) -> str | None:
        """The open_clip architecture of ``open_clip:NAME`` (its registry holds the config); None for the others."""
        return self.name if self.text.startswith(_OPEN_CLIP) and self.path is None else None

    @property
    def source_dir(self) -> Path | None:
        """The directory whose non-weight files (config, tokenizer) belong beside a merged export."""
        if self.kind == "builtin":
            return builtin_dir()
        return self.path

    def absolute(self) -> str:
        """The spec string with a local directory made absolute (for adapter files read elsewhere)."""
        if self.kind == "builtin_llava" or self.path is None or not self.path.is_dir() or self.name:
            return self.text  # a hub id stays a hub id, builtin-llava the package's own: the same model anywhere
        prefix = _HF if self.kind == "hf" else _OPEN_CLIP
        return prefix + str(self.path.resolve())


def parse_spec(spec: str, pretrained: str | None = None, *, pretrained_as: str = "pretrained") -> BackboneSpec:
    """Parse a backbone string (and its ``pretrained`` weights) into a :class:`BackboneSpec`.

    ``open_clip:X`` is a directory when ``X`` is an existing local folder, else an architecture name.
    Raises ValueError (listing :data:`SPEC_FORMS`) for anything else, and for ``pretrained`` beside a
    directory that carries its own weights, naming it as the caller gave it: ``pretrained_as`` (the Python
    argument ``pretrained``; ``--pretrained`` from the command line).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"backbone spec must be a non-empty string; accepted forms: {SPEC_FORMS}")
    text = spec.strip()
    if text == BUILTIN_NAME:
        return BackboneSpec("builtin", text, pretrained=pretrained, pretrained_as=pretrained_as)
    if text == BUILTIN_LLAVA_NAME:
        if pretrained:
            raise ValueError(f"{given_as(pretrained_as, pretrained)}: {pretrained_as} is only for open_clip:NAME "
                             f"and builtin; {text} loads its own weights: leave {pretrained_as} out")
        return BackboneSpec("builtin_llava", text, path=builtin_llava_dir())
    if text.startswith(_OPEN_CLIP):
        rest = text[len(_OPEN_CLIP):].strip()
        text = _OPEN_CLIP + rest   # (a space after the colon, as in "hf: /models/x", is no part of the name)
        if not rest:
            raise ValueError(f"'open_clip:' needs a model name or directory; accepted forms: {SPEC_FORMS}")
        hub = rest if rest.startswith("hf-hub:") else ""   # recorded as given: the same model on any machine
        if rest.startswith(("hf-hub:", "local-dir:")):   # open_clip's own schemas: a folder, found here, offline
            rest = _open_clip_schema_dir(text, rest, pretrained, pretrained_as)
        local = _local_path(text, rest)
        bare = not ("/" in rest or "\\" in rest or rest.startswith((".", "~")))
        if not local.is_dir() or (bare and not hub and not (local / OPEN_CLIP_CONFIG).is_file()):
            meant_dir = "/" in rest or "\\" in rest or rest.startswith((".", "~"))
            if meant_dir:  # a path that is not there, not a model name
                raise FileNotFoundError(f"{text}: the directory {local} does not exist (open_clip:DIR takes a folder "
                                        "with open_clip_config.json and weights; open_clip:NAME a model name)")
            return BackboneSpec("open_clip", text, name=rest, pretrained=pretrained, pretrained_as=pretrained_as)
        if pretrained:
            raise ValueError(f"{text} is a local directory with its own weights; drop "
                             f"{given_as(pretrained_as, pretrained)}")
        return BackboneSpec("open_clip_dir", text, name=hub, path=local)
    if text.startswith(_HF):
        rest = text[len(_HF):].strip()
        text = _HF + rest   # (a space after the colon, as in "hf: /models/x", is no part of the name)
        if not rest:
            raise ValueError(f"'hf:' needs a local directory or a cached hub id; accepted forms: {SPEC_FORMS}")
        if pretrained:
            raise ValueError(f"{given_as(pretrained_as, pretrained)}: {pretrained_as} is only for open_clip:NAME "
                             f"and builtin; {text} loads its own weights: leave {pretrained_as} out")
        local = _local_path(text, rest)
        snapshot = None if local.is_dir() else hub_id_snapshot(rest)
        if snapshot is not None:
            return BackboneSpec("hf", text, name=rest, path=snapshot)
        return BackboneSpec("hf", text, path=local)
    raise ValueError(f"unknown backbone spec {spec!r}{_spec_hint(text)}; accepted forms: {SPEC_FORMS}")


def _local_path(text: str, rest: str) -> Path:
    """``rest`` as a local path, ``~`` expanded; ValueError naming the spec where that cannot be done."""
    try:
        path = Path(rest).expanduser()
    except RuntimeError as e:   # "~user" of no such user, or no home directory
        raise ValueError(f"backbone spec {text!r}: cannot expand {rest!r} ({e}); give the folder's full path") from None
    try:
        path.exists()
    except OSError as e:   # (a name too long for a file name: Python 3.11's is_dir raises it too)
        if e.errno == errno.ENAMETOOLONG:
            raise ValueError(f"backbone spec {text!r}: {rest!r} cannot be a local path ({e.strerror}); accepted "
                             f"forms: {SPEC_FORMS}") from None
        raise ValueError(f"backbone spec {text!r}: cannot look at {path} ({e.strerror or e}): a folder there is not "
                         "readable by this process; check its permissions (and its parents')") from None
    return path


def _spec_hint(text: str) -> str:
    """What an unknown spec was probably meant to be: a folder without its prefix, or a misspelt name."""
    try:
        folder = _local_path(text, text).is_dir()
    except ValueError:   # (no path: "~user" of no such user, a name too long for a file name)
        folder = False
    if folder:
        return (f" ({text} is a folder: write hf:{text} for a Hugging Face model directory, open_clip:{text} "
                "for an open_clip one)")
    close = difflib.get_close_matches(text, [BUILTIN_NAME, BUILTIN_LLAVA_NAME], n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]!r}?)"
    head, sep, rest = text.partition(":")
    prefix = difflib.get_close_matches(head.lower() + sep, [_OPEN_CLIP, _HF], n=1, cutoff=0.6) if sep else []
    return f" (did you mean {prefix[0]}{rest}?)" if prefix else ""


def _open_clip_schema_dir(text: str, rest: str, pretrained: str | None, pretrained_as: str) -> str:
    """The folder behind open_clip's ``hf-hub:ORG/NAME`` (its snapshot in the local hub cache) or
    ``local-dir:PATH``: open_clip itself would look the hub up online, and would ignore ``--pretrained``."""
    schema, _, name = rest.partition(":")
    name = name.strip()
    if not name:
        form = "hf-hub:ORG/NAME (a hub id in the local cache)" if schema == "hf-hub" else "local-dir:/path/to/dir"
        raise ValueError(f"{text!r} names no model: write open_clip:{form}; accepted forms: {SPEC_FORMS}")
    if pretrained:
        raise ValueError(f"{text} carries its own weights; drop {given_as(pretrained_as, pretrained)}")
    folder = hub_id_snapshot(name) if schema == "hf-hub" else _local_path(text, name)
    if folder is None or not (Path(folder) / OPEN_CLIP_CONFIG).is_file():
        where = ("is not in the local Hugging Face cache (this package never downloads; fetch it where there is "
                 f"a network: huggingface-cli download {name})" if schema == "hf-hub"
                 else "is not a folder with open_clip_config.json")
        raise FileNotFoundError(f"{text}: {name} {where}; open_clip:DIR takes a folder with open_clip_config.json "
                                "and its weights")
    return str(folder)
