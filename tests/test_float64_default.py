"""Tasks under ``torch.set_default_dtype(torch.float64)``: what the kinds make for the loader and the heads they build
keep their own dtypes (adapters follow ``precision.adapter_dtype``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from vl_tiny import tiny_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskLoader, to_device
from mtl_lora_vl.multitask import MultiTaskModel
from mtl_lora_vl.precision import adapter_dtype
from mtl_lora_vl.tasks import build_kind, resolve_tasks

HEADED = ["vqa", "retrieval", "caption_cls", "nlvr"]   # every kind with a head of parameters


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


@pytest.mark.parametrize("base", [torch.float32, torch.float64])
def test_heads_are_fp32_and_train_where_torchs_default_dtype_is_float64(float64_default, tmp_path, base):
    """Heads were made in torch's default dtype: under ``torch.set_default_dtype(torch.float64)`` nlvr's pair MLP was
    float64 and refused the fp32 features its forward reads ("mat1 and mat2 must have the same dtype": no step could
    run), VQA's fusion layers and bias and the classifier's bias were float64 beside fp32 answer / class weights.
    Heads are fp32 on an fp32 and on a float64 base (adapters: fp32, float64), and a mixed batch of every kind trains
    one step, each task's loss an fp32 scalar with fp32 gradients on every head parameter."""
    torch.manual_seed(0)
    clip = tiny_backbone(tmp_path)
    clip.model.to(base)
    specs = resolve_tasks(",".join(HEADED))
    splits = {s.name: world.build_split(s.kind, "train", n=4, seed=0) for s in specs}
    kinds = {s.name: build_kind(s, splits[s.name], clip) for s in specs}
    heads = nn.ModuleDict({n: k.build_head(clip) for n, k in kinds.items()})
    assert {n: {p.dtype for p in h.parameters()} for n, h in heads.items()} == {n: {torch.float32} for n in HEADED}
    mlv.attach(clip.model, mlv.MTLLoRAConfig(tasks=HEADED, r=2))
    assert {p.dtype for n, p in clip.model.named_parameters() if "lora_" in n} == {adapter_dtype(base)}
    model = MultiTaskModel(clip, kinds, heads)
    loader = MultiTaskLoader([kinds[n] for n in HEADED], [splits[n] for n in HEADED], clip, batch_size=8, steps=1)
    batch = to_device(next(iter(loader)), "cpu", base, clip)
    assert set(batch["tasks"]) == set(HEADED)
    total, losses = model(batch)
    assert {n: (loss.dtype, loss.ndim) for n, loss in losses.items()} == {n: (torch.float32, 0) for n in HEADED}
    assert math.isfinite(float(total.detach()))
    total.backward()
    grads = {n: {p.grad.dtype if p.grad is not None else None for p in h.parameters()} for n, h in heads.items()}
    assert grads == {n: {torch.float32} for n in HEADED}
