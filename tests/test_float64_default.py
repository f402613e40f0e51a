"""Tasks under ``torch.set_default_dtype(torch.float64)``: what the kinds make for the loader and the heads they build
keep their own dtypes (adapters follow ``precision.adapter_dtype``)."""

from __future__ import annotations

import pytest
import torch
from vl_tiny import tiny_backbone

from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, resolve_tasks


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for one test, put back after it."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def test_vqa_soft_targets_are_fp32_where_torchs_default_dtype_is_float64(float64_default, tmp_path):
    """VQA's training rows' soft targets were made in torch's default dtype: under a float64 default the row of
    scores packed when the kind was built (fp32) was put into a float64 vector, "Index put requires the source and
    destination dtypes match", so no VQA row could be loaded; the unpacked path gave float64 targets. Both are fp32,
    and the packed row's scores are those ``soft_targets`` computes."""
    clip = tiny_backbone(tmp_path)
    (spec,) = resolve_tasks("vqa")
    train = world.build_split(spec.kind, "train", n=6, seed=0)
    kind = build_kind(spec, train, clip)
    for i, ex in enumerate(train.examples):
        targets = kind.sample_fields(ex, i)["targets"]
        assert targets.dtype == torch.float32
        assert torch.equal(targets, kind.soft_targets(ex.answers))
    assert kind.soft_targets(train.examples[0].answers).dtype == torch.float32
