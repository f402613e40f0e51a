"""Which token ids a Hugging Face VLM's ``generate`` stops at and never writes, and the plain decoding it runs
under: the part of :class:`~.hf_vlm.HFVLMBackbone` that reads the model's generation config, its chat template's
end of turn and its image markers."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from .chat import assistant_end

__all__ = ["IMAGE_MARKS", "GenerationIds", "plain_decoding"]

# Config fields naming image / video marker ids beside the image token (Gemma 3's start / end of image, Qwen2-VL's
# video placeholder and vision start / end): ids generate must not write (GenerationIds._banned_ids).
IMAGE_MARKS = ("boi_token_index", "eoi_token_index", "boi_token_id", "eoi_token_id", "video_token_id",
               "video_token_index", "vision_start_token_id", "vision_end_token_id")


class GenerationIds:
    """Mixin of :class:`~.hf_vlm.HFVLMBackbone`: the stop and banned ids of its ``generate`` (it reads the
    backbone's ``model``, ``hf_processor``, ``eos_id``, image token ids, ``vocab_size`` and ``lm_collator``)."""

    model: nn.Module
    hf_processor: Any

    def _stop_ids(self) -> list[int]:
        """The end token, any other stop ids the model's ``generation_config`` lists, and the chat template's end
        of an assistant turn (:func:`.chat.assistant_end`; Idefics3 lists only Llama's end tokens, not its
        ``<end_of_utterance>``): a chat model, and one trained with ``chat = true``, ends its answer there."""
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        return list(dict.fromkeys([self.eos_id, *map(int, ids), *self._chat_end_ids]))

    def _banned_ids(self) -> list[int]:
        """The ids :meth:`generate` never writes: the image placeholder and the ids around it (Qwen2-VL's
        ``<|vision_start|>`` / ``<|vision_end|>``, Idefics3's ``<fake_token_around_image>`` / ``<global-img>``) and
        the model's other image and video markers its config names (Gemma 3's ``<start_of_image>`` /
        ``<end_of_image>``, a video placeholder). A generated one is a special token, stripped from the text (a
        caption of image tokens decoded as ""), and a row holding it no longer matches its image (a forward over
        prompt and answer counts one more image token than the image fills); a model that never writes them
        decodes as before. Stop ids are never banned."""
        config = self.model.config
        marks = (getattr(config, k, None) for k in IMAGE_MARKS)
        ids = [self.image_token_id, *self._wrap_marker_ids(), *(m for m in marks if isinstance(m, int))]
        stop = set(self._stop_ids())
        return [int(i) for i in dict.fromkeys(ids) if 0 <= int(i) < self.vocab_size and int(i) not in stop]

    def _wrap_marker_ids(self) -> tuple[int, ...]:
        """The ids around each image's tokens (``image_open`` / ``image_close``) that are markers of their own (all
        of them here: Qwen2-VL's are its config's vision start / end ids)."""
        return (*self.image_open, *self.image_close)

    def marker_texts(self) -> tuple[str, ...]:
        """The tokenizer's added tokens among the ids :meth:`generate` never writes (:meth:`_banned_ids`), as text:
        beside the special ones, Idefics3's ``<row_r_col_c>`` crop tags (plain added tokens). A task's texts may not
        hold them (:func:`~mtl_lora_vl.tasks.texts.special_texts`): read as that image marker, and a class or
        answer written with one never generated."""
        tok = getattr(self.hf_processor, "tokenizer", None)
        added = {int(i): t for t, i in (tok.get_added_vocab() if tok is not None else {}).items()}
        return tuple(added[i] for i in self._banned_ids() if i in added)

    @functools.cached_property
    def _chat_end_ids(self) -> list[int]:
        """The chat template's end of an assistant turn as a stop id (none without one), read once."""
        end = assistant_end(self.hf_processor)
        return [self.lm_collator().end_id(end)] if end else []


@contextmanager
def plain_decoding(model: nn.Module) -> Iterator[None]:
    """Decode greedily or by plain beam search, as the scores say: Hugging Face fills every setting ``generate``
    is not given from the model's own ``generation_config.json``, so a saved ``repetition_penalty``,
    ``no_repeat_ngram_size``, ``min_new_tokens`` or ``length_penalty`` changed both the zero-shot and the
    adapted scores (``min_new_tokens: 6`` took VQA to 0). Only the special-token ids are kept.

    The config is swapped on the model (a ``generation_config=`` given to ``generate`` still takes every setting it
    leaves unset from the model's): while scopes are open on the model (several threads generating), the first
    one swaps it and the last one to close puts the model's own back, in whatever order they close."""
    from transformers import GenerationConfig

    state = model.__dict__.setdefault("_mtl_lora_plain_decoding", _PlainDecoding())   # setdefault: atomic
    with state.lock:
        if not state.open:
            state.saved = getattr(model, "generation_config", None)
            if state.saved is not None:
                model.generation_config = GenerationConfig(**{k: getattr(state.saved, k, None) for k in _TOKEN_IDS})
        state.open += 1
    try:
        yield
    finally:
        with state.lock:
            state.open -= 1
            if not state.open and state.saved is not None:
                model.generation_config, state.saved = state.saved, None


class _PlainDecoding:
    """A model's open :func:`plain_decoding` scopes: how many, and the model's own generation config they hide.
    A copy or pickle of the model gets a fresh one (no scope is open on the copy)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.saved: Any = None

    def __deepcopy__(self, memo: dict) -> _PlainDecoding:
        return _PlainDecoding()

    def __reduce__(self) -> tuple:
        return _PlainDecoding, ()


_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
