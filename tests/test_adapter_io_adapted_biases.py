"""An adapter file samples every base parameter, the adapted projections' biases included (README, "Adapter files":
"four values of every base parameter (adapted or not)"). A base that differs from the trained one only in such a
bias (a BitFit-style fine-tune of the same checkpoint) is another base: refused as other weights, not loaded
silently (the biases of adapted layers were left out of the samples)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_hf_clip, tiny_open_clip

import mtl_lora_vl as mlv
from mtl_lora_vl.io.layout import ADAPTER_CONFIG

CASES = {
    "open_clip": (tiny_open_clip, lambda m: m.visual.transformer.resblocks[0].mlp.c_fc.bias,
                  r"visual\.transformer\.resblocks\.0\.mlp\.c_fc\.bias"),
    "hf_clip": (tiny_hf_clip, lambda m: m.text_model.encoder.layers[1].self_attn.q_proj.bias,
                r"text_model\.encoder\.layers\.1\.self_attn\.q_proj\.bias"),
}


def _base(build):
    torch.manual_seed(0)
    return build().eval()


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_base_that_differs_only_in_an_adapted_bias_is_refused(family, tmp_path):
    build, bias_of, bias_name = CASES[family]
    model = mlv.attach(_base(build), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    path = mlv.save_adapter(model, tmp_path / "adapter")
    samples = json.loads((path / ADAPTER_CONFIG).read_text())["base_model"]["weight_samples"]
    assert set(samples) == {n for n, p in _base(build).named_parameters() if p.numel()}   # every base parameter

    nudged = _base(build)
    with torch.no_grad():
        bias_of(nudged).add_(0.5)
    with pytest.raises(mlv.AdapterFileError, match=r"other weights of this architecture: 1 of \d+ sampled base "
                                                   rf"weights differ \(e\.g\. {bias_name}"):
        mlv.load_adapter(nudged, path)
    mlv.load_adapter(_base(build), path)   # the base it was trained on still loads
