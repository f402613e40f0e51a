"""The small parts of the training loop and the shared functions the pretraining script reuses."""

from __future__ import annotations

import json
import os
import types
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_open_clip

import mtl_lora_vl as mlv
from mtl_lora_vl.distributed import DistInfo
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.precision import autocast
from mtl_lora_vl.tasks.retrieval import infonce, multi_positive_infonce
from mtl_lora_vl.training import loading
from mtl_lora_vl.training.metrics_log import LossWindow, truncate_metrics
from mtl_lora_vl.training.optim import Optimization, build_optimization
from mtl_lora_vl.training.schedule import cosine_with_warmup
from mtl_lora_vl.training.step import optimizer_step


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
    w.add({"loss": 3.0, "loss/vqa": 2.0})
    w.count(8)
    row = w.flush(step=2, lr=0.1, info=DistInfo())
    assert row["loss"] == 2.0 and row["loss/vqa"] == 2.0 and row["step"] == 2 and row["lr"] == 0.1
    assert row["samples_per_s"] > 0 and w.losses == {} and w.samples == 0


def _constant_losses_step(monkeypatch):
    """A net of constant per-task losses, an SGD Optimization and the trainer's forward_backward, batches kept on
    the host (no device copy)."""
    import mtl_lora_vl.training.step as step_mod
    from mtl_lora_vl.training.optim import Optimization

    monkeypatch.setattr(step_mod, "to_device", lambda batch, *a: batch)
    net = _ScaledConstantLosses()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    optim = Optimization(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                         torch.amp.GradScaler("cpu", enabled=False), list(net.parameters()))
    return net, optim, step_mod.forward_backward


def test_a_task_named_loss_logs_its_own_loss_beside_the_total(monkeypatch):
    """A step's losses shared one dict keyed by task name with the total under "loss", so a task named "loss" had
    its own loss overwritten by the total: metrics.jsonl had no loss/loss column (4.0 here), silently."""
    import itertools

    net, optim, forward_backward = _constant_losses_step(monkeypatch)
    four = torch.arange(4)
    batches = itertools.repeat({"tasks": {"vqa": {"rows": four}, "loss": {"rows": four + 4}},
                                "task_ids": torch.zeros(8)})
    r = forward_backward(net, batches, optim, accumulate=1, backbone=None, amp_dtype=torch.float32,
                         info=DistInfo())
    w = LossWindow()
    w.add(r.losses)
    row = w.flush(step=1, lr=0.1, info=DistInfo())
    assert (row["loss"], row["loss/vqa"], row["loss/loss"]) == pytest.approx((6.0, 2.0, 4.0))


def test_a_loss_window_saved_with_bare_task_names_resumes_under_the_row_names():
    """A checkpoint written before windows took the row's names keys its tasks by name: they join the same column."""
    w = LossWindow({"loss": [1.0], "vqa": [2.0]})
    w.add({"loss": 3.0, "loss/vqa": 4.0})
    row = w.flush(step=2, lr=0.1, info=DistInfo())
    assert row["loss"] == 2.0 and row["loss/vqa"] == 3.0 and "loss/loss/vqa" not in row and "vqa" not in row


def test_loss_window_rate_leaves_out_paused_time(monkeypatch):
    """Evaluation and checkpoints run paused: the next row's samples_per_s was ~20x low after an evaluation."""
    import mtl_lora_vl.training.metrics_log as metrics_log

    now = [100.0]
    monkeypatch.setattr(metrics_log.time, "perf_counter", lambda: now[0])
    w = LossWindow()
    w.count(40)
    now[0] += 2.0  # training
    with w.paused():
        now[0] += 30.0  # an evaluation
    assert w.flush(1, 0.1, DistInfo())["samples_per_s"] == pytest.approx(20.0)


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (2, 4, 6)))
    truncate_metrics(path, 4)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]
    truncate_metrics(tmp_path / "missing.jsonl", 4)  # nothing to do
    path.write_text(json.dumps({"step": 2, "loss": 1.0}) + "\n" + '{"step": 4, "lo')   # killed mid-write
    truncate_metrics(path, 4)   # the resume failed with a bare JSONDecodeError
    assert path.read_text() == json.dumps({"step": 2, "loss": 1.0}) + "\n"
    path.write_text(json.dumps({"step": 2}) + "\n5\n[1]\n" + json.dumps({"step": "3"}) + "\n")   # JSON, not a row
    truncate_metrics(path, 4)   # AttributeError / TypeError: a traceback, and --resume could not go on
    assert path.read_text() == json.dumps({"step": 2}) + "\n"


def test_epochs_count_steps_in_exact_decimals():
    from mtl_lora_vl.training.train import steps_for_epochs

    assert steps_for_epochs(1.1, 90, 1) == 99 and steps_for_epochs(2.2, 90, 2) == 99   # floats gave 100
    assert steps_for_epochs(1, 90, 4) == 23 and steps_for_epochs(0.5, 10, 3) == 2


def test_a_resumed_run_purges_the_tensorboard_events_after_its_checkpoint(tmp_path, monkeypatch):
    """Without purge_step, the points a killed run logged after its checkpoint showed twice in TensorBoard."""
    import sys
    import types

    from mtl_lora_vl.training.metrics_log import MetricsLog

    made, points = [], []
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda logdir, **kw: made.append(kw) or types.SimpleNamespace(
        add_scalar=lambda k, v, step: points.append((k, v, step)), flush=lambda: None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    MetricsLog(tmp_path, True)
    # A --keep-best run resumed from its final checkpoint (step 4): truncate_metrics kept the loss row at step 4 and
    # dropped the final validation it did not take; TensorBoard kept that stale point (purged from step 5 only), and
    # the rerun validation added a second one at step 4.
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5, "lr": 0.1})) + "\n")
    MetricsLog(tmp_path, True, resumed_at=4)
    MetricsLog(tmp_path, False, resumed_at=4)  # not rank 0: no writer
    assert made == [{}, {"purge_step": 4}]
    assert points == [("loss", 0.5, 4), ("lr", 0.1, 4)]   # the kept row at the checkpoint's step, given again


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


# Accumulation, the logged learning rate, --task-lr-mult --------------------------------------------------
class _ScaledConstantLosses(torch.nn.Module):
    """Each task's loss is a constant times one parameter (vqa 2, retrieval 4), scaled by ``batch["loss_scales"]``
    as :class:`MultiTaskModel` scales it."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        scales = batch.get("loss_scales", {})
        losses = {name: self.p * (2.0 if name == "vqa" else 4.0) * scales.get(name, 1.0) for name in batch["tasks"]}
        return sum(losses.values()), losses


def test_accumulated_micro_batches_weigh_each_task_as_one_batch_of_their_rows(monkeypatch):
    """Micro-batches {vqa: 4 rows}, {retrieval: 4 rows}, twice, under --accumulate 4: one batch of the 16 rows has
    the loss 2 + 4 = 6, each task's mean over its rows. Review 192: each task was scaled by the micro-batches it was
    in, not by all of them, so a task in 2 of 4 weighed half (the step trained 3; mixed batches smaller than the
    task count)."""
    import itertools

    import mtl_lora_vl.training.step as step_mod
    from mtl_lora_vl.training.optim import Optimization

    monkeypatch.setattr(step_mod, "to_device", lambda batch, *a: batch)
    net = _ScaledConstantLosses()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(2, 3))
    optim = Optimization(opt, sched, torch.amp.GradScaler("cpu", enabled=False), list(net.parameters()))
    four = torch.arange(4)
    batches = itertools.cycle([{"tasks": {"vqa": {"rows": four}}, "task_ids": torch.zeros(4)},
                               {"tasks": {"retrieval": {"rows": four}}, "task_ids": torch.ones(4)}])
    r = step_mod.forward_backward(net, batches, optim, accumulate=4, backbone=None, amp_dtype=torch.float32,
                                  info=DistInfo())
    assert r.losses == pytest.approx({"loss/vqa": 2.0, "loss/retrieval": 4.0, "loss": 6.0}) and r.samples == 16
    assert float(net.p.grad) == pytest.approx(6.0)


def test_task_lr_mult_reaches_only_methods_with_task_tensors_and_the_logged_rate_trains():
    import types

    from conftest import tiny_open_clip

    import mtl_lora_vl as mlv
    from mtl_lora_vl.options import TrainOptions
    from mtl_lora_vl.training.optim import build_optimization

    def optimization(model, **opts):
        mm = types.SimpleNamespace(model=model, heads=torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)}))
        return build_optimization(mm, TrainOptions(steps=10, batch_size=1, warmup=0, **opts), 10,
                                  torch.device("cpu"), torch.float32)

    with pytest.raises(ValueError, match="--task-lr-mult 10: method task_lora has no task-specific"):
        TrainOptions(task_lr_mult=10.0, method="task_lora").validate()
    lora = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, method="lora"))
    with pytest.raises(ValueError, match="train no task-specific Lambda_t / w_t"):  # e.g. an --extend of a lora
        optimization(lora, task_lr_mult=10.0, extend="x")
    grown = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a"], r=4, n_up=2))
    mlv.add_task(grown, "c")  # an --extend run: only the new task's Λ_t and w_t train, all at lr × 10
    o = optimization(grown, task_lr_mult=10.0, extend="x", lr=1e-3)
    assert [len(g["params"]) for g in o.optimizer.param_groups][:2] == [0, 32]
    assert o.lr == pytest.approx(1e-2)  # the rate that trains, not the empty group's 1e-3


def test_an_fp32_checkpoint_resumes_under_fp16_loss_scaling():
    """A run saved without loss scaling (fp32 or bf16: the scaler's state is empty) resumed where fp16 is
    picked (--device cuda on a V100) starts the scale afresh instead of refusing the empty state."""
    from mtl_lora_vl.training.optim import Optimization

    def optimization(scaling: bool) -> Optimization:
        p = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.SGD([p], lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        return Optimization(opt, sched, torch.amp.GradScaler("cpu", enabled=scaling), [p])

    saved = optimization(False).state_dict()
    assert saved["scaler"] == {}
    resumed = optimization(True)
    resumed.load_state_dict(saved)
    assert resumed.scaler.is_enabled()


class _HostReads:
    """Counts the operators that make a GPU wait for the host: scalar reads and data-dependent shapes
    (``reads``), and ``ours``: those made by this package's own code (the nearest caller outside torch is in
    mtl_lora_vl; transformers' models make some of their own)."""

    def __enter__(self):
        import traceback

        from torch.utils._python_dispatch import TorchDispatchMode

        reads, ours = self.reads, self.ours = [], []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.__name__.split(".")[0] in ("_local_scalar_dense", "nonzero", "item"):
                    reads.append(func.__name__)
                    caller = next((f for f in reversed(traceback.extract_stack()[:-1])
                                   if "/torch/" not in f.filename), None)
                    if caller is not None and "/mtl_lora_vl/" in caller.filename:
                        ours.append(f"{func.__name__} at {caller.filename}:{caller.lineno}")
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def test_a_step_reads_its_losses_from_the_device_once(monkeypatch):
    """The losses stay on the device until the step's end (a float() per task and micro-batch, and a
    finite check before each backward, each made a GPU wait); the values are those of the old path."""
    import itertools

    net, optim, forward_backward = _constant_losses_step(monkeypatch)
    four = torch.arange(4)
    batches = itertools.cycle([{"tasks": {"vqa": {"rows": four}}, "task_ids": torch.zeros(4)},
                               {"tasks": {"retrieval": {"rows": four}}, "task_ids": torch.ones(4)}])
    with _HostReads() as h:
        r = forward_backward(net, batches, optim, accumulate=4, backbone=None, amp_dtype=torch.float32,
                             info=DistInfo())
    assert h.reads == [] and r.finite   # the one read is a tolist(), below the dispatcher
    assert r.losses == pytest.approx({"loss/vqa": 2.0, "loss/retrieval": 4.0, "loss": 6.0})
    net.p.data.fill_(float("nan"))
    assert not forward_backward(net, batches, optim, accumulate=2, backbone=None,
                                amp_dtype=torch.float32, info=DistInfo()).finite


def _nan_gradient_step(monkeypatch, scaler):
    """A one-parameter net whose loss is 0 and whose gradient is NaN (sqrt at 0 times 0), its optimization with
    ``scaler``, and endless batches for ``forward_backward`` (``to_device`` bypassed)."""
    import itertools

    import mtl_lora_vl.training.step as step_mod
    from mtl_lora_vl.training.optim import Optimization

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(()))

        def forward(self, batch):
            v = 0 * torch.sqrt(self.p - self.p.detach())
            return v, {"vqa": v}

    monkeypatch.setattr(step_mod, "to_device", lambda batch, *a: batch)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    optim = Optimization(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), scaler, list(net.parameters()))
    return net, optim, itertools.repeat({"task_ids": torch.zeros(2)})


def test_a_finite_loss_with_non_finite_gradients_skips_the_step(monkeypatch):
    """sqrt at 0 times 0: the loss is 0 but its gradient NaN. Only the loss was checked, so the optimizer
    applied NaN and the next checkpoint held NaN weights."""
    import mtl_lora_vl.training.step as step_mod

    net, optim, batches = _nan_gradient_step(monkeypatch, torch.amp.GradScaler("cpu", enabled=False))
    with _HostReads() as h:
        r = step_mod.forward_backward(net, batches, optim, accumulate=1, backbone=None, amp_dtype=torch.float32,
                                      info=DistInfo())
    assert r.losses["loss"] == 0.0 and not r.finite and h.reads == []


def test_fp16_steps_the_loss_scaler_skips_are_counted_and_a_scale_below_1_stops(monkeypatch, tmp_path):
    """Under fp16 the gradients are left to GradScaler, which skips a step whose gradients are not finite and
    halves its scale: with NaN gradients (finite loss) every step was skipped, nothing trained, nothing was
    said, and the run exited 0 with an untrained adapter."""
    import mtl_lora_vl.training.step as step_mod

    net, optim, batches = _nan_gradient_step(monkeypatch, torch.amp.GradScaler("cpu", init_scale=4.0))
    for step in range(1, 4):
        r = step_mod.forward_backward(net, batches, optim, accumulate=1, backbone=None, amp_dtype=torch.float16,
                                      info=DistInfo())
        assert r.finite and not step_mod.optimizer_step(optim, grad_clip=1.0)   # skipped, scale halved
        if step < 3:
            step_mod.check_loss_scale(optim, step, tmp_path)   # 2.0, 1.0: still looking for a scale
    assert float(net.p.detach()) == 1.0 and optim.scheduler.last_epoch == 0
    with pytest.raises(FloatingPointError, match=r"step 3: fp16 loss scaling has skipped every step since its scale "
                                                 r"fell to 0.5"):
        step_mod.check_loss_scale(optim, 3, tmp_path)


def test_an_fp16_optimizer_step_reads_the_loss_scale_once(monkeypatch, tmp_path):
    """Reading the scale waits for the GPU; the step read it before and after its update (and the log row and
    the stop check read it again): now once, after the update, which the others reuse."""
    import mtl_lora_vl.training.step as step_mod

    net, optim, batches = _nan_gradient_step(monkeypatch, torch.amp.GradScaler("cpu", init_scale=4.0))
    reads = []
    get_scale = optim.scaler.get_scale
    monkeypatch.setattr(optim.scaler, "get_scale", lambda: reads.append(1) or get_scale())
    skips = step_mod.ScalerSkips(optim)
    for step in range(1, 4):
        step_mod.forward_backward(net, batches, optim, accumulate=1, backbone=None, amp_dtype=torch.float16,
                                  info=DistInfo())
        reads.clear()
        assert not step_mod.optimizer_step(optim, grad_clip=0.0)
        step_mod.check_loss_scale(optim, step, tmp_path) if step < 3 else None
        assert skips.flush()["loss_scale"] == 4.0 / 2 ** step
        assert len(reads) == (2 if step == 1 else 1), step   # the first, before any step, does not wait


def test_vqa_loss_has_no_host_reads_and_equals_the_mean_over_rows_unanswered_adding_zero():
    from mtl_lora_vl.tasks.vqa import VQAKind

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, requires_grad=True)
    targets = torch.rand(6, 5, generator=g) * (torch.rand(6, 5, generator=g) > 0.5)
    targets[[1, 4]] = 0.0                       # rows whose answers are all outside the vocabulary
    kind = object.__new__(VQAKind)
    kind.generative = False
    with _HostReads() as h:
        loss = kind.loss(lambda img, txt: logits, None, {"targets": targets}, None, torch.zeros(6, 1))
    keep = targets.sum(1) > 0
    ref = -(targets[keep] / targets[keep].sum(1, keepdim=True) * logits[keep].log_softmax(-1)).sum(1).sum() / 6
    assert h.reads == [] and torch.allclose(loss, ref)
    with _HostReads():
        none = kind.loss(lambda img, txt: logits, None, {"targets": torch.zeros(6, 5)}, None, torch.zeros(6, 1))
    assert none.item() == 0.0 and none.requires_grad


def test_training_leaves_the_frozen_base_batch_norm_statistics_alone():
    """A ResNet tower's BatchNorm in train mode would update its running statistics, which no adapter file
    carries; the base stays as loaded."""
    import open_clip
    from torch import nn

    import mtl_lora_vl as mlv
    from mtl_lora_vl.multitask import MultiTaskModel

    net = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1), width=8, head_width=8),
                         text_cfg=dict(context_length=8, vocab_size=32, width=16, heads=2, layers=1))
    mlv.attach(net, mlv.MTLLoRAConfig(tasks=["a"], targets={"text": [r"^transformer\.resblocks\.\d+\.attn$"]}))
    mm = MultiTaskModel.__new__(MultiTaskModel)
    nn.Module.__init__(mm)
    mm.model, mm.heads = net, nn.ModuleDict({"a": nn.Linear(2, 2)})
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    mm.train()
    assert mm.heads.training and net.transformer.training and not net.visual.bn1.training
    net.encode_image(torch.randn(2, 3, 64, 64))
    assert stats and all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())


@pytest.mark.parametrize(("dtype", "advice"), [(torch.float32, None), (torch.bfloat16, "use --precision fp32 (with"),
                                               (torch.float16, "use --precision bf16 or fp32 (with")])
def test_the_non_finite_stop_names_a_wider_precision_only_where_there_is_one(tmp_path, dtype, advice):
    """An fp32 run that diverged was told to "use --precision fp32 or bf16"."""
    from types import SimpleNamespace

    from mtl_lora_vl.training.step import skip_bad_step

    with pytest.raises(FloatingPointError) as err:
        skip_bad_step(SimpleNamespace(), 3, 7, 3, tmp_path, dtype)
    msg = str(err.value)
    assert "lower --lr" in msg and str(tmp_path) in msg
    assert ("--precision" not in msg) if advice is None else (advice in msg)


def test_the_other_half_precision_is_refused_even_where_the_model_casts_its_inputs():
    """--base-dtype bf16 --precision fp16 on a Hugging Face LLaVA (which casts its inputs) failed at the first
    step with torch's "Unexpected floating ScalarType in at::autocast::prioritize"."""
    from mtl_lora_vl.precision import check_base_precision

    for loaded, autocast_dtype, name in ((torch.bfloat16, torch.float16, "fp16"),
                                         (torch.float16, torch.bfloat16, "bf16")):
        with pytest.raises(ValueError, match=rf"--precision {name} with .* meet in operations that take one dtype"):
            check_base_precision(name, autocast_dtype, loaded, casts_inputs=True)
    check_base_precision("fp32", torch.float32, torch.bfloat16, casts_inputs=True)   # it casts: fine
    check_base_precision("bf16", torch.bfloat16, torch.bfloat16, casts_inputs=True)
    with pytest.raises(ValueError, match="does not cast its inputs"):
        check_base_precision("fp32", torch.float32, torch.bfloat16, casts_inputs=False)


def _one_step(scaler: torch.amp.GradScaler, grad: list[float], grad_clip: float) -> torch.Tensor:
    """The change one optimizer_step (SGD, lr 1) makes to a parameter whose true gradient is ``grad``."""
    p = torch.nn.Parameter(torch.zeros(len(grad)))
    opt = torch.optim.SGD([p], lr=1.0)
    optim = Optimization(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), scaler, [p])
    scaler.scale((p * torch.tensor(grad)).sum()).backward()
    assert optimizer_step(optim, grad_clip=grad_clip)
    return -p.detach()


@pytest.mark.parametrize("fp16", [False, True])
def test_grad_clip_bounds_the_true_gradient_norm(fp16):
    """--grad-clip clips the gradient's norm to the limit, measured on the unscaled gradient under fp16 loss
    scaling. Nothing tested it: clipping switched off, or clipping the scaled gradient (no unscale_ first: with a
    scale of 1024 every step shrank ~1000x), both passed."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=fp16)
    torch.testing.assert_close(_one_step(scaler, [3.0, 4.0], 1.0), torch.tensor([0.6, 0.8]))   # norm 5 -> 1
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=fp16)
    torch.testing.assert_close(_one_step(scaler, [0.3, 0.4], 1.0), torch.tensor([0.3, 0.4]))   # under the limit
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=fp16)
    torch.testing.assert_close(_one_step(scaler, [3.0, 4.0], 0.0), torch.tensor([3.0, 4.0]))   # 0: no clipping


def test_an_extend_run_decays_the_new_task_s_rows_as_a_fresh_run_and_keeps_the_old_rows_exact():
    """--weight-decay follows one rule: the new task's Λ_t / w_t of an --extend run take it as a fresh run's do (it
    was 0 for every adapter tensor of an --extend run, so an explicit --weight-decay was ignored for them), and the
    old tasks' rows stay bit-identical through AdamW's decay (freeze_old_rows puts them back after each step)."""
    for mult in (1.0, 10.0):
        fresh = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a", "c"], r=4, n_up=2))
        grown = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a"], r=4, n_up=2))
        with torch.no_grad():   # trained up-projections (all-zero ones make add_task warn)
            for n, p in grown.named_parameters():
                if n.endswith("lora_B"):
                    p.add_(0.01)
        added = mlv.add_task(grown, "c")
        runs = {}
        for extend, model in ((None, fresh), ("x", grown)):
            mm = types.SimpleNamespace(model=model, heads=torch.nn.ModuleDict({"c": torch.nn.Linear(2, 2)}))
            o = build_optimization(mm, TrainOptions(steps=10, batch_size=1, warmup=0, weight_decay=0.05,
                                                    task_lr_mult=mult, extend=extend), 10, torch.device("cpu"),
                                   torch.float32)
            names = {id(p): n.rsplit(".", 1)[-1] for n, p in model.named_parameters()}
            runs[extend] = {names[id(p)]: g["weight_decay"] for g in o.optimizer.param_groups[:-2] for p in g["params"]}
            assert [g["weight_decay"] for g in o.optimizer.param_groups[-2:]] == [0.05, 0.0]   # heads: as before
        assert runs[None] == dict.fromkeys(["lora_A", "lora_B", "lora_lambda", "lora_w"], 0.05), mult
        assert runs["x"] == {"lora_lambda": 0.05, "lora_w": 0.05}, mult
    before = {n: p.detach().clone() for n, p in grown.named_parameters() if n.endswith(("lora_lambda", "lora_w"))}
    added.freeze_old_rows(o.optimizer)
    for _ in range(3):   # gradients of zero: AdamW's decay alone moves the parameters
        for group in o.optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        o.optimizer.step()
    for n, p in grown.named_parameters():
        if n in before:
            assert torch.equal(p[:1], before[n][:1]), n                      # task "a": exact
            assert not torch.equal(p[1:], before[n][1:]), n                   # task "c": decayed


def _heads_run(seed: int = 0):
    from mtl_lora_vl.tasks.retrieval import RetrievalHead

    torch.manual_seed(seed)
    heads = torch.nn.ModuleDict({"r": RetrievalHead(100.0), "c": torch.nn.Linear(3, 2)})
    mm = types.SimpleNamespace(model=torch.nn.Linear(2, 2), heads=heads)
    return mm, build_optimization(mm, TrainOptions(steps=10, batch_size=1, warmup=0, weight_decay=0.5, head_lr=0.1),
                                  10, torch.device("cpu"), torch.float32)


def test_head_biases_and_the_temperature_take_no_weight_decay():
    """Every head tensor was decayed, retrieval's learnable temperature too (CLIP and open_clip exclude the logit
    scale, biases and gains): with no gradient at all, decay alone lowered it (100 -> ~97 over the default run;
    helper 146). Weight matrices keep --weight-decay."""
    mm, o = _heads_run()
    before = {n: p.detach().clone() for n, p in mm.heads.named_parameters()}
    for p in o.params:
        p.grad = torch.zeros_like(p)
    o.optimizer.step()
    after = dict(mm.heads.named_parameters())
    assert torch.equal(after["r.log_scale"], before["r.log_scale"]) and torch.equal(after["c.bias"], before["c.bias"])
    assert not torch.equal(after["c.weight"], before["c.weight"])


def test_a_checkpoint_with_every_head_tensor_in_one_group_still_resumes():
    """Checkpoints written before the heads' no-decay group load: the one head group's states are split."""
    mm, o = _heads_run()
    for p in o.params:
        p.grad = torch.randn_like(p)
    o.optimizer.step()
    o.scheduler.step()
    new = o.state_dict()
    heads = list(mm.heads.parameters())
    old = json.loads(json.dumps({k: v for k, v in new["optimizer"].items() if k != "state"}))
    decayed, kept = old["param_groups"][-2:]
    ids = iter(decayed["params"]), iter(kept["params"])
    merged = [next(ids[p.ndim < 2]) for p in heads]   # one group in the heads' own order, as the old version saved
    old["param_groups"] = [*old["param_groups"][:-2], dict(decayed, params=merged)]
    old["state"] = new["optimizer"]["state"]
    sched = {**new["scheduler"], **{k: new["scheduler"][k][:-1] for k in ("base_lrs", "_last_lr")}}
    _, fresh = _heads_run(seed=1)
    fresh.load_state_dict({**new, "optimizer": old, "scheduler": sched})
    got = fresh.state_dict()
    assert [g["weight_decay"] for g in got["optimizer"]["param_groups"]] == [0.5, 0.5, 0.0]
    for i, s in new["optimizer"]["state"].items():
        torch.testing.assert_close(got["optimizer"]["state"][i]["exp_avg"], s["exp_avg"], rtol=0, atol=0)
    assert got["scheduler"]["base_lrs"] == new["scheduler"]["base_lrs"]


def test_default_workers_share_the_usable_cores_among_the_local_ranks(monkeypatch):
    import mtl_lora_vl.distributed as dist_mod

    monkeypatch.setattr(dist_mod, "cpu_quota", lambda root="/": None)   # (no CPU quota: tests/test_cpu_quota.py)
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loading.default_workers(DistInfo()) == 1          # (16 cores - 8 trainers) / 8 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)   # 3 usable cores
    assert loading.default_workers(DistInfo()) == 2


def test_default_workers_count_the_cores_of_ranks_pinned_to_their_own(monkeypatch):
    """A launcher that pins each of 4 ranks to its own 4 cores (srun --cpu-bind) gave each 0 workers: the rank's
    mask was taken for the whole machine's share, (4 cores - 4 ranks) / 4. The ranks now pool their masks."""
    import socket

    import mtl_lora_vl.distributed as dist_mod

    host = socket.gethostname()
    masks = {r: list(range(4 * r, 4 * r + 4)) for r in range(4)}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(masks[0]), raising=False)
    monkeypatch.setattr(dist_mod, "cpu_quota", lambda root="/": None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("GROUP_RANK", "0")
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)

    def gather(parts, mine, own=masks, other=("other-node", "1")):   # (machine, mask, CPU quota, LOKY_MAX_CPU_COUNT)
        assert mine == ((host, "0"), masks[0], None, None)
        parts[:] = [((host, "0"), own[r], None, None) for r in range(4)] + [(other, list(range(64)), None, None)] * 4

    monkeypatch.setattr(dist_mod.dist, "all_gather_object", gather)
    assert loading.default_workers(DistInfo(world_size=8)) == 3          # its own 4 cores less its trainer
    monkeypatch.setattr(dist_mod.dist, "all_gather_object", partial(gather, own={r: masks[0] for r in range(4)}))
    assert loading.default_workers(DistInfo(world_size=8)) == 0          # 4 ranks sharing 4 cores
    # containers on another machine with the same host name: torchrun's node index tells them apart (counted
    # by host name alone, the 8 ranks pooled 64 cores and took 4 workers each)
    monkeypatch.setattr(dist_mod.dist, "all_gather_object", partial(gather, other=(host, "1")))
    assert loading.default_workers(DistInfo(world_size=8)) == 3


def test_evaluation_during_training_uses_the_run_workers(monkeypatch):
    seen = {}
    from mtl_lora_vl.training import validation

    monkeypatch.setattr(validation, "evaluate_adapted", lambda setup, **kw: seen.update(kw) or {})
    run = SimpleNamespace(opts=SimpleNamespace(data_root=None, eval_batch_size=8), setup=None, workers=3,
                          amp_dtype=torch.float32,
                          info=DistInfo())
    validation.validate(run, 1, SimpleNamespace(log=lambda row: None), None)
    assert seen.get("workers") == 3


@pytest.mark.parametrize("mode", ["homogeneous", "mixed"])
def test_a_step_whose_accumulated_rows_repeat_a_task_s_examples_is_warned_about(mode, caplog):
    """--accumulate 4 at --batch-size 8 gives a task 32 rows a step (16 in a mixed batch of two): on 12 examples
    they repeat within the step, unsaid (only one micro-batch's rows were counted)."""
    import logging

    kind = SimpleNamespace(min_batch_rows=1, cross_rank_fields=())
    sampler = SimpleNamespace(shares=[0.5, 0.5], sizes=[12, 1000])
    for accumulate in (1, 2, 4):
        opts = SimpleNamespace(batch_size=8, batch_mode=mode, accumulate=accumulate)
        run = SimpleNamespace(opts=opts, trained=["small", "big"], setup=SimpleNamespace(kinds={"small": kind,
                              "big": kind}), info=DistInfo(rank=0, world_size=1))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
            loading.warn_small_batches(run, SimpleNamespace(sampler=sampler))
        rows = 8 * accumulate // (1 if mode == "homogeneous" else 2)
        assert (f"task small has 12 training examples and gets {rows} rows a step" in caplog.text) == (rows > 12), \
            caplog.text
        assert "task big" not in caplog.text
