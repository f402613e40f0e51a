"""CoCa's caption decoder is trained on ``tokens[:, 1:]`` from ``tokens[:, 0]`` and generates from the start token:
a tokenizer whose rows do not begin with that token is refused by name (review 278)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_lora_vl.backbones import build_open_clip
from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, load_spec

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "a", "red", "circle", "photo", "of"]


def _tokenizer(out: Path, template: bool) -> Path:
    """A Hugging Face word tokenizer with bos <s>: its post-processor writes '<s> $A </s>' only with ``template``
    (a GPT-2 / OPT-style tokenizer names a bos token but does not add it)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    if template:
        tok.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(str(out))
    return out


def _coca(tdir: Path):
    text = {"context_length": 8, "vocab_size": len(WORDS), "width": 32, "heads": 2, "layers": 1, "embed_cls": True,
            "output_tokens": True}
    cfg = {"embed_dim": 32, "text_cfg": text,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                          "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
           "multimodal_cfg": {"context_length": 8, "vocab_size": len(WORDS), "width": 32, "heads": 2, "layers": 1}}
    bb = build_open_clip(cfg, tokenizer_dir=tdir, name="coca-hf-tok")
    bb.model.eval()
    return bb


def test_a_tokenizer_that_does_not_put_its_start_token_first_is_refused_for_captions(tmp_path):
    """Its rows began with the first word ([4, 5, 6, </s>, pad...]): captioning trained 'red circle' from 'a' (never
    'a' itself) and generate started from <s>, a token training never put first; neither said so."""
    bb = _coca(_tokenizer(tmp_path / "tok", template=False))
    assert bb.bos_id == 1 and bb.tokenizer(["a red circle"])[0, :4].tolist() == [4, 5, 6, 2]
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'coca-hf-tok' \(CoCa\): its tokenizer's rows begin with token 4, not "
                                         r"its start token 1.*adds its bos token"):
        bb.generate(images, max_len=3)
    with pytest.raises(ValueError, match=r"rows begin with token 4, not its start token 1"):
        build_kind(load_spec("captioning"), world.build_split("captioning", "train", n=2, seed=0), bb)
    bb.encode_text(bb.tokenizer(["a red circle"]))   # the contrastive paths do not need a start token


def test_a_tokenizer_that_puts_its_start_token_first_captions(tmp_path):
    bb = _coca(_tokenizer(tmp_path / "tok", template=True))
    assert bb.tokenizer(["a red circle"])[0, :5].tolist() == [1, 4, 5, 6, 2]
    build_kind(load_spec("captioning"), world.build_split("captioning", "train", n=2, seed=0), bb)
    assert len(bb.generate(torch.zeros(2, 3, 32, 32), max_len=3, beam_size=2)) == 2
