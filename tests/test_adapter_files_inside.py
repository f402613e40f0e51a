"""Helper 288: an adapter reads only its own files. A hand-edited or foreign ``mtl_lora_config.json`` made a load read
files outside the adapter directory: a symlink in ``tasks/`` pointing out (its sha256 recorded in ``files``) was
read as the task spec, and a ``task_specs`` key ``'../../evil'`` made ``load_pretrained`` read
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


def test_a_symlink_pointing_out_of_the_adapter_is_refused_naming_the_key_and_file(adapter, tmp_path):
    outside = tmp_path / "outside.toml"
    shutil.copy(adapter / "tasks" / "vqa.toml", outside)
    (adapter / "tasks" / "vqa.toml").unlink()
    (adapter / "tasks" / "vqa.toml").symlink_to(outside)
    _edit(adapter, lambda d: d["files"].__setitem__("tasks/vqa.toml", sha256_file(outside)))  # the sha matches
    with pytest.raises(AdapterFileError, match=r"'files' names 'tasks/vqa.toml', which resolves to .*outside\.toml, "
                                               r"outside the adapter directory .*cp -rL"):
        read_adapter_config(adapter)
    with pytest.raises(AdapterFileError, match="outside the adapter directory"):   # also without the sha256 check
        read_adapter_config(adapter, verify=False)


def test_a_task_specs_key_that_leaves_the_tasks_folder_is_refused(adapter, tmp_path):
    (tmp_path / "evil.state.json").write_text('{"kind": "vqa", "state": {"answers": ["yes"]}}')
    _edit(adapter, lambda d: d["task_specs"].__setitem__("../../evil", "tasks/vqa.toml"))
    with pytest.raises(AdapterFileError, match=r"task_specs names task\(s\) \['\.\./\.\./evil'\], which contain "
                                               r"'/'.*fix the key"):
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
