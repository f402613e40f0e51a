"""Hugging Face vision-language models with a language model (LLaVA; the other families subclass it) from a local
directory.

``--backbone hf:DIR`` (and ``builtin-llava``) loads a ``save_pretrained`` directory: the model (its class read
from ``config.json`` and matched against the family table) and its processor (``AutoProcessor``: image
processor, tokenizer, chat template if present). Base weights load in :func:`resolve_base_dtype` (bf16 on a
GPU, fp32 on a CPU, unless ``base_dtype`` says otherwise); adapters attached later stay fp32.

The language-model API (what generative task kinds call):

* ``image_token`` (the prompt placeholder), ``processor``, ``num_image_tokens`` (what it expands to);
* ``lm_collator(max_length)``: a picklable ``(prompts, targets | None) -> tensors`` (:mod:`.lm_collate`);
* ``lm_loss(pixel_values, input_ids, attention_mask, labels)``: per-row mean target cross-entropy ``(B,)``;
* ``generate(images, max_len, beam_size, prompts)``: Hugging Face ``generate`` with the KV cache;
* ``sequence_scores(images, prompts, candidates, per_token=False)``: log-probability ``(B, C)`` of each
  candidate (total, or per target token).

Each takes ``image_sizes``: a native-resolution model's images (Qwen2-VL) keep their own sizes, one canvas per
batch with each image at its top left (:func:`mtl_lora_vl.data.loader.pad_images`); ``image_sizes`` says each
image's ``(h, w)`` there, and each row's prompt gets as many image tokens as its image fills. Other families take
whole ``image_size`` squares (``image_sizes`` None, or the canvas's own size for every row).

Run them under ``mtl_lora_vl.route(backbone.model, ids)`` with one id per image row; beams and candidates,
which multiply the language model's rows, are routed by :mod:`mtl_lora_vl.adapters.generation`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..adapters.row_images import host_image_counts
from ..data.anyres import normalise_regions
from ..data.resize import ImageResize
from ..families import find_family
from .base import (
    GENERATE,
    GRAD_CHECKPOINTING,
    LM_LOGITS,
    Backbone,
    BackboneError,
    check_candidates,
    check_image_batch,
    check_image_sizes,
    check_prompts,
    register_backbone,
    resolve_base_dtype,
)
from .candidate_scores import scores_cached, scores_full, target_logprobs
from .chat import ChatWrap, read_chat_wrap
from .context_warnings import warn_past_context, warn_scored_past_context
from .generation_ids import GenerationIds, plain_decoding
from .hf import hf_dir, hf_grad_checkpointing, hf_model_class, load_hf_weights
from .hf_processor import (
    check_processor_count,
    count_image_tokens,
    load_processor,
    mismatch_fix,
    pixel_normalisation,
    square_side,
)
from .lm_collate import IGNORE_INDEX, LMCollator, PromptLayout, special_prefix, whole_images
from .spec import BackboneSpec
from .tokenizers import HFTokenizer

__all__ = ["HFVLMBackbone"]

_MISMATCH = "image tokens do not match"


@register_backbone("llava")
@dataclass(eq=False)
class HFVLMBackbone(GenerationIds, Backbone):
    """A Hugging Face image-text-to-text model (``LlavaForConditionalGeneration``; subclasses for others)."""

    hf_processor: Any = None
    image_token_str: str = "<image>"
    image_token_id: int = -1
    num_image_tokens: int = 0
    prefix_ids: tuple[int, ...] = ()
    image_open: tuple[int, ...] = ()   # ids just before / after the image tokens (Qwen2-VL's vision start / end)
    image_close: tuple[int, ...] = ()
    image_text: tuple[str, str] = ("", "")   # text around the image tokens, tokenised with the prompt (Gemma 3)
    _collators: dict = field(default_factory=dict, init=False, repr=False)

    capabilities = frozenset({LM_LOGITS, GENERATE, GRAD_CHECKPOINTING})
    # The prompt layout of the family (see lm_collate.PromptLayout) and where its positions start.
    image_first: ClassVar[bool] = False
    prompt_end: ClassVar[str] = ""
    prefix_lm: ClassVar[bool] = False  # prompt tokens attend both ways (token_type_ids 0), targets causally
    position_offset: ClassVar[int] = 0
    # The model scatters the image features over the placeholders in order, so a prompt may hold several (one per
    # image of its row; every family here: PaliGemma puts all of them before the text, LLaVA-OneVision reads each
    # image of such a row as its base view alone).
    several_images: ClassVar[bool] = True

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def load(cls, spec: BackboneSpec, device: str | torch.device = "cpu", base_dtype: str = "auto") -> HFVLMBackbone:
        """A local ``save_pretrained`` directory with the model and its processor files."""
        folder = hf_dir(spec)
        model_cls = hf_model_class(folder)
        processor = load_processor(folder, spec.text)
        dtype = resolve_base_dtype(base_dtype, device, fp16_overflows=cls.fp16_overflows)
        try:
            model = load_hf_weights(model_cls, folder, dtype, device)
        except BackboneError:
            raise
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"could not load {model_cls.__name__} weights from {folder}: {e}") from e
        model.eval().to(device)
        return cls.from_model(model, processor, spec.label)

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> HFVLMBackbone:
        """Wrap an in-memory model and its processor (the loader, tests and notebooks)."""
        tok = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if tok is None or image_processor is None:
            raise BackboneError(f"{name}: the processor ({type(processor).__name__}) needs a tokenizer and an image "
                                "processor; save both with processor.save_pretrained(DIR)")
        config = model.config
        image_token = cls._placeholder(processor)
        image_id = getattr(config, "image_token_id", None)
        if image_id is None:
            image_id = getattr(config, "image_token_index", None)
        if image_id is None or tok.convert_tokens_to_ids(image_token) != image_id:
            raise BackboneError(
                f"{name}: the tokenizer maps the image placeholder {image_token!r} to "
                f"{tok.convert_tokens_to_ids(image_token)}, but the model's config.image_token_id is {image_id}; save "
                "the tokenizer the model was trained with (its image token must be that id)")
        text_config = config.get_text_config()
        image_size = cls._image_side(config, image_processor, name)
        n_image = cls._image_tokens(model, image_size)
        check_processor_count(processor, image_size, n_image, name, config, find_family(model))
        hf_tok = HFTokenizer(tok, context_length=max(8, min(77, int(text_config.max_position_embeddings) - n_image)))
        mean, std = pixel_normalisation(image_processor, name)   # as the processor scales and normalises levels
        resize = cls._image_resize(config, image_size, image_processor, f"{name}: {type(image_processor).__name__}")
        image_open, image_close = cls._image_wrap(config, processor)
        return cls(
            model=model, name=name, tokenizer=hf_tok, image_size=image_size, mean=mean, std=std, resize=resize,
            embed_dim=int(text_config.hidden_size), pad_id=hf_tok.pad_id, bos_id=hf_tok.bos_id, eos_id=hf_tok.eos_id,
            context_length=hf_tok.context_length, vocab_size=int(text_config.vocab_size), hf_processor=processor,
            image_token_str=image_token, image_token_id=int(image_id), num_image_tokens=n_image,
            prefix_ids=cls._prefix(tok), image_open=image_open, image_close=image_close,
        )

    # The family's facts read when wrapping a model (subclasses override those that differ).
    @classmethod
    def _placeholder(cls, processor: Any) -> str:
        """The prompt's image placeholder: one token, the model's image token (the collator expands it)."""
        tok = processor.tokenizer
        return getattr(processor, "image_token", None) or getattr(tok, "image_token", None) or "<image>"

    @classmethod
    def _image_side(cls, config: Any, image_processor: Any, name: str) -> int:
        """The square side the vision tower takes (``config.vision_config.image_size``)."""
        return square_side(config.vision_config.image_size, name)

    @classmethod
    def _image_tokens(cls, model: nn.Module, image_size: int) -> int:
        """How many language-model tokens one image fills (one vision pass over a blank image)."""
        return count_image_tokens(model, image_size)

    @classmethod
    def _image_resize(cls, config: Any, image_size: int, image_processor: Any, label: str) -> ImageResize:
        """How the loader makes ``image_size`` squares: as the image processor declares."""
        return ImageResize.from_hf(image_size, image_processor, label)

    @classmethod
    def _image_wrap(cls, config: Any, processor: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Ids put just before and after each image's tokens (none here)."""
        return (), ()

    @classmethod
    def fit_processor_files(cls, folder: Path, max_pixels: int | None = None, reading: str | None = None,
                            min_pixels: int | None = None, shown_as: Path | None = None) -> None:
        """Edit the processor files in ``folder`` (a merged export's copies of the source's) so that the processor
        reads images as this backbone did (``max_pixels``: a native-resolution run's area cap, ``min_pixels`` with it
        where the exact area read is known; ``reading``: how it read them; ``shown_as``: the folder a message names,
        where ``folder`` is a temporary one that becomes it)."""

    @classmethod
    def _prefix(cls, tokenizer: Any) -> tuple[int, ...]:
        """Special ids before a prompt's text: those the tokenizer adds itself (a start token, usually)."""
        return special_prefix(tokenizer)

    # ------------------------------------------------------------------------------------------ the API
    @property
    def image_token(self) -> str:
        """The placeholder each prompt carries once, where the image goes (e.g. ``"<image>"``)."""
        return self.image_token_str

    @property
    def processor(self) -> Any:
        """The Hugging Face processor (image processor, tokenizer, chat template) of the model."""
        return self.hf_processor

    def chat_wrap(self, system: str = "") -> ChatWrap:
        """The text the model's chat template puts around a user turn, the assistant's turn opened (see
        :mod:`.chat`); the start token the tokenizer adds itself is left out (the collator puts it first)."""
        return read_chat_wrap(self.hf_processor, bool(self.prefix_ids), self.name, system)

    @property
    def lm_context(self) -> int | None:
        """The language model's positions (``max_position_embeddings``): the longest row, image tokens included,
        it was built for."""
        n = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(n) if n else None

    @property
    def layout(self) -> PromptLayout:
        """The prompt facts the collator lays prompts out by (placeholder, image tokens, wraps, special ids)."""
        return PromptLayout(self.image_token_str, self.image_token_id, self.num_image_tokens, self.eos_id,
                            self.pad_id, self.prefix_ids, self.image_first, self.prompt_end, self.image_open,
                            self.image_close, self._token_side(), self.image_text, self.several_images)

    def lm_collator(self, max_length: int | None = None) -> LMCollator:
        """A picklable ``(prompts, targets | None) -> {"input_ids", "attention_mask"[, "labels"]}``: with targets,
        prompt + target + end token right-padded with labels -100 on the prompt and padding; without, the
        prompts left-padded for generation. Each prompt holds :attr:`image_token` once (expanded here)."""
        if max_length not in self._collators:
            self._collators[max_length] = LMCollator(self.hf_processor.tokenizer, self.layout, max_length)
        return self._collators[max_length]

    def lm_loss(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                first_label: int | None = None, image_sizes: Sequence[tuple[int, int]] | None = None,
                image_counts: Sequence[int] | None = None) -> Tensor:
        """Per-row mean token cross-entropy ``(B,)`` over the row's labelled tokens (target and end token), fp32;
        one forward for all rows, logits only from the first labelled position on. Rows without labels give 0.

        ``first_label``: that position, from a caller that made the batch with :meth:`lm_collator` and read it
        on the host (the training loader: :meth:`~.lm_collate.LMCollator.first_labelled`); the image-token count
        of each row is then not checked either (the collator's rows hold them by construction, and Hugging Face's
        own check still runs), so the call makes no GPU wait. Without it both are read from the tensors.
        ``image_sizes``: see the module doc. ``image_counts``: each row's images (the image placeholders of its
        prompt: the training loader's ``lm_image_counts``), where rows may hold several; without them a family that
        needs them (LLaVA-OneVision's ``batch_num_images``) reads them from the ids, and refuses a batch whose ids
        read more than one way. A mixed-task route's row check takes them instead of reading the ids (with
        ``first_label`` as the collator's; without it checked here against the rows' image tokens)."""
        check_image_batch(pixel_values, "lm_loss")
        sizes = check_image_sizes(pixel_values, image_sizes, "lm_loss", not self.resize.anyres, self.needs_image_sizes)
        if first_label is None:
            self._check_rows(pixel_values, input_ids, "lm_loss", sizes, image_counts)
        if labels.shape != input_ids.shape:
            raise ValueError(f"lm_loss: labels {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)} differ")
        L = input_ids.shape[1]
        first = LMCollator.first_labelled(labels) if first_label is None else int(first_label)
        keep = L - max(first - 1, 0)
        out = self._forward(pixel_values, input_ids, attention_mask, labels=labels, image_sizes=sizes,
                            image_counts=image_counts, logits_to_keep=keep, use_cache=False)
        sums, counts = target_logprobs(out.logits[:, :-1], labels[:, L - keep + 1:])
        return -sums / counts.clamp(min=1)

    @torch.no_grad()
    def generate(self, images: Tensor, max_len: int = 20, beam_size: int = 1, prompts: Sequence[str] | None = None,
                 image_sizes: Sequence[tuple[int, int]] | None = None) -> list[str]:
        """One text per row (prompt): greedy (``beam_size=1``) or beam search through Hugging Face ``generate`` with the
        KV cache; only the new tokens are decoded, special tokens stripped. The image placeholder and the ids around
        it are never generated (:meth:`_banned_ids`). ``prompts`` default to the bare image placeholder
        (captioning); ``image_sizes``: see the module doc."""
        if beam_size < 1 or max_len < 1 or int(beam_size) != beam_size or int(max_len) != max_len:
            raise ValueError(f"generate: beam_size and max_len must be integers >= 1, got {beam_size} and {max_len}")
        batch, sizes, image_counts = self._prompts(images, prompts, "generate", image_sizes)
        if beam_size > 1 and batch["input_ids"].shape[0] != images.shape[0] and not _encodes_before_beams(self.model):
            raise ValueError("generate: beam search over prompts of several images needs a transformers that encodes "
                             "the images before it repeats the rows for the beams (older ones repeat each image, not "
                             "each row's images); upgrade transformers, or use beam_size=1")
        warn_past_context(self, batch["input_ids"].shape[1], int(max_len), "generate")
        ids = batch["input_ids"]
        kwargs = {**self._extra_inputs(ids, None), **self._row_inputs(ids, images.shape[0], sizes, image_counts)}
        with plain_decoding(self.model), host_image_counts(self.model, image_counts, self._host_vision(images, sizes)):
            out = self._hf_call(self.model.generate, **self._vision_inputs(images, sizes), **batch, **kwargs,
                                max_new_tokens=int(max_len), num_beams=int(beam_size), do_sample=False,
                                num_return_sequences=1, eos_token_id=self._stop_ids(), pad_token_id=self.pad_id,
                                suppress_tokens=self._banned_ids() or None)
        new = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.hf_processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def sequence_scores(self, images: Tensor, prompts: Sequence[str], candidates: Sequence[str],
                        per_token: bool = False, end: str = "",
                        image_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """Total log-probability ``(B, C)`` of each candidate (its tokens and the end token, as targets are trained:
        ``end``, a chat template's end of turn, else the tokenizer's) after each row's prompt; ``per_token``: divided by
        that number of tokens. One prefill of the prompts, then every candidate of every row in one batched step from
        the cache (``B·C`` language-model rows, routed like beams). Under activation checkpointing in training (where
        transformers drops the cache) the ``B·C`` full sequences run instead. ``image_sizes``: see the module doc."""
        check_candidates(candidates, self.image_token)
        batch, sizes, image_counts = self._prompts(images, prompts, "sequence_scores", image_sizes)
        prompts = list(prompts)
        collator = self.lm_collator()   # candidates read as they continue each row's own prompt
        texts = collator.prompt_texts(prompts)
        end_id = collator.end_id(end)
        per_text = {t: [[*ids, end_id] for ids in collator.continuation_ids([t] * len(candidates), candidates)]
                    for t in dict.fromkeys(texts)}
        cands = [per_text[t] for t in texts]   # (B, C) id lists: rows with one prompt text share them
        warn_scored_past_context(self, batch["input_ids"].shape[1], cands)
        if self.model.training and torch.is_grad_enabled() and _checkpointing(self.model):
            return self._scores_full(images, prompts, cands, sizes, per_token=per_token)
        return self._scores_cached(images, batch, cands, sizes, image_counts, per_token=per_token)

    def caption_logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, L-1, vocab)`` of ``tokens`` (from :attr:`tokenizer`) after the image, laid out as
        the family's processor lays out a prompt of the bare image placeholder (:meth:`lm_collator`: Gemma 3's and
        LLaVA's start token first, then the image; PaliGemma's image, then the start token and ``"\\n"``); a start token
        that ``tokens`` begin with is that prompt's own, not read twice. Position i predicts ``tokens[:, i + 1]``."""
        check_image_batch(images, "caption_logits")
        if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.shape[0] != images.shape[0]:
            raise ValueError(f"caption_logits: tokens must be (B, L >= 2) for {images.shape[0]} images, "
                             f"got {tuple(tokens.shape)}")
        tokens, L = tokens.long(), tokens.shape[1]
        collate = self.lm_collator()
        prompt = collate.prompt_rows([self.image_token], [tuple(images.shape[-2:])]).rows[0]
        start = self.prefix_ids
        if len(start) == 1 and bool((tokens[:, 0] == start[0]).all()):
            tokens = tokens[:, 1:]   # the prompt's last position predicts tokens[:, 1]
        prompt = tokens.new_tensor(prompt).expand(tokens.shape[0], -1)
        ids = torch.cat([prompt, tokens], dim=1)
        targets = torch.cat([torch.full_like(prompt, IGNORE_INDEX), tokens], dim=1)  # a prefix LM: causal here
        # L logits: from the position before tokens[:, 1] (the prompt's last, or tokens[:, 0]) on, the last dropped
        out = self._forward(images, ids, torch.ones_like(ids), targets, logits_to_keep=L, use_cache=False)
        return out.logits[:, :-1]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """transformers' switch on the vision and language layers, non-reentrant; acts in training mode only."""
        hf_grad_checkpointing(self.model, enabled)

    def preprocess_uint8(self, images_uint8: Tensor, dtype: torch.dtype = torch.float32,
                         image_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """As the base class's; with the ``image_sizes`` of a canvas of images at their own sizes (a ``native``
        resize: Qwen2-VL, Mistral 3), only each image's own region is converted, the padding set to a black pixel's
        value (:func:`~mtl_lora_vl.data.anyres.normalise_regions`): the same values, without whole-canvas copies."""
        shape = tuple(images_uint8.shape)
        if (image_sizes is None or not self.resize.native or images_uint8.dtype != torch.uint8 or len(shape) != 4
                or shape[1] != 3 or all(tuple(s) == shape[2:] for s in image_sizes)):
            return super().preprocess_uint8(images_uint8, dtype)
        return normalise_regions(images_uint8, image_sizes, *self.normalisers(images_uint8.device), dtype)

    # ------------------------------------------------------------------------------------------ internals
    def _extra_inputs(self, input_ids: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """Family inputs beside the ids: ``token_type_ids`` for a prefix-LM (0 = prompt, 1 = target)."""
        if not self.prefix_lm:
            return {}
        if labels is None:
            return {"token_type_ids": torch.zeros_like(input_ids)}
        return {"token_type_ids": (labels != IGNORE_INDEX).long()}

    def _positions(self, mask: Tensor) -> Tensor:
        """Position ids of a (left-padded) batch, as Hugging Face ``generate`` numbers them."""
        return (mask.long().cumsum(-1) - 1).clamp(min=0) + self.position_offset

    def _token_side(self) -> int:
        """Pixels per image token along each side for a native-resolution model (0: every image fills
        ``num_image_tokens``; see :class:`.lm_collate.PromptLayout`)."""
        return 0

    def _vision_inputs(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                       ) -> dict[str, Tensor]:
        """The model's image inputs from the loader's normalised ``(B, 3, S, S)`` batch (here: as they are; each
        image fills the batch's squares)."""
        if image_sizes is not None and any(s != tuple(pixel_values.shape[-2:]) for s in image_sizes):
            raise ValueError(f"{self.name}: each image must fill its {tuple(pixel_values.shape[-2:])} place in the "
                             f"batch (image_sizes {sorted(set(image_sizes))}); this model takes whole "
                             f"{self.image_size}x{self.image_size} images (backbone.resize makes them)")
        s = self.image_size
        if tuple(pixel_values.shape[1:]) != (3, s, s):   # (the tower failed deep inside: "size of tensor a (36) ...")
            raise ValueError(f"{self.name}: expected float images of shape (B, 3, {s}, {s}) (the backbone's "
                             f"image_size), got {tuple(pixel_values.shape)}; give uint8 images of any size to "
                             f"backbone.preprocess_uint8 (it resizes them) or resize them to {s}x{s} yourself")
        return {"pixel_values": pixel_values}

    def _host_vision(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                     ) -> dict[str, list]:
        """Host copies of :meth:`_vision_inputs`' size inputs, by the model's names, for the forward's hooks to take
        instead of reading the device (Qwen2-VL's ``image_grid_thw``, Mistral 3's ``image_sizes``; none here)."""
        return {}

    def _row_inputs(self, input_ids: Tensor, n_images: int, image_sizes: Any = None,
                    image_counts: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Inputs saying how the ``n_images`` images split into the rows of ``input_ids`` (``image_counts`` each, where
        the caller knows them) (none here: the model scatters the features over the image tokens in order;
        LLaVA-OneVision's ``batch_num_images``)."""
        return {}

    def _prefill_positions(self, mask: Tensor) -> Tensor | None:
        """Position ids of the prompts' prefill in :meth:`sequence_scores` (None: the model's own)."""
        return self._positions(mask)

    def _step_positions(self, step_mask: Tensor, prompt_len: int, k: int) -> Tensor:
        """Position ids of the candidate tokens after the prefill: ``step_mask`` covers prompt and candidates of
        the ``B·k`` rows (each prompt row repeated ``k`` times), the candidates start at ``prompt_len``."""
        return self._positions(step_mask)[:, prompt_len:]

    def _check_rows(self, pixel_values: Tensor, input_ids: Tensor, what: str,
                    image_sizes: list[tuple[int, int]] | None = None,
                    image_counts: Sequence[int] | None = None) -> None:
        """The rows' image tokens against the images' features (``image_counts``: read by families that need them)."""
        several = (self.several_images and input_ids.dim() == 2 and pixel_values.dim() == 4
                   and pixel_values.shape[0] != input_ids.shape[0])
        if input_ids.dim() != 2 or pixel_values.dim() != 4 or (pixel_values.shape[0] != input_ids.shape[0]
                                                               and not several):
            raise ValueError(f"{what}: expected pixel_values (B, 3, H, W) and input_ids (B, L) for the same B, got "
                             f"{tuple(pixel_values.shape)} and {tuple(input_ids.shape)}")
        counts = (input_ids == self.image_token_id).sum(dim=1).tolist()
        count = self.layout.image_tokens   # (the layout is built on each read of the property: once here)
        want = [count(s) for s in self._sizes_of(pixel_values, image_sizes)]
        if image_counts is not None:   # (checked here, where the rows' counts are on the host: the forward trusts them)
            at = [0, *itertools.accumulate(int(k) for k in image_counts)]
            if len(at) != len(counts) + 1 or at[-1] != len(want) or any(
                    c != sum(want[a:b]) for c, a, b in zip(counts, at, at[1:])):
                raise BackboneError(
                    f"{what}: image_counts {list(image_counts)} do not give the rows' image tokens {counts} (id "
                    f"{self.image_token_id}) from the {len(want)} images' {want}; pass each row's images (the image "
                    "placeholders its prompt holds), rows in order")
        if self.several_images and counts != want and whole_images(counts, want):
            return   # rows of several images, or of none ([2, 0, 1]): each row's tokens are its images', in order
        if several:
            raise BackboneError(
                f"{what}: input_ids hold {counts} image tokens (id {self.image_token_id}) per row, which do not split "
                f"into the {len(want)} images' {want} features in {self.name}; build the ids with "
                f"backbone.lm_collator(), whose prompts hold {self.image_token!r} once per image and expand it")
        r = next((r for r, (c, w) in enumerate(zip(counts, want)) if c != w), None)
        if r is not None:
            raise BackboneError(
                f"{what}: row {r} of input_ids has {counts[r]} image tokens (id {self.image_token_id}) but its "
                f"image gives {want[r]} features in {self.name}; build the ids with backbone.lm_collator() (with "
                f"the images' image_sizes), whose prompts hold {self.image_token!r} "
                f"{'once per image' if self.several_images else 'once'} and expand it")

    def _prompts(self, images: Tensor, prompts: Sequence[str] | None, what: str,
                 image_sizes: Sequence[tuple[int, int]] | None
                 ) -> tuple[dict[str, Tensor], list[tuple[int, int]] | None, list[int]]:
        """The collated prompts (default: the bare image placeholder, one per image), checked; the images' sizes,
        checked; and each row's images (its prompt's placeholders)."""
        check_image_batch(images, what)
        sizes = check_image_sizes(images, image_sizes, what, not self.resize.anyres, self.needs_image_sizes)
        prompts = [self.image_token] * images.shape[0] if prompts is None else prompts
        prompts = check_prompts(prompts, images.shape[0], what, self.image_token if self.several_images else None)
        collate = self.lm_collator()
        batch = collate(prompts, image_sizes=self._sizes_of(images, sizes))
        moved = {k: v.to(images.device, non_blocking=True) for k, v in batch.items()}
        return moved, sizes, collate.image_counts(prompts)

    @staticmethod
    def _sizes_of(images: Tensor, sizes: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
        """Each image's ``(h, w)``: ``sizes``, or the whole tensor's for every row."""
        return sizes if sizes is not None else [tuple(images.shape[-2:])] * images.shape[0]

    def _hf_call(self, fn: Any, **kwargs: Any) -> Any:
        """Call the model (or its ``generate``); Hugging Face's image-token mismatch gets a message with the fix."""
        try:
            return fn(**kwargs)
        except ValueError as e:
            if _MISMATCH not in str(e):
                raise
            fix = mismatch_fix(self.layout, self.hf_processor, self.model.config, find_family(self.model))
            raise BackboneError(f"{self.name}: the prompts' image tokens do not match the image features ({e}). "
                                f"{fix}") from e

    def _forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor,
                 labels: Tensor | None = None, image_sizes: list[tuple[int, int]] | None = None,
                 image_counts: Sequence[int] | None = None, **kwargs: Any) -> Any:
        extra = self._extra_inputs(input_ids, labels)
        extra.update(self._row_inputs(input_ids, pixel_values.shape[0], image_sizes, image_counts))
        # (the row check's count, without reading the ids; a packed tower's image sizes, without reading them)
        with host_image_counts(self.model, image_counts, self._host_vision(pixel_values, image_sizes)):
            return self._hf_call(self.model, **self._vision_inputs(pixel_values, image_sizes), input_ids=input_ids,
                                 attention_mask=attention_mask, **extra, **kwargs)

    _scores_cached = scores_cached   # candidate scoring (sequence_scores): candidate_scores.py
    _scores_full = scores_full


# -------------------------------------------------------------------------------------------------- helpers


def _encodes_before_beams(model: nn.Module) -> bool:
    """Whether the model's ``generate`` encodes the images before it repeats the rows for beams (transformers'
    multimodal encoder outputs, repeated row by row), so that a row of several images keeps them in beam search."""
    supports = getattr(model, "_supports_mm_encoder_outputs", None)
    return bool(supports()) if callable(supports) else False


def _checkpointing(model: nn.Module) -> bool:
    """Whether transformers' activation checkpointing is on (it drops the KV cache in training)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
