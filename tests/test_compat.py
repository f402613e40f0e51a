"""Files written by an earlier version still load: an adapter directory and a training checkpoint.

The fixture ``tests/fixtures/compat_v0_1_0`` was written by mtl-lora-vl 0.1.0 (see its ``make.py``): a
real 4-step run on the built-in backbone. It is read here exactly as committed; nothing regenerates it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES
from mtl_lora_vl.backbones import builtin_dir, load_backbone
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.training.checkpoint import load_checkpoint

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "compat_v0_1_0"
RUN = FIXTURE / "run"
ADAPTER = RUN / "adapter"
pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


def _adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES}


def test_read_adapter_config_of_0_1_0():
    doc = mlv.read_adapter_config(ADAPTER)
    assert doc["format"] == "mtl-lora-vl-adapter" and doc["format_version"] == 1
    assert doc["package_version"] == "0.1.0"
    assert doc["config"]["tasks"] == ["vqa", "retrieval"] and doc["config"]["r"] == 2
    assert doc["base"] == {"backbone": "builtin", "pretrained": None}


def test_load_adapter_reads_a_0_1_0_adapter_directory():
    bb = load_backbone("builtin")
    model = mlv.load_adapter(bb.model, ADAPTER)
    saved = load_file(str(ADAPTER / "adapter_model.safetensors"))
    got = _adapter_tensors(model)
    assert set(got) == set(saved) and len(saved) > 0
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    assert model._mtl_lora.config.tasks == ["vqa", "retrieval"]


def test_load_pretrained_reads_a_0_1_0_adapter_directory():
    loaded = mlv.load_pretrained(ADAPTER)
    backbone, heads, config = loaded
    assert config.tasks == ["vqa", "retrieval"] and set(heads) == {"vqa", "retrieval"}
    saved_heads = load_file(str(ADAPTER / "heads.safetensors"))
    for task, head in heads.items():
        for k, v in head.state_dict().items():
            assert torch.equal(v, saved_heads[f"{task}.{k}"]), (task, k)
    state = json.loads((ADAPTER / "tasks" / "vqa.state.json").read_text())["state"]
    assert loaded.kinds["vqa"].answers == state["answers"]
    saved = load_file(str(ADAPTER / "adapter_model.safetensors"))
    assert all(torch.equal(_adapter_tensors(backbone.model)[k], v) for k, v in saved.items())


def test_checkpoint_of_0_1_0_loads_and_resumes(tmp_path, monkeypatch):
    state = load_checkpoint(RUN)
    assert state["step"] == 4
    assert {"trainable", "optimizer", "scheduler", "scaler", "sampler", "rng"} <= set(state)

    # Resume the finished run (paths in its config.json are relative to the fixture folder): the restored
    # trainable state is written back out as the adapter, bit-identical to the one the old version saved.
    work = Path(shutil.copytree(FIXTURE, tmp_path / "compat"))
    shutil.rmtree(work / "run" / "adapter")
    monkeypatch.chdir(work)
    assert train_main(["--resume", "run", "--workers", "0"]) == 0
    # 0.1.0 named its files like PEFT's; this version writes names of its own (same tensors).
    assert not (work / "run" / "adapter" / "adapter_config.json").exists()
    before = load_file(str(ADAPTER / "adapter_model.safetensors"))
    after = load_file(str(work / "run" / "adapter" / "mtl_lora_model.safetensors"))
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    heads_before = load_file(str(ADAPTER / "heads.safetensors"))
    heads_after = load_file(str(work / "run" / "adapter" / "heads.safetensors"))
    assert all(torch.equal(heads_before[k], heads_after[k]) for k in heads_before)
