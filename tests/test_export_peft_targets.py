"""export_lora's PEFT ``target_modules`` name exactly the adapted layers: PEFT also takes any module whose name ends
with ``.<target>``, and open_clip's text tower (``transformer.resblocks.N``) is a suffix of its image tower's names
(``visual.transformer.resblocks.N``); ``base_model_name_or_path`` names a local base folder from anywhere; the README
of several tasks is Python for any task name."""

from __future__ import annotations

import ast
import json
import warnings

import pytest
import torch
from conftest import tiny_hf_clip, tiny_open_clip
from test_adapter_io import _fresh, _oc_run, _randomize

import mtl_lora_vl as mlv


def test_a_text_tower_only_adapter_loads_on_the_text_tower_only(tmp_path):
    peft = pytest.importorskip("peft")
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, n_up=2,
                            targets={"text": [r"^transformer\.resblocks\.\d+\.mlp\.c_fc$"]})
    model = mlv.attach(_fresh(tiny_open_clip), cfg)
    _randomize(model)
    inp = (torch.randn(2, 3, 32, 32), torch.randint(1, 60, (2, 12)))
    with torch.no_grad(), mlv.route(model, "a"):
        ref = _oc_run(model, inp)
    path = mlv.export_lora(model, "a", tmp_path / "peft", format="peft")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = peft.PeftModel.from_pretrained(_fresh(tiny_open_clip), str(path)).eval()
    # PEFT 0.21 put LoRA layers (A random, B zero) on visual.transformer.resblocks.N.mlp.c_fc too, and warned
    # "Found missing adapter keys while loading the checkpoint: [...visual.transformer.resblocks.0.mlp.c_fc...]"
    assert not [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    lora = sorted(n.removeprefix("base_model.model.").removesuffix(".lora_A") for n, _ in loaded.named_modules()
                  if n.endswith(".lora_A"))
    assert lora == sorted(model._mtl_lora.layers) == ["transformer.resblocks.0.mlp.c_fc",
                                                      "transformer.resblocks.1.mlp.c_fc"]
    with torch.no_grad():
        torch.testing.assert_close(_oc_run(loaded, inp), ref, atol=1e-5, rtol=1e-5)
    # where no other module's name ends with a target's, target_modules stays the plain list of names
    both = mlv.attach(_fresh(tiny_open_clip), mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={
        "image": [r"^visual\.transformer\.resblocks\.\d+\.mlp\.c_fc$"],
        "text": [r"^transformer\.resblocks\.\d+\.mlp\.c_fc$"]}))
    doc = json.loads((mlv.export_lora(both, "a", tmp_path / "both", format="peft") / "adapter_config.json").read_text())
    assert doc["target_modules"] == sorted(both._mtl_lora.layers)


def test_a_base_loaded_from_a_relative_folder_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    """PEFT's AutoPeftModel loads the base from ``base_model_name_or_path`` in whatever folder it runs in: a base
    loaded as CLIPModel.from_pretrained("base") was recorded as "base", which from another folder named nothing (or
    that folder's own "base", another model) and a hub id "base"."""
    from transformers import CLIPModel

    monkeypatch.chdir(tmp_path)
    _fresh(tiny_hf_clip).save_pretrained("base")
    model = mlv.attach(CLIPModel.from_pretrained("base"), mlv.MTLLoRAConfig(tasks=["a"], r=2))
    assert model.name_or_path == "base"
    for out in ("one", "all"):
        path = mlv.export_lora(model, "a" if out == "one" else ["a"], out, format="peft")
        doc = json.loads((path / ("adapter_config.json" if out == "one" else "a/adapter_config.json")).read_text())
        assert doc["base_model_name_or_path"] == str(tmp_path / "base")
    model.name_or_path = "org/model"   # a hub id (no such folder here) stays as it is
    doc = json.loads((mlv.export_lora(model, "a", "hub", format="peft") / "adapter_config.json").read_text())
    assert doc["base_model_name_or_path"] == "org/model"


@pytest.mark.parametrize("format", ["peft", "plain"])
def test_the_readme_of_several_tasks_is_python_for_any_task_name(format, tmp_path):
    """Task names were put between single quotes: 'it's' made the README's loading lines a syntax error. (A name
    holding '"' is refused by export now: no file name may hold one; see test_task_file_names.py.)"""
    names = ["it's", "vqa"]
    model = mlv.attach(_fresh(tiny_hf_clip), mlv.MTLLoRAConfig(tasks=names, r=2))
    out = tmp_path / "all"
    mlv.export_lora(model, names, out, format=format)
    code = "\n".join(line[4:].split("   #")[0] for line in (out / "README.md").read_text().splitlines()
                     if line.startswith("    "))
    ast.parse(code)
    assert "base_model, \"it's\"" in code and ("adapter_name=\"it's\"" in code) == (format == "peft")
