"""Helper 288: an adapter reads only its own files. A hand-edited or foreign ``mtl_lora_config.json`` made a load read
a file outside the adapter directory: a ``task_specs`` key ``'../../evil'`` made ``load_pretrained`` read
``<adapter>/../evil.state.json`` (not checked against ``files`` at all) as the task's vocabulary."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_open_clip

import mtl_lora_vl as mlv
from mtl_lora_vl.io.adapter_files import ADAPTER_CONFIG, AdapterFileError, read_adapter_config
from mtl_lora_vl.io.tensor_files import sha256_file
from mtl_lora_vl.tasks import load_spec


@pytest.fixture
def adapter(tmp_path):
    torch.manual_seed(0)
    model = mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=2))
    return mlv.save_adapter(model, tmp_path / "a", task_specs={"vqa": load_spec("vqa")})


def _edit(path, edit):
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    edit(doc)
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))


def test_files_linked_out_of_the_folder_as_the_hub_cache_links_them_still_load(adapter, tmp_path):
    """A Hugging Face hub cache snapshot links every file to ``../../blobs/<sha>``: such a folder loads (its files
    are checked against their sha256 all the same); only names that leave the folder lexically are refused."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for f in sorted(p for p in adapter.rglob("*") if p.is_file()):
        blob = blobs / sha256_file(f)
        shutil.copy(f, blob)
        f.unlink()
        f.symlink_to(blob)
    assert read_adapter_config(adapter)["task_specs"] == {"vqa": "tasks/vqa.toml"}
    torch.manual_seed(0)
    mlv.load_adapter(tiny_open_clip(), adapter)


def test_a_task_specs_key_that_leaves_the_tasks_folder_is_refused(adapter, tmp_path):
    (tmp_path / "evil.state.json").write_text('{"kind": "vqa", "state": {"answers": ["yes"]}}')
    _edit(adapter, lambda d: d["task_specs"].__setitem__("../../evil", "tasks/vqa.toml"))
    with pytest.raises(AdapterFileError, match=r"task_specs names task '\.\./\.\./evil', which contains "
                                               r"'/'.*, so it cannot name its files.*fix the key"):
        read_adapter_config(adapter)


def test_symlinks_that_stay_inside_and_a_linked_adapter_folder_still_load(adapter, tmp_path):
    (adapter / "tasks" / "copy.toml").write_text((adapter / "tasks" / "vqa.toml").read_text())
    (adapter / "tasks" / "vqa.toml").unlink()
    (adapter / "tasks" / "vqa.toml").symlink_to("copy.toml")
    _edit(adapter, lambda d: d["files"].__setitem__("tasks/copy.toml", d["files"]["tasks/vqa.toml"]))
    (tmp_path / "link").symlink_to(adapter)
    assert read_adapter_config(tmp_path / "link")["task_specs"] == {"vqa": "tasks/vqa.toml"}
    torch.manual_seed(0)
    mlv.load_adapter(tiny_open_clip(), tmp_path / "link")
