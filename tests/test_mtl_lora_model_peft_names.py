"""PEFT / transformers adapter methods MTLLoRAModel has under other names say what to use: reached through attribute
pass-through, transformers' PEFT mixin answered 'The version of PEFT you are using is not compatible, please use a
version >= 0.22.0' (and with that PEFT, 'No adapter loaded')."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_hf_clip

import mtl_lora_vl as mlv


@pytest.mark.parametrize("call,says", [
    (lambda m: m.delete_adapter("a"), "delete_adapter.*unload"),
    (lambda m: m.get_adapter_state_dict(), "get_adapter_state_dict.*save_pretrained"),
    (lambda m: m.get_adapter_state_dict("a"), "get_adapter_state_dict.*export_lora")])
def test_transformers_adapter_methods_say_what_to_use_here(call, says):
    model = mlv.MTLLoRAModel(tiny_hf_clip(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    with pytest.raises(RuntimeError, match=f"MTLLoRAModel has no PEFT-style {says}"):
        call(model)


def test_merge_without_a_task_merges_the_only_one_and_asks_for_it_among_several():
    """PEFT users call merge_and_unload() / merge_adapter() without an argument: Python's "missing 1 required
    positional argument: 'task'" said nothing of what to give. A one-task adapter merges its task; with several the
    message names them."""
    torch.manual_seed(0)
    one = mlv.MTLLoRAModel(tiny_hf_clip(), mlv.MTLLoRAConfig(tasks=["only"], r=2))
    for p in one.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.5)
    x = {"input_ids": torch.tensor([[0, 5, 7, 2]]), "pixel_values": torch.randn(1, 3, 32, 32)}
    with torch.no_grad():
        want = one(**x, tasks="only").text_embeds
        one.merge_adapter()
        torch.testing.assert_close(one.get_base_model()(**x).text_embeds, want)
        one.unmerge_adapter()
        torch.testing.assert_close(one.merge_and_unload()(**x).text_embeds, want)
    two = mlv.MTLLoRAModel(tiny_hf_clip(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    for call in ("merge_and_unload", "merge_adapter"):
        with pytest.raises(TypeError, match=rf"{call}\(\) needs the task to merge.*\['a', 'b'\].*{call}\('a'\)"):
            getattr(two, call)()
