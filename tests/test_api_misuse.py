"""The public functions refuse what is not a model with a TypeError naming it (they raised AttributeError on
'__dict__'); PEFT-only attributes of MTLLoRAModel keep hasattr / getattr(default) working; a comma in a task name is
refused (tasks="vqa,retrieval" made one task) (helper 139)."""
import pytest

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone


@pytest.mark.parametrize("call", [
    lambda v: mlv.route(v, "vqa").__enter__(),
    lambda v: mlv.disabled(v).__enter__(),
    lambda v: mlv.merge(v, "vqa"),
    lambda v: mlv.unmerge(v),
    lambda v: mlv.merged_state_dict(v, "vqa"),
    lambda v: mlv.parameter_report(v),
    lambda v: mlv.trainable_parameters(v),
    lambda v: mlv.may_recompute(v),
    lambda v: mlv.add_task(v, "x"),
    lambda v: mlv.save_adapter(v, "never"),
    lambda v: mlv.export_lora(v, "vqa", "never2"),
    lambda v: mlv.save_merged(v, "vqa", "never3"),
], ids=["route", "disabled", "merge", "unmerge", "merged_state_dict", "parameter_report",
        "trainable_parameters", "may_recompute", "add_task", "save_adapter", "export_lora", "save_merged"])
@pytest.mark.parametrize("bad", [None, "model"])
def test_non_module_is_a_clear_type_error(call, bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="nn.Module"):
        call(bad)
    assert not any(tmp_path.iterdir())


def test_backbone_instead_of_model_names_the_fix():
    bb = load_backbone("builtin")
    with pytest.raises(TypeError, match=r"\.model"):
        mlv.route(bb, "vqa").__enter__()


def test_peft_only_attributes_do_not_break_hasattr_getattr():
    m = mlv.MTLLoRAModel(load_backbone("builtin").model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"]))
    # hasattr/getattr(default) must not raise; the PEFT hint may still be raised on plain access,
    # but as an AttributeError (subclass) so that Python's protocol holds.
    assert getattr(m, "active_adapters", None) is None
    assert hasattr(m, "active_adapters") is False
    with pytest.raises(AttributeError, match="route"):
        _ = m.active_adapters


def test_comma_in_task_name_is_refused():
    # tasks="vqa,retrieval" (the CLI's spelling) silently makes ONE task named 'vqa,retrieval'
    with pytest.raises(mlv.ConfigError, match=r"may not contain ','; pass a list of names, "
                                              r"e.g. \['vqa', 'retrieval'\]"):
        mlv.MTLLoRAConfig(tasks="vqa,retrieval")


@pytest.mark.parametrize("name, match", [(" vqa", r"may not begin or end with a space; use 'vqa'"),
                                         ("vqa\t", r"may not begin or end with a space; use 'vqa'")])
def test_task_names_the_commands_cannot_hold_are_refused(name, match):
    """`export --task` strips what it is given, so a task named " vqa" could not be exported from the command line
    (review 185). (A '/' is allowed: test_adapter_io's slash test.)"""
    with pytest.raises(mlv.ConfigError, match=match):
        mlv.MTLLoRAConfig(tasks=[name, "other"])
