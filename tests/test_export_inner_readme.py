"""Helper 358: the PEFT export README of a LLaVA-NeXT whose inner model was adapted on its own (``attach(m.model,
cfg)``, recorded as family "custom") read the family from the adapter's record, not the written whole model's, so it
told users to route rows with ``adapter_names=['a', 'b', ...]``, which PEFT refuses for the tower's tiles ('Length of
`adapter_names` should be the same as the number of inputs, but got 2 and 8')."""

from __future__ import annotations

from test_llava_next import build

import mtl_lora_vl as mlv

TARGETS = {"image": [r"vision_tower\..*self_attn\.[qv]_proj$"], "text": [r"language_model\..*[qv]_proj$"]}


def test_peft_readme_of_an_inner_adapted_llava_next_says_one_task_per_call(tmp_path):
    cls, _, folder = build(tmp_path / "base")
    m = cls.from_pretrained(str(folder)).eval()
    mlv.attach(m.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, targets=TARGETS))
    readme = (mlv.export_lora(m, ["a", "b"], tmp_path / "peft", format="peft") / "README.md").read_text()
    assert "adapter_names=[" not in readme
    assert "set_adapter('a')   # one task per call" in readme and "reads each image as several tiles" in readme
