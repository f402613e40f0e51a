"""Names already in the local Hugging Face / open_clip cache load with no network; others fail at once.

The caches are built in tmp in the layout the hub client writes (``models--ORG--NAME/blobs``,
``snapshots/<commit>/`` symlinks, ``refs/main``); a socket guard fails any connection attempt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from test_backbones import CTX, _clip_cfg, _save_tiny_hf_clip, tok_dir  # noqa: F401 - tok_dir is a fixture

from mtl_lora_vl.backbones import load_backbone, parse_spec
from mtl_lora_vl.backbones.cache import cached_hub_snapshot, cached_open_clip_weights, hf_hub_cache

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a host fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the cache must work without the offline switch
        monkeypatch.delenv(key, raising=False)


def hub_layout(cache: Path, repo_id: str, files: Path) -> Path:
    """Lay ``files``' contents out as the hub client caches model ``repo_id``; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap, blobs = repo / "snapshots" / COMMIT, repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in sorted(files.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blobs / digest)
        (snap / f.name).symlink_to(os.path.relpath(blobs / digest, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def test_cached_hub_id_loads_with_no_network(tok_dir, tmp_path, monkeypatch, no_network):  # noqa: F811
    model_dir = tmp_path / "saved"
    _save_tiny_hf_clip(tok_dir, model_dir)
    cache = tmp_path / "hub"
    snap = hub_layout(cache, "acme/tiny-clip", model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    assert hf_hub_cache() == cache and cached_hub_snapshot("acme/tiny-clip") == snap
    spec = parse_spec("hf:acme/tiny-clip")
    assert (spec.kind, spec.name, spec.path, spec.label) == ("hf", "acme/tiny-clip", snap, "hf:acme/tiny-clip")
    assert spec.absolute() == "hf:acme/tiny-clip"  # a hub id stays portable in adapter files

    cached, direct = load_backbone("hf:acme/tiny-clip"), load_backbone(f"hf:{model_dir}")
    assert cached.family == "hf_clip" and cached.name == "hf:acme/tiny-clip"
    tokens = cached.tokenizer(["a red circle"])
    assert tokens.shape == (1, CTX)
    with torch.no_grad():
        torch.testing.assert_close(cached.encode_text(tokens), direct.encode_text(tokens))

    monkeypatch.delenv("HF_HUB_CACHE")  # HF_HOME/hub is the cache when HF_HUB_CACHE is not set
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert parse_spec("hf:acme/tiny-clip").path == snap


def test_hub_id_not_in_the_cache_fails_at_once(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not a local directory") as info:
        load_backbone("hf:acme/not-cached")
    assert str(tmp_path / "empty") in str(info.value) and "never does" in str(info.value)
    assert parse_spec("hf:acme/not-cached").name == ""  # left a (missing) path


# ----------------------------------------------------------------------------------------------- open_clip

TINY = "mlv-tiny-cached"


@pytest.fixture
def tiny_open_clip_name(monkeypatch):
    """A tiny architecture registered with open_clip (with BPE-sized vocabulary, so the bundled tokenizer fits)."""
    from open_clip import factory

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    monkeypatch.setitem(factory._MODEL_CONFIGS, TINY, cfg)
    import open_clip

    model = open_clip.create_model(TINY)
    return model.state_dict()


def _register_tag(monkeypatch, tag: str, **cfg) -> None:
    from open_clip import pretrained

    monkeypatch.setitem(pretrained._PRETRAINED, TINY, {tag: cfg})


def test_open_clip_tag_in_the_hub_cache(tiny_open_clip_name, tmp_path, monkeypatch, no_network):
    from safetensors.torch import save_file

    files = tmp_path / "files"
    files.mkdir()
    save_file({k: v.contiguous() for k, v in tiny_open_clip_name.items()}, str(files / "open_clip_model.safetensors"))
    cache = tmp_path / "hub"
    hub_layout(cache, "acme/tiny-oc", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _register_tag(monkeypatch, "acme_tag", hf_hub="acme/tiny-oc/", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    path, cfg = cached_open_clip_weights(TINY, "acme-tag")  # tags are normalised as open_clip does
    assert path.name == "open_clip_model.safetensors" and cfg["hf_hub"] == "acme/tiny-oc/"
    bb = load_backbone(f"open_clip:{TINY}", pretrained="acme_tag")
    assert bb.mean == (0.5, 0.5, 0.5) and bb.std == (0.25, 0.25, 0.25)  # the tag's preprocessing
    for k, v in bb.model.state_dict().items():
        torch.testing.assert_close(v, tiny_open_clip_name[k], msg=k)


def test_open_clip_tag_in_the_url_cache(tiny_open_clip_name, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    torch.save(tiny_open_clip_name, tmp_path / ".cache" / "clip" / "tiny-weights.pt")
    _register_tag(monkeypatch, "urltag", url="https://example.invalid/weights/tiny-weights.pt")

    bb = load_backbone(f"open_clip:{TINY}", pretrained="urltag")
    text = bb.tokenizer(["a photo"])
    with torch.no_grad():
        assert torch.isfinite(bb.encode_text(text)).all()


def test_open_clip_tag_not_cached_fails_at_once(tiny_open_clip_name, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    _register_tag(monkeypatch, "hubtag", hf_hub="acme/elsewhere/")
    with pytest.raises(FileNotFoundError, match="never does") as info:
        load_backbone(f"open_clip:{TINY}", pretrained="hubtag")
    assert "local cache" in str(info.value)
    with pytest.raises(FileNotFoundError, match="never does"):
        load_backbone(f"open_clip:{TINY}", pretrained="no-such-tag")


def test_open_clip_hub_schema_loads_the_cached_folder_offline(tok_dir, tmp_path, monkeypatch, no_network):  # noqa: F811
    """open_clip:hf-hub:ORG/NAME went to open_clip, which looked its config up online and, given --pretrained,
    ignored the file and could return a randomly initialised model. It is the cached folder now."""
    import json

    from safetensors.torch import save_file

    from mtl_lora_vl.backbones import WordTokenizer, build_open_clip

    folder = tmp_path / "saved"
    folder.mkdir()
    tok = WordTokenizer(tok_dir, CTX)
    bb = build_open_clip(_clip_cfg(tok.vocab_size), tokenizer_dir=tok_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tok_dir / name).read_bytes())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": _clip_cfg(tok.vocab_size)}))
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(folder / "model.safetensors"))
    cache = tmp_path / "hub"
    hub_layout(cache, "acme/tiny-oc", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    again = load_backbone("open_clip:hf-hub:acme/tiny-oc")
    # not the snapshot
    assert parse_spec("open_clip:hf-hub:acme/tiny-oc").absolute() == "open_clip:hf-hub:acme/tiny-oc"
    tokens = again.tokenizer(["a red circle"])
    assert torch.allclose(again.encode_text(tokens), bb.encode_text(tokens), atol=1e-6)
    with pytest.raises(ValueError, match="carries its own weights; drop pretrained='"):
        load_backbone("open_clip:hf-hub:acme/tiny-oc", pretrained=str(folder / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="acme/other is not in the local Hugging Face cache .*huggingface-cli "
                                                "download acme/other"):
        load_backbone("open_clip:hf-hub:acme/other")


@pytest.mark.filterwarnings("ignore::FutureWarning:torch.jit")   # the test writes a TorchScript archive on purpose
@pytest.mark.filterwarnings("ignore:.*looks like a TorchScript archive:UserWarning")
def test_an_openai_torchscript_archive_is_named_as_such(tiny_open_clip_name, tmp_path, no_network):
    """OpenAI's clip.load files (~/.cache/clip/ViT-B-32.pt) are TorchScript: the message said to check that
    the checkpoint was made for the architecture, which it was."""
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.l(x)

    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(M()), str(path))
    with pytest.raises(ValueError, match=r"ViT-B-32\.pt is a TorchScript archive .*load_openai_model"):
        load_backbone(f"open_clip:{TINY}", pretrained=str(path))


def test_an_open_clip_name_whose_tokenizer_is_a_cached_hub_id_loads(tmp_path, monkeypatch, no_network):
    """Review 210: open_clip:NAME with text_cfg.hf_tokenizer_name a hub id (SigLIP's "timm/ViT-B-16-SigLIP", 39 of
    open_clip's configs) was refused whatever the cache held, with advice to edit an open_clip_config.json that
    open_clip:NAME does not have; the tokenizer's snapshot in the local cache is now read, as the weights' is."""
    import open_clip
    from open_clip import factory
    from safetensors.torch import save_file
    from test_open_clip_text_towers import _t5_like_tokenizer

    text = {"context_length": 8, "vocab_size": 8, "width": 16, "heads": 2, "layers": 1, "no_causal_mask": True,
            "pool_type": "last", "hf_tokenizer_name": "acme/tiny-tok", "tokenizer_kwargs": {"clean": "canonicalize"}}
    cfg = {"embed_dim": 16, "custom_text": True, "text_cfg": text,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}}
    monkeypatch.setitem(factory._MODEL_CONFIGS, TINY, cfg)
    weights = tmp_path / "files"
    weights.mkdir()
    torch.manual_seed(0)
    state = open_clip.create_model(TINY).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights / "open_clip_model.safetensors"))
    cache = tmp_path / "hub"
    hub_layout(cache, "acme/tiny-oc", weights)
    hub_layout(cache, "acme/tiny-tok", _t5_like_tokenizer(tmp_path / "tok"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _register_tag(monkeypatch, "acme_tag", hf_hub="acme/tiny-oc/")
    for pretrained in ("acme_tag", str(weights / "open_clip_model.safetensors")):
        bb = load_backbone(f"open_clip:{TINY}", pretrained=pretrained)
        assert bb.tokenizer(["A red cube."]).tolist() == [[3, 4, 5, 1, 1, 1, 1, 1]]   # canonicalized, padded with 1
    monkeypatch.setitem(text, "hf_tokenizer_name", "acme/other-tok")
    with pytest.raises(ValueError, match=r"'acme/other-tok', which would need a download \(it is not in the local "
                                         r"Hugging Face cache, .*huggingface-cli download acme/other-tok\)"
                                         r".*open_clip:DIR"):
        load_backbone(f"open_clip:{TINY}", pretrained="acme_tag")


def test_a_hub_id_cached_at_a_tag_alone_is_its_one_snapshot(tok_dir, tmp_path, monkeypatch, no_network):  # noqa: F811
    """hf:ORG/NAME and open_clip:hf-hub:ORG/NAME looked at the cache's ``main`` only: a model fetched at a tag
    (snapshot_download(id, revision="v1") writes refs/v1, no refs/main) was 'not a local directory' / 'not in the
    local Hugging Face cache'. With no main cached, the one snapshot there is the id's; several are refused naming
    each with its refs; a main naming a commit not cached is not replaced by another revision."""
    model_dir = tmp_path / "saved"
    _save_tiny_hf_clip(tok_dir, model_dir)
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snap = hub_layout(cache, "acme/tiny-clip", model_dir)
    refs = cache / "models--acme--tiny-clip" / "refs"
    (refs / "main").rename(refs / "v1")
    spec = parse_spec("hf:acme/tiny-clip")
    assert (spec.name, spec.path) == ("acme/tiny-clip", snap)
    assert load_backbone("hf:acme/tiny-clip").family == "hf_clip"
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    oc = hub_layout(cache, "acme/tiny-oc", tmp_path / "oc")
    (cache / "models--acme--tiny-oc" / "refs" / "main").unlink()   # (a commit's download: no ref at all)
    assert parse_spec("open_clip:hf-hub:acme/tiny-oc").path == oc
    other = snap.with_name("f" * 40)
    shutil.copytree(snap, other, symlinks=True)
    with pytest.raises(ValueError, match=r"'acme/tiny-clip': the local hub cache .* holds no 'main' revision of it but "
                                         rf"2 other snapshots, which may differ: {snap} \(v1\); {other}\. Name the "
                                         r"folder of the one meant in place of 'acme/tiny-clip'"):
        parse_spec("hf:acme/tiny-clip")
    (refs / "main").write_text("e" * 40)   # main's commit is not cached: no snapshot, as before
    assert parse_spec("hf:acme/tiny-clip").name == ""
