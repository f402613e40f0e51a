"""Helper 477: an ``open_clip:DIR`` holding tokenizer files but no ``text_cfg.hf_tokenizer_name`` was tokenized with
the folder's files, where open_clip itself (``get_tokenizer('local-dir:DIR')``) uses its own BPE: a hub download of an
open_clip model (laion/CLIP-ViT-B-32-laion2B-s34B-b79K) holds transformers' tokenizer files beside
open_clip_config.json, for transformers. Such a folder now tokenizes as open_clip does, with a warning that its files
are not read; the folder's files are still its tokenizer where the BPE cannot be (this package's word tokenizer, the
built-in CLIP's; another vocabulary size)."""

from __future__ import annotations

import json
import logging
import shutil

import open_clip
import torch
from safetensors.torch import save_file

from mtl_lora_vl.backbones import build_open_clip, load_backbone
from mtl_lora_vl.backbones.builtin import builtin_dir
from mtl_lora_vl.backbones.tokenizers import OpenClipBPETokenizer, WordTokenizer

TEXTS = ["a photo of a red cube.", "  Two   DOGS "]


def _transformers_tokenizer(folder):
    """Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json, ...) that are not open_clip's BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "red", "cube"])}
    rust = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    PreTrainedTokenizerFast(tokenizer_object=rust, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)


def test_a_folder_whose_config_names_no_tokenizer_tokenizes_with_open_clips_bpe(tmp_path, caplog):
    torch.manual_seed(0)
    cfg = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                         "head_width": 16},
                         "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2,
                                      "layers": 1}},
           "preprocess_cfg": {}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    model = build_open_clip(cfg).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    _transformers_tokenizer(tmp_path)
    with caplog.at_level(logging.WARNING):
        bb = load_backbone(f"open_clip:{tmp_path}")
    assert isinstance(bb.tokenizer, OpenClipBPETokenizer)
    assert bb.tokenizer(TEXTS).tolist() == open_clip.get_tokenizer(f"local-dir:{tmp_path}")(TEXTS).tolist()
    assert "its tokenizer files (tokenizer.json) are not read: its open_clip_config.json names no " \
           "text_cfg.hf_tokenizer_name" in caplog.text
    caplog.clear()
    # the folder's tokenizer named (and the tower pooling at its end token): read
    cfg["model_cfg"]["text_cfg"].update(hf_tokenizer_name=str(tmp_path), pool_type="eos", eos_id=3)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    named = load_backbone(f"open_clip:{tmp_path}").tokenizer
    assert not isinstance(named, OpenClipBPETokenizer) and "not read" not in caplog.text
    assert named(["a red cube"])[0, :5].tolist() == [2, 4, 7, 8, 3]


def test_the_word_tokenizer_of_a_folder_whose_config_names_none_is_still_its_tokenizer(tmp_path, caplog):
    """The built-in CLIP's folder (before its config named hf_tokenizer_name, and a model trained here) is read with
    its own word tokenizer, silently."""
    for f in builtin_dir().iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((tmp_path / "open_clip_config.json").read_text())
    del cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"]
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING):
        bb = load_backbone(f"open_clip:{tmp_path}")
    builtin = load_backbone("builtin")
    assert isinstance(bb.tokenizer, WordTokenizer) and "not read" not in caplog.text
    assert bb.tokenizer(TEXTS).tolist() == builtin.tokenizer(TEXTS).tolist()
