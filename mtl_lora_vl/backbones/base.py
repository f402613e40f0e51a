"""The backbone interface: a base VL model, its tokenizer and image normalisation, and what it can do.

A :class:`Backbone` wraps one model of a family in the family table (:mod:`mtl_lora_vl.families`).
Task kinds, loaders and the trainer call its methods and never ask which family it is; what a backbone
can do is stated by its :attr:`Backbone.capabilities`:

* ``image_embeddings`` / ``text_embeddings``: :meth:`encode_image` / :meth:`encode_text` and
  :attr:`logit_scale` (contrastive families: open_clip CLIP and CoCa, Hugging Face CLIP);
* ``lm_logits``: :meth:`caption_logits`, teacher-forced next-token logits of a language model or caption
  decoder (CoCa, LLaVA-style models); LLaVA-style models add the prompt-conditioned language-model API:
  :attr:`image_token`, :attr:`processor`, :meth:`lm_collator`, :meth:`lm_loss`, :meth:`sequence_scores`;
* ``generate``: :meth:`generate`, text from images (CoCa; LLaVA-style models with prompts);
* ``grad_checkpointing``: :meth:`set_grad_checkpointing`.

A method outside a backbone's capabilities raises :class:`BackboneError` naming the backbone, what it
can do and what to use instead. A new family is a subclass registered under the key its family-table
entry names (``@register_backbone("key")``) that implements ``load`` and the methods of its
capabilities; nothing else changes. Adapters are attached to ``Backbone.model`` in place, so the
methods see the adapters and the routing scope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.resize import ImageResize
from ..data.text_columns import drop_padding
from ..families import FAMILIES, find_family
from ..log import warn_user
from ..precision import cuda_has_bf16
from .spec import BackboneSpec
from .tokenizers import Tokenizer

__all__ = [
    "CAPABILITIES",
    "GENERATE",
    "GRAD_CHECKPOINTING",
    "IMAGE_EMBEDDINGS",
    "LM_LOGITS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "TEXT_EMBEDDINGS",
    "Backbone",
    "BackboneError",
    "BASE_DTYPES",
    "as_rgb",
    "backbone_class",
    "backbone_class_for",
    "register_backbone",
    "resolve_base_dtype",
]

IMAGE_EMBEDDINGS = "image_embeddings"
TEXT_EMBEDDINGS = "text_embeddings"
LM_LOGITS = "lm_logits"
GENERATE = "generate"
GRAD_CHECKPOINTING = "grad_checkpointing"
CAPABILITIES = (IMAGE_EMBEDDINGS, TEXT_EMBEDDINGS, LM_LOGITS, GENERATE, GRAD_CHECKPOINTING)

_GENERATIVE = ("use a generative backbone: --backbone builtin-llava, a local LLaVA, LLaVA-NeXT, LLaVA-OneVision, PaliGemma, Qwen2-VL or "
               "Idefics3 / SmolVLM directory (--backbone hf:/path/to/dir), or an open_clip CoCa (--backbone open_clip:coca_ViT-B-32 --pretrained "
               "/path/to/coca.bin); or use a contrastive task kind (retrieval, answer classification) on this backbone")
_CONTRASTIVE = ("use a contrastive backbone (builtin, open_clip CLIP/CoCa or a local Hugging Face CLIP directory); on a "
                "generative backbone (LLaVA-style) use a generative task kind instead (answers and captions generated "
                "by the language model, classes scored by their likelihood)")
# capability -> (what is missing, what to do instead), for BackboneError messages
_NEEDS = {
    IMAGE_EMBEDDINGS: ("pooled image embeddings (a contrastive image tower)", _CONTRASTIVE),
    TEXT_EMBEDDINGS: ("text embeddings (a contrastive text tower)", _CONTRASTIVE),
    LM_LOGITS: ("a language model or caption decoder", _GENERATIVE),
    GENERATE: ("a language model or caption decoder that generates text", _GENERATIVE),
    GRAD_CHECKPOINTING: ("activation checkpointing", "train without --grad-checkpointing (grad_checkpointing=False)"),
}
# capability -> the methods a class that declares it must override (checked when the class is defined)
_IMPLEMENTS = {
    IMAGE_EMBEDDINGS: ("_image_features",),
    TEXT_EMBEDDINGS: ("_text_features",),
    LM_LOGITS: ("caption_logits",),
    GENERATE: ("generate",),
    GRAD_CHECKPOINTING: ("set_grad_checkpointing",),
}
BASE_DTYPES = ("auto", "fp32", "bf16", "fp16")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class BackboneError(ValueError):
    """A backbone cannot do what was asked, or cannot be built; the message says which and what instead."""


def as_rgb(v: Any, what: str) -> tuple[float, float, float]:
    """One value or three (RGB) as a float triple; ``what`` names the setting in the error."""
    try:
        vals = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers (one, or three for RGB), got {v!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{what} must have 3 values (RGB), got {v!r}")
    return vals  # type: ignore[return-value]


def check_image_batch(images: Any, what: str) -> None:
    """A batch of images: a ``(B, C, H, W)`` tensor (one image ``(C, H, W)`` read its channels as the batch)."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what}: images must be a (B, C, H, W) tensor, got {got}; one image is images[None]")


def check_image_sizes(images: Tensor, sizes: Any, what: str, within: bool = True,
                      needed: bool = False) -> list[tuple[int, int]] | None:
    """``sizes`` (each image's ``(h, w)`` at the top left of ``images``, or None) as a list of int pairs, checked
    against the batch: one per image, each within it (``within`` False: any positive size, an anyres strip's
    original image's). ``needed`` (``backbone.needs_image_sizes``): strips of several views need them."""
    if sizes is None:
        if needed and images.shape[-2] > images.shape[-1]:
            raise ValueError(f"{what}: images {tuple(images.shape)} are strips of views, which do not say what size "
                             "their pictures were; give image_sizes=[(h, w), ...] (pad_images returns them)")
        return None
    try:
        out = [(int(h), int(w)) for h, w in sizes]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: image_sizes must be one (height, width) pair per image, got {sizes!r}") from None
    H, W = images.shape[-2:]
    if len(out) != images.shape[0] or any(not (0 < h and 0 < w and (not within or h <= H and w <= W)) for h, w in out):
        raise ValueError(f"{what}: image_sizes must give each of the {images.shape[0]} images its (height, width) "
                         f"within the batch's {H}x{W}, got {out}")
    return out


def check_candidates(candidates: Sequence[str], image_token: str) -> None:
    """Refuse candidates that are not a non-empty list of strings, or that hold the image placeholder (its plain
    embedding would be scored, no image behind it)."""
    if isinstance(candidates, str) or not candidates or not all(isinstance(c, str) for c in candidates):
        raise ValueError(f"sequence_scores: candidates must be a non-empty list of strings, got {candidates!r}")
    held = [c for c in candidates if image_token in c]
    if held:
        raise ValueError(f"sequence_scores: candidate {held[0]!r} holds the image placeholder {image_token!r}; a "
                         "candidate is text after the prompt (the image goes in the prompt)")


def warn_past_context(width: int, new_tokens: int, context: int | None, what: str) -> None:
    """Warn when prompts ``width`` tokens wide plus ``new_tokens`` pass the language model's ``context`` (its
    positions past it were never trained: generation there goes silently wrong)."""
    if context and width + new_tokens > context:
        logging.getLogger(__name__).warning(
            "%s: prompts of up to %d tokens plus %d new ones pass the language model's context of %d tokens; shorten "
            "the prompts or lower max_len", what, width, new_tokens, context)


def check_prompts(prompts: Any, n_images: int, what: str, several: str | None = None) -> list[str]:
    """``prompts`` as a list of ``n_images`` strings, or a ValueError naming what is wrong. ``several``: the image
    placeholder of a backbone whose prompts may take several images each; the prompts then hold one per image."""
    if isinstance(prompts, str):
        raise ValueError(f"{what}: prompts must be a list of strings, one per row, got one string {prompts!r}")
    prompts = list(prompts)
    odd = [p for p in prompts if not isinstance(p, str)]
    if odd:
        raise ValueError(f"{what}: prompts must be strings, one per row; got a {type(odd[0]).__name__} ({odd[0]!r})")
    if several is not None:   # (also when there are as many prompts as images: rows of two hold 2x the placeholders)
        held = sum(p.count(several) for p in prompts)
        if held != n_images:
            raise ValueError(f"{what}: {n_images} images but the {len(prompts)} prompts hold {held} image placeholders "
                             f"{several!r}; give each prompt one per image of its row, rows' images in order")
        return prompts
    if len(prompts) != n_images:
        raise ValueError(f"{what}: {n_images} images but {len(prompts)} prompts; give one prompt per image")
    return prompts


def resolve_base_dtype(base_dtype: str, device: str | torch.device, large: bool = True,
                       fp16_overflows: bool = False) -> torch.dtype:
    """The dtype base weights load in: ``fp32`` / ``bf16`` / ``fp16`` as asked; ``auto`` = bf16 on a GPU (fp16
    where bf16 is unsupported) and fp32 on a CPU. ``large=False`` (small contrastive models) makes ``auto`` fp32
    everywhere; ``fp16_overflows`` (a family whose activations leave fp16's range: Gemma 3) makes it fp32 where it
    would be fp16, and an fp16 asked for is warned about."""
    if base_dtype not in BASE_DTYPES:
        raise ValueError(f"--base-dtype: must be one of {list(BASE_DTYPES)}, got {base_dtype!r}")
    if base_dtype == "fp16" and fp16_overflows:
        warn_user("--base-dtype fp16: this model family's activations overflow float16 (inf, then NaN losses and "
                  "empty generations); use bf16 where the GPU has it, else fp32")
    if base_dtype != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[base_dtype]
    if not large or torch.device(device).type != "cuda":
        return torch.float32
    if cuda_has_bf16(device):
        return torch.bfloat16
    if fp16_overflows:
        logging.getLogger(__name__).warning("this GPU has no bfloat16, and this model family's activations "
                                            "overflow float16: its base weights load in float32 (--base-dtype auto)")
        return torch.float32
    return torch.float16


@dataclass(eq=False)
class Backbone:
    """A base VL model with its tokenizer and image normalisation; subclasses add what their family can do."""

    model: nn.Module
    name: str                        # "builtin", "open_clip:ViT-B-32", "hf:/path/to/dir"
    tokenizer: Tokenizer
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    pad_id: int
    bos_id: int | None
    eos_id: int
    context_length: int = 77
    vocab_size: int = 0
    resize: ImageResize | None = None  # how images become image_size squares; None: shorter side, crop, bicubic
    _norm_cache: dict = field(default_factory=dict, init=False, repr=False)

    capabilities: ClassVar[frozenset[str]] = frozenset()
    pads_to_context: ClassVar[bool] = False  # text must be exactly context_length tokens long
    #: The padding columns all rows share can be left out of a text batch (same embeddings, less work): a causal
    #: text tower pooled at each row's end token (:meth:`drop_text_padding`).
    short_text: ClassVar[bool] = False
    casts_inputs: ClassVar[bool] = True      # the model casts its inputs to its weights' dtype (HF models do)
    fp16_overflows: ClassVar[bool] = False   # activations leave float16's range (``resolve_base_dtype``)
    #: The language-model path takes prompts of several images (one placeholder per image, NLVR2's pair): its
    #: ``lm_loss`` / ``generate`` / ``sequence_scores`` take every row's images, in row order, as one image batch.
    several_images: ClassVar[bool] = False

    @property
    def needs_image_sizes(self) -> bool:
        """Whether every image batch must carry its images' original sizes (``image_sizes``), even images that fill
        the canvas: a strip of views (native-aspect anyres) does not say what size its image was."""
        return False

    def __post_init__(self) -> None:
        if self.resize is None:
            self.resize = ImageResize(int(self.image_size))
        elif self.resize.size != self.image_size:
            raise ValueError(f"backbone {self.name!r}: its image resize makes {self.resize.size}-pixel squares but "
                             f"the model takes {self.image_size}")

    # ---------------------------------------------------------------------------------- capabilities
    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A class that declares a capability must implement it: refused here, when the class is defined,
        rather than with an error at the first call."""
        super().__init_subclass__(**kwargs)
        unknown = set(cls.capabilities) - set(CAPABILITIES)
        missing = [f"{m} ({cap})" for cap in sorted(cls.capabilities) if cap in _IMPLEMENTS
                   for m in _IMPLEMENTS[cap] if getattr(cls, m) is getattr(Backbone, m)]
        if unknown or missing:
            raise TypeError(f"backbone class {cls.__name__} declares capabilities it does not implement: "
                            f"{', '.join(missing + [f'{u} (unknown; known: {list(CAPABILITIES)})' for u in sorted(unknown)])}; "
                            "override those methods or drop the capability")

    @classmethod
    def load(cls, spec: BackboneSpec, device: str | torch.device = "cpu", base_dtype: str = "auto") -> Backbone:
        """Build this backbone from a parsed backbone string, local files only; base weights in
        :func:`resolve_base_dtype` ``(base_dtype, device)``."""
        raise BackboneError(f"{cls.__name__} cannot be loaded from a backbone string ({spec.text!r})")

    @property
    def family(self) -> str:
        """The model's family in the family table (``"custom"`` for a model of none)."""
        fam = find_family(self.model)
        return fam.name if fam else "custom"

    def supports(self, capability: str) -> bool:
        """Whether this backbone has ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown backbone capability {capability!r}; known: {list(CAPABILITIES)}")
        return capability in self.capabilities

    def require(self, capability: str, what: str) -> None:
        """Raise BackboneError unless this backbone has ``capability``; ``what`` names the caller."""
        if self.supports(capability):
            return
        need, fix = _NEEDS[capability]
        raise BackboneError(
            f"{what} needs {need}, but backbone {self.name!r} ({type(self.model).__name__}, family {self.family}) "
            f"has none (it supports {', '.join(sorted(self.capabilities)) or 'nothing'}); {fix}")

    def _unavailable(self, capability: str, what: str) -> NoReturn:
        """The base body of a capability method, reached only when this backbone cannot serve ``what``.

        Without ``capability``: :meth:`require`'s BackboneError. With it, the method is one of the
        prompt-conditioned language-model methods (a class that declares a capability overrides the methods
        :data:`_IMPLEMENTS` lists, checked when the class is defined) and the backbone's decoder takes no
        prompt (CoCa captions images only): a BackboneError that says so.
        """
        self.require(capability, what)
        raise BackboneError(
            f"{what} needs a language model that reads a text prompt beside the image, but backbone {self.name!r} "
            f"({type(self.model).__name__}) only captions images; use a LLaVA-style backbone (--backbone "
            "builtin-llava, or hf:DIR of a local LLaVA, PaliGemma, Qwen2-VL or Idefics3 / SmolVLM) for prompts, or "
            "generate(images) for captions")

    @property
    def has_decoder(self) -> bool:
        """True when the model has a language model / caption decoder (``lm_logits``)."""
        return self.supports(LM_LOGITS)

    # ---------------------------------------------------------------------------------- embeddings
    def encode_image(self, images: Tensor) -> Tensor:
        """Normalised float images ``(B, 3, H, W)`` -> L2-normalised image embeddings ``(B, D)``."""
        self.require(IMAGE_EMBEDDINGS, "encode_image")
        return F.normalize(self._image_features(self.resize.checked(images, "encode_image", self.name)), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids ``(N, L)`` (L <= context_length; shorter is padded where the model reads the whole context, else
        read as given: cut padding with :meth:`drop_text_padding`, never a row's end token) -> L2-normalised ``(N, D)``."""
        self.require(TEXT_EMBEDDINGS, "encode_text")
        return F.normalize(self._text_features(self.fit_tokens(tokens)), dim=-1)

    def _image_features(self, images: Tensor) -> Tensor:
        """Unnormalised image embeddings; subclasses with ``image_embeddings`` implement it."""
        self._unavailable(IMAGE_EMBEDDINGS, "_image_features")

    def _text_features(self, tokens: Tensor) -> Tensor:
        """Unnormalised text embeddings; subclasses with ``text_embeddings`` implement it."""
        self._unavailable(TEXT_EMBEDDINGS, "_text_features")

    @property
    def logit_scale(self) -> Tensor:
        """The model's contrastive temperature, exponentiated (a scalar tensor)."""
        self.require(TEXT_EMBEDDINGS, "logit_scale")
        return self.model.logit_scale.exp().reshape(())

    def fit_tokens(self, tokens: Tensor) -> Tensor:
        """Check ``(N, L)`` token ids against the context length; pad when the model needs full length."""
        if tokens.dim() != 2:
            raise ValueError(f"text tokens must be a (N, L) LongTensor, got shape {tuple(tokens.shape)}")
        if tokens.dtype != torch.long:
            tokens = tokens.long()
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"text tokens have length {length} but {self.name} has context length {self.context_length}; "
                "tokenize with backbone.tokenizer, which truncates to the context length")
        return self.pad_to_context(tokens) if self.pads_to_context else tokens

    def drop_text_padding(self, tokens: Tensor) -> Tensor:
        """Host tokens without the trailing padding columns every row shares, where ``short_text``; as given else."""
        return drop_padding(tokens, self.pad_id, self.eos_id) if self.short_text else tokens

    def pad_to_context(self, tokens: Tensor) -> Tensor:
        """``tokens`` with ``pad_id`` columns appended up to the context length (as given when already full)."""
        short = self.context_length - tokens.shape[1]
        return F.pad(tokens, (0, short), value=self.pad_id) if short > 0 else tokens

    # ---------------------------------------------------------------------------------- language model
    def caption_logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, L-1, vocab)``; position i predicts ``tokens[:, i + 1]`` (``lm_logits``)."""
        self._unavailable(LM_LOGITS, "caption_logits")

    def generate(self, images: Tensor, max_len: int = 20, beam_size: int = 1,
                 prompts: Sequence[str] | None = None, image_sizes: Sequence[tuple[int, int]] | None = None) -> list[str]:
        """One text per image: greedy (``beam_size=1``) or beam search (``generate``). ``prompts`` (one per
        image) is for backbones that condition on a prompt (LLaVA-style); others refuse it. ``image_sizes``: each
        image's ``(h, w)`` at the top left of ``images`` (a ``native`` resize's batch; None: the whole tensor)."""
        self._unavailable(GENERATE, "generate")

    # The prompt-conditioned language-model API of LLaVA-style backbones (``lm_logits`` / ``generate``).
    @property
    def image_token(self) -> str:
        """The placeholder a prompt carries where the image goes (e.g. ``"<image>"``)."""
        self._unavailable(LM_LOGITS, "image_token")

    @property
    def processor(self) -> Any:
        """The Hugging Face processor (image processor, tokenizer, chat template) of the model."""
        self._unavailable(LM_LOGITS, "processor")

    def chat_wrap(self, system: str = "") -> Any:
        """The model's chat turn around a prompt (``[generative] chat``): a :class:`.chat.ChatWrap`."""
        raise ValueError(f"backbone {self.name!r} ({type(self).__name__}) has no chat template, which [generative] "
                         "chat = true needs; set chat = false and write the turn into the spec's prompt")

    @property
    def lm_context(self) -> int | None:
        """The language model's positions: the longest row, image tokens included, it was built for (None: no
        language model, or no such limit known)."""
        return None

    def lm_collator(self, max_length: int | None = None) -> Callable[..., dict[str, Tensor]]:
        """A picklable ``(prompts, targets | None) -> dict of tensors`` for loader workers (see subclasses)."""
        self._unavailable(LM_LOGITS, "lm_collator")

    def lm_loss(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                first_label: int | None = None, image_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """Per-row mean token cross-entropy ``(B,)`` over each row's labelled (target) tokens. ``first_label``:
        the first labelled position when the caller read it on the host (the training loader does), else None;
        ``image_sizes`` as for :meth:`generate`."""
        self._unavailable(LM_LOGITS, "lm_loss")

    def sequence_scores(self, images: Tensor, prompts: Sequence[str], candidates: Sequence[str],
                        per_token: bool = False, end: str = "",
                        image_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """Total log-probability ``(B, C)`` of each candidate continuation after each row's prompt; with
        ``per_token``, divided by the candidate's number of target tokens (its mean log-probability); ``end``: the
        token that ends a candidate (a chat template's end of turn; "": the tokenizer's end token);
        ``image_sizes`` as for :meth:`generate`."""
        self._unavailable(LM_LOGITS, "sequence_scores")

    def decode(self, token_ids: Sequence[int] | Tensor) -> str:
        """Token ids -> text (start token dropped, cut at the end token, padding removed)."""
        decode = getattr(self.tokenizer, "decode", None)
        if decode is None:
            raise ValueError(f"the tokenizer of backbone {self.name!r} cannot decode token ids")
        return decode(token_ids)

    # ---------------------------------------------------------------------------------- training
    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Turn activation checkpointing of the towers on or off (``grad_checkpointing``)."""
        self._unavailable(GRAD_CHECKPOINTING, "set_grad_checkpointing")

    # ---------------------------------------------------------------------------------- images
    def preprocess_uint8(self, images_uint8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """uint8 images ``(B, 3, H, W)`` -> normalised ``dtype`` tensor on the same device.

        Conversion runs on the images' device (do it after the host-to-device copy); images whose size
        differs from ``image_size`` are resized there with antialiasing, unless the backbone keeps each image's
        own size (a ``native`` resize: the batch is a canvas of images of their own sizes).
        """
        if images_uint8.dtype != torch.uint8:
            raise ValueError(f"preprocess_uint8 expects uint8 images, got dtype {images_uint8.dtype}")
        if images_uint8.dim() == 3:
            images_uint8 = images_uint8.unsqueeze(0)
        if images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(f"preprocess_uint8 expects images of shape (B, 3, H, W), got {tuple(images_uint8.shape)}")
        mean, std = self.normalisers(images_uint8.device)
        x = images_uint8.float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size) and not self.resize.keeps_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return ((x - mean) / std).to(dtype)

    def normalisers(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The image mean and std as fp32 ``(1, 3, 1, 1)`` tensors on ``device``, made once per device."""
        key = str(device)
        if key not in self._norm_cache:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self._norm_cache[key] = (mean, std)
        return self._norm_cache[key]

    def to(self, device: str | torch.device) -> Backbone:
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self


# -------------------------------------------------------------------------------------------------- registry

# Process-wide: key -> Backbone class, filled by @register_backbone as each family's module is imported (by
# backbones/__init__), read by backbone_class; a second class under one key is refused.
_REGISTRY: dict[str, type[Backbone]] = {}
B = TypeVar("B", bound=type[Backbone])


def register_backbone(key: str) -> Callable[[B], B]:
    """Class decorator: the Backbone class that the family table's ``backbone=key`` entries load with."""
    def deco(cls: B) -> B:
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"backbone key {key!r} is already registered to {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
        return cls
    return deco


def backbone_class(key: str) -> type[Backbone]:
    """The Backbone class registered under ``key``."""
    try:
        return _REGISTRY[key]
    except KeyError:
        raise BackboneError(f"no backbone class is registered as {key!r}; registered: {sorted(_REGISTRY)}") from None


def backbone_class_for(model: object) -> type[Backbone]:
    """The Backbone class for a model (instance or class), from the family table; refuses with the
    table's reason when the family has no backbone class, or lists the supported families."""
    fam = find_family(model)
    cls = model if isinstance(model, type) else type(model)
    if fam is None:
        known = ", ".join(f"{f.name} ({'/'.join(f.classes)})" for f in FAMILIES if f.backbone)
        raise BackboneError(f"{cls.__module__}.{cls.__qualname__} is not a model family with a backbone class; "
                            f"supported: {known}")
    if fam.backbone is None:
        raise BackboneError(f"{cls.__name__} ({fam.name}) cannot be used as a backbone: {fam.no_backbone}")
    return backbone_class(fam.backbone)
