"""Review 226: a model folder that lost one of its files names that file and the fix."""

from __future__ import annotations

import shutil

import pytest

from mtl_lora_vl.backbones import builtin_dir, load_backbone


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
