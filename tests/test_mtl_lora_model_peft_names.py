"""PEFT / transformers adapter methods MTLLoRAModel has under other names say what to use: reached through attribute
pass-through, transformers' PEFT mixin answered 'The version of PEFT you are using is not compatible, please use a
version >= 0.22.0' (and with that PEFT, 'No adapter loaded')."""

from __future__ import annotations

import pytest
from conftest import tiny_hf_clip

import mtl_lora_vl as mlv


@pytest.mark.parametrize("call,says", [(lambda m: m.delete_adapter("a"), "delete_adapter.*unload"),
                                       (lambda m: m.get_adapter_state_dict(), "get_adapter_state_dict.*save_pretrained"),
                                       (lambda m: m.get_adapter_state_dict("a"), "get_adapter_state_dict.*export_lora")])
def test_transformers_adapter_methods_say_what_to_use_here(call, says):
    model = mlv.MTLLoRAModel(tiny_hf_clip(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    with pytest.raises(RuntimeError, match=f"MTLLoRAModel has no PEFT-style {says}"):
        call(model)
