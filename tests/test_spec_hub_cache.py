"""A task spec read through a symbolic link, as an adapter's ``tasks/<task>.toml`` is in the Hugging Face hub cache
(``snapshots/<rev>/tasks/vqa.toml -> ../../../blobs/<sha>``): messages and eval.json name the path given, not the
blob."""

from __future__ import annotations

import os

import pytest

from mtl_lora_vl.tasks.spec import SpecError, load_spec

SPEC = 'kind = "classification"\ntemplates = ["a {} thing"]\n[data]\nsource = "builtin"\n[data.train]\nn = 5\n'


def test_a_spec_in_the_hub_cache_layout_is_named_by_its_snapshot_path(tmp_path):
    repo = tmp_path / "models--org--adapter"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "9f2c").write_text(SPEC)
    tasks = repo / "snapshots" / "abc123" / "tasks"
    tasks.mkdir(parents=True)
    os.symlink(os.path.join("..", "..", "..", "blobs", "9f2c"), tasks / "mine.toml")
    spec = load_spec(tasks / "mine.toml", need_train=False)
    assert spec.name == "mine"
    assert spec.source_file == tasks / "mine.toml"   # was: .../blobs/9f2c
    assert spec.source_file.read_text() == SPEC      # still reads the file
    with pytest.raises(SpecError, match=r"snapshots/abc123/tasks/mine.toml: field 'data.nope'"):
        spec.load_split("nope")
