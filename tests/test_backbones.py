"""Backbone loading: tiny open_clip CLIP/CoCa and HF CLIP from in-memory configs, tokenizer, errors."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sys
from pathlib import Path

import pytest
import torch

from mtl_lora_vl.backbones import (
    SPEC_FORMS,
    Backbone,
    WordTokenizer,
    build_open_clip,
    build_word_tokenizer,
    builtin_dir,
    load_backbone,
)

REPO = Path(__file__).resolve().parent.parent
WORDS = "a an the photo of red green blue circle square triangle left right above below is there what color shape".split()
CTX = 12


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return build_word_tokenizer(WORDS + ["?", ".", ","], tmp_path_factory.mktemp("tok"), context_length=CTX)


def _clip_cfg(vocab: int) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": CTX, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 2,
                     "pool_type": "eos", "eos_id": 2},
    }


def _coca_cfg(vocab: int) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16,
                       "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {"context_length": CTX, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 2,
                     "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": CTX, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 2,
                           "attn_pooler_heads": 2},
        "custom_text": True,
    }


def _images(bb: Backbone, n: int = 3) -> torch.Tensor:
    raw = torch.randint(0, 256, (n, 3, bb.image_size, bb.image_size), dtype=torch.uint8)
    return bb.preprocess_uint8(raw, torch.float32)


def _unit(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5)


# ---------------------------------------------------------------------------------------- tokenizer


def test_word_tokenizer_round_trip(tok_dir):
    tok = WordTokenizer(tok_dir, CTX)
    ids = tok(["A Red circle, left of the blue square.", "what color is the zebra?"])
    assert ids.shape == (2, CTX) and ids.dtype == torch.long
    assert ids[0, 0] == tok.bos_id == 1 and tok.pad_id == 0 and tok.eos_id == 2
    assert tok.decode(ids[0]) == "a red circle, left of the blue square."
    assert tok.unk_id in ids[1].tolist()                     # "zebra" is not in the vocabulary
    assert tok.decode(ids[1]) == "what color is the <unk>?"
    long = tok(["red " * 50])[0]
    assert long[-1] == tok.eos_id and (long != tok.pad_id).all()   # truncated, end token kept


def test_word_tokenizer_loads_in_transformers(tok_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    ours = WordTokenizer(tok_dir, CTX)
    text = "a red circle above a blue square"
    assert hf(text)["input_ids"] == [i for i in ours([text])[0].tolist() if i != ours.pad_id]


# ---------------------------------------------------------------------------------------- open_clip CLIP


def test_tiny_clip_encoders_and_eos_pooling(tok_dir):
    tok = WordTokenizer(tok_dir, CTX)
    bb = build_open_clip(_clip_cfg(tok.vocab_size), tokenizer_dir=tok_dir, name="tiny")
    assert bb.family == "open_clip" and bb.image_size == 32 and bb.embed_dim == 32 and not bb.has_decoder
    img = bb.encode_image(_images(bb))
    tokens = bb.tokenizer(["a red circle", "the blue square above a green triangle"])
    txt = bb.encode_text(tokens)
    assert img.shape == (3, 32) and txt.shape == (2, 32) and _unit(img) and _unit(txt)
    assert bb.logit_scale.dim() == 0 and bb.logit_scale.item() > 1
    # Pooling is at <eot>: less padding, or junk after the end token, leaves the embedding unchanged.
    short = tokens[:, :9]
    assert torch.allclose(bb.encode_text(short), txt, atol=1e-5)
    junk = tokens.clone()
    junk[0, 5:] = 7
    assert torch.allclose(bb.encode_text(junk)[0], txt[0], atol=1e-5)
    assert not torch.allclose(bb.encode_text(tokens[[1, 0]])[0], txt[0], atol=1e-3)


def test_argmax_pooling_with_word_tokenizer_is_refused(tok_dir):
    cfg = _clip_cfg(WordTokenizer(tok_dir, CTX).vocab_size)
    del cfg["text_cfg"]["pool_type"]
    with pytest.raises(ValueError, match="pool_type='eos'"):
        build_open_clip(cfg, tokenizer_dir=tok_dir)


def test_preprocess_uint8(tok_dir):
    bb = build_open_clip(_clip_cfg(WordTokenizer(tok_dir, CTX).vocab_size), tokenizer_dir=tok_dir)
    raw = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out = bb.preprocess_uint8(raw, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 32, 32)
    expect = (1 - torch.tensor(bb.mean)) / torch.tensor(bb.std)
    assert torch.allclose(out[0, :, 0, 0].float(), expect, atol=2e-2)
    assert bb.preprocess_uint8(torch.zeros(1, 3, 48, 48, dtype=torch.uint8)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        bb.preprocess_uint8(raw.float())
    with pytest.raises(ValueError, match="context length"):
        bb.encode_text(torch.zeros(1, CTX + 4, dtype=torch.long))
    with pytest.raises(ValueError, match="caption decoder"):
        bb.generate(_images(bb))


# ---------------------------------------------------------------------------------------- CoCa


def test_tiny_coca_caption_logits_and_generate(tok_dir):
    tok = WordTokenizer(tok_dir, CTX)
    bb = build_open_clip(_coca_cfg(tok.vocab_size), tokenizer_dir=tok_dir, name="tiny-coca")
    assert bb.has_decoder and type(bb.model).__name__ == "CoCa"
    images = _images(bb, 2)
    assert _unit(bb.encode_image(images)) and bb.encode_image(images).shape == (2, 32)
    tokens = bb.tokenizer(["a red circle", "a blue square above a green triangle"])
    assert bb.encode_text(tokens).shape == (2, 32)
    logits = bb.caption_logits(images, tokens)
    assert logits.shape == (2, CTX - 1, tok.vocab_size) and torch.isfinite(logits).all()
    greedy = bb.generate(images, max_len=6)
    beam = bb.generate(images, max_len=6, beam_size=3)
    assert len(greedy) == len(beam) == 2 and all(isinstance(s, str) for s in greedy + beam)
    assert all("<sot>" not in s and "<eot>" not in s for s in greedy + beam)
    assert bb.generate(images, max_len=6) == greedy          # deterministic
    vocab = set(WORDS) | {"?", ".", ","}
    assert all(w in vocab for s in greedy + beam for w in re.findall(r"\w+|[^\w\s]", s))


# ---------------------------------------------------------------------------------------- specs and errors


def test_open_clip_name_without_weights_fails_before_download(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match="--pretrained /path/to"):
        load_backbone("open_clip:ViT-B-32")
    with pytest.raises(FileNotFoundError, match="never does"):
        load_backbone("open_clip:ViT-B-32", pretrained="openai")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_backbone("open_clip:NoSuchNet-99", pretrained="/x")


def test_unknown_spec_lists_accepted_forms():
    with pytest.raises(ValueError, match="accepted forms") as info:
        load_backbone("resnet50")
    assert SPEC_FORMS in str(info.value) and "hf:" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        load_backbone("hf:openai/clip-vit-base-patch32-does-not-exist")


def test_open_clip_local_dir_round_trip(tok_dir, tmp_path):
    from safetensors.torch import save_file

    tok = WordTokenizer(tok_dir, CTX)
    bb = build_open_clip(_clip_cfg(tok.vocab_size), tokenizer_dir=tok_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tok_dir / name).read_bytes())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": _clip_cfg(tok.vocab_size),
                                                               "preprocess_cfg": {"mean": [0.5] * 3}}))
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    again = load_backbone(f"open_clip:{tmp_path}")
    tokens = again.tokenizer(["a red circle"])
    assert again.mean == (0.5, 0.5, 0.5)
    assert torch.allclose(again.encode_text(tokens), bb.encode_text(tokens), atol=1e-6)


def test_hf_clip_directory(tok_dir, tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = WordTokenizer(tok_dir, CTX)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CTX, pad_token_id=tok.pad_id,
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tok_dir / name).read_bytes())
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2]).save_pretrained(tmp_path)

    bb = load_backbone(f"hf:{tmp_path}")
    assert bb.family == "hf_clip" and bb.image_size == 32 and bb.embed_dim == 16
    assert bb.mean == (0.4, 0.4, 0.4) and bb.std == (0.2, 0.2, 0.2) and bb.eos_id == tok.eos_id
    tokens = bb.tokenizer(["a red circle", "the blue square"])
    assert tokens.shape == (2, CTX)
    img, txt = bb.encode_image(_images(bb, 2)), bb.encode_text(tokens)
    assert img.shape == (2, 16) and txt.shape == (2, 16) and _unit(img) and _unit(txt)
    assert bb.decode(tokens[0]) == "a red circle"
    with pytest.raises(ValueError, match="only for open_clip"):
        load_backbone(f"hf:{tmp_path}", pretrained="/x.bin")


# ---------------------------------------------------------------------------------------- built-in


def test_builtin_missing_weights_message(monkeypatch, tmp_path):
    import mtl_lora_vl.backbones.builtin as builtin

    monkeypatch.setattr(builtin, "builtin_dir", lambda: tmp_path / "builtin_clip")
    with pytest.raises(FileNotFoundError, match="scripts/pretrain_backbone.py"):
        load_backbone("builtin")


@pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                    reason="built-in weights not built; run python scripts/pretrain_backbone.py")
def test_builtin_loads_and_embeds():
    bb = load_backbone("builtin")
    assert bb.name == "builtin" and bb.image_size == 64 and bb.eos_id == 2
    n_params = sum(p.numel() for p in bb.model.parameters())
    assert 1.0e6 < n_params < 3.0e6
    assert all(p.dtype == torch.float32 for p in bb.model.parameters())
    tokens = bb.tokenizer(["a photo of a red circle.", "a blue square left of a green triangle"])
    assert bb.tokenizer.unk_id not in tokens.tolist()[0]
    img, txt = bb.encode_image(_images(bb, 2)), bb.encode_text(tokens)
    assert img.shape == (2, bb.embed_dim) and txt.shape == (2, bb.embed_dim) and _unit(img) and _unit(txt)
    total = sum(p.stat().st_size for p in builtin_dir().iterdir() if p.is_file())
    assert total < 10e6


# ---------------------------------------------------------------------------------------- pretraining loop


def _load_script():
    path = REPO / "scripts" / "pretrain_backbone.py"
    spec = importlib.util.spec_from_file_location("pretrain_backbone", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pretrain_loop_learns_a_toy_world(tok_dir):
    """A stand-in world (one coloured square per image, caption = its colour) is learnt in a few steps."""
    pb = _load_script()
    colors = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220)}
    tok = WordTokenizer(tok_dir, CTX)
    bb = build_open_clip(pb.clip_config(tok.vocab_size, CTX, width=32, layers=2, embed_dim=32, image_size=32),
                         tokenizer_dir=tok_dir)
    gen = torch.Generator().manual_seed(0)
    n = 96
    labels = torch.randint(0, 3, (n,), generator=gen)
    images = torch.full((n, 3, 32, 32), 245, dtype=torch.uint8)
    for i, lab in enumerate(labels.tolist()):
        x, y = torch.randint(0, 20, (2,), generator=gen).tolist()
        images[i, :, y:y + 12, x:x + 12] = torch.tensor(list(colors.values())[lab], dtype=torch.uint8).view(3, 1, 1)
    names = list(colors)
    caption_tokens = bb.tokenizer([f"a {c} square" for c in names] + [f"a photo of a {c} square." for c in names])
    image_captions = [[lab, lab + 3] for lab in labels.tolist()]
    losses = pb.train_clip(bb, images, caption_tokens, image_captions, steps=40, batch_size=32, lr=2e-3,
                           log_every=0)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    with torch.no_grad():
        img = pb.embed_images(bb, images)
        txt = pb.embed_texts(bb, [f"a photo of a {c}." for c in names])
    acc = float(((img @ txt.t()).argmax(1) == labels).float().mean())
    assert acc > 0.6
    assert pb.chance_recall(torch.tensor([0, 0, 1, 1]), 2, 1) == pytest.approx(0.5)
    r = pb.image_to_text_recall(torch.eye(2), torch.eye(2)[[0, 0, 1, 1]], torch.tensor([0, 0, 1, 1]))
    assert r["r@1"] == 1.0
