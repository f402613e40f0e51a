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
import shutil
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attach import attach, attach_info, parameter_report
from .checkpoint import load_checkpoint, save_checkpoint
from .config import MTLLoRAConfig
from .distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from .multitask import MultiTaskModel


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainOptions:
    """Every option of a training run; the command line and ``--config FILE`` set the same names."""

    tasks: str = _opt("vqa,retrieval", "comma-separated task names (built-in specs) or paths to task TOML files")
    backbone: str = _opt("builtin", "builtin | open_clip:NAME (with --pretrained FILE) | hf:DIR (local Hugging Face CLIP)")
    pretrained: str | None = _opt(None, "local checkpoint file for open_clip:NAME")
    data_root: str | None = _opt(None, "folder that task specs' data paths are relative to")
    method: str = _opt("mtl_lora", "adapter method", choices=["mtl_lora", "lora", "task_lora", "multi_lora", "moe_lora"])
    rank: int = _opt(8, "adapter rank r")
    alpha: float = _opt(16.0, "adapter scaling numerator (s = alpha / r)")
    n_up: int = _opt(3, "number of shared up-projections B_i (experts for moe_lora / multi_lora)")
    temperature: float = _opt(0.5, "temperature tau of softmax(w_t / tau)")
    lambda_type: str = _opt("full", "task-specific Lambda_t", choices=["full", "diagonal", "none"])
    dropout: float = _opt(0.0, "dropout on adapter inputs")
    targets: str = _opt("default", "'default' or a JSON dict {\"image\": [regex], \"text\": [regex]}")
    steps: int = _opt(400, "optimizer steps (ignored when --epochs is given)")
    epochs: float | None = _opt(None, "train for this many passes over all tasks' training data instead of --steps")
    batch_size: int = _opt(64, "samples per step and per process (before accumulation)")
    lr: float = _opt(2e-3, "learning rate of the adapters")
    head_lr: float = _opt(3e-3, "learning rate of the task heads")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    warmup: int = _opt(20, "linear warm-up steps before the cosine schedule")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0 = off)")
    accumulate: int = _opt(1, "gradient accumulation: micro-batches per optimizer step")
    precision: str = _opt("auto", "auto = bf16 on a GPU that supports it, else fp32", choices=["auto", "fp32", "bf16", "fp16"])
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _opt(-1, "data loader workers (-1 = choose from the CPU count)")
    batch_mode: str = _opt("mixed", "mixed: several tasks per batch; homogeneous: one task per step", choices=["mixed", "homogeneous"])
    sampling: str = _opt("temperature", "how tasks are drawn", choices=["proportional", "temperature", "round_robin"])
    sampling_temperature: float = _opt(2.0, "T of temperature sampling, p ~ n^(1/T)")
    eval_every: int = _opt(0, "evaluate the adapted model on the validation split every N steps (0 = only at the end)")
    save_every: int = _opt(100, "write a checkpoint every N steps (and on Ctrl-C)")
    log_every: int = _opt(10, "log training metrics every N steps")
    eval_batch_size: int = _opt(256, "batch size of evaluation")
    eval_split: str = _opt("test", "split scored at the end (falls back to val when a task has no test split)")
    out: str | None = _opt(None, "run directory (default runs/<tasks>-<method>-<time>)")
    resume: str | None = _opt(None, "continue the killed or stopped run in this directory")
    extend: str | None = _opt(None, "add --tasks to the trained adapter of this run directory (or adapter directory), "
                              "training only their Lambda_t, w_t and heads; the other tasks stay bit-identical")
    overwrite: bool = _opt(False, "replace an existing run directory")
    seed: int = _opt(0, "random seed")
    compile: bool = _opt(False, "torch.compile the training forward pass (towers, adapters and heads)")
    max_bad_steps: int = _opt(5, "stop after this many non-finite losses in a row")
    config: str | None = _opt(None, "JSON or TOML file with any of these options (flags given on the command line win)")

    def validate(self) -> None:
        for name in ("batch_size", "accumulate", "save_every", "log_every", "eval_batch_size", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.steps < 1 and not self.epochs:
            raise ValueError(f"--steps: must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"--epochs: must be > 0, got {self.epochs}")
        for name in ("lr", "head_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")


def option_names() -> list[str]:
    return [f.name for f in fields(TrainOptions)]


# Run directory ----------------------------------------------------------------------------------
class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it exists, or there is nothing to resume)."""


def prepare_run_dir(opts: TrainOptions, info: DistInfo) -> Path:
    """The run directory: new, resumed, or replaced with --overwrite; never silently reused."""
    if opts.resume:
        run = Path(opts.resume)
        if not (run / "config.json").is_file():
            raise RunDirError(f"--resume {run}: not a run directory (no config.json); give the --out folder of a run")
        return run
    if opts.out:
        run = Path(opts.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = Path("runs") / f"{opts.tasks.replace(',', '+').replace('/', '_')}-{opts.method}-{stamp}"
    if run.exists() and any(run.iterdir()):
        if not opts.overwrite:
            raise RunDirError(
                f"--out {run}: the directory exists and is not empty; pass --overwrite to replace it, "
                f"--resume {run} to continue it, or choose another --out"
            )
        if info.is_main:
            shutil.rmtree(run)
    barrier(info)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
    barrier(info)
    return run


# Precision --------------------------------------------------------------------------------------
def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 / fp16 / fp32 (``auto`` = bf16 on a capable GPU, else fp32)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


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


# The run ----------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything built before the loop; also used by evaluation of a finished run.

    ``specs``/``kinds`` cover every task of the adapter (all are evaluated); ``train_splits`` only the
    tasks this run trains (all of them, or the new ones of an ``--extend`` run).
    """

    backbone: Any
    specs: list
    kinds: dict
    model: MultiTaskModel
    config: MTLLoRAConfig
    train_splits: dict = field(default_factory=dict)
    extended_from: list[str] = field(default_factory=list)
    new_adapter_values: int | None = None


def build_setup(opts: TrainOptions, device: torch.device, extend_from: str | None = None) -> Setup:
    """Backbone, task specs and kinds, heads (initialised to the zero-shot rule), adapters."""
    from .backbones import load_backbone
    from .tasks import build_kind, resolve_tasks

    backbone = load_backbone(opts.backbone, opts.pretrained, device)
    specs = resolve_tasks(opts.tasks)
    train_splits = {s.name: s.load_split("train", opts.data_root) for s in specs}
    kinds = {s.name: build_kind(s, train_splits[s.name], backbone) for s in specs}
    heads = nn.ModuleDict({name: kind.build_head(backbone) for name, kind in kinds.items()})
    targets: Any = opts.targets if opts.targets == "default" else json.loads(opts.targets)
    cfg = MTLLoRAConfig(tasks=list(kinds), r=opts.rank, alpha=opts.alpha, n_up=opts.n_up,
                        temperature=opts.temperature, dropout=opts.dropout, lambda_type=opts.lambda_type,
                        method=opts.method, targets=targets)
    attach(backbone.model, cfg)
    model = MultiTaskModel(backbone, kinds, heads).to(device)
    return Setup(backbone, specs, kinds, model, cfg, train_splits)


def extend_setup(opts: TrainOptions, device: torch.device) -> Setup:
    """A trained adapter plus new tasks: only the new Λ_t, w_t and heads will train (see add_task)."""
    from .adapter_io import add_task, load_pretrained
    from .routing import disabled
    from .tasks import build_kind, resolve_tasks

    src = Path(opts.extend)
    adapter_dir = src / "adapter" if (src / "adapter" / "adapter_config.json").is_file() else src
    lp = load_pretrained(adapter_dir, device, backbone=None if opts.backbone == "builtin" else opts.backbone,
                         pretrained=opts.pretrained, data_root=opts.data_root)
    old = list(lp.config.tasks)
    missing = [t for t in old if t not in lp.kinds or t not in lp.heads]
    if missing:
        raise ValueError(f"--extend {src}: the adapter has no saved spec or head for task(s) {missing}; "
                         "it cannot be evaluated or re-saved whole")
    new_specs = resolve_tasks(opts.tasks)
    clash = [s.name for s in new_specs if s.name in old]
    if clash:
        raise ValueError(f"--extend {src}: task(s) {clash} are already in the adapter {old}; --tasks must name new tasks")
    bb = lp.backbone
    train_splits = {s.name: s.load_split("train", opts.data_root) for s in new_specs}
    kinds = dict(lp.kinds)
    heads = nn.ModuleDict(lp.heads)
    for head in heads.values():
        head.requires_grad_(False)
    added = 0
    for spec in new_specs:
        kinds[spec.name] = build_kind(spec, train_splits[spec.name], bb)
        added += add_task(bb.model, spec.name)
        with disabled(bb.model):  # the new head starts from the base model's zero-shot rule
            heads[spec.name] = kinds[spec.name].build_head(bb)
    specs = [lp.specs[t] for t in old] + new_specs
    model = MultiTaskModel(bb, kinds, heads).to(device)
    return Setup(bb, specs, kinds, model, attach_info(bb.model).config, train_splits, extended_from=old,
                 new_adapter_values=added)


def train(opts: TrainOptions) -> Path:
    """Run (or resume) one training run and its final evaluation; returns the run directory."""
    from .data.loader import MultiTaskLoader, to_device

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
    model.set_trained_tasks(trained, setup.config.tasks)
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
                             world_size=info.world_size)

    adapter_params = [p for p in model.model.parameters() if p.requires_grad]
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    # An --extend run keeps the old tasks' rows of the grown tensors fixed: no weight decay on them.
    adapter_wd = 0.0 if opts.extend else opts.weight_decay
    optimizer = torch.optim.AdamW([{"params": adapter_params, "lr": opts.lr, "weight_decay": adapter_wd},
                                   {"params": head_params, "lr": opts.head_lr}], weight_decay=opts.weight_decay)
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
        from .adapter_io import save_adapter
        from .evaluate import evaluate_setup, write_outputs

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
    from .evaluate import evaluate_adapted

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
