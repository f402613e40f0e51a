"""Joint multi-task training with MTL-LoRA: the one loop behind ``scripts/train_vl.py``.

:func:`train` reads top to bottom: start (options, run directory, backbone, tasks, adapters) -> data
-> optimizer and schedule -> resume -> the loop (steps, logging, evaluation, checkpoints) -> finish
(adapter files, zero-shot vs adapted evaluation, report). The step itself is in :mod:`.step`, the run's opening
line in :mod:`.describe`, the model's DDP / compile wrapping in :mod:`.wrap`, the clean-up after an error or a stop
(and the close of every run) in :mod:`.cleanup`.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Collection
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.compiled import watch_compiled
from ..adapters.grow import freeze_old_rows
from ..data.loader import MultiTaskLoader
from ..distributed import (
    DistInfo,
    all_ready,
    barrier,
    check_workers,
    init_distributed,
    max_over_ranks,
    sharded_evaluation,
)
from ..evaluation.evaluate import evaluate_adapted, evaluate_setup, read_eval_splits, write_outputs
from ..evaluation.predictions import PredictionFiles, check_recordable
from ..evaluation.scored import run_base
from ..io import save_adapter
from ..io.layout import RUN_ADAPTER_DIR
from ..log import main_rank_logging
from ..multitask import Setup, build_setup, extend_setup, extended_options
from ..options import TrainOptions
from ..precision import base_weights_dtype, check_base_precision, resolve_precision
from ..run_overwrite import finish_overwrite, remove_overwrite_leftovers
from ..rundir import (
    RunDirError,
    check_options_unchanged,
    choose_run_dir,
    claim_run_dir,
    hold_run_dir,
    moved_folders,
    record_moved_folders,
    record_resolved,
    recorded_options,
    resumed_options,
    write_config,
)
from ..tasks import SpecError, resolve_tasks
from ..tasks.spec import looks_like_path
from .checkpoint import (
    CheckpointError,
    Progress,
    check_inputs_unchanged,
    check_moves_checkable,
    check_options_known,
    check_specs_unchanged,
    load_checkpoint,
    remove_stale_temporaries,
    restore_training_state,
    save_training_checkpoint,
)
from .cleanup import clean_up_run, close_run, let_go, undo_start
from .describe import describe
from .loading import build_loader, check_batch_fits, default_workers, early_train_splits
from .metrics_log import LossWindow, MetricsLog, progress_bar, replaced_rows, truncate_metrics
from .optim import Optimization, build_optimization
from .rng import preserved_rng, seed_everything, seed_rank
from .run import Run
from .step import ScalerSkips, forward_backward, optimizer_step, skip_bad_step
from .stopping import RunStopped, cleaning_up_after, stop_at_step_boundary, terminate_raises
from .validation import Best, check_selection_splits, finish_with_best, stopped_early, validate
from .wrap import wrap_model

logger = logging.getLogger(__name__)


def train(opts: TrainOptions, given: Collection[str] | None = None) -> Path:
    """Run (or resume) one training run and its final evaluation; returns the run directory. ``given``: the
    options the user set (the command line's); ``--resume`` refuses any of them it would ignore. The run
    seeds Python's, NumPy's and torch's generators from ``--seed``; the caller's come back afterwards."""
    with preserved_rng(), terminate_raises():   # SIGTERM outside the loop: the clean-up below still runs
        return _train(opts, given)


def _train(opts: TrainOptions, given: Collection[str] | None) -> Path:
    run = start(opts, given)
    loader = None
    try:
        loader = build_loader(run)
        optim = build_optimization(run.setup.model, run.opts, run.total_steps, run.info.device, run.amp_dtype)
        freeze_old_rows(run.setup.model.model, optim.optimizer)  # an --extend run: the old tasks' rows stay exact
        start_at = resume(run, optim, loader) if run.opts.resume else Progress()
        net = wrap_model(run)
        loop(run, net, loader, optim, start_at)
        try:
            finish(run)
        except KeyboardInterrupt:
            if run.info.is_main and (run.dir / "adapter").is_dir():
                logger.warning("interrupted during the final evaluation; the adapter is saved in %s; --resume %s "
                               "scores it (or mtl-lora-vl eval --adapter %s)", run.dir / "adapter", run.dir,
                               run.dir / "adapter")
            raise
        barrier(run.info)
        if run.info.is_main:
            finish_overwrite(run.dir)   # (a run of no steps: done here)
    except BaseException as e:   # an error or a stop: a SIGTERM in its clean-up (torchrun's when a peer failed, a
        with cleaning_up_after(e):   # scheduler's after a Ctrl-C) neither cuts it short nor replaces what ended it
            clean_up_run(run, loader)
        raise
    close_run(run, loader)
    return run.dir


# Start ------------------------------------------------------------------------------------------
def steps_for_epochs(epochs: float, n_train: int, per_step: int) -> int:
    """Steps for ``epochs`` passes over ``n_train`` rows at ``per_step`` rows a step (the last one partial),
    in exact decimal arithmetic: 1.1 epochs of 90 rows at 1 a step is 99 steps, where 1.1 * 90 in floats
    is 99.00000000000001 and gave 100."""
    return math.ceil(Fraction(str(epochs)) * n_train / per_step)


def start(opts: TrainOptions, given: Collection[str] | None = None) -> Run:
    """Options (a resumed run's own), process group, run directory, precision, seed, and the Setup."""
    if not opts.resume:   # a resumed run's options are the run's own: checked once merged
        opts.validate()
    run_dir = choose_run_dir(opts)  # checked; an old one is replaced only once the setup below is built
    if opts.resume:
        opts = resumed_options(run_dir, opts, given)
        opts.validate()
    info = init_distributed(opts.device)
    try:   # a failure from here on lets the process group go, once (a no-op where all_ready did), after what its
        return _start_in_group(opts, given, run_dir, info)   # own clean-up does first (all_ready's collective)
    except BaseException as e:   # (train() from Python, a notebook under torchrun's variables: the group stayed up)
        with cleaning_up_after(e):
            let_go(info)
        raise


def _start_in_group(opts: TrainOptions, given: Collection[str] | None, run_dir: Path, info: DistInfo) -> Run:
    """``start`` once the process group is up (``start`` lets it go where this fails)."""
    check_workers(opts.workers, info)
    lock = hold_run_dir(run_dir, info) if opts.resume else None   # a resume: before it reads the checkpoint
    try:   # every rank's set-up, before rank 0 claims (and may --overwrite) the run directory
        with main_rank_logging(info.is_main):   # the same data on every rank: its warnings once
            opts, saved, setup, amp_dtype = prepare_rank(opts, run_dir, info, given)
    except BaseException as e:   # an error or a stop (Ctrl-C, Terminated: a resumed run's lock let go, as train()
        # called from Python needs); a SIGTERM in its clean-up (torchrun's once a rank failed) is ignored: it stands
        with cleaning_up_after(e):   # (a Ctrl-C cuts it short: the error still raised below)
            if lock is not None:
                lock.close()
            all_ready(info, e)   # (raises e: every rank told)
        raise
    # every rank's set-up found ready, then the run directory claimed (a default name taken meanwhile: the next free
    # one), two collectives: a Ctrl-C / SIGTERM while the ranks wait in them (raised as they return), another rank's
    # failure (StartupError) or a RunDirError lets the lock go (claim_run_dir puts back a run it set aside; start, the
    # process group). Not in the try above: its all_ready again, a collective the other ranks have left, hangs.
    try:
        all_ready(info)
        run_dir = claim_run_dir(run_dir, opts, info)
    except BaseException as e:
        with cleaning_up_after(e):
            if lock is not None:
                lock.close()
        raise
    total_steps = opts.steps
    held_elsewhere = False
    try:
        if not opts.resume:
            try:
                lock = hold_run_dir(run_dir, info)
            except RunDirError:   # a run training in it now: its directory, nothing of ours to put back there
                held_elsewhere = True
                raise
        if info.is_main and lock is not None:   # (unlocked, a run may be deleting them now)
            for gone in remove_overwrite_leftovers(run_dir):
                logger.info("removed %s, what an earlier --overwrite's cut-short delete left of the run it replaced",
                            gone)
        if info.is_main and 0 < total_steps <= opts.warmup:
            logger.warning("--warmup %d is not shorter than the run's %d steps: the learning rate reaches --lr at "
                           "the last step at best and the cosine decay never starts; lower --warmup", opts.warmup,
                           total_steps)
        workers = default_workers(info) if opts.workers < 0 else opts.workers
        run = Run(opts, info, run_dir, amp_dtype, setup, total_steps, workers, saved, lock=lock)
        if info.is_main and not opts.resume:
            write_config(run_dir, opts, run.resolved)
        if info.is_main:
            logger.info("%s", describe(run))
    except BaseException as e:   # (also a SIGTERM or Ctrl-C before the lock: the replaced run is put back)
        with cleaning_up_after(e):   # (a SIGTERM or Ctrl-C now: as in _train's clean-up)
            undo_start(info, run_dir, opts, lock, held_elsewhere)
        raise
    return run


def prepare_rank(opts: TrainOptions, run_dir: Path, info: DistInfo,
                 given: Collection[str] | None) -> tuple[TrainOptions, dict[str, Any] | None, Setup, torch.dtype]:
    """One rank's set-up, nothing written: the checkpoint to resume (checked), the specs, the Setup, the
    precision; the options completed (an --extend run's shape and base, path defaults, steps for --epochs)."""
    saved = load_checkpoint(run_dir) if opts.resume else None
    done = saved is not None and (int(saved.get("step", 0)) >= opts.steps or stopped_early(saved, opts))
    if saved is not None:   # before the set-up (the sampler refused it after, asking for the same tasks and options)
        check_options_unchanged(saved, run_dir, opts)
        check_options_known(saved, run_dir, opts)
        saved_world = int(saved.get("world_size", 1))
        if saved_world != info.world_size:
            how = (f"{saved_world} processes in all: torchrun --nnodes N --nproc_per_node M with N x M = {saved_world}"
                   if saved_world > 1 else "one process, without torchrun")
            raise CheckpointError(
                f"--resume {run_dir}: the run was trained by {saved_world} process(es) and this is {info.world_size}; "
                f"resume it with the same number ({how}): --batch-size is per process, so the batches would differ")
    try:
        specs = resolve_tasks(opts.tasks)   # read once: checkpoints record them, the adapter saves their text
    except SpecError as e:
        gone = [t for t in opts.tasks.split(",") if looks_like_path(t.strip()) and not Path(t.strip()).is_file()]
        if not (opts.resume and gone):
            raise
        raise SpecError(f"--resume {run_dir}: the run's config.json names the spec file(s) {gone}, which are not "
                        f"there any more ({e}). A resumed run reads its spec files where it recorded them: put the "
                        "file back there (unchanged), or start a new run") from None
    if saved is not None:   # before the backbone loads
        check_specs_unchanged(saved, specs, run_dir)
    if opts.resume and opts.pretrained and Path(opts.pretrained).is_absolute() and not Path(opts.pretrained).exists():
        raise FileNotFoundError(f"--resume {run_dir}: the run's config.json names the base weights {opts.pretrained}, "
                                "which are not there any more. A resumed run reads them where it recorded them: put "
                                "the file back there (unchanged), or start a new run")
    seed_everything(opts.seed)
    early = early_train_splits(specs, opts.data_root, opts.batch_size)   # (an --extend run's: its new tasks)
    if early is not None:   # before the backbone loads (seconds to minutes)
        check_batch_fits(opts.batch_size, early)
    setup = (extend_setup(opts, info.device, specs, given, early) if opts.extend
             else build_setup(opts, info.device, specs, early))
    if saved is not None:
        moved = moved_folders(run_dir, opts)
        check_inputs_unchanged(saved, setup.inputs, run_dir, opts.data_root, setup.source_data_roots,
                               data_root_moved="data_root" in moved)
        check_moves_checkable(saved, moved, setup, run_dir)
    loaded = base_weights_dtype(setup.model.model)
    amp_dtype = resolve_precision(opts.precision, info.device, opts.base_dtype, loaded)
    check_base_precision(opts.precision, amp_dtype, loaded, setup.backbone.casts_inputs)
    trained_in = (saved or {}).get("amp_dtype")
    if trained_in and trained_in != str(amp_dtype):   # --device is a resume's own, and "auto" follows the device
        logger.warning("--resume %s: the run trained in %s up to step %s and continues in %s on %s (--precision %s "
                       "follows the device), so it will not repeat an uninterrupted run", run_dir,
                       trained_in.replace("torch.", ""), saved.get("step"), str(amp_dtype).replace("torch.", ""),
                       info.device, opts.precision)
    if opts.extend:  # config.json and the adapter record its own shape and base model, which the new tasks take
        opts = extended_options(opts, setup, given)
    opts = opts.with_path_defaults(any(kind.generative for kind in setup.kinds.values()))
    check_batch_fits(opts.batch_size, setup.train_splits)   # (its default known now; before the evaluation splits)
    read_eval_splits(setup, [opts.eval_split, *(["val"] if opts.eval_every or opts.eval_val else [])], opts.data_root)
    if opts.predictions:
        check_recordable(setup.kinds)
    if opts.keep_best:
        check_selection_splits(setup.specs, opts.eval_split, info.is_main)
    seed_rank(opts.seed, info.rank)  # every rank builds the same model, then draws its own dropout masks
    n_train = sum(len(split.examples) for split in setup.train_splits.values())
    if opts.epochs:   # config.json records the steps the epochs come to
        opts = replace(opts, steps=steps_for_epochs(opts.epochs, n_train,
                                                    opts.batch_size * opts.accumulate * info.world_size))
    if done and (run_dir / "eval.json").is_file():
        # once every check passed (a refused resume repeats nothing); eval.json is written last: a run stopped in
        # its final evaluation has none (and finishes it here)
        logger.warning("--resume %s: the run finished (step %s/%s, eval.json written); there is nothing to train, "
                       "so this repeats its final evaluation only (to score it again: `mtl-lora-vl eval --adapter "
                       "%s`; to train longer: a new run with more --steps; more tasks: --extend %s)", run_dir,
                       saved["step"], opts.steps, run_dir / RUN_ADAPTER_DIR, run_dir)
    return opts, saved, setup, amp_dtype


# Resume -----------------------------------------------------------------------------------------
def resume(run: Run, optim: Optimization, loader: MultiTaskLoader) -> Progress:
    """Load the last checkpoint into the model, optimizer and loader; drop log rows written after it.
    Returns where the run stands (step, loss window, bad-step streak, replaced-image counts)."""
    saved, run.saved = run.saved or load_checkpoint(run.dir), None
    at = restore_training_state(saved, run.setup.model, optim, loader,
                                run_dir=run.dir, rank=run.info.rank, seed=run.opts.seed,
                                device=run.info.device)
    if run.info.is_main:
        remove_stale_temporaries(run.dir)
        truncate_metrics(run.dir / "metrics.jsonl", at.step, at.best.get("last") if at.best else None)
        for key, folder in record_moved_folders(run.dir, run.opts).items():   # checked and restored: recorded
            logger.info("--resume: the run's --%s moved; %s now records %s", key.replace("_", "-"),
                        run.dir / "config.json", folder)
        record_resolved(run.dir, at.step, run.resolved)
        logger.info("resumed %s at step %d/%d", run.dir, at.step, run.total_steps)
    return at


# The loop ---------------------------------------------------------------------------------------
def loop(run: Run, net: nn.Module, loader: MultiTaskLoader, optim: Optimization, start_at: Progress) -> None:
    """Train from ``start_at.step`` to the end, logging, evaluating and checkpointing on the way (a final
    checkpoint at the last step).

    Ctrl-C or SIGTERM stops it after the step in progress and a checkpoint that ``--resume`` continues
    from, raising :class:`RunStopped` (also after the last step: the final evaluation does not start). A
    second Ctrl-C raises ``KeyboardInterrupt`` at once (the last periodic checkpoint is kept).
    """
    opts, info, model = run.opts, run.info, run.setup.model
    step, bad = start_at.step, start_at.bad_streak  # bad: the non-finite steps in a row
    log = MetricsLog(run.dir, info.is_main, resumed_at=step if run.opts.resume else None)
    progress = progress_bar(info.is_main, step, run.total_steps)
    batches = iter(loader)
    if opts.compile:   # a graph per set of present tasks and mode: warn as they reach Dynamo's recompile limit
        watch_compiled(net, model.router)   # (its route scopes are inside the compiled forward: it notes its batches)
    window = LossWindow(start_at.log_window)

    replaced_here = dict.fromkeys(loader.task_names, 0)   # this rank's consumed rows given a substitute image
    skips = ScalerSkips(optim, start_at.scaler_skips)   # steps fp16 loss scaling skipped (the same on every rank)

    def replaced() -> dict[str, int]:  # so far, every rank and the runs before a resume; all-reduces
        now = replaced_rows(replaced_here, info)
        return {k: now.get(k, 0) + start_at.replaced.get(k, 0) for k in sorted({*now, *start_at.replaced})}

    best = Best.from_state(start_at.best) if opts.keep_best else None

    def checkpoint() -> None:  # every rank is at this point of the same step
        progress_now = Progress(step, window.losses, bad, replaced(), skips.state,
                                best.state_dict() if best else {})
        save_training_checkpoint(run.dir, model, optim, loader, progress_now, info,
                                 {**run.setup.inputs, "options": recorded_options(run.dir, opts),
                                  "amp_dtype": str(run.amp_dtype)})
        if info.is_main and opts.overwrite:   # the new run can be resumed: the run it replaces goes now
            finish_overwrite(run.dir)

    with stop_at_step_boundary() as stop:
        try:
            model.train()
            while step < run.total_steps and not (best and best.exhausted(opts.patience)):
                signum = max_over_ranks(stop.signum, info)  # a signal to one rank stops all at this step
                if signum:
                    checkpoint()
                    barrier(info)  # rank 0 has written it before any rank exits (torchrun stops the rest then)
                    if info.is_main:
                        logger.warning("stopped at step %d; checkpoint saved. Continue the run with --resume %s",
                                       step, run.dir)
                    raise RunStopped(run.dir, step, signum)
                result = forward_backward(net, batches, optim, accumulate=opts.accumulate,
                                          backbone=run.setup.backbone, amp_dtype=run.amp_dtype, info=info)
                window.count(result.samples)
                for task, n in result.replaced.items():
                    replaced_here[task] += n
                lr = optim.lr  # the rate this step trains at (the scheduler moves on in optimizer_step)
                if result.finite:
                    bad = 0
                    if not optimizer_step(optim, opts.grad_clip):   # fp16 loss scaling skipped it
                        skips.add(step + 1, run.dir)
                    window.add(result.losses)
                else:  # the batch is used up; the learning-rate schedule does not advance
                    bad += 1
                    with main_rank_logging(info.is_main):   # the ranks agreed on it
                        skip_bad_step(optim, bad, step + 1, opts.max_bad_steps, run.dir, run.amp_dtype)
                step += 1
                progress.update(1)

                if step % opts.log_every == 0 or step == run.total_steps:
                    row = {**window.flush(step, lr, info), **replaced(), **skips.flush()}
                    log.log(row)
                    if "loss" in row:  # not when every step of the window was skipped
                        progress.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{row['samples_per_s']:.0f}")
                with window.paused():  # evaluation and checkpoints are not training throughput
                    if opts.eval_every and step % opts.eval_every == 0 and step < run.total_steps:
                        validate(run, step, log, best)
                        model.train()
                        if best and best.exhausted(opts.patience) and step % opts.log_every and window.losses:
                            log.log({**window.flush(step, lr, info), **replaced(), **skips.flush()})   # stopped early
                    if step % opts.save_every == 0 and step < run.total_steps:
                        checkpoint()
        except KeyboardInterrupt:  # a second Ctrl-C: the step in progress is half done, so nothing is saved
            if info.is_main:
                logger.warning("interrupted during step %d, not saved; --resume %s continues from the last "
                               "periodic checkpoint, if there is one", step + 1, run.dir)
            raise   # the command exits 130, so `train && evaluate` stops
        except BaseException:   # an error: a signal from here on is noted, not told "stopping after this step"
            stop.leaving = True
            raise
        finally:
            progress.close()
        if info.is_main:
            skips.report(step)
        # the trained state, before the final validation: a failure or Ctrl-C in it loses no step. A signal while
        # it saves waits for it, as in the loop (outside, SIGTERM cut it short: the steps since the last save lost)
        checkpoint()
        signum = max_over_ranks(stop.signum, info)   # (in the block: after it, a SIGTERM came before a Ctrl-C was read)
        if signum:   # a signal in the last step or its save: stopped before the evaluation
            if info.is_main:
                logger.warning("stopped at step %d, before the final evaluation; checkpoint saved. Continue the run "
                               "with --resume %s (it trains no further and evaluates)", step, run.dir)
            raise RunStopped(run.dir, step, signum)
    if stop.signum:   # one too late for the check: sent again, to the handler outside (Terminated, KeyboardInterrupt)
        signal.raise_signal(stop.signum)
    if best is not None:
        try:
            run.selected = finish_with_best(run, best, step, log)
        except KeyboardInterrupt:   # Ctrl-C, or SIGTERM (Terminated): the trained steps are checkpointed above
            if info.is_main:
                logger.warning("interrupted during the final validation (--keep-best); step %d is checkpointed: "
                               "--resume %s finishes the run without training again", step, run.dir)
            raise
        checkpoint()   # the chosen adapter, and best.last = step (a resume does not score the last step again)


# Finish -----------------------------------------------------------------------------------------
def finish(run: Run) -> None:
    """Rank 0 writes the adapter files; every rank scores its shard of zero-shot vs adapted on
    ``--eval-split``; rank 0 writes eval.json, report.md and plots (and predictions/ with ``--predictions``)."""
    opts, setup = run.opts, run.setup
    model = setup.model
    if run.info.is_main:
        save_adapter(model.model, run.dir / "adapter", heads=dict(model.heads.items()),
                     task_specs={s.name: s for s in setup.specs if s.source_file},
                     base={"backbone": opts.backbone, "pretrained": opts.pretrained,
                           # an explicit --base-dtype is what eval --adapter loads by default (auto: its own rule)
                           **({"base_dtype": opts.base_dtype} if opts.base_dtype != "auto" else {}),
                           **({"image_max_pixels": opts.image_max_pixels} if opts.image_max_pixels else {})},
                     kinds=setup.kinds, overwrite=True,
                     data_roots=setup.recorded_roots(opts.data_root))
    # (rank 0 writes each task's file as the task is scored, before eval.json, which marks a finished run)
    rows = PredictionFiles(run.dir / "predictions") if opts.predictions and run.info.is_main else None
    with sharded_evaluation(run.info), main_rank_logging(run.info.is_main):   # every rank warns alike: rank 0 says it
        result = evaluate_setup(setup, split=opts.eval_split, data_root=opts.data_root, device=run.info.device,
                                dtype=run.amp_dtype, batch_size=opts.eval_batch_size, workers=run.workers,
                                zero_shot=not opts.skip_zero_shot, predictions=rows)
        if opts.eval_val:
            result["val"] = evaluate_adapted(setup, split="val", data_root=opts.data_root, device=run.info.device,
                                             dtype=run.amp_dtype, batch_size=opts.eval_batch_size,
                                             workers=run.workers, scored=result)
    if not run.info.is_main:
        return
    result["base"] = run_base(opts.backbone, opts.pretrained, base_weights_dtype(model.model), run.amp_dtype)
    result["trained_tasks"] = run.trained
    if run.selected:
        result["selected"] = run.selected
    if opts.extend:
        result["extended_from"] = {"run": str(Path(opts.extend).resolve()), "tasks": setup.extended_from,
                                   "trained_adapter_values": setup.new_adapter_values}
    print(write_outputs(run.dir, result, model.model))  # the finished run's table: the result, on stdout
    logger.info("wrote the adapter to %s, and eval.json, report.md%s and plots/ to %s", run.dir / "adapter",
                ", predictions/" if rows is not None else "", run.dir)
