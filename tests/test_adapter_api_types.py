"""save_adapter / read_adapter_config / load_adapter given arguments of the wrong type name the argument and the
type it takes; they failed with dict()'s "dictionary update sequence element #0 ..." (heads=[head],
base="builtin"), a pathlib TypeError (read_adapter_config(model)), or read is_trainable="no" as true (every adapter
tensor left trainable)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mtl_lora_vl as mlv


def _adapted(base: nn.Module | None = None) -> nn.Module:
    model = copy.deepcopy(base) if base is not None else nn.Sequential(nn.Linear(4, 4))
    return mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, targets={"image": [r"^0$"]}))


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"heads": [nn.Linear(4, 2)]}, r"heads must be a dict \(task -> nn.Module\), got list"),
    ({"base": "builtin"}, r"base must be a dict \(e.g. \{'backbone': 'builtin'\}\), got str 'builtin'"),
    ({"task_specs": ["vqa.toml"]}, r"task_specs must be a dict \(task -> spec file or TaskSpec\), got list"),
    ({"data_roots": "/data"}, r"data_roots must be a dict \(task -> folder\), got str"),
])
def test_save_adapter_names_an_argument_of_the_wrong_type(tmp_path, kwargs, says):
    with pytest.raises(TypeError, match=rf"save_adapter: {says}"):
        mlv.save_adapter(_adapted(), tmp_path / "a", **kwargs)
    assert not (tmp_path / "a").exists()


def test_read_adapter_config_of_a_model_and_a_non_bool_is_trainable_are_named(tmp_path):
    base = nn.Sequential(nn.Linear(4, 4))
    model = _adapted(base)
    says = r"read_adapter_config: path must be the adapter directory's path .*got a Sequential; it reads"
    with pytest.raises(TypeError, match=says):
        mlv.read_adapter_config(model)
    mlv.save_adapter(model, tmp_path / "a")
    fresh = copy.deepcopy(base)
    with pytest.raises(TypeError, match=r"load_adapter: is_trainable must be True or False, got 'no'"):
        mlv.load_adapter(fresh, tmp_path / "a", is_trainable="no")
    loaded = mlv.load_adapter(fresh, tmp_path / "a")   # nothing was attached by the refused call
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.ones(1, 4)
    with mlv.route(loaded, "a"), mlv.route(model, "a"):
        torch.testing.assert_close(loaded(x), model(x))


def test_the_adapter_functions_and_the_wrapper_name_a_path_that_is_none_in_one_wording(tmp_path):
    """save_adapter / load_adapter and MTLLoRAModel.save_pretrained / from_pretrained refuse a directory that is
    not a path with one message (two checks had worded the same case differently)."""
    model = _adapted()
    wrapper = mlv.MTLLoRAModel(model)
    says = r"must be the adapter directory's path \(a str or pathlib\.Path\), got None$"
    for call, name, run in (
            ("save_adapter", "path", lambda: mlv.save_adapter(model, None)),
            ("load_adapter", "path", lambda: mlv.load_adapter(nn.Sequential(nn.Linear(4, 4)), None)),
            (r"MTLLoRAModel\.save_pretrained\(save_directory\)", "save_directory",
             lambda: wrapper.save_pretrained(None)),
            (r"MTLLoRAModel\.from_pretrained\(base_model, adapter_dir\)", "adapter_dir",
             lambda: mlv.MTLLoRAModel.from_pretrained(nn.Sequential(nn.Linear(4, 4)), None))):
        with pytest.raises(TypeError, match=rf"^{call}: {name} {says}"):
            run()
