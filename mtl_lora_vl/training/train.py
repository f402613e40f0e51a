"""Joint multi-task training with MTL-LoRA: the one loop behind ``scripts/train_vl.py``.

Reads top to bottom: options -> run directory -> backbone, tasks and data -> adapters and heads ->
optimizer -> (resume) -> loop (AMP, accumulation, clipping, logging, eval, checkpoints) -> adapter
files -> zero-shot vs adapted evaluation and report.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.attach import parameter_report
from ..adapters.grow import freeze_old_rows
from ..data.loader import MultiTaskLoader, to_device
from ..distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from ..evaluation.evaluate import evaluate_adapted, evaluate_setup, write_outputs
from ..io.adapter_io import save_adapter
from ..multitask import Setup, build_setup, extend_setup
from ..options import TrainOptions
from ..precision import autocast, resolve_precision
from ..rundir import prepare_run_dir
from .checkpoint import load_checkpoint, save_checkpoint


# Schedule ---------------------------------------------------------------------------------------
def cosine_with_warmup(warmup: int, total: int):
    """LambdaLR factor: linear warm-up to 1, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def default_workers() -> int:
    import os

    return max(0, min(4, (os.cpu_count() or 1) - 1))


class _Stop(Exception):
    """Raised inside the loop by SIGTERM so that the run saves a checkpoint and exits."""


def train(opts: TrainOptions) -> Path:
    """Run (or resume) one training run and its final evaluation; returns the run directory."""
    opts.validate()
    info = init_distributed(opts.device)
    device = info.device
    run_dir = prepare_run_dir(opts, info)
    if opts.resume:
        saved = json.loads((run_dir / "config.json").read_text())
        keep = {"resume", "workers", "device"}  # everything else as the run was started
        opts = TrainOptions(**{**saved, **{k: getattr(opts, k) for k in keep}, "out": str(run_dir)})
    amp_dtype = resolve_precision(opts.precision, device)
    seed_everything(opts.seed)

    setup = extend_setup(opts, device) if opts.extend else build_setup(opts, device)
    if info.is_main and not opts.resume:
        (run_dir / "config.json").write_text(json.dumps(asdict(opts), indent=2) + "\n")
    model = setup.model
    trained = list(setup.train_splits)  # the tasks this run trains, in adapter order
    kinds = {n: setup.kinds[n] for n in trained}
    if info.is_main:
        report = parameter_report(model.model)
        heads_n = sum(p.numel() for p in model.heads.parameters() if p.requires_grad)
        where = (f"device {device}, precision {str(amp_dtype).replace('torch.', '')}, "
                 f"world size {info.world_size}")
        if opts.extend:
            print(f"[mtl-lora-vl] extending {opts.extend} (tasks {setup.extended_from}, frozen) with {trained}: "
                  f"training {setup.new_adapter_values:,} adapter values (their Lambda_t, w_t) and {heads_n:,} "
                  f"head parameters; A and every B_i frozen; {where}")
        else:
            print(f"[mtl-lora-vl] {opts.backbone}: {report['adapter_total']:,} adapter parameters "
                  f"(image {report['image']:,}, text {report['text']:,}) on {report['adapted_projections']} "
                  f"projections, {heads_n:,} head parameters, {report['base_frozen']:,} frozen; {where}")

    per_step = opts.batch_size * opts.accumulate * info.world_size
    sizes = [len(setup.train_splits[n].examples) for n in kinds]
    total_steps = math.ceil(opts.epochs * sum(sizes) / per_step) if opts.epochs else opts.steps
    workers = default_workers() if opts.workers < 0 else opts.workers
    loader = MultiTaskLoader(list(kinds.values()), [setup.train_splits[n] for n in kinds], setup.backbone,
                             batch_size=opts.batch_size, strategy=opts.sampling,
                             temperature=opts.sampling_temperature, mode=opts.batch_mode, seed=opts.seed,
                             steps=total_steps * opts.accumulate, num_workers=workers, rank=info.rank,
                             world_size=info.world_size, adapter_tasks=setup.config.tasks)

    adapter_params = [p for p in model.model.parameters() if p.requires_grad]
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    # An --extend run keeps the old tasks' rows of the grown tensors fixed: no weight decay on them.
    adapter_wd = 0.0 if opts.extend else opts.weight_decay
    optimizer = torch.optim.AdamW([{"params": adapter_params, "lr": opts.lr, "weight_decay": adapter_wd},
                                   {"params": head_params, "lr": opts.head_lr}], weight_decay=opts.weight_decay)
    freeze_old_rows(model.model, optimizer)  # an --extend run: the old tasks' rows stay exact (else a no-op)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(opts.warmup, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step = 0
    window: dict[str, list[float]] = {}  # per-step losses since the last log line
    if opts.resume:
        state = load_checkpoint(run_dir)
        model.load_trainable_state(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        window = state.get("log_window", {})
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        if info.is_main:
            print(f"[mtl-lora-vl] resumed {run_dir} at step {step}/{total_steps}")

    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=opts.batch_mode == "homogeneous" or len(kinds) > opts.batch_size)
    if opts.compile:
        net = torch.compile(net)

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint({"step": step, "trainable": model.trainable_state(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                             "sampler": loader.state_dict(), "rng": torch.get_rng_state(),
                             "log_window": window}, run_dir)

    def on_sigterm(signum, frame):  # noqa: ARG001
        raise _Stop()

    old_handler = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None
    logger = _Logger(run_dir, info.is_main)
    progress = _progress(info.is_main, step, total_steps)
    batches = iter(loader)
    bad = 0
    t_window, n_window = time.perf_counter(), 0
    stopped = False
    try:
        model.train()
        while step < total_steps:
            optimizer.zero_grad(set_to_none=True)
            step_losses: dict[str, float] = {}
            finite = True
            for micro in range(opts.accumulate):
                batch = to_device(next(batches), device, amp_dtype, setup.backbone)
                sync = micro == opts.accumulate - 1 or not info.enabled
                ctx = net.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    with autocast(device, amp_dtype):
                        total, losses = net(batch)
                    finite = finite and _all_finite(total, info)
                    if finite:
                        scaler.scale(total / opts.accumulate).backward()
                n_window += batch["task_ids"].numel() * info.world_size
                for k, v in losses.items():
                    step_losses[k] = step_losses.get(k, 0.0) + float(v.detach()) / opts.accumulate
                step_losses["loss"] = step_losses.get("loss", 0.0) + float(total.detach()) / opts.accumulate
            if not finite:
                bad += 1
                warnings.warn(f"step {step + 1}: non-finite loss, step skipped ({bad} in a row)", stacklevel=1)
                if bad >= opts.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad} non-finite losses in a row at step {step + 1}; lower --lr, use --precision fp32 or "
                        f"bf16, or check the data. The last good checkpoint is in {run_dir}"
                    )
                optimizer.zero_grad(set_to_none=True)
                step += 1  # the batch is used up; the learning-rate schedule does not advance
                continue
            bad = 0
            if opts.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(adapter_params + head_params, opts.grad_clip)
            scale = scaler.get_scale() if scaler.is_enabled() else None
            scaler.step(optimizer)
            scaler.update()
            if scale is None or scaler.get_scale() >= scale:  # fp16: the scaler skipped no step
                scheduler.step()
            step += 1
            for k, v in step_losses.items():
                window.setdefault(k, []).append(v)
            progress.update(1)
            if step % opts.log_every == 0 or step == total_steps:
                rate = n_window / max(1e-9, time.perf_counter() - t_window)
                row = {k: sum(v) / len(v) for k, v in window.items()}
                row = all_reduce_mean(row, info)
                row = {("loss" if k == "loss" else f"loss/{k}"): v for k, v in row.items()}
                row.update(step=step, lr=scheduler.get_last_lr()[0], samples_per_s=rate)
                logger.log(row)
                progress.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{rate:.0f}")
                window, t_window, n_window = {}, time.perf_counter(), 0
            if opts.eval_every and step % opts.eval_every == 0 and step < total_steps:
                _eval_during_training(setup, opts, device, amp_dtype, step, logger, info)
                model.train()
            if step % opts.save_every == 0 and step < total_steps:
                checkpoint()
    except (KeyboardInterrupt, _Stop):
        stopped = True
        checkpoint()
        if info.is_main:
            print(f"\n[mtl-lora-vl] stopped at step {step}; checkpoint saved. Continue with: "
                  f"python scripts/train_vl.py --resume {run_dir}")
    finally:
        progress.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if stopped:
        cleanup(info)
        return run_dir

    checkpoint()
    result = None
    if info.is_main:
        save_adapter(model.model, run_dir / "adapter", heads=dict(model.heads.items()),
                     task_specs={s.name: s.source_file for s in setup.specs if s.source_file},
                     base={"backbone": opts.backbone, "pretrained": opts.pretrained},
                     kinds=setup.kinds, overwrite=True)
        result = evaluate_setup(setup, split=opts.eval_split, data_root=opts.data_root, device=device,
                                dtype=amp_dtype, batch_size=opts.eval_batch_size, workers=workers)
        result["trained_tasks"] = trained
        if opts.extend:
            result["extended_from"] = {"run": str(opts.extend), "tasks": setup.extended_from,
                                       "trained_adapter_values": setup.new_adapter_values}
        table = write_outputs(run_dir, result, model.model)
        print(table)
    barrier(info)
    cleanup(info)
    return run_dir


def _eval_during_training(setup: Setup, opts: TrainOptions, device, dtype, step: int, logger, info) -> None:
    if not info.is_main:
        barrier(info)
        return
    scores = evaluate_adapted(setup, split="val", data_root=opts.data_root, device=device, dtype=dtype,
                              batch_size=opts.eval_batch_size)
    logger.log({"step": step, **{f"eval/{t}/{m}": v for t, r in scores.items() for m, v in r.items()}})
    barrier(info)


def _all_finite(loss: torch.Tensor, info: DistInfo) -> bool:
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if info.enabled:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint (they will be written again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


class _Logger:
    """metrics.jsonl, plus TensorBoard events when tensorboard is installed; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress(enabled: bool, start: int, total: int):
    import sys

    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 15.0  # a log file gets a line every 15 s, not every step
    return tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="step", dynamic_ncols=True,
                mininterval=interval)
