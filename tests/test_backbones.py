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
from mtl_lora_vl.backbones.base import OPENAI_MEAN

REPO = Path(__file__).resolve().parent.parent
WORDS = ("a an the photo of red green blue circle square triangle left right "
         "above below is there what color shape").split()
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
    # a shorter row is padded as the docstring says (CoCa's CLS token took the last column's position: cos 0.5-0.8)
    torch.testing.assert_close(bb.encode_text(tokens[:, :10]), bb.encode_text(tokens))
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


def test_open_clip_name_typo_suggests_the_close_names():
    """A misspelt open_clip name listed the first 12 known names (coca_base, convnext_base, ...), not the one
    meant; it now names the close ones (any case: open_clip's names are case-sensitive), else a short list."""
    with pytest.raises(ValueError, match=r"did you mean 'ViT-B-32-quickgelu'") as e:
        load_backbone("open_clip:ViT-B-32-quickgel", pretrained="/x")
    assert "convnext_base" not in str(e.value)
    with pytest.raises(ValueError, match=r"did you mean 'ViT-B-32'"):
        load_backbone("open_clip:vit-b-32", pretrained="/x")
    with pytest.raises(ValueError, match=r"unknown open_clip model 'Zzqx'; use a name from open_clip.list_models\(\) "
                                         r"\(\d+ names, e.g. [^;]*\.\.\.\)"):
        load_backbone("open_clip:Zzqx", pretrained="/x")


def test_open_clip_name_with_a_pretrained_tag_says_the_tag_is_not_part_of_the_name():
    """open_clip's pretrained tags written into the name (ViT-B-32:laion2b_s34b_b79k, any case)
    listed six unrelated names (coca_base, ...); the message names the model and says to pass the weights file."""
    for name in ("ViT-B-32:laion2b_s34b_b79k", "vit-b-32:openai", "ViT-B-32-quickgelu:metaclip_400m"):
        model = name.split(":")[0]
        with pytest.raises(ValueError, match=rf"(?i)'{model}' is the model and '[^']+' a pretrained tag") as e:
            load_backbone(f"open_clip:{name}", pretrained="/x")
        assert "coca_base" not in str(e.value) and "--pretrained" in str(e.value)


def test_unknown_spec_lists_accepted_forms():
    with pytest.raises(ValueError, match="accepted forms") as info:
        load_backbone("resnet50")
    assert SPEC_FORMS in str(info.value) and "hf:" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        load_backbone("hf:openai/clip-vit-base-patch32-does-not-exist")


@pytest.mark.parametrize(("spec", "hint"), [
    ("builtin-lava", "did you mean 'builtin-llava'?"),
    ("openclip:ViT-B-32", "did you mean open_clip:ViT-B-32?"),
    ("HF:/models/llava", "did you mean hf:/models/llava?"),
])
def test_a_misspelt_spec_names_the_likely_one(spec, hint):
    with pytest.raises(ValueError, match="accepted forms") as info:
        load_backbone(spec)
    assert hint in str(info.value)


def test_a_folder_without_its_prefix_is_told_to_add_one(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} is a folder: write hf:{tmp_path} .* open_clip:{tmp_path}"):
        load_backbone(str(tmp_path))


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
    # A config open_clip cannot build was a TypeError / AttributeError traceback that named no file
    cfg = _clip_cfg(tok.vocab_size)
    for model_cfg, error in [({**cfg, "vision_cfg": {**cfg["vision_cfg"], "layer": 2}}, "'layer'"),
                             ({**cfg, "text_cfg": [1]}, "AttributeError"), (None, "NoneType")]:
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
        with pytest.raises(ValueError, match=r"open_clip_config.json: does not describe an open_clip model \(.*"
                                             f"{error}"):
            load_backbone(f"open_clip:{tmp_path}")


def test_an_open_clip_dir_with_a_hub_text_tower_is_refused_with_what_works(tok_dir, tmp_path):
    """With tokenizer files beside it (as the old message advised) open_clip went for the text model's config on
    the hub, and failed with transformers' raw "couldn't connect"."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tok_dir / name).read_bytes())
    cfg = _clip_cfg(WordTokenizer(tok_dir, CTX).vocab_size)
    cfg["text_cfg"] = {**cfg["text_cfg"], "hf_model_name": "xlm-roberta-base", "hf_tokenizer_name": "xlm-roberta-base"}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'xlm-roberta-base', which would need a download.*set text_cfg.hf_model_name "
                                         r"and text_cfg.hf_tokenizer_name"):
        load_backbone(f"open_clip:{tmp_path}")


def test_hf_clip_directory(tok_dir, tmp_path, monkeypatch):
    from transformers import CLIPImageProcessor

    tok = WordTokenizer(tok_dir, CTX)
    _save_tiny_hf_clip(tok_dir, tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2]).save_pretrained(tmp_path)

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
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


def test_hf_clip_reads_the_image_processor_inside_processor_config(tok_dir, tmp_path):
    """transformers 5's CLIPProcessor.save_pretrained writes processor_config.json (the image processor nested)
    and no preprocessor_config.json: mean and std fell back to OpenAI's."""
    from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

    _save_tiny_hf_clip(tok_dir, tmp_path)
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                               image_mean=[0.5] * 3, image_std=[0.25] * 3)
    CLIPProcessor(image_processor=image, tokenizer=PreTrainedTokenizerFast.from_pretrained(str(tok_dir))) \
        .save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink(missing_ok=True)
    assert (tmp_path / "processor_config.json").is_file()
    bb = load_backbone(f"hf:{tmp_path}")
    assert bb.mean == (0.5, 0.5, 0.5) and bb.std == (0.25, 0.25, 0.25)
    doc = json.loads((tmp_path / "processor_config.json").read_text())
    doc["image_processor"]["image_mean"] = "x"   # was "could not convert string to float: 'x'", no file named
    (tmp_path / "processor_config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"processor_config.json.*image_mean must be numbers \(one, or three for "
                                         r"RGB\), got 'x'"):
        load_backbone(f"hf:{tmp_path}")
    # review 187: read, then ignored (since refused; helper 222: followed exactly, as Hugging Face VLMs do)
    levels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for edit in ({"do_rescale": False}, {"rescale_factor": 1 / 127.5}, {"do_rescale": False, "do_normalize": False}):
        fields = {**doc["image_processor"], "image_mean": [0.5] * 3, "do_rescale": True, "rescale_factor": 1 / 255,
                  **edit}
        (tmp_path / "processor_config.json").write_text(json.dumps({**doc, "image_processor": fields}))
        theirs = CLIPImageProcessor(**fields)(images=list(levels), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(load_backbone(f"hf:{tmp_path}").preprocess_uint8(levels), theirs.float(),
                                   rtol=1e-5, atol=1e-4)
    fields = {**fields, "do_rescale": True, "rescale_factor": 0}
    (tmp_path / "processor_config.json").write_text(json.dumps({**doc, "image_processor": fields}))
    with pytest.raises(ValueError, match=r"processor_config.json: the image processor's rescale_factor 0 is not a "
                                         r"positive number"):
        load_backbone(f"hf:{tmp_path}")


def test_hf_clip_without_an_image_processor_config_says_it_takes_openais(tok_dir, tmp_path, caplog):
    """A directory without its image processor config silently got OpenAI's mean, std and crop (every other
    family refuses a directory without its processor); it is said, naming the fix."""
    _save_tiny_hf_clip(tok_dir, tmp_path)
    for f in ("preprocessor_config.json", "processor_config.json"):
        (tmp_path / f).unlink(missing_ok=True)
    with caplog.at_level("WARNING"):
        bb = load_backbone(f"hf:{tmp_path}")
    assert bb.mean == OPENAI_MEAN
    assert "no image processor config" in caplog.text and "processor.save_pretrained(DIR)" in caplog.text


# ---------------------------------------------------------------------------------------- built-in


def test_builtin_missing_weights_message(monkeypatch, tmp_path):
    import mtl_lora_vl.backbones.builtin as builtin

    monkeypatch.setattr(builtin, "builtin_dir", lambda: tmp_path / "builtin_clip")
    # (it ships with the package: an installed user has no scripts/ folder to rebuild it with)
    with pytest.raises(FileNotFoundError, match=r"ships with the package; reinstall it \(pip install "
                                                r"--force-reinstall mtl-lora-vl\), or in a checkout build it with "
                                                r"`python scripts/pretrain_backbone.py`"):
        load_backbone("builtin")
    (tmp_path / "builtin_clip").mkdir()
    for name in ("open_clip_config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / "builtin_clip" / name).write_text("{")
    with pytest.raises(ValueError, match=r"open_clip_config.json is not valid JSON .*; reinstall the package \(pip "
                                         r"install --force-reinstall mtl-lora-vl\), or in a checkout re-run "
                                         r"`python scripts/pretrain_backbone.py`"):
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


@pytest.mark.parametrize("args,says", [(["--n-pretrain", "0"], "--n-pretrain must be >= 2"),   # a raw ValueError
                                       # after rendering
                                       (["--lr", "-1"], "--lr and --weight-decay must be finite and >= 0")])
def test_pretrain_backbone_refuses_bad_options_before_work(tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as e:
        _load_script().main(["--steps", "1", "--out", str(tmp_path / "new"), *args])
    assert e.value.code == 2 and says in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_asset_scripts_never_replace_a_folder_of_the_users_and_save_all_at_once(tok_dir, tmp_path, capsys,
                                                                               monkeypatch):
    """--out DIR replaced whatever DIR held (pretrain_llava: deleted it); the CLIP asset's four files were
    replaced one by one, so an interrupted save left new weights beside the old config."""
    pb = _load_script()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        pb.main(["--out", str(mine), "--steps", "1"])
    assert e.value.code == 2 and "holds no open_clip_config.json" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    bb = build_open_clip(pb.clip_config(WordTokenizer(tok_dir, CTX).vocab_size, CTX, width=32, layers=2, embed_dim=32,
                                        image_size=32), tokenizer_dir=tok_dir)
    out = tmp_path / "asset"
    pb.save_assets(bb, {"model_cfg": {}}, tok_dir, out, {"steps": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"model.safetensors", "open_clip_config.json", "tokenizer.json", "tokenizer_config.json"}

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pb, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pb.save_assets(bb, {"model_cfg": {"changed": 1}}, tok_dir, out, {"steps": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and sorted(tmp_path.iterdir()) == [out, mine]


# ---------------------------------------------------------------------------------------- the interface


def test_capabilities_state_what_each_backbone_can_do(tok_dir):
    from mtl_lora_vl.backbones import CAPABILITIES, BackboneError, CoCaBackbone, OpenClipBackbone

    vocab = WordTokenizer(tok_dir, CTX).vocab_size
    clip = build_open_clip(_clip_cfg(vocab), tokenizer_dir=tok_dir, name="tiny")
    coca = build_open_clip(_coca_cfg(vocab), tokenizer_dir=tok_dir, name="tiny-coca")
    assert type(clip) is OpenClipBackbone and type(coca) is CoCaBackbone
    assert set(CAPABILITIES) == {"image_embeddings", "text_embeddings", "lm_logits", "generate", "grad_checkpointing"}
    assert clip.supports("text_embeddings") and not clip.supports("generate") and not clip.has_decoder
    assert all(coca.supports(c) for c in CAPABILITIES) and coca.has_decoder
    assert clip.family == coca.family == "open_clip"
    with pytest.raises(ValueError, match="unknown backbone capability 'generation'"):
        clip.supports("generation")
    with pytest.raises(BackboneError, match=r"caption_logits needs a language model or caption decoder, but backbone "
                                            r"'tiny' \(CLIP, family open_clip\) has none.*CoCa"):
        clip.caption_logits(_images(clip, 1), clip.tokenizer(["a red circle"]))
    with pytest.raises(ValueError, match="without prompts"):
        coca.generate(_images(coca, 1), prompts=["what is this?"])
    with pytest.raises(ValueError, match="max_len must be an integer >= 1, got 0"):
        coca.generate(_images(coca, 1), max_len=0)


def test_a_new_family_plugs_in_by_subclassing(tok_dir):
    """A backbone with only image embeddings: its text methods refuse with the capability message."""
    from mtl_lora_vl.backbones import Backbone, BackboneError

    class ImageOnly(Backbone):
        capabilities = frozenset({"image_embeddings"})

        def _image_features(self, images):
            return images.flatten(1)[:, :8]

    bb = ImageOnly(model=torch.nn.Linear(1, 1), name="toy", tokenizer=WordTokenizer(tok_dir, CTX), image_size=4,
                   mean=(0.5,) * 3, std=(0.5,) * 3, embed_dim=8, pad_id=0, bos_id=1, eos_id=2, context_length=CTX)
    assert bb.encode_image(torch.randn(2, 3, 4, 4)).shape == (2, 8) and bb.family == "custom"
    for call in (lambda: bb.encode_text(torch.zeros(1, CTX, dtype=torch.long)), lambda: bb.logit_scale,
                 lambda: bb.generate(torch.randn(1, 3, 4, 4)), lambda: bb.set_grad_checkpointing(True)):
        with pytest.raises(BackboneError, match=r"backbone 'toy' \(Linear, family custom\) has none \(it supports "
                                                r"image_embeddings\)"):
            call()


def test_grad_checkpointing_switches_open_clip_towers(tok_dir):
    vocab = WordTokenizer(tok_dir, CTX).vocab_size
    clip = build_open_clip(_clip_cfg(vocab), tokenizer_dir=tok_dir)
    coca = build_open_clip(_coca_cfg(vocab), tokenizer_dir=tok_dir)
    clip.set_grad_checkpointing(True)
    assert clip.model.visual.transformer.grad_checkpointing and clip.model.transformer.grad_checkpointing
    coca.set_grad_checkpointing(True)
    assert coca.model.visual.transformer.grad_checkpointing and coca.model.text.transformer.grad_checkpointing
    assert coca.model.text_decoder.grad_checkpointing
    clip.set_grad_checkpointing(False)
    assert not clip.model.visual.transformer.grad_checkpointing and not clip.model.transformer.grad_checkpointing


def test_grad_checkpointing_gives_the_same_adapter_gradients(tok_dir):
    """One task, backward inside the routing scope: checkpointed and plain runs agree."""
    import mtl_lora_vl as mlv

    vocab = WordTokenizer(tok_dir, CTX).vocab_size
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        bb = build_open_clip(_clip_cfg(vocab), tokenizer_dir=tok_dir)
        mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4))
        for n, p in bb.model.named_parameters():
            if n.endswith("lora_B"):
                torch.nn.init.normal_(p, std=0.02)
        bb.set_grad_checkpointing(ckpt)
        bb.model.train()
        torch.manual_seed(1)
        images, tokens = _images(bb, 2), bb.tokenizer(["a red circle", "a blue square"])
        with mlv.route(bb.model, "b"):
            (bb.encode_image(images) * bb.encode_text(tokens)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in bb.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


def _save_tiny_hf_clip(tok_dir: Path, folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    tok = WordTokenizer(tok_dir, CTX)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CTX, pad_token_id=tok.pad_id,
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tok_dir / name).read_bytes())


def test_hf_clip_pools_text_at_the_end_token(tok_dir, tmp_path):
    """The word tokenizer's end token is id 2, which transformers' CLIP takes for its legacy rule (pool at the
    highest token id: a word here, cosine 0.26 to the end token's embedding)."""
    _save_tiny_hf_clip(tok_dir, tmp_path)
    bb = load_backbone(f"hf:{tmp_path}")
    tokens = bb.tokenizer(["a red cube", "two blue spheres"])
    end = (tokens == bb.eos_id).int().argmax(1)
    assert bb.eos_id == bb.model.config.text_config.eos_token_id == 2
    assert (tokens.argmax(1) != end).all()  # the highest id is a word, not the end token
    with torch.no_grad():
        hidden = bb.model.text_model(input_ids=tokens).last_hidden_state
        want = torch.nn.functional.normalize(bb.model.text_projection(hidden[torch.arange(2), end]), dim=-1)
        torch.testing.assert_close(bb.encode_text(tokens), want)


def test_a_truncated_hf_weights_file_is_named(tok_dir, tmp_path):
    """safetensors' own error type (not an OSError/ValueError) ended the command with a traceback."""
    from mtl_lora_vl.backbones.base import BackboneError

    _save_tiny_hf_clip(tok_dir, tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BackboneError, match=r"the weights of CLIPModel are unreadable \(SafetensorError: .*\); "
                                            "re-create or re-download them"):
        load_backbone(f"hf:{tmp_path}")


def test_grad_checkpointing_switches_hf_clip_non_reentrant(tok_dir, tmp_path):
    _save_tiny_hf_clip(tok_dir, tmp_path)
    bb = load_backbone(f"hf:{tmp_path}")
    bb.set_grad_checkpointing(True)
    for enc in (bb.model.vision_model.encoder, bb.model.text_model.encoder):
        assert enc.gradient_checkpointing
        assert enc._gradient_checkpointing_func.keywords["use_reentrant"] is False
    bb.set_grad_checkpointing(False)
    assert not bb.model.vision_model.encoder.gradient_checkpointing


def test_hf_directories_of_families_without_a_backbone_are_refused_by_the_table(tmp_path, monkeypatch):
    from conftest import tiny_llava

    from mtl_lora_vl.backbones import BackboneError

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    tiny_llava().save_pretrained(tmp_path / "llava")  # a LLaVA has a backbone class; it needs its processor
    with pytest.raises(FileNotFoundError, match="has no processor files.*processor.save_pretrained"):
        load_backbone(f"hf:{tmp_path / 'llava'}")
    timm_dir = tmp_path / "timm"
    timm_dir.mkdir()
    (timm_dir / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 10,
                                                      "pretrained_cfg": {"input_size": [3, 224, 224]}}))
    with pytest.raises(BackboneError, match="VisionTransformer \\(timm_vit\\) cannot be used as a backbone: "
                                            ".*image-only"):
        load_backbone(f"hf:{timm_dir}")


def test_build_setup_turns_grad_checkpointing_on(monkeypatch, tok_dir):
    """--grad-checkpointing reaches the backbone that build_setup loads."""
    import mtl_lora_vl.multitask.setup as setup
    from mtl_lora_vl.cli import parse_train_args

    opts = parse_train_args(["--grad-checkpointing", "--tasks", "retrieval"])
    assert opts.grad_checkpointing and not parse_train_args([]).grad_checkpointing
    seen = []

    def fake_load(spec, pretrained, device, base_dtype="auto", **image_options):
        bb = build_open_clip(_clip_cfg(WordTokenizer(tok_dir, CTX).vocab_size), tokenizer_dir=tok_dir)
        seen.append(bb)
        return bb

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(setup, "load_backbone", fake_load)
    monkeypatch.setattr(setup, "get_kind", stop)  # the first step after the backbone loads
    with pytest.raises(Stop):
        setup.build_setup(opts, torch.device("cpu"))
    assert seen[0].model.visual.transformer.grad_checkpointing and seen[0].model.transformer.grad_checkpointing


# ---------------------------------------------------------------------------------------- specs and offline


def test_backbone_strings_parse_once_into_a_typed_spec(tmp_path):
    from mtl_lora_vl.backbones import parse_spec

    b = parse_spec(" builtin ", pretrained="/w.safetensors")
    assert (b.kind, b.label, b.pretrained, b.source_dir) == ("builtin", "builtin", "/w.safetensors", builtin_dir())
    n = parse_spec("open_clip:ViT-B-32", "/x.bin")
    assert (n.kind, n.name, n.pretrained, n.path, n.source_dir) == ("open_clip", "ViT-B-32", "/x.bin", None, None)
    d = parse_spec(f"open_clip:{tmp_path}")
    assert d.kind == "open_clip_dir" and d.path == tmp_path and d.source_dir == tmp_path
    h = parse_spec(f"hf:{tmp_path}")
    assert h.kind == "hf" and h.label == f"hf:{tmp_path}" and h.absolute() == f"hf:{tmp_path.resolve()}"
    assert parse_spec("hf:no/such/dir").absolute() == "hf:no/such/dir"      # left as given
    with pytest.raises(ValueError, match="drop pretrained='/x.bin'"):
        parse_spec(f"open_clip:{tmp_path}", "/x.bin")
    with pytest.raises(ValueError, match="only for open_clip:NAME"):
        parse_spec(f"hf:{tmp_path}", "/x.bin")
    for bad in ("", "open_clip:", "hf:", "resnet50"):
        with pytest.raises(ValueError, match="accepted forms"):
            parse_spec(bad)
    # a mistyped directory is named as a directory (it was "unknown open_clip model '/models/x'")
    with pytest.raises(FileNotFoundError, match=r"the directory .*no_such_dir does not exist"):
        parse_spec(f"open_clip:{tmp_path / 'no_such_dir'}")
    with pytest.raises(FileNotFoundError, match="org/model is not in the local Hugging Face cache"):
        parse_spec("open_clip:hf-hub:org/model")   # open_clip's hub schema: its cached folder, or this message


def test_offline_scope_restores_exactly_and_sets_no_environment(monkeypatch):
    import os

    import huggingface_hub.constants as constants

    from mtl_lora_vl.backbones.offline import offline

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    env = dict(os.environ)
    with offline():
        assert constants.HF_HUB_OFFLINE is True and dict(os.environ) == env
        with offline():
            assert constants.HF_HUB_OFFLINE is True   # (what 0.x reads per request; 1.x's is_offline_mode too)
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False and dict(os.environ) == env
    with pytest.raises(RuntimeError), offline():
        raise RuntimeError("boom")
    assert constants.HF_HUB_OFFLINE is False


def test_a_backbone_class_that_declares_a_capability_must_implement_it():
    from dataclasses import dataclass

    from mtl_lora_vl.backbones import Backbone
    from mtl_lora_vl.backbones.base import GENERATE, IMAGE_EMBEDDINGS

    with pytest.raises(TypeError, match=r"NoGenerate declares capabilities it does not implement: "
                                        r"generate \(generate\)"):
        @dataclass
        class NoGenerate(Backbone):
            capabilities = frozenset({GENERATE})

    with pytest.raises(TypeError, match="teleport"):
        class Unknown(Backbone):
            capabilities = frozenset({"teleport"})

    @dataclass
    class Images(Backbone):  # declares what it implements: accepted
        capabilities = frozenset({IMAGE_EMBEDDINGS})

        def _image_features(self, images):
            return images


def test_coca_refuses_the_prompt_conditioned_lm_methods_with_what_to_use(tok_dir):
    """CoCa has a caption decoder (lm_logits, generate) but no prompt-conditioned language model."""
    from mtl_lora_vl.backbones import BackboneError

    tok = WordTokenizer(tok_dir, CTX)
    coca = build_open_clip(_coca_cfg(tok.vocab_size), tokenizer_dir=tok_dir, name="tiny-coca")
    images = _images(coca, 1)
    calls = {"image_token": lambda: coca.image_token, "processor": lambda: coca.processor,
             "lm_collator": lambda: coca.lm_collator(),
             "sequence_scores": lambda: coca.sequence_scores(images, ["q"], ["a"]),
             "lm_loss": lambda: coca.lm_loss(images, *(torch.zeros(1, 2, dtype=torch.long),) * 3)}
    for what, call in calls.items():
        with pytest.raises(BackboneError, match=rf"{what} needs a language model that reads a text prompt"
                                                r".*builtin-llava"):
            call()


def test_open_clip_training_checkpoint_with_ddp_prefix_loads(tmp_path):
    """open_clip's own training checkpoints hold {"state_dict": {"module.<name>": ...}} (a DDP-wrapped model)."""
    from conftest import tiny_open_clip

    from mtl_lora_vl.backbones.open_clip import _load_state

    torch.manual_seed(0)
    src = tiny_open_clip()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "e3.pt")
    torch.manual_seed(1)
    dst = tiny_open_clip()
    _load_state(dst, tmp_path / "e3.pt", "test")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    # a truncated archive, a config that is not JSON, a checkpoint open_clip asserts on: each names the file
    (tmp_path / "cut.pt").write_bytes((tmp_path / "e3.pt").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"test weights .*cut.pt are unreadable"):
        _load_state(dst, tmp_path / "cut.pt", "test")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "open_clip_config.json").write_text("{model_cfg: 1}")
    with pytest.raises(ValueError, match=r"open_clip_config.json is not valid JSON"):
        load_backbone(f"open_clip:{tmp_path / 'd'}")


def test_a_checkpoint_open_clip_asserts_on_gets_the_package_message(tmp_path, monkeypatch):
    """open_clip's resize_text_pos_embed asserts ("text pos_embed width changed!") on another architecture's
    checkpoint: the command printed a traceback (exit 1)."""
    import open_clip

    def refuse(*a, **k):
        raise AssertionError("text pos_embed width changed!")

    monkeypatch.setattr(open_clip, "create_model", refuse)
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"could not load .*w.bin as open_clip ViT-B-32 weights: text pos_embed"):
        load_backbone("open_clip:ViT-B-32", pretrained=str(ckpt))



def _hf_word_tokenizer(out: Path, pad: str) -> Path:
    """A Hugging Face tokenizer folder (not this package's word-tokenizer layout) whose pad token is ``pad``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "</s>", "<unk>", "<pad>", "a", "red", "circle", "photo", "of"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token=pad)
    fast.save_pretrained(str(out))
    return out


def test_an_open_clip_text_tower_pads_with_its_own_pad_id(tmp_path):
    """A CoCa whose folder holds a Hugging Face tokenizer padded with that tokenizer's pad token (CLIP's: its end
    token) while the text tower masks padding by text_cfg.pad_id (0): its CLS token attended to every pad
    position, and text embeddings differed from open_clip's (0.56 on unit embeddings)."""
    tdir = _hf_word_tokenizer(tmp_path / "tok", pad="</s>")   # pad = end token (id 1), as CLIP's tokenizer
    text = {"context_length": 8, "vocab_size": 16, "width": 32, "heads": 2, "layers": 1, "embed_cls": True,
            "output_tokens": True}
    cfg = {"embed_dim": 32, "text_cfg": text,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                          "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
           "multimodal_cfg": {"context_length": 8, "vocab_size": 16, "width": 32, "heads": 2, "layers": 1}}
    bb = build_open_clip(cfg, tokenizer_dir=tdir, name="coca-hf-tok")
    assert bb.model.text.pad_id == 0 and bb.tokenizer.pad_id == 0 and bb.pad_id == 0
    row = bb.tokenizer(["a red circle"])[0].tolist()
    assert row == [4, 5, 6, bb.eos_id, 0, 0, 0, 0]   # padded with the tower's pad id, not the end token (1)


def test_a_tokenizer_folder_without_tokenizer_files_is_refused(tmp_path):
    """transformers 5 builds an empty 2-token tokenizer from config.json alone: an HF CLIP folder without its
    tokenizer files trained on "<unk>" for every text, exit code 0."""
    from mtl_lora_vl.backbones.tokenizers import load_hf_tokenizer

    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ValueError, match=r"has no tokenizer files for m \(tokenizer.json"):
        load_hf_tokenizer(tmp_path, 77, "m")


@pytest.mark.parametrize("kwargs", [{"clean": "canonicalize"}, {"strip_sep_token": True}, None])
def test_an_open_clip_directory_tokenizes_as_open_clip_does(tmp_path, kwargs):
    """text_cfg.tokenizer_kwargs (SigLIP's clean = canonicalize, CLIPA's strip_sep_token) were not read: 'A Red,
    cube.' gave other ids than open_clip's tokenizer (text embeddings at cosine 0.87); and a folder whose
    tokenizer is a vocab.txt was refused as needing a download."""
    import open_clip
    from safetensors.torch import save_file
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "cube", ".", ",", "A", "Red", "photo", "of"]
    vocab = {w: i for i, w in enumerate(words)}
    rust = RustTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    PreTrainedTokenizerFast(tokenizer_object=rust, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(tmp_path)
    text_cfg = {"context_length": 8, "vocab_size": 32, "width": 32, "heads": 2, "layers": 1,
                "hf_tokenizer_name": str(tmp_path), "no_causal_mask": True, "pool_type": "last"}
    if kwargs:
        text_cfg["tokenizer_kwargs"] = kwargs
    cfg = {"model_cfg": {"embed_dim": 16, "custom_text": True, "text_cfg": text_cfg,
                         "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                        "head_width": 16}}, "preprocess_cfg": {}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    model = build_open_clip(cfg, tokenizer_dir=tmp_path).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    bb = load_backbone(f"open_clip:{tmp_path}")
    texts = ["A Red, cube.", "  a   photo of a red cube "]
    assert bb.tokenizer(texts).tolist() == open_clip.get_tokenizer(f"local-dir:{tmp_path}")(texts).tolist()
    if kwargs is None:   # a vocab.txt folder (no tokenizer.json) is this folder's tokenizer too
        (tmp_path / "tokenizer.json").unlink()
        (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
        assert load_backbone(f"open_clip:{tmp_path}").tokenizer(["a red cube"])[0, :5].tolist() == [2, 4, 5, 6, 3]
    cfg["model_cfg"]["text_cfg"]["tokenizer_mode"] = "clips"
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"its tokenizer settings \['tokenizer_mode'\] are not reproduced here"):
        load_backbone(f"open_clip:{tmp_path}")


def test_a_config_with_only_a_model_type_names_the_generating_class(tmp_path):
    """A config.json with model_type "llava" and no architectures was read as the bare LlavaModel, refused as
    "not a model family"."""
    from mtl_lora_vl.backbones.hf import hf_model_class

    for model_type, name in (("llava", "LlavaForConditionalGeneration"), ("clip", "CLIPModel"),
                             ("paligemma", "PaliGemmaForConditionalGeneration")):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert hf_model_class(tmp_path).__name__ == name


@pytest.mark.parametrize("size,refused", [(32, True), (224, False)])
def test_open_clip_timm_tower_of_another_size_is_refused_at_load(tmp_path, size, refused):
    """open_clip does not pass vision_cfg.image_size to a timm tower: one built for 224 px with image_size 32 loaded,
    and training died at its first step with timm's bare AssertionError (helper 138)."""
    pytest.importorskip("timm")
    from vl_tiny import _config, tiny_backbone

    tiny_backbone(tmp_path)   # writes the word tokenizer
    cfg = _config(tmp_path / "tok", coca=False)
    cfg["vision_cfg"] = {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                         "timm_proj": "linear", "image_size": size}
    if refused:
        with pytest.raises(ValueError, match=r"tiny-timm: the timm image tower takes 224x224 images, but "
                                             r"vision_cfg.image_size is 32 .*set vision_cfg.image_size to 224"):
            build_open_clip(cfg, tokenizer_dir=tmp_path / "tok", name="tiny-timm")
    else:
        assert build_open_clip(cfg, tokenizer_dir=tmp_path / "tok", name="tiny-timm").image_size == 224


def test_a_directory_given_with_the_other_prefix_names_the_right_one(tmp_path):
    """hf: on an open_clip folder said "save the model there with save_pretrained", open_clip: on a Hugging Face
    folder described open_clip's files; an open_clip folder without tokenizer files was told to "pass
    tokenizer_dir", which no command has (helper 138)."""
    from vl_tiny import tiny_backbone_dir

    oc = tiny_backbone_dir(tmp_path / "oc")
    with pytest.raises(FileNotFoundError, match=rf"is an open_clip model directory .*--backbone open_clip:{oc}"):
        load_backbone(f"hf:{oc}")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=rf"a Hugging Face config.json; load it with --backbone hf:{hf}"):
        load_backbone(f"open_clip:{hf}")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (oc / f).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"no tokenizer was found .*put the model's Hugging Face tokenizer files "
                                         r"\(tokenizer.json, tokenizer_config.json\) in its directory"):
        load_backbone(f"open_clip:{oc}")
