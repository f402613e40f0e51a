"""Review 210: open_clip directories whose text side comes from Hugging Face files (a tokenizer folder, a text
model folder) load as open_clip loads them: the same ids, the same towers, nothing fetched."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mtl_lora_vl.backbones import build_open_clip, load_backbone

VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}


def _t5_like_tokenizer(out: Path) -> Path:
    """A Hugging Face tokenizer folder shaped like SigLIP's: no start token, "</s>" (id 1) appended as the end
    token and written as padding (big_vision's pad_value=1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "red", "cube", "photo", "of"]
    rust = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=rust, pad_token="</s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    return out


def _save_dir(folder: Path, model_cfg: dict) -> torch.nn.Module:
    from safetensors.torch import save_file

    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = build_open_clip(cfg).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return model


def test_a_siglip_like_directory_pads_as_open_clip_does(tmp_path):
    """The tokenizer's pad id was replaced by the text tower's pad_id (0) whatever the tower: SigLIP's tower masks no
    padding (no_causal_mask, pool_type 'last' reads the last position), so rows padded with 0 instead of its pad
    "</s>" (1) gave text embeddings at cosine 0.57 / 0.84 to open_clip's own for the same texts."""
    import open_clip

    _t5_like_tokenizer(tmp_path)
    text = {"context_length": 8, "vocab_size": 8, "width": 32, "heads": 2, "layers": 1,
            "hf_tokenizer_name": str(tmp_path), "tokenizer_kwargs": {"clean": "canonicalize"},
            "no_causal_mask": True, "pool_type": "last"}
    _save_dir(tmp_path, {"embed_dim": 16, "custom_text": True, "text_cfg": text, "vision_cfg": VISION})
    bb = load_backbone(f"open_clip:{tmp_path}")
    texts = ["a red cube", "a photo of a red cube"]
    theirs = open_clip.get_tokenizer(f"local-dir:{tmp_path}")(texts)
    assert bb.tokenizer(texts).tolist() == theirs.tolist() == [[3, 4, 5, 1, 1, 1, 1, 1], [3, 6, 7, 3, 4, 5, 1, 1]]
    reference = open_clip.create_model(f"local-dir:{tmp_path}").eval()
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.encode_text(theirs), dim=-1)
        torch.testing.assert_close(bb.encode_text(bb.tokenizer(texts)), want)


def test_a_tower_that_masks_padding_by_its_pad_id_gets_that_pad_id(tmp_path):
    """Where the tower masks padding by its own pad_id (a CLS token's view, as CoCa's) the rows are padded with it."""
    _t5_like_tokenizer(tmp_path)
    text = {"context_length": 8, "vocab_size": 8, "width": 32, "heads": 2, "layers": 1, "pool_type": "last",
            "hf_tokenizer_name": str(tmp_path), "embed_cls": True}
    _save_dir(tmp_path, {"embed_dim": 16, "custom_text": True, "text_cfg": text, "vision_cfg": VISION})
    bb = load_backbone(f"open_clip:{tmp_path}")
    assert bb.pad_id == bb.tokenizer.pad_id == 0
    assert bb.tokenizer(["a red cube"]).tolist() == [[3, 4, 5, 1, 0, 0, 0, 0]]
