"""Review 226: a model folder that lost one of its files names that file and the fix."""

from __future__ import annotations

import shutil

import pytest

from mtl_lora_vl.backbones import builtin, builtin_dir, load_backbone
from mtl_lora_vl.backbones import spec as spec_module


def test_an_open_clip_folder_without_its_tokenizer_files_names_them_not_a_download(tmp_path):
    """The built-in CLIP's open_clip_config.json names its tokenizer 'builtin_clip' (hf_tokenizer_name): a copy of the
    folder without tokenizer.json was told that the tokenizer 'would need a download' and to run `huggingface-cli
    download builtin_clip`, a hub id that does not exist; the folder's missing tokenizer files were not named."""
    d = tmp_path / "clip"
    shutil.copytree(builtin_dir(), d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"clip has no tokenizer files \(tokenizer\.json, .*hf_tokenizer_name "
                                                r"'builtin_clip'.*copy the model's tokenizer files") as err:
        load_backbone(f"open_clip:{d}")
    assert "download" not in str(err.value)


@pytest.mark.parametrize("spec,lost", [("builtin", "tokenizer.json"), ("builtin-llava", "tokenizer.json"),
                                       ("builtin-llava", "processor_config.json"),
                                       ("builtin-llava", "model.safetensors")])
def test_a_built_in_backbone_that_lost_a_file_it_ships_says_to_reinstall_or_rebuild(tmp_path, monkeypatch, spec, lost):
    """Only the built-ins' config and weights (builtin) or config.json (builtin-llava) were checked: a lost tokenizer
    or processor file was told to be saved 'with tokenizer.save_pretrained(DIR)' / 'processor.save_pretrained(DIR)'
    into the package's own asset folder, which no user has a tokenizer or processor for."""
    source = builtin.builtin_dir() if spec == "builtin" else builtin.builtin_llava_dir()
    d = tmp_path / source.name
    shutil.copytree(source, d)
    (d / lost).unlink()
    monkeypatch.setattr(builtin, "builtin_dir", lambda: d)
    monkeypatch.setattr(spec_module, "builtin_llava_dir", lambda: d)
    with pytest.raises(FileNotFoundError, match=r"built-in .* is missing"
                                                rf".*{lost.replace('.', '[.]')}.*pretrain_") as err:
        load_backbone(spec)
    assert "save_pretrained(DIR)" not in str(err.value)
