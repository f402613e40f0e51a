"""``--base-dtype bf16/fp16`` on an open_clip model keeps its logit scale (and SigLIP's bias) fp32, as open_clip's own
bf16 / fp16 precision does: the whole model was cast, and bf16 rounded CLIP's trained scale 100 to 99.0 (log-scale
4.594, exp 98.86, computed in bf16), which the classification and VQA heads multiply every score by."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from vl_tiny import tiny_backbone_dir

from mtl_lora_vl.backbones import load_backbone


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_the_logit_scale_stays_fp32_under_a_half_base(tmp_path, dtype):
    folder = tiny_backbone_dir(tmp_path)
    weights = folder / "open_clip_model.safetensors"
    state = load_file(str(weights))
    state["logit_scale"] = torch.tensor(math.log(100.0))   # CLIP's trained value
    save_file(state, str(weights))
    bb = load_backbone(f"open_clip:{folder}", base_dtype=dtype)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert float(bb.logit_scale.detach()) == pytest.approx(100.0, rel=1e-6)
    assert bb.model.logit_scale.dtype == torch.float32
    assert bb.model.visual.conv1.weight.dtype == half and bb.model.ln_final.weight.dtype == half
