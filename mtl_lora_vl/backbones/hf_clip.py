"""Hugging Face ``CLIPModel`` from a local ``save_pretrained`` directory (``hf:DIR``): image and text embeddings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from ..data.resize import ImageResize
from ..whole_files import read_whole
from .base import (
    GRAD_CHECKPOINTING,
    IMAGE_EMBEDDINGS,
    OPENAI_MEAN,
    OPENAI_STD,
    TEXT_EMBEDDINGS,
    Backbone,
    register_backbone,
    resolve_base_dtype,
)
from .hf import hf_dir, hf_grad_checkpointing, load_hf_weights
from .hf_processor import pixel_normalisation
from .spec import BackboneSpec
from .tokenizers import load_hf_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["HFClipBackbone"]


@register_backbone("hf_clip")
class HFClipBackbone(Backbone):
    """A Hugging Face ``CLIPModel``: pooled tower outputs through the projections."""

    capabilities = frozenset({IMAGE_EMBEDDINGS, TEXT_EMBEDDINGS, GRAD_CHECKPOINTING})
    short_text = True   # a causal text tower pooled at each row's first end token

    def _image_features(self, images: Tensor) -> Tensor:
        pooled = self.model.vision_model(pixel_values=images).pooler_output
        return self.model.visual_projection(pooled)

    def _text_features(self, tokens: Tensor) -> Tensor:
        # Pooled at each row's first end token. transformers' own pooler_output takes the highest token id when
        # the config's eos_token_id is 2 (its legacy rule): right for CLIP's BPE, whose end token is the highest
        # id, wrong for a tokenizer whose end token is not (e.g. id 2 itself, or added tokens above it).
        hidden = self.model.text_model(input_ids=tokens).last_hidden_state  # after the final layer norm
        is_end = tokens == self.eos_id
        first_end = torch.where(is_end.any(1), is_end.int().argmax(1), tokens.argmax(1))
        pooled = hidden[torch.arange(tokens.shape[0], device=tokens.device), first_end]
        return self.model.text_projection(pooled)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """transformers' switch, non-reentrant; it acts in training mode only, as in transformers."""
        hf_grad_checkpointing(self.model, enabled)

    @classmethod
    def load(cls, spec: BackboneSpec, device: str | torch.device = "cpu", base_dtype: str = "auto") -> HFClipBackbone:
        """A local ``CLIPModel.save_pretrained`` directory with its tokenizer (and preprocessor config); fp32
        weights unless ``base_dtype`` asks for bf16/fp16 (a small contrastive model: ``auto`` is fp32)."""
        from transformers import CLIPConfig, CLIPModel

        folder = hf_dir(spec)
        try:
            config = CLIPConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # wrong model type, malformed json, ...
            raise ValueError(f"{folder}/config.json is not a Hugging Face CLIP config: {e}") from e
        context_length = int(config.text_config.max_position_embeddings)
        tokenizer = load_hf_tokenizer(folder, context_length, spec.label)   # before the weights: a refusal is quick
        if tokenizer.vocab_size > config.text_config.vocab_size:
            raise ValueError(
                f"tokenizer in {folder} has {tokenizer.vocab_size} tokens but the text model embeds only "
                f"{config.text_config.vocab_size}; save the matching tokenizer into {folder}"
            )
        image_size = int(config.vision_config.image_size)
        mean, std, resize = _image_preprocessing(folder, image_size)
        model = load_hf_weights(CLIPModel, folder, resolve_base_dtype(base_dtype, device, large=False), device)
        model.eval().to(device)
        return cls(
            model=model,
            name=spec.label,
            tokenizer=tokenizer,
            image_size=image_size,
            mean=mean,
            std=std,
            resize=resize,
            embed_dim=int(config.projection_dim),
            pad_id=tokenizer.pad_id,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            context_length=context_length,
            vocab_size=int(config.text_config.vocab_size),
        )


def _openai_preprocessing(folder: Path, image_size: int) -> tuple[tuple[float, float, float],
                                                                  tuple[float, float, float], ImageResize]:
    """OpenAI CLIP's mean, std and crop, for a directory that holds no image processor config (said: a model
    trained with other statistics would see images it was not trained on, silently)."""
    logger.warning("%s holds no image processor config (preprocessor_config.json, or processor_config.json with an "
                   "image_processor): images are normalised with OpenAI CLIP's mean and std and cropped to %d px; if "
                   "the model was trained otherwise, save its processor there (processor.save_pretrained(DIR))",
                   folder, image_size)
    return OPENAI_MEAN, OPENAI_STD, ImageResize(image_size, floor_crop=True)   # as CLIPImageProcessor crops


def _image_preprocessing(folder: Path, image_size: int) -> tuple[tuple[float, float, float],
                                                                  tuple[float, float, float], ImageResize]:
    """Image mean, std and resize from the image processor's config, else CLIP's: ``preprocessor_config.json``,
    or the ``image_processor`` of ``processor_config.json`` (what transformers 5's ``CLIPProcessor.save_pretrained``
    writes instead); ``do_normalize: false`` means no normalisation."""
    pp = folder / "preprocessor_config.json"
    key = None
    if not pp.is_file():
        pp, key = folder / "processor_config.json", "image_processor"
        if not pp.is_file():
            return _openai_preprocessing(folder, image_size)
    try:
        data = json.loads(read_whole(pp))
    except json.JSONDecodeError as e:
        raise ValueError(f"{pp} is not valid JSON: {e}") from e
    if isinstance(data, dict) and key is not None:
        if not isinstance(data.get(key), dict):
            return _openai_preprocessing(folder, image_size)
        data = data[key]
    if not isinstance(data, dict):
        raise ValueError(f"{pp} must hold a JSON object, got {type(data).__name__}")
    mean, std = pixel_normalisation(data, str(pp))   # its rescale_factor, do_rescale and do_normalize followed
    return mean, std, ImageResize.from_hf(image_size, data, str(pp))
