"""Review 185: overwrite=True never deletes a folder holding adapters or training runs (check_replace and
save_adapter looked only at the folder itself and its parents), and a task spec or vocabulary file left out of an
adapter's 'files' record is refused, as the weights and heads are (it was read unchecked: a reordered answer list
changed every VQA prediction)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_open_clip

import mtl_lora_vl as mlv
from mtl_lora_vl.io.adapter_files import AdapterFileError, read_adapter_config
from mtl_lora_vl.io.layout import ADAPTER_CONFIG, check_replace

SPEC = Path(__file__).resolve().parents[1] / "tasks" / "vqa.toml"


@pytest.fixture
def model_ab():
    torch.manual_seed(0)
    return mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))


def _runs(tmp_path, model):
    runs = tmp_path / "runs"
    mlv.save_adapter(model, runs / "r1" / "adapter")     # a finished training run: r1 is a run directory
    mlv.save_adapter(model, runs / "kept_adapter")        # an adapter directory
    return runs


def _adapters(tmp_path):
    return sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("mtl_lora_config.json"))


def test_export_lora_overwrite_refuses_a_folder_holding_adapters(tmp_path, model_ab):
    runs = _runs(tmp_path, model_ab)
    with pytest.raises(FileExistsError):
        mlv.export_lora(model_ab, "a", runs, format="plain", overwrite=True)
    assert _adapters(tmp_path) == ["runs/kept_adapter", "runs/r1/adapter"]


def test_save_adapter_overwrite_refuses_a_folder_holding_a_run(tmp_path, model_ab):
    runs = _runs(tmp_path, model_ab)
    with pytest.raises(FileExistsError):
        mlv.save_adapter(model_ab, runs, overwrite=True)
    assert _adapters(tmp_path) == ["runs/kept_adapter", "runs/r1/adapter"]



class _Kind:
    kind = "vqa"

    def state(self):
        return {"answers": ["red", "blue", "green"]}


@pytest.fixture
def adapter(tmp_path):
    torch.manual_seed(0)
    model = mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=["vqa", "b"], r=2))
    return mlv.save_adapter(model, tmp_path / "adapter", task_specs={"vqa": SPEC}, kinds={"vqa": _Kind()})


def _drop_from_files(path, rel):
    cfg = path / "mtl_lora_config.json"
    doc = json.loads(cfg.read_text())
    doc["files"].pop(rel)
    cfg.write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize("rel", ["tasks/vqa.state.json", "tasks/vqa.toml"])
def test_an_edited_task_file_left_out_of_files_is_refused(adapter, rel):
    _drop_from_files(adapter, rel)
    f = adapter / rel
    if rel.endswith(".json"):   # the vocabulary reordered: every answer index now means another answer
        f.write_text(json.dumps({"kind": "vqa", "state": {"answers": ["green", "blue", "red"]}}))
    else:
        f.write_text(f.read_text() + "\n# edited\n")
    with pytest.raises(AdapterFileError, match=rel.replace(".", r"\.")):
        read_adapter_config(adapter)


def test_a_target_spelt_through_an_adapter_is_judged_by_where_it_leads(tmp_path):
    """Review h436: check_replace walked the target's parents as spelt, so export_lora / save_merged of
    saved/best/../peft (saved/peft, beside the adapter saved/best) with overwrite=True was refused as lying inside the
    adapter. It is judged by where it leads; LINK/peft (LINK a link to the adapter), which is inside it, is refused."""
    adapter = tmp_path / "saved" / "best"
    adapter.mkdir(parents=True)
    (adapter / ADAPTER_CONFIG).write_text("{}")
    (tmp_path / "saved" / "peft").mkdir()
    (adapter / "peft").mkdir()
    (tmp_path / "link").symlink_to(adapter)
    check_replace(adapter / ".." / "peft", what="export_lora")
    check_replace(tmp_path / "link" / ".." / "peft", what="export_lora")
    with pytest.raises(FileExistsError, match=f"lies inside {adapter}, which is an MTL-LoRA adapter directory"):
        check_replace(tmp_path / "link" / "peft", what="export_lora")
