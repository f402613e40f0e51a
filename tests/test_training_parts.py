"""The small parts of the training loop and the shared functions the pretraining script reuses."""

from __future__ import annotations

import json

import pytest
import torch

from mtl_lora_vl.distributed import DistInfo
from mtl_lora_vl.precision import autocast
from mtl_lora_vl.tasks.retrieval import infonce, multi_positive_infonce
from mtl_lora_vl.training.metrics_log import LossWindow, truncate_metrics
from mtl_lora_vl.training.schedule import cosine_with_warmup


def test_cosine_with_warmup():
    f = cosine_with_warmup(4, 14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0) and f(100) == pytest.approx(0.0)
    g = cosine_with_warmup(4, 14, floor=0.05)
    assert g(2) == f(2) and g(14) == pytest.approx(0.05) and g(9) == pytest.approx(0.05 + 0.95 * 0.5)


def test_infonce_with_a_positive_mask():
    logits = torch.randn(3, 4)
    pos = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    i2t = (logits.logsumexp(1) - logits.masked_fill(~pos, -1e9).logsumexp(1)).mean()
    t2i = (logits.t().logsumexp(1) - logits.t().masked_fill(~pos.t(), -1e9).logsumexp(1)).mean()
    assert torch.allclose(infonce(logits, pos), 0.5 * (i2t + t2i))
    keys = torch.tensor([5, 5, 2])
    square = torch.randn(3, 3)
    assert torch.equal(multi_positive_infonce(square, keys), infonce(square, keys[:, None] == keys[None, :]))


def test_loss_window_rows():
    w = LossWindow({"loss": [1.0]})
    w.add({"loss": 3.0, "vqa": 2.0})
    w.count(8)
    row = w.flush(step=2, lr=0.1, info=DistInfo())
    assert row["loss"] == 2.0 and row["loss/vqa"] == 2.0 and row["step"] == 2 and row["lr"] == 0.1
    assert row["samples_per_s"] > 0 and w.losses == {} and w.samples == 0


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (2, 4, 6)))
    truncate_metrics(path, 4)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]
    truncate_metrics(tmp_path / "missing.jsonl", 4)  # nothing to do


def test_one_autocast():
    with autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype == torch.bfloat16
    with autocast(torch.device("cpu"), torch.float32):
        assert not torch.is_autocast_enabled("cpu")


def test_adamw_is_fused_where_torch_has_the_kernel():
    """The trainer's AdamW runs one fused kernel for all tensors on CPU/CUDA, and the same update as the
    per-tensor loop; on a device without the fused kernel (meta here) it falls back to torch's default."""
    from mtl_lora_vl.training.optim import adamw

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused, plain = adamw([{"params": a}], lr=0.1, weight_decay=0.01), torch.optim.AdamW(b, lr=0.1, weight_decay=0.01)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for _ in range(3):
        for p, q in zip(a, b):
            p.grad = torch.ones_like(p) * p.detach().sum()
            q.grad = torch.ones_like(q) * q.detach().sum()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q)
    assert not adamw([torch.nn.Parameter(torch.empty(2, device="meta"))]).defaults["fused"]
