"""A bf16 / fp16 CoCa reads as its weights' dtype: open_clip's logit scale stays fp32 (``_to_dtype``), and it is a
CoCa's first parameter, so the base dtype (a run's recorded ``base_dtype``, ``--precision auto``, the refusal of fp16
autocast over a bf16 base) read float32."""

from __future__ import annotations

import pytest
import torch
from vl_tiny import tiny_backbone_dir

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.precision import base_weights_dtype


@pytest.mark.parametrize("base_dtype, want", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_a_half_precision_coca_reads_as_its_weights_dtype(tmp_path, base_dtype, want):
    model = load_backbone(f"open_clip:{tiny_backbone_dir(tmp_path / 'coca', coca=True)}", base_dtype=base_dtype).model
    first = next(model.parameters())
    assert first.numel() == 1 and first.dtype == torch.float32   # the fp32 logit scale comes first
    model.requires_grad_(False)
    assert base_weights_dtype(model) == want
    assert base_weights_dtype(torch.nn.Linear(2, 2).requires_grad_(False)) == torch.float32
