"""Tiny Idefics3 / SmolVLM from configs (no downloads): SigLIP-style vision tower and Llama decoder of 2 layers,
width 32, 8-px patches folded 2 x 2 by the connector, so a 32 x 32 image is 16 patches and 4 image tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vl_tiny import left_padded

PATCH, SCALE, SIDE = 8, 2, 32
N_IMAGE = (SIDE // PATCH) ** 2 // SCALE ** 2
IDEFICS3_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
FAKE, IMG, EOU, GLOBAL = 92, 93, 94, 95   # the bare model's ids (tiny_idefics3)
CONNECTOR = r"(^|\.)connector\.modality_projection\.proj$"
ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def _config(smolvlm: bool, vocab: int, image_id: int, pad: int = 0, bos: int = 1, eos: int = 2):
    from transformers import Idefics3Config, SmolVLMConfig

    vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIDE,
               patch_size=PATCH)
    text = dict(model_type="llama", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, pad_token_id=pad,
                bos_token_id=bos, eos_token_id=eos)
    cls = SmolVLMConfig if smolvlm else Idefics3Config
    return cls(vision_config=vis, text_config=text, image_token_id=image_id, scale_factor=SCALE)


def tiny_idefics3(smolvlm: bool = False):
    """A bare tiny ``Idefics3ForConditionalGeneration`` (``smolvlm``: ``SmolVLMForConditionalGeneration``)."""
    from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

    cls = SmolVLMForConditionalGeneration if smolvlm else Idefics3ForConditionalGeneration
    return cls(_config(smolvlm, 96, IMG))


def inputs(n: int = 2, text: int = 6, seed: int = 0, ragged: bool = False) -> dict:
    """One image per row, as the processor makes it unsplit: pixel_values (n, 1, 3, 32, 32); input_ids
    [text.. FAKE GLOBAL IMG*4 FAKE text..] per row, left-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        t = torch.randint(3, 90, (text + (3 * i if ragged else 0),), generator=g).tolist()
        rows.append([1, *t[:2], FAKE, GLOBAL, *[IMG] * N_IMAGE, FAKE, *t[2:]])
    ids, mask = left_padded(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(n, 1, 3, SIDE, SIDE, generator=g))


def save_tiny_idefics3(out, smolvlm: bool = False, words=None, seed: int = 0, splitting: bool = True) -> Path:
    """A tiny Idefics3 (``smolvlm``: SmolVLM) directory at ``out`` with its processor: a word-level tokenizer over
    the built-in world's words plus the family's special tokens, an image processor whose ``max_image_size`` is 32
    (4 image tokens) and, as released, ``size`` 4 x that and ``do_image_splitting`` on (``splitting``); the crops'
    ``<row_r_col_c>`` tags and ``"\\n"`` are tokens of the tokenizer."""
    from llava_tiny import EXTRA_WORDS
    from tokenizers import AddedToken
    from transformers import (
        Idefics3ImageProcessor,
        Idefics3Processor,
        PreTrainedTokenizerFast,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )
    from vl_tiny import world_words

    from mtl_lora_vl.backbones import build_word_tokenizer

    out = Path(out)
    build_word_tokenizer([*(words if words is not None else world_words()), *EXTRA_WORDS], out / "_tok",
                         context_length=64)
    tok = PreTrainedTokenizerFast.from_pretrained(str(out / "_tok"))
    tok.add_special_tokens({"additional_special_tokens": IDEFICS3_SPECIALS})
    # as released: the crops' tags are tokens of their own; "\n" (which the word-level tokenizer drops) one too,
    # so that the rows' newlines of a split image show in the ids
    tok.add_tokens([*ROW_COL, AddedToken("\n", normalized=False)])
    sizes = dict(size={"longest_edge": 4 * SIDE}, max_image_size={"longest_edge": SIDE}, do_image_splitting=splitting)
    if smolvlm:
        processor = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**sizes), tokenizer=tok,
                                     video_processor=SmolVLMVideoProcessor(), image_seq_len=N_IMAGE)
    else:
        processor = Idefics3Processor(image_processor=Idefics3ImageProcessor(**sizes), tokenizer=tok,
                                      image_seq_len=N_IMAGE)
    torch.manual_seed(seed)
    from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

    cls = SmolVLMForConditionalGeneration if smolvlm else Idefics3ForConditionalGeneration
    model = cls(_config(smolvlm, len(tok), tok.convert_tokens_to_ids("<image>"), tok.pad_token_id, tok.bos_token_id,
                        tok.eos_token_id))
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def tiny_idefics3_backbone(tmp, smolvlm: bool = False):
    """A loaded tiny Idefics3 (or SmolVLM) backbone from a directory under ``tmp`` (built once)."""
    from mtl_lora_vl.backbones import load_backbone

    folder = Path(tmp) / ("tiny_smolvlm" if smolvlm else "tiny_idefics3")
    if not (folder / "config.json").is_file():
        save_tiny_idefics3(folder, smolvlm)
    return load_backbone(f"hf:{folder}")


@pytest.fixture(autouse=True)
def _num2words(monkeypatch):
    """SmolVLMProcessor refuses to build without the num2words package, which it uses only for video prompts (a test
    module that imports this fixture gets it in every test)."""
    import transformers.models.smolvlm.processing_smolvlm as smolvlm

    if smolvlm.num2words is None:
        monkeypatch.setattr(smolvlm, "num2words", str)
