"""Review 190: a VLM folder without tokenizer.json names the missing tokenizer files (tokenizer_config.json alone
passed the check and failed inside transformers); an open_clip folder of sharded safetensors loads (only the first
shard was read); a folder in the working directory named like an open_clip architecture does not hide the name."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_backbones import CTX, WORDS, _clip_cfg

from mtl_lora_vl.backbones import WordTokenizer, build_open_clip, build_word_tokenizer, load_backbone
from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.backbones.spec import parse_spec


def test_a_vlm_directory_without_tokenizer_json_names_the_missing_tokenizer_files(tmp_path):
    """hf_processor._TOKENIZER_FILES counts tokenizer_config.json as a tokenizer file, so a folder that lost its
    tokenizer.json passes the check and fails inside transformers with 'You need to have sentencepiece or tiktoken
    installed to convert a slow tokenizer', which names neither the file nor the fix. tokenizers.TOKENIZER_FILES
    leaves tokenizer_config.json out for exactly this reason."""
    d = tmp_path / "llava"
    shutil.copytree(builtin_llava_dir(), d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files.*tokenizer\.json"):
        load_backbone(f"hf:{d}")


def _sharded_dir(tmp_path):
    """A tiny open_clip directory whose weights are two safetensors shards and their index; and its backbone."""
    from safetensors.torch import save_file

    tok_dir = build_word_tokenizer(WORDS, tmp_path / "tok", context_length=CTX)
    tok = WordTokenizer(tok_dir, CTX)
    bb = build_open_clip(_clip_cfg(tok.vocab_size), tokenizer_dir=tok_dir)
    d = tmp_path / "oc"
    d.mkdir()
    for n in ("tokenizer.json", "tokenizer_config.json"):
        (d / n).write_bytes((tok_dir / n).read_bytes())
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": _clip_cfg(tok.vocab_size), "preprocess_cfg": {}}))
    sd = {k: v.contiguous() for k, v in bb.model.state_dict().items()}
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(d / name))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}))
    return d, bb


def test_an_open_clip_directory_with_sharded_safetensors_loads(tmp_path):
    """open_clip's _find_checkpoint_in_dir takes the first shard (with a 'Multiple checkpoints' warning) and the
    strict load fails with a several-kB 'Missing key(s)' list; hf:DIR loads the same layout."""
    d, bb = _sharded_dir(tmp_path)
    again = load_backbone(f"open_clip:{d}")
    tokens = again.tokenizer(["a red circle"])
    torch.testing.assert_close(again.encode_text(tokens), bb.encode_text(tokens))


def test_a_folder_named_like_an_architecture_does_not_hide_the_name(tmp_path, monkeypatch):
    """`open_clip:ViT-S-32 --pretrained ViT-S-32/w.bin` run where the weights were downloaded into ./ViT-S-32 (no
    open_clip_config.json) is refused as 'a local directory with its own weights; drop --pretrained', and without
    --pretrained as 'has no open_clip_config.json': the name is never reachable from that working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ViT-S-32").mkdir()
    (tmp_path / "ViT-S-32" / "w.bin").write_bytes(b"")
    spec = parse_spec("open_clip:ViT-S-32", "ViT-S-32/w.bin")
    assert spec.kind == "open_clip" and spec.architecture == "ViT-S-32"


def test_malformed_backbone_strings_are_named_not_tracebacks(tmp_path):
    """Review 210: "hf:~nouser/x" ended in pathlib's bare RuntimeError "Could not determine home directory."; "hf: DIR"
    (a space after the colon, as a config file may write it) was "hf: DIR is not a local directory"; and
    "open_clip:hf-hub:" said "open_clip:hf-hub::  is not in the local Hugging Face cache (... huggingface-cli
    download )"."""
    (tmp_path / "config.json").write_text("{}")
    spec = parse_spec(f"hf: {tmp_path}")
    assert spec.path == tmp_path and spec.text == f"hf:{tmp_path}"
    assert parse_spec(" open_clip: ViT-B-32 ").name == "ViT-B-32"
    for text in ("hf:~no-such-user-210/x", "open_clip:~no-such-user-210/x", "~no-such-user-210"):
        with pytest.raises(ValueError, match=r"cannot expand .*give the folder's full path|unknown backbone spec"):
            parse_spec(text)
    for schema, form in (("hf-hub", "hf-hub:ORG/NAME"), ("local-dir", "local-dir:/path/to/dir")):
        with pytest.raises(ValueError, match=rf"'open_clip:{schema}:' names no model: write open_clip:{form}"):
            parse_spec(f"open_clip:{schema}:")


def test_a_spec_too_long_for_a_file_name_is_an_unknown_spec_not_an_os_error():
    """Mutation audit 552: ``parse_spec("a" * 300)`` (``--backbone`` of 300 letters) raised a bare ``OSError: [Errno 36]
    File name too long`` from the did-you-mean's folder check, naming neither the spec nor its forms (Python 3.11's
    ``Path.is_dir`` raises it; 3.12 returns False); ``hf:`` / ``open_clip:`` of such a name did too, at the parse or
    the load."""
    for text in ("a" * 300, "hf" + "x" * 300):
        with pytest.raises(ValueError, match=r"unknown backbone spec .*accepted forms"):
            parse_spec(text)
    for text in ("hf:" + "x" * 300, "open_clip:" + "x" * 300, "open_clip:./" + "x" * 300):   # (a folder's form)
        with pytest.raises(ValueError, match=r"cannot be a local path \(File name too long\); accepted forms"):
            parse_spec(text)


def test_the_word_tokenizer_refuses_a_context_too_short_for_its_start_and_end_tokens(tmp_path):
    """Review 210: tok(texts, context_length=1) failed with torch's "The expanded size of the tensor (1) must match
    the existing size (4)"; 0 was taken as the default context."""
    tok = WordTokenizer(build_word_tokenizer(WORDS, tmp_path, context_length=CTX), CTX)
    assert tok(["a red circle"], context_length=2).tolist() == [[tok.bos_id, tok.eos_id]]
    for short in (1, 0):
        with pytest.raises(ValueError, match=rf"context_length must be at least 2 \(<sot> and <eot>\), got {short}"):
            tok(["a red circle"], context_length=short)


def test_a_config_whose_shapes_differ_from_the_weights_names_the_folder(tmp_path):
    """Review 210: an HF CLIP folder whose config.json says projection_dim 8 over weights of 16 ended in
    transformers' bare RuntimeError "You set `ignore_mismatched_sizes` to `False`, thus raising an error. For
    details look at the above report!", naming neither the folder nor the fix."""
    from test_backbones import _save_tiny_hf_clip

    from mtl_lora_vl.backbones import BackboneError

    _save_tiny_hf_clip(build_word_tokenizer(WORDS, tmp_path / "tok", context_length=CTX), tmp_path / "clip")
    config = tmp_path / "clip" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "projection_dim": 8}))
    with pytest.raises(BackboneError, match=r"clip: weights in the checkpoint have other shapes than CLIPModel built "
                                            r"from its config.json .*save them together again with save_pretrained"):
        load_backbone(f"hf:{tmp_path / 'clip'}")


def test_a_config_of_remote_code_or_an_unknown_class_says_which_and_what_to_do(tmp_path):
    """Review 210: both ended in "names no model class this transformers version knows ...; save the model with
    save_pretrained", which a model of its own code (auto_map) or a class newer than this transformers can't follow."""
    from mtl_lora_vl.backbones import BackboneError

    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
         "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"}}))
    with pytest.raises(BackboneError, match=r"a model of its own code \(auto_map.*no trust_remote_code"
                                            r".*hf_clip, llava"):
        load_backbone(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FooForConditionalGeneration"]}))
    with pytest.raises(BackboneError, match=r"transformers version \(\d.*\) knows .*pip install -U transformers"):
        load_backbone(f"hf:{tmp_path}")


def test_the_hf_tokenizer_takes_an_empty_batch_and_refuses_a_context_under_one(tmp_path):
    """Review 210: HFTokenizer([]) ended in transformers' IndexError (the word tokenizer gives a (0, L) tensor);
    context_length=-1 in "OverflowError: can't convert negative int to unsigned", 0 was taken as the default."""
    from transformers import AutoTokenizer

    from mtl_lora_vl.backbones.tokenizers import HFTokenizer

    build_word_tokenizer(WORDS, tmp_path, context_length=CTX)
    tok = HFTokenizer(AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True), CTX)
    assert tok([]).shape == (0, CTX) and tok([], context_length=4).shape == (0, 4)
    assert tok(["a red circle"], context_length=1).tolist() == [[tok.eos_id]]
    for short in (0, -1):
        with pytest.raises(ValueError, match=rf"context_length must be at least 1 \(the end token\), got {short}"):
            tok(["a red circle"], context_length=short)


def test_open_clips_bpe_tokenizer_refuses_a_context_under_one_as_the_others_do():
    """Review 226: open_clip's BPE (OpenClipBPETokenizer) took context_length=0 as its default (77 columns back,
    `context_length or self.context_length`), where the word and Hugging Face tokenizers refuse it (review 210)."""
    from open_clip.tokenizer import SimpleTokenizer

    from mtl_lora_vl.backbones.tokenizers import OpenClipBPETokenizer

    tok = OpenClipBPETokenizer(SimpleTokenizer(context_length=77), 77)
    assert tok(["a red circle"]).shape == (1, 77) and tok(["a red circle"], context_length=1).tolist() == [[tok.eos_id]]
    for short in (0, -1):
        with pytest.raises(ValueError, match=rf"context_length must be at least 1 \(the end token\), got {short}"):
            tok(["a red circle"], context_length=short)


@pytest.mark.parametrize(("damage", "says"), [
    ("index_json", r"model.safetensors.index.json are unreadable \(JSONDecodeError"),
    ("index_keys", r"model.safetensors.index.json are unreadable \(KeyError: 'weight_map'\)"),
    ("shard", r"model.safetensors.index.json are unreadable \(SafetensorError: .*\); re-create or re-download"),
    ("bin", r"open_clip_pytorch_model.bin are unreadable \(UnpicklingError"),
])
def test_a_damaged_open_clip_weights_file_is_named(tmp_path, damage, says):
    """Review 210: a corrupt index was a bare JSONDecodeError, one without weight_map was blamed on
    open_clip_config.json ("does not describe an open_clip model (KeyError: 'weight_map')"), and a truncated shard
    (safetensors' own SafetensorError) or a corrupt .bin (pickle's UnpicklingError) ended in a traceback."""
    d, _ = _sharded_dir(tmp_path)
    index, shard = d / "model.safetensors.index.json", d / "model-00001-of-00002.safetensors"
    if damage == "index_json":
        index.write_text("{")
    elif damage == "index_keys":
        index.write_text("{}")
    elif damage == "shard":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        for f in d.glob("*.safetensors*"):
            f.unlink()
        (d / "open_clip_pytorch_model.bin").write_bytes(b"not a torch archive")
    with pytest.raises(ValueError, match=says):
        load_backbone(f"open_clip:{d}")


def test_a_shard_index_naming_a_file_out_of_its_folder_is_refused(tmp_path):
    """The index's weight_map names shards by file name; one naming '../x.safetensors' (or an absolute path) read a
    file out of the model folder (a downloaded folder's index chose what was read)."""
    d, _ = _sharded_dir(tmp_path)
    index = d / "model.safetensors.index.json"
    outside = tmp_path / "elsewhere.safetensors"
    (d / "model-00001-of-00002.safetensors").rename(outside)
    doc = json.loads(index.read_text())
    for shard in ("../elsewhere.safetensors", str(outside)):
        doc["weight_map"] = {k: shard if v.startswith("model-00001") else v for k, v in doc["weight_map"].items()}
        index.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=r"unreadable \(ValueError: the index names the shard '.*elsewhere"
                                             r"\.safetensors', not a file name beside it\)"):
            load_backbone(f"open_clip:{d}")


@pytest.mark.parametrize("name", ["builtin-llava", "builtin"])
def test_hf_prefix_on_a_builtin_name_says_to_drop_it(name, tmp_path, monkeypatch):
    """hf:builtin-llava was told it 'is not a local directory' and to find a hub id in the cache; it names the
    package's own backbone and the form to give. A local folder of that name is still read as one."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"'{name}' is one of the package's own backbones"
                                                rf".*--backbone {name}\)"):
        load_backbone(f"hf:{name}")
    (tmp_path / name).mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_backbone(f"hf:{name}")


def test_pretrained_given_a_folder_says_so(tmp_path):
    """--pretrained DIR was told 'no such file' (the built-in) or 'not a local file' (open_clip): it is there, and
    a folder; the built-in's message names the weights files inside it."""
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"a folder \(holding \['model.safetensors'\]: give the file\)"):
        load_backbone("builtin", pretrained=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is a folder, not a checkpoint file, nor a pretrained tag"):
        load_backbone("open_clip:ViT-B-32", pretrained=str(tmp_path))


def test_a_config_naming_remote_code_beside_a_transformers_class_says_which_loads(tmp_path, caplog):
    """Review 264: an auto_map beside an architectures class transformers ships loaded that class without a word, as
    transformers does without trust_remote_code; one who expects the model's own code to run is told it does not."""
    from mtl_lora_vl.backbones.hf import hf_model_class

    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["LlavaForConditionalGeneration"], "auto_map": {"AutoModel": "modeling_x.XModel"}}))
    with caplog.at_level("WARNING", logger="mtl_lora_vl.backbones.hf"):
        assert hf_model_class(tmp_path).__name__ == "LlavaForConditionalGeneration"
    assert "auto_map names code of the model's own, which this package does not run" in caplog.text
    assert "LlavaForConditionalGeneration" in caplog.text


def test_a_spec_path_that_cannot_be_looked_at_is_named_with_its_fix_not_the_spec_forms(monkeypatch):
    """Review 559 of 059cd9b: a path under a folder this process may not enter (``hf:/models/x`` in a folder of
    mode 700 of another user: ``stat`` raises EACCES) was refused as ``cannot be a local path (Permission
    denied); accepted forms: ...`` -- it is a local path, and no other spec form is the fix; its permissions are.
    (Faked: the tests run as root, whom no mode stops.)"""
    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refused)
    for text in ("hf:/models/locked/clip", "open_clip:/models/locked/clip"):
        with pytest.raises(ValueError, match=r"cannot look at /models/locked/clip \(Permission denied\).*"
                                             r"check its permissions") as raised:
            parse_spec(text)
        assert "accepted forms" not in str(raised.value)
