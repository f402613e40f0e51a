"""open_clip's newer configs may name their tokenizer by ``text_cfg.tokenizer_type`` ("tiktoken", with the encoding in
``tiktoken_name``), which open_clip's ``get_tokenizer`` takes before ``hf_tokenizer_name`` and its BPE. It was read
as neither: a folder's tokenizer (or open_clip's BPE) tokenized its text, other ids than the model was trained on."""

import pytest

from mtl_lora_vl.backbones import build_word_tokenizer
from mtl_lora_vl.backbones.open_clip_tokenizer import open_clip_tokenizer


def _cfg(**text) -> dict:
    return {"embed_dim": 16, "text_cfg": {"context_length": 12, "vocab_size": 49408, **text},
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8}}


@pytest.mark.parametrize("folder", [True, False], ids=["tokenizer folder", "open_clip's BPE"])
def test_a_tokenizer_type_is_refused_with_what_to_use(tmp_path, folder):
    tok_dir = build_word_tokenizer("a red cube".split(), tmp_path, context_length=12) if folder else None
    cfg = _cfg(tokenizer_type="tiktoken", tiktoken_name="r50k_base")
    with pytest.raises(ValueError, match=r"open_clip model m: text_cfg.tokenizer_type = 'tiktoken' \(encoding "
                                         r"'r50k_base'\) is not reproduced here .* no tokenizer_type"):
        open_clip_tokenizer(cfg, tok_dir, "m")


def test_what_open_clip_ignores_is_ignored(tmp_path):
    # open_clip reads tokenizer_mode from text_cfg, and on its Hugging Face path only (refused there); a model
    # config's top-level one, an empty tokenizer_type and a tiktoken_name alone change nothing in its tokenizer
    cfg = {**_cfg(tokenizer_type="", tiktoken_name="r50k_base", tokenizer_mode="clips"), "tokenizer_mode": "clips"}
    tok = open_clip_tokenizer(cfg, None, "m")
    plain = open_clip_tokenizer(_cfg(), None, "m")
    assert tok(["a red cube."]).tolist() == plain(["a red cube."]).tolist()
