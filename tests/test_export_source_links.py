"""Helper 345: a merged folder copies only the source folder's own files. ``save_merged`` copied every file of
``source_dir`` through its links, so a downloaded model folder holding ``tokenizer_extra.json -> ../secret`` put that
private file into the merged folder, made to be shared; a hub cache snapshot's links to its blobs still copy."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_hf_clip, tiny_open_clip

import mtl_lora_vl as mlv
from mtl_lora_vl.io import exports
from mtl_lora_vl.io.atomic import linked_out_of


def _source(folder):
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}, "preprocess_cfg": {}}))
    return folder


def _model():
    torch.manual_seed(0)
    return mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))


def test_a_link_out_of_the_source_folder_is_not_copied_into_a_merged_folder(tmp_path, monkeypatch):
    (tmp_path / "secret.txt").write_text("PRIVATE KEY")
    src = _source(tmp_path / "downloaded")
    (src / "tokenizer_extra.json").symlink_to("../secret.txt")
    model = _model()

    def merged_state_dict(*args, **kwargs):   # refused before the merge and the weights' write (minutes, GBs)
        raise AssertionError("the link was refused only after the merged weights were made")

    monkeypatch.setattr(exports, "merged_state_dict", merged_state_dict)
    with pytest.raises(ValueError, match=r"tokenizer_extra.json is a symbolic link to .*secret.txt, outside the "
                                         r"source folder .*put the file itself there"):
        mlv.save_merged(model, "a", tmp_path / "merged", source_dir=src)
    assert not (tmp_path / "merged").exists()


def test_links_inside_the_folder_and_to_the_hub_cache_blobs_still_copy(tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    src = _source(repo / "snapshots" / "abc123")
    (repo / "blobs").mkdir()
    (repo / "blobs" / "f00d").write_text('{"vocab": 1}')
    (src / "tokenizer.json").symlink_to("../../blobs/f00d")
    (src / "notes.txt").write_text("hello")
    (src / "readme.txt").symlink_to("notes.txt")
    out = mlv.save_merged(_model(), "a", tmp_path / "merged", source_dir=src)
    assert (out / "tokenizer.json").read_text() == '{"vocab": 1}' and not (out / "tokenizer.json").is_symlink()
    assert (out / "readme.txt").read_text() == "hello"


def test_links_of_a_hub_snapshots_subfolder_to_its_blobs_still_copy(tmp_path):
    """Helper 358: source_dir a model folder inside a hub snapshot (``from_pretrained(repo, subfolder="llava")``):
    its links ``../../../blobs/<sha>`` were refused as links out of the folder ('put the file itself there')."""
    repo = tmp_path / "hub" / "models--org--tiny"
    src = _source(repo / "snapshots" / "abc123" / "llava")
    (repo / "blobs").mkdir()
    (repo / "blobs" / "f00d").write_text('{"vocab": 1}')
    (src / "tokenizer.json").symlink_to("../../../blobs/f00d")
    out = mlv.save_merged(_model(), "a", tmp_path / "merged", source_dir=src)
    assert (out / "tokenizer.json").read_text() == '{"vocab": 1}'
    (tmp_path / "secret.txt").write_text("PRIVATE KEY")
    (src / "extra.json").symlink_to("../../../../../secret.txt")
    with pytest.raises(ValueError, match=r"extra.json is a symbolic link to .*secret.txt, outside the source folder"):
        mlv.save_merged(_model(), "a", tmp_path / "merged2", source_dir=src)


def test_a_link_loop_is_refused_by_name(tmp_path):
    """A link loop in the source folder raised a bare RuntimeError ('Symlink loop from ...'), naming no fix."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError, match="a symbolic link loop") as e:
        linked_out_of(tmp_path, tmp_path / "a")
    assert e.value.errno == errno.ELOOP and str(tmp_path / "a") in str(e.value) and "remove the link" in str(e.value)


def test_a_link_loop_is_refused_where_resolve_says_nothing_of_it(tmp_path, monkeypatch):
    """From Python 3.13 on, ``Path.resolve()`` (not strict) returns a loop's path unresolved and raises nothing: the
    loop then read as a file inside the folder (None). Simulated here with 3.13's resolve, ``os.path.realpath``."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.realpath(self)))
    with pytest.raises(OSError, match="a symbolic link loop") as e:
        linked_out_of(tmp_path, tmp_path / "a")
    assert e.value.errno == errno.ELOOP
    (tmp_path / "f").write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")   # a dangling link is no loop
    assert linked_out_of(tmp_path, tmp_path / "f") is None and linked_out_of(tmp_path, tmp_path / "gone") is None


def test_links_of_a_local_dir_download_to_the_hub_cache_blobs_still_copy(tmp_path):
    """huggingface_hub before 0.23 (``local_dir_use_symlinks="auto"``) linked a ``local_dir`` download's files over
    5 MB (Qwen2-VL's 7 MB tokenizer.json) to the cache's blobs: refused as links out of the folder."""
    repo = tmp_path / "cache" / "hub" / "models--Qwen--Qwen2-VL-2B-Instruct"
    (repo / "snapshots" / "abc123" / "llava").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "f00d").write_text('{"vocab": 1}')
    (repo / "snapshots" / "abc123" / "tokenizer.json").symlink_to("../../blobs/f00d")
    (repo / "snapshots" / "abc123" / "llava" / "vocab.json").symlink_to("../../../blobs/f00d")
    src = _source(tmp_path / "models" / "qwen2-vl")
    (src / "tokenizer.json").symlink_to(repo / "blobs" / "f00d")
    out = mlv.save_merged(_model(), "a", tmp_path / "merged", source_dir=src)
    assert (out / "tokenizer.json").read_text() == '{"vocab": 1}' and not (out / "tokenizer.json").is_symlink()
    sub = _source(tmp_path / "models" / "qwen2-vl-sub" / "llava")   # a download of the repo's subfolder llava/
    (sub / "vocab.json").symlink_to(repo / "blobs" / "f00d")
    assert linked_out_of(sub, sub / "vocab.json") is None
    (tmp_path / "blobs").mkdir()   # a folder merely named blobs, outside a hub cache: still refused
    (tmp_path / "blobs" / "key").write_text("PRIVATE KEY")
    (src / "extra.json").symlink_to(tmp_path / "blobs" / "key")
    with pytest.raises(ValueError, match=r"extra.json is a symbolic link to .*key, outside the source folder"):
        mlv.save_merged(_model(), "a", tmp_path / "merged2", source_dir=src)


def test_a_linked_config_that_save_pretrained_writes_itself_is_not_refused(tmp_path, monkeypatch):
    """save_pretrained writes the merged folder's config.json (the source's is never copied), so a model folder whose
    config.json links to a shared file was refused as leaking it ('put the file itself there') since the link check
    moved before the write; a linked file that is copied is still refused, though save_pretrained might have written
    its name (a CLIP writes no generation_config.json)."""
    from transformers import CLIPModel

    tiny_hf_clip().save_pretrained(tmp_path / "base")
    (tmp_path / "shared").mkdir()
    (tmp_path / "base" / "config.json").rename(tmp_path / "shared" / "clip.json")
    (tmp_path / "base" / "config.json").symlink_to(tmp_path / "shared" / "clip.json")
    (tmp_path / "base" / "preprocessor_config.json").write_text("{}")
    model = mlv.attach(CLIPModel.from_pretrained(tmp_path / "base"), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    out = mlv.save_merged(model, "a", tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["projection_dim"] == 16
    assert not (out / "config.json").is_symlink() and (out / "preprocessor_config.json").read_text() == "{}"
    (tmp_path / "secret.txt").write_text("PRIVATE KEY")
    (tmp_path / "base" / "generation_config.json").symlink_to(tmp_path / "secret.txt")

    def merged_state_dict(*args, **kwargs):   # a CLIP writes no generation_config.json: known before the write
        raise AssertionError("the link was refused only after the merged weights were made")

    monkeypatch.setattr(exports, "merged_state_dict", merged_state_dict)
    with pytest.raises(ValueError, match=r"generation_config.json is a symbolic link to .*secret.txt, outside"):
        mlv.save_merged(model, "a", tmp_path / "merged2")
    assert not (tmp_path / "merged2").exists()


def test_a_linked_remote_code_file_that_save_pretrained_writes_itself_is_not_refused(tmp_path, monkeypatch):
    """A model of its own code (``trust_remote_code``: its class registered for an auto class) is saved with that
    code: ``save_pretrained`` copies its module file (and the files it imports relatively) into the folder, so the
    source folder's own copy, linked to a shared file, is never copied and was refused as leaking it; a linked
    ``.py`` that save_pretrained does not write is still refused before the merge."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "modeling_tinyx.py").write_text("from transformers import CLIPModel\n\n\n"
                                            "class TinyX(CLIPModel):\n    pass\n")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(__import__("sys").modules, "modeling_tinyx", raising=False)
    from modeling_tinyx import TinyX

    tiny_hf_clip().save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "modeling_tinyx.py").symlink_to(code / "modeling_tinyx.py")   # a shared copy of the code
    base = TinyX.from_pretrained(tmp_path / "base")
    monkeypatch.setattr(TinyX, "_auto_class", "AutoModel")   # what TinyX.register_for_auto_class("AutoModel") sets
    model = mlv.attach(base, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    out = mlv.save_merged(model, "a", tmp_path / "merged")
    assert "class TinyX" in (out / "modeling_tinyx.py").read_text() and not (out / "modeling_tinyx.py").is_symlink()
    assert json.loads((out / "config.json").read_text())["auto_map"] == {"AutoModel": "modeling_tinyx.TinyX"}
    (tmp_path / "secret.py").write_text("KEY = 'PRIVATE'")
    (tmp_path / "base" / "helpers.py").symlink_to(tmp_path / "secret.py")   # not the model's code: copied, refused
    monkeypatch.setattr(exports, "merged_state_dict", lambda *a, **k: pytest.fail("refused only after the merge"))
    with pytest.raises(ValueError, match=r"helpers.py is a symbolic link to .*secret.py, outside"):
        mlv.save_merged(model, "a", tmp_path / "merged2")


def test_a_link_into_the_hub_cache_blobs_that_no_download_made_is_refused(tmp_path):
    """A link into a hub cache's blobs is a download's own only where a snapshot of that repo holds the file under
    the link's name as that blob: any link into any ``models--*/blobs`` was taken, so a folder's ``notes.txt``
    leading to a private repo's file (its ``secrets.json``) was copied into the merged folder, made to be shared."""
    repo = tmp_path / "cache" / "hub" / "models--me--private"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "beef").write_text('{"token": "PRIVATE"}')
    (repo / "snapshots" / "abc123" / "secrets.json").symlink_to("../../blobs/beef")
    src = _source(tmp_path / "downloaded")
    (src / "notes.txt").symlink_to(repo / "blobs" / "beef")
    with pytest.raises(ValueError, match=r"notes.txt is a symbolic link to .*models--me--private/blobs/beef, outside"):
        mlv.save_merged(_model(), "a", tmp_path / "merged", source_dir=src)
    assert not (tmp_path / "merged").exists()
    (src / "notes.txt").unlink()
    (src / "secrets.json").symlink_to(repo / "blobs" / "beef")   # the repo's own file under its own name: a download
    assert linked_out_of(src, src / "secrets.json") is None
