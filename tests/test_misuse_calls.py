"""Wrong calls of the Python API (``import mtl_lora_vl as mlv``): each is refused with a message naming the thing and
the fix, and the model still works after the refusal (helper 352's survey)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtl_lora_vl as mlv


class _TwoTowers(nn.Module):
    """A tiny model of two towers, adapted with custom targets."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.vis = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 4))
        self.txt = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vis(x) + self.txt(x)


def _cfg(**kw) -> mlv.MTLLoRAConfig:
    return mlv.MTLLoRAConfig(**{"tasks": ["a", "b"], "r": 2, "targets": {"image": [r"^vis\."], "text": [r"^txt\."]},
                                **kw})


def test_a_tower_whose_regexes_match_nothing_is_refused_not_left_unadapted():
    """A typo in one tower's regexes left that tower without adapters, silently (parameter_report's text: 0)."""
    model = _TwoTowers()
    typo = {"image": [r"^vis\."], "text": [r"^txt\.O$"]}
    with pytest.raises(mlv.AttachError, match=r"^targets\['text'\]: \['\^txt\\\\.O\$'\] match no module of this "
                                              r"_TwoTowers, so its text tower would get no adapters; fix the regexes "
                                              r".*unadapted layers include \['txt.0', 'txt.1'\].*or leave the tower "
                                              "out of targets"):
        mlv.attach(model, _cfg(targets=typo))
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))   # nothing half-done
    mlv.attach(model, _cfg())                                                                 # the corrected call
    assert mlv.parameter_report(model)["text"] > 0


def test_a_tower_left_out_or_sharing_the_other_towers_layers_is_still_taken():
    only_image = _TwoTowers()
    mlv.attach(only_image, _cfg(targets={"image": [r"^vis\."]}))
    assert mlv.parameter_report(only_image)["text"] == 0
    both = _TwoTowers()   # the text regexes match, but only layers the image tower takes first: the overlap warning
    with pytest.warns(UserWarning, match="more than one tower"):
        mlv.attach(both, _cfg(targets={"image": [r"^vis\.0$"], "text": [r"^vis\.0$"]}))


@pytest.mark.parametrize("wrap", [lambda m: mlv.MTLLoRAModel(m), lambda m: nn.Sequential(m)],
                         ids=["MTLLoRAModel", "Sequential"])
@pytest.mark.parametrize("targets", ["default", "custom"])
def test_attach_to_a_model_holding_an_adapted_one_says_so(wrap, targets):
    """attach(MTLLoRAModel(...), cfg) said 'MTLLoRAModel is not a supported model class' (default targets) or
    'matched no nn.Linear ...; some candidate names: []' (custom ones): its layers are adapted already."""
    model = _TwoTowers()
    mlv.attach(model, _cfg())
    x = torch.randn(3, 6)
    with mlv.route(model, ["a", "b", "a"]):
        before = model(x)
    outer = wrap(model)
    cfg = _cfg() if targets == "custom" else mlv.MTLLoRAConfig(tasks=["c"])
    with pytest.raises(mlv.AttachError, match=r"^attach: this (MTLLoRAModel|Sequential) holds a model that has "
                                              r"MTL-LoRA adapters already \('(base_model|0)', a _TwoTowers\); use it "
                                              "as it is .*add_task.*or build a fresh base model"):
        mlv.attach(outer, cfg)
    with mlv.route(outer, ["a", "b", "a"]):
        assert torch.equal(outer(x), before)


@pytest.mark.parametrize("taken_out_by", ["unload()", "merge_and_unload('a')"])
@pytest.mark.parametrize("call", [lambda w: w.tasks, lambda w: w.unload(), lambda w: w.merge_and_unload("a"),
                                  lambda w: w.route("a"), lambda w: w.merge_adapter("a"), lambda w: w.add_task("c"),
                                  lambda w: w(torch.randn(2, 6), tasks=["a", "b"]), lambda w: w.save_pretrained("x")],
                         ids=["tasks", "unload", "merge_and_unload", "route", "merge_adapter", "add_task", "forward",
                              "save_pretrained"])
def test_the_wrapper_after_unload_names_the_call_that_took_its_adapters_out(taken_out_by, call, tmp_path,
                                                                             monkeypatch):
    """After model.unload() / merge_and_unload(task), the wrapper's methods said 'CLIP has no MTL-LoRA adapters;
    call mtl_lora_vl.attach(model, config) first' (unload twice, merge_and_unload after unload, ...)."""
    monkeypatch.chdir(tmp_path)
    wrapped = mlv.MTLLoRAModel(_TwoTowers(), _cfg())
    plain = wrapped.unload() if taken_out_by == "unload()" else wrapped.merge_and_unload("a")
    assert type(plain) is _TwoTowers and getattr(plain, "_mtl_lora", None) is None
    with pytest.raises(mlv.RoutingError, match=rf"^MTLLoRAModel: its adapters were taken out of the _TwoTowers by "
                                               rf"{taken_out_by.replace('(', '[(]').replace(')', '[)]')}; use the "
                                               "model that call returned"):
        call(wrapped)
    assert plain(torch.randn(2, 6)).shape == (2, 4) and not (tmp_path / "x").exists()


@pytest.mark.parametrize("tasks, match", [
    (b"a", r"^route: task names are str, got bytes b'a'; pass 'a'$"),
    (torch.tensor([0, 1], device="meta"), r"^route: the task ids are a tensor on the meta device, which holds no "
                                          r"values; make them on the CPU or the model's device$")])
def test_route_refuses_bytes_and_meta_ids_by_name(tasks, match):
    """route(model, b"a") read the bytes as ids ('task id 97 is out of range'); meta-device ids failed in torch
    ('Cannot copy out of meta tensor; no data!')."""
    model = mlv.attach(_TwoTowers(), _cfg())
    with pytest.raises(mlv.RoutingError, match=match):
        with mlv.route(model, tasks):
            pass
    with mlv.route(model, ["a", "b"]):
        assert model(torch.randn(2, 6)).shape == (2, 4)
