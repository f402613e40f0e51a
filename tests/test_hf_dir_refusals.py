"""``hf:DIR`` directories broken in one piece each: the refusal names the directory, the piece and the fix, and
comes before the weights are read."""

from __future__ import annotations

import json
import re

import pytest

from mtl_lora_vl.backbones import BackboneError, load_backbone


def _config_only(folder, **config) -> str:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("config, names", [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LlamaForCausalLM"),   # text-only
    ({"architectures": ["Blip2ForConditionalGeneration"], "model_type": "blip-2"}, "Blip2ForConditionalGeneration"),
])
def test_a_directory_of_a_family_without_a_backbone_is_named_with_its_config(tmp_path, config, names):
    """The table's refusal named the class only: with several --backbone directories in a sweep, the user could not
    tell which one was refused."""
    folder = _config_only(tmp_path / "not a vlm", **config)
    with pytest.raises(BackboneError) as e:
        load_backbone(f"hf:{folder}")
    said = str(e.value)
    assert said.startswith(f"hf:{folder}: {folder}/config.json names a model this package cannot load")
    assert names in said and "supported: open_clip" in said and "Give a directory of one of those" in said
    assert "--backbone" not in said   # (a Python call of load_backbone gave no flag)


def test_an_hf_clip_directory_without_a_tokenizer_is_refused_before_its_weights_load(tmp_path, monkeypatch):
    """The tokenizer was read after the weights: a CLIP ViT-L's 1.7 GB loaded, then the run was refused."""
    from conftest import tiny_hf_clip

    from mtl_lora_vl.backbones import hf_clip

    tiny_hf_clip().save_pretrained(tmp_path)

    def weights_read(*args, **kwargs):
        raise AssertionError("the weights were read before the tokenizer was checked")

    monkeypatch.setattr(hf_clip, "load_hf_weights", weights_read)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path} has no tokenizer files for hf:{tmp_path}")
                       + ".*tokenizer.save_pretrained"):
        load_backbone(f"hf:{tmp_path}")


def _sharded_llava(llava_dir, out):
    """A copy of the tiny LLaVA directory with its weights in several shards and their index."""
    import shutil

    from transformers import LlavaForConditionalGeneration

    shutil.copytree(llava_dir, out, ignore=shutil.ignore_patterns("model.safetensors"))
    LlavaForConditionalGeneration.from_pretrained(str(llava_dir)).save_pretrained(str(out), max_shard_size="20KB")
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 3 and not (out / "model.safetensors").exists()
    return out, shards


def test_missing_weights_and_shards_are_named_with_the_fix(llava_dir, tmp_path):
    """transformers said "No such file or directory: DIR/model-00002-of-00012.safetensors" for a lost shard, and "no
    file named model.safetensors, or pytorch_model.bin" beside a folder of shards that had lost only its index."""
    folder, shards = _sharded_llava(llava_dir, tmp_path / "sharded")
    assert load_backbone(f"hf:{folder}").family == "llava"
    fix = "copy it from where the model came from, or save the model there again with save_pretrained"
    shards[1].unlink()
    with pytest.raises(BackboneError, match=re.escape(f"{folder}: 1 of the {len(shards)} weight shards "
                                                      f"model.safetensors.index.json lists are missing "
                                                      f"({shards[1].name}); {fix}")):
        load_backbone(f"hf:{folder}")
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(BackboneError, match=re.escape(f"{folder} holds weight shards ({shards[0].name}, ...) but not "
                                                      "their index model.safetensors.index.json")):
        load_backbone(f"hf:{folder}")
    for shard in shards:
        shard.unlink(missing_ok=True)
    with pytest.raises(BackboneError, match=re.escape(f"{folder} has no weights (model.safetensors, ") + ".*" + fix):
        load_backbone(f"hf:{folder}")


def test_architectures_written_as_one_string_names_its_class(tmp_path):
    """A hand-edited ``"architectures": "LlamaForCausalLM"`` was read letter by letter: "names no model class
    (architectures=['L', 'l', 'a', ...])"."""
    folder = _config_only(tmp_path / "one", architectures="LlamaForCausalLM", model_type="llama")
    with pytest.raises(BackboneError, match="LlamaForCausalLM is not a model family with a backbone class"):
        load_backbone(f"hf:{folder}")


def test_a_shard_index_naming_a_shard_outside_the_folder_is_refused_as_such(llava_dir, tmp_path):
    """transformers refuses an index whose shard is outside the model's folder ('../x', an absolute path) even where
    the file is there ("points outside the model directory", no fix); a lost one was told "missing ... copy it"."""
    folder, shards = _sharded_llava(llava_dir, tmp_path / "sharded")
    index = folder / "model.safetensors.index.json"
    saved = json.loads(index.read_text())
    key = next(k for k, s in saved["weight_map"].items() if s == shards[0].name)
    for name in ("../" + shards[0].name, str(tmp_path / "elsewhere.safetensors")):
        if name.startswith("/"):
            shards[0].rename(name)
        index.write_text(json.dumps({**saved, "weight_map": {**saved["weight_map"], key: name}}))
        with pytest.raises(BackboneError, match=re.escape(
                f"{folder}: the shard index model.safetensors.index.json names a shard outside the model's folder "
                f"(weight_map[{key!r}] = {name!r}), which transformers refuses to read; put the shards in {folder} "
                "and write their bare file names in model.safetensors.index.json")):
            load_backbone(f"hf:{folder}")


def test_a_weights_link_to_a_deleted_cache_blob_is_named_with_where_it_points(llava_dir, tmp_path):
    """A Hub-cache snapshot's model.safetensors is a link to a blob; with the blob deleted the folder was told "has no
    weights" (and a sharded one's shard "missing"), though the file is there, as a broken link."""
    import os
    import shutil

    folder = tmp_path / "snapshot"
    shutil.copytree(llava_dir, folder)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (folder / "model.safetensors").rename(blobs / "abc123")
    os.symlink("../blobs/abc123", folder / "model.safetensors")
    assert load_backbone(f"hf:{folder}").family == "llava"
    (blobs / "abc123").unlink()
    with pytest.raises(BackboneError, match=re.escape(
            f"{folder}/model.safetensors is a broken link: it points to ../blobs/abc123 ({blobs}/abc123), which does "
            "not exist; re-download the model into the Hugging Face cache") + ".*or copy the weights file there"):
        load_backbone(f"hf:{folder}")
    sharded, shards = _sharded_llava(llava_dir, tmp_path / "sharded")
    shards[1].rename(blobs / "def456")
    os.symlink(blobs / "def456", shards[1])
    (blobs / "def456").unlink()
    with pytest.raises(BackboneError, match=re.escape(f"{shards[1]} is a broken link: it points to {blobs}/def456,")):
        load_backbone(f"hf:{sharded}")


def test_a_file_given_for_its_folder_names_the_folder(tmp_path):
    """hf:DIR/config.json was told "is not a local directory ... or a hub id already in the local cache", as a hub
    id is: it names the file and the folder to give (review 264)."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"is a file, not a folder.*--backbone hf:" + re.escape(str(tmp_path))):
        load_backbone(f"hf:{tmp_path / 'config.json'}")
