"""Review 210: open_clip directories whose text side comes from Hugging Face files (a tokenizer folder, a text
model folder) load as open_clip loads them: the same ids, the same towers, nothing fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


def test_a_hugging_face_text_tower_is_built_from_its_config_the_checkpoint_holding_its_weights(tmp_path, monkeypatch):
    """open_clip:DIR built its Hugging Face text model *with* pretrained weights (hf_model_pretrained defaults to
    true) before loading the checkpoint over them: a text-model folder holding its config and tokenizer only, which
    open_clip itself loads (it builds the tower from the config when a checkpoint follows), failed with
    transformers' "no file named model.safetensors ... found in directory"."""
    import socket

    import open_clip
    from transformers import BertConfig, BertModel

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("a connection was attempted"))
    bert = tmp_path / "bert"
    _t5_like_tokenizer(bert)
    BertModel(BertConfig(vocab_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16)).save_pretrained(bert)
    text = {"context_length": 8, "vocab_size": 8, "hf_model_name": str(bert), "hf_tokenizer_name": str(bert),
            "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler"}
    folder = tmp_path / "oc"
    folder.mkdir()
    _save_dir(folder, {"embed_dim": 16, "text_cfg": text, "vision_cfg": VISION})
    (bert / "model.safetensors").unlink()   # the text model's weights are in the open_clip checkpoint
    bb = load_backbone(f"open_clip:{folder}")
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    tokens = bb.tokenizer(["a red cube"])
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(tokens),
                                   torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1))


def test_a_timm_tower_marked_pretrained_is_not_fetched_when_the_checkpoint_holds_it(tmp_path, monkeypatch):
    """vision_cfg.timm_model_pretrained = true had timm fetch ImageNet weights (refused offline) that the
    directory's checkpoint replaces; open_clip itself builds the tower without them when a checkpoint follows."""
    import socket

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("a connection was attempted"))
    timm = tmp_path / "timm"
    timm.mkdir()
    vision = {"image_size": 160, "timm_model_name": "test_vit", "timm_model_pretrained": True,
              "timm_proj": "linear"}
    text = {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    cfg = {"embed_dim": 16, "text_cfg": text, "vision_cfg": {**vision, "timm_model_pretrained": False}}
    _save_dir(timm, cfg)
    (timm / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**cfg, "vision_cfg": vision}}))
    assert load_backbone(f"open_clip:{timm}").image_size == 160


def test_a_bpe_tokenizers_cleaning_is_open_clips(tmp_path):
    """open_clip builds its own BPE tokenizer with the config's tokenizer_kwargs (``clean``); they were ignored here:
    with ``clean: canonicalize`` open_clip writes "A Red-Cube, please!" as 4 tokens (punctuation dropped), this package
    wrote 7 (lower-cased only: "-", ",", "!" kept), so the text tower read other ids than it was trained on."""
    import open_clip

    text = {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
            "tokenizer_kwargs": {"clean": "canonicalize"}}
    _save_dir(tmp_path, {"embed_dim": 16, "text_cfg": text, "vision_cfg": VISION})
    bb = load_backbone(f"open_clip:{tmp_path}")
    texts = ["A Red-Cube, please!", "two  blue\tballs."]
    theirs = open_clip.get_tokenizer(f"local-dir:{tmp_path}")(texts)
    assert bb.tokenizer(texts).tolist() == theirs.tolist()


@pytest.mark.parametrize("kwargs, named", [({"reduction_mask": "random"}, "reduction_mask"),
                                           ({"clean": "upper"}, "clean"), ({"strip_sep_token": True}, "strip_sep")])
def test_bpe_tokenizer_settings_not_reproduced_are_refused(kwargs, named):
    """open_clip's other BPE settings (a reduction mask: random tokens dropped at every call) are refused by name,
    not ignored."""
    text = {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
            "tokenizer_kwargs": kwargs}
    with pytest.raises(ValueError, match=named):
        build_open_clip({"embed_dim": 16, "text_cfg": text, "vision_cfg": VISION})


def test_a_word_tokenizer_folder_reads_the_configs_tokenizer_kwargs(tmp_path):
    """A folder whose tokenizer.json is this package's word tokenizer ignored text_cfg.tokenizer_kwargs: with
    ``clean: canonicalize`` open_clip's tokenizer writes "A red cube, please!" as <sot> a red cube please <eot> (the
    punctuation dropped), this package as <sot> a red cube , please ! <eot> (8 tokens, not 6); and a setting
    not reproduced (reduction_mask) was taken silently. The config's clean is applied, others refused by name."""
    import open_clip

    from mtl_lora_vl.backbones import build_word_tokenizer

    build_word_tokenizer(["a", "red", "cube", "please", ",", "!"], tmp_path)
    text = {"context_length": 10, "vocab_size": 16, "width": 32, "heads": 2, "layers": 1, "pool_type": "eos",
            "eos_id": 2, "hf_tokenizer_name": str(tmp_path), "tokenizer_kwargs": {"clean": "canonicalize"}}
    _save_dir(tmp_path, {"embed_dim": 16, "text_cfg": text, "vision_cfg": VISION})
    bb = load_backbone(f"open_clip:{tmp_path}")
    texts = ["A red cube, please!", "a  red\tcube"]
    theirs = open_clip.get_tokenizer(f"local-dir:{tmp_path}")(texts)
    assert bb.tokenizer(texts).tolist() == theirs.tolist()
    assert int((theirs[0] != 0).sum()) == 6
    text["tokenizer_kwargs"] = {"reduction_mask": "random"}
    with pytest.raises(ValueError, match=r"its tokenizer settings \['reduction_mask'\] are not reproduced here"):
        build_open_clip({"embed_dim": 16, "text_cfg": text, "vision_cfg": VISION}, tokenizer_dir=tmp_path)
