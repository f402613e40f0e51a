"""Helper 455: a task named ``__base__`` was accepted, though PEFT's ``adapter_names=`` takes that name as "no
adapter": a PEFT export's rows routed to the task by name ran on the base model, silently. Refused where a task is
named (a config, add_task), with what to do. (A task spec file's name must begin with a letter or digit: refused
there already.)"""

from __future__ import annotations

import pytest
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.config import ConfigError


def test_a_config_with_a_task_named_as_pefts_no_adapter_is_refused():
    with pytest.raises(ConfigError, match=r"tasks: '__base__' is PEFT's name for no adapter .*choose another task "
                                          r"name"):
        mlv.MTLLoRAConfig(tasks=["vqa", "__base__"], r=2)
    mlv.MTLLoRAConfig(tasks=["vqa", "__base", "base"], r=2)   # (only PEFT's own name)


def test_add_task_named_as_pefts_no_adapter_is_refused():
    model = mlv.attach(nn.Sequential(nn.Linear(8, 8)), mlv.MTLLoRAConfig(tasks=["a"], r=2,
                                                                         targets={"image": [r"^\d$"]}))
    with pytest.raises(ValueError, match=r"add_task: '__base__' is PEFT's name for no adapter"):
        mlv.add_task(model, "__base__")
    assert model._mtl_lora.config.tasks == ["a"]

