"""Training checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint holds only what training changes, not the frozen base model. ``checkpoint.pt`` (written by
rank 0) is one ``torch.save`` file of tensors and plain values, loaded with ``weights_only=True``:

    checkpoint_version  2 (files of 0.1.x have no version: 1)
    step                optimizer steps done
    trainable           adapter tensors and heads (MultiTaskModel.trainable_state)
    optimizer, scheduler, scaler      (Optimization.state_dict)
    sampler             the multi-task sampler after the consumed batches (the same on every rank)
    log_window          losses logged since the last metrics row
    world_size          processes of the run
    rng_state           rank 0's generators: python, numpy, torch (CPU), cuda (every visible GPU's) and, on a
                        GPU, cuda_own (its own GPU's); see .rng
    rng                 rank 0's torch CPU generator alone (what version 1 saved and reads)
    bad_streak          skipped (non-finite) steps in a row up to ``step``
    replaced_images     training rows given a substitute image so far, per task, summed over ranks
    spec_sha256         each task's spec file (SHA-256): a resume refuses specs edited since the checkpoint
    data_sha256         each trained task's training rows (SHA-256, ``Split.rows_sha256``): a resume refuses
                        data that changed since the checkpoint (the sampler's state indexes those rows)
    options             the run's recorded options, every one this version has (a resume refuses a config.json
                        edited since, and one the record lacks unless the run's value does what runs did
                        before the option existed: OPTIONS_ADDED)
    package_version     the mtl-lora-vl that wrote it (named when a resume is refused for an option it lacks)
    amp_dtype           the autocast dtype the run trained in
    scaler_skips        fp16 steps the grad scaler skipped: two counts, in all and already logged
    best                --keep-best: the best validation score so far, its step and its adapter and heads
                        (validation.Best.state_dict)
    source_sha256       an --extend run's source adapter (its record of file digests): a resume refuses
                        another one (the checkpoint holds only what trains; the frozen rest comes from it)
    base_samples        a few values of each frozen base weight (io.identity.weight_sample): a resume refuses
                        base weights replaced since under the recorded path (the frozen base is read again)

Every other rank r writes what is its own -- its generators and its loss window (each rank averages its
own losses; the log row is their mean) -- to ``checkpoint-rank{r}.pt`` beside it, atomically too:
``{"checkpoint_version", "rank", "states": {step: {"rng_state", "log_window"}}}``, holding its last two
checkpoints. A periodic checkpoint is written after the rank files (behind a barrier), so a
``checkpoint.pt`` of step s always finds step s in every rank file, whichever process was killed first.
The loader needs no state of its own beyond the sampler: its rows and workers are seeded from (seed,
rank, step) (:mod:`mtl_lora_vl.data.seeding`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..data.common import same_folder
from ..data.loader import MultiTaskLoader
from ..distributed import DistInfo, barrier
from ..io.atomic import atomic_file
from ..io.identity import same_weights
from ..io.layout import ADAPTER_CONFIG, CHECKPOINT_NAME, RUN_ADAPTER_DIR, RUN_OUTPUTS, is_adapter_dir
from ..log import warn_user
from ..multitask import MultiTaskModel, Setup
from ..options import TrainOptions
from ..run_overwrite import replaced_dir
from ..rundir import recorded_options
from ..tasks.spec import TaskSpec, spec_digests
from ..wording import agree, tasks_named
from .optim import Optimization
from .rng import rng_state, seed_rank, set_rng_state

CHECKPOINT_VERSION = 2
_REQUIRED = ("step", "trainable", "optimizer", "scheduler", "sampler")   # in every version's checkpoint.pt
_KEEP = 2     # checkpoints whose generator states a rank file keeps
#: The options TrainOptions gained since checkpoints record the run's options, each with the value that does what
#: runs did before it existed. An option added to TrainOptions (and to the record) must be added here, with that
#: value -- not necessarily its default: a resume of an older run takes the default, which may differ.
OPTIONS_ADDED: dict[str, Any] = {"image_max_pixels": None, "image_reading": None, "keep_best": False, "patience": 0,
                                 "predictions": False}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit this run."""


@dataclass(frozen=True)
class Progress:
    """Where a run stands at a checkpoint, besides the model, optimizer and loader (which restore in place)."""

    step: int = 0
    log_window: dict[str, list[float]] = field(default_factory=dict)  # this rank's losses since the last log row
    bad_streak: int = 0                                               # skipped (non-finite) steps in a row
    replaced: dict[str, int] = field(default_factory=dict)            # replaced training rows per task, all ranks
    scaler_skips: tuple[int, int] = (0, 0)                            # fp16-skipped steps: in all, and logged
    best: dict[str, Any] = field(default_factory=dict)                # --keep-best: validation.Best.state_dict()


def rank_file(run_dir: str | Path, rank: int) -> Path:
    """Where rank ``rank`` (> 0) keeps its generator states."""
    return Path(run_dir) / f"checkpoint-rank{rank}.pt"


def save_checkpoint(state: dict[str, Any], run_dir: str | Path) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` via a temporary file and an atomic rename."""
    final = Path(run_dir) / CHECKPOINT_NAME
    with atomic_file(final, overwrite=True, what="save_checkpoint") as tmp:
        torch.save(state, tmp)
    return final


def _read(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:   # the file is there and may be whole: no permission, a failing disk
        raise CheckpointError(f"{path}: cannot open the checkpoint ({e.strerror or e}); check that it can be read "
                              "by you (its owner and mode) and that its disk is reachable") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({path.stat().st_size} bytes: {why}); it is damaged (truncated "
            "or copied incompletely; a run killed while saving keeps its previous checkpoint.pt whole). Put back a "
            f"good copy of it, or start the run again with --out {path.parent} --overwrite") from None


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/checkpoint.pt`` (tensors and plain values only)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file() and is_adapter_dir(Path(run_dir) / RUN_ADAPTER_DIR):
        raise CheckpointError(
            f"{path}: no checkpoint to resume from, but the run finished: its adapter is in "
            f"{Path(run_dir) / RUN_ADAPTER_DIR} (the checkpoint was deleted after it). There is nothing to resume: "
            f"score it with `mtl-lora-vl eval --adapter {Path(run_dir) / RUN_ADAPTER_DIR}`, teach it more tasks with "
            f"--extend {Path(run_dir)}, or train a new run from scratch with more --steps (another --out)")
    aside = replaced_dir(Path(run_dir))
    if not path.is_file() and aside.is_dir():   # an --overwrite killed before its first checkpoint (no undo ran)
        raise CheckpointError(
            f"{path}: no checkpoint to resume from: an --overwrite of {run_dir} was stopped before its first "
            f"checkpoint, and the run it was replacing is kept in {aside}. To keep that run, delete {run_dir} and "
            f"rename {aside} back to {run_dir}; to replace it, delete {aside} and start again with --out {run_dir} "
            "--overwrite")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint to resume from (the run saves one every --save-every steps and on Ctrl-C, and "
            f"stopped before its first); start it again with --out {Path(run_dir)} --overwrite"
        )
    return _check_checkpoint(_read(path), path)


def _check_checkpoint(doc: Any, path: Path) -> dict[str, Any]:
    """``doc`` when it is a training checkpoint this version reads; else a CheckpointError saying what it is."""
    again = (f"put back the run's own {CHECKPOINT_NAME}, or start the run again with --out {path.parent} "
             "--overwrite")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: holds a {type(doc).__name__}, not a training checkpoint (another file saved "
                              f"under its name?); {again}")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (it has no {', '.join(missing)}: a model's or an "
                              f"adapter's weights saved under its name?); {again}")
    version = doc.get("checkpoint_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: written by a newer mtl-lora-vl (checkpoint version {version}; this one reads "
                              f"versions up to {CHECKPOINT_VERSION}); resume the run with the version that wrote it")
    return doc


def training_state(model: MultiTaskModel, optim: Optimization, loader: MultiTaskLoader, progress: Progress,
                   world_size: int = 1, inputs: dict[str, Any] | None = None,
                   device: torch.device | None = None) -> dict[str, Any]:
    """Everything ``--resume`` needs to continue exactly (rank 0's part; see the module docstring).
    ``inputs``: the digests of what the run reads (``Setup.inputs``) and its options, which a resume checks;
    ``device``: the device rank 0 trains on (a GPU's generator is saved as that process's own)."""
    return {"checkpoint_version": CHECKPOINT_VERSION, "step": progress.step, "trainable": model.trainable_state(),
            **optim.state_dict(), "sampler": loader.state_dict(), "log_window": progress.log_window,
            "world_size": world_size, "rng_state": rng_state(device), "rng": torch.get_rng_state(),
            "bad_streak": progress.bad_streak, "replaced_images": dict(progress.replaced),
            "scaler_skips": list(progress.scaler_skips), **({"best": progress.best} if progress.best else {}),
            "package_version": __version__, **(inputs or {})}


def check_options_known(saved: dict[str, Any], run_dir: str | Path, opts: TrainOptions) -> None:
    """Refuse to resume a run whose checkpoint records its options without one this version has (it was written
    before the option existed: config.json lacks it too, so the run would continue with today's default) unless
    the run's value is :data:`OPTIONS_ADDED`'s, what runs did before it; an option missing from that table is
    refused as unknown. A checkpoint written before options were recorded is not checked."""
    recorded = saved.get("options")
    if not isinstance(recorded, dict):
        return
    now = {k: v for k, v in recorded_options(Path(run_dir), opts).items() if k not in recorded}
    wrote = (f"mtl-lora-vl {saved['package_version']}" if saved.get("package_version")
             else "an earlier mtl-lora-vl (one that did not record its version)")
    flags = {k: "--" + k.replace("_", "-") for k in now}
    unknown = sorted(k for k in now if k not in OPTIONS_ADDED)
    if unknown:
        raise CheckpointError(
            f"--resume {run_dir}: the run's checkpoint was written by {wrote}, before the option(s) "
            f"{', '.join(flags[k] for k in unknown)} existed, and this version does not know which value does what "
            f"that run did (it would continue with {', '.join(f'{flags[k]} {now[k]!r}' for k in unknown)}); resume "
            "the run with that version, or start a new run")
    differ = sorted(k for k in now if now[k] != OPTIONS_ADDED[k])
    if differ:
        fix = ", ".join(f'"{k}": {json.dumps(OPTIONS_ADDED[k])}' for k in differ)
        raise CheckpointError(
            f"--resume {run_dir}: the run's checkpoint was written by {wrote}, before the option(s) "
            f"{', '.join(flags[k] for k in differ)} existed: the run trained as "
            f"{', '.join(f'{flags[k]} {OPTIONS_ADDED[k]!r}' for k in differ)} does, and would continue with "
            f"{', '.join(f'{flags[k]} {now[k]!r}' for k in differ)}. To continue it as it trained, write {fix} into "
            f"{Path(run_dir) / 'config.json'}; or start a new run")


def check_specs_unchanged(saved: dict[str, Any], specs: Iterable[TaskSpec], run_dir: str | Path) -> None:
    """Refuse to resume a run whose task spec files changed since its checkpoint (a checkpoint written before
    the digests were recorded is not checked): the rest of the run would train on other settings, and the
    finished adapter would record the edited specs as if the whole run had used them."""
    specs = list(specs)
    recorded, now = saved.get("spec_sha256") or {}, spec_digests(specs)
    changed = [s for s in specs if s.name in recorded and s.name in now and now[s.name] != recorded[s.name]]
    if changed:
        files = ", ".join(str(s.source_file) for s in changed)
        raise CheckpointError(f"--resume {run_dir}: the task spec file(s) {files} changed since the run's checkpoint; "
                              "put them back as they were to continue it, or start a new run with the edited specs")


def check_inputs_unchanged(saved: dict[str, Any], inputs: dict[str, Any], run_dir: str | Path,
                           data_root: str | None = None, recorded_roots: Mapping[str, str] | None = None,
                           data_root_moved: bool = False) -> None:
    """Refuse to resume a run whose training rows, or whose ``--extend`` source adapter, changed since its
    checkpoint (a checkpoint written before these digests were recorded is not checked). The sampler's state
    indexes the rows it was saved with, so the rest of the run would draw other rows -- silently when their
    number is the same; and an extend run's checkpoint holds only what trains, so the frozen A, B_i and old
    tasks would come from the changed source. An --extend run's old task whose own folder is gone would be
    scored on --data-root's files, other data than the run's: refused too, as is one gone when the run started
    and back now (not one whose folder is the resumed run's ``data_root``: the same files, unless ``data_root_moved``
    -- given in place of config.json's, gone -- and it is the folder the adapter records for the task,
    ``recorded_roots``: the run read it from the old --data-root); so are base weights replaced under the recorded
    path (``base_samples``: the frozen base is read again, not saved)."""
    recorded = saved.get("data_sha256") or {}
    changed = sorted(t for t, d in (inputs.get("data_sha256") or {}).items() if t in recorded and recorded[t] != d)
    if changed:
        raise CheckpointError(
            f"--resume {run_dir}: the training rows of {tasks_named(changed)} changed since the run's checkpoint "
            "(other data files, another --data-root, data edited meanwhile, or a newer mtl-lora-vl that reads the same "
            "files into other rows: hf_datasets rows of one image's bytes without an image_id are one image now); "
            "resume with the data and package it trained with, or start a new run")
    lost = {t: r for t, r in (saved.get("extend_task_roots") or {}).items()
            if t not in (inputs.get("extend_task_roots") or {}) and not same_folder(r, data_root)}
    if lost:
        raise CheckpointError(
            f"--resume {run_dir}: the run scores the extended adapter's {tasks_named(sorted(lost))} on the files under "
            f"{sorted(set(lost.values()))}, which are gone; resumed, it would score them on other files (those of "
            "--data-root). Put the folder(s) back, or write where they moved to under \"data_roots\" in the "
            f"extended adapter's {ADAPTER_CONFIG}")
    back = {t: r for t, r in (inputs.get("extend_task_roots") or {}).items()
            if "extend_task_roots" in saved and t not in (saved["extend_task_roots"] or {})}
    if back:   # (gone when the run started: scored on --data-root, and a task saved without its state rebuilt there)
        raise CheckpointError(
            f"--resume {run_dir}: the run scores the extended adapter's {tasks_named(sorted(back))} on --data-root's "
            f"files, as the folder(s) the adapter records, {sorted(set(back.values()))}, were gone when it started; "
            "they are back, so resumed it would score them on other files. Move the folder(s) away again to finish "
            "the run as it started, or start a new run")
    came = {t: r for t, r in (recorded_roots or {}).items() if data_root_moved and "extend_task_roots" in saved
            and t not in (saved["extend_task_roots"] or {}) and same_folder(r, data_root)}
    if came:   # (own_folders leaves out a folder that is --data-root: read from it, and not in inputs)
        raise CheckpointError(
            f"--resume {run_dir}: the run scores the extended adapter's {tasks_named(sorted(came))} on the files of "
            f"its earlier --data-root, as the folder(s) the adapter records, {sorted(set(came.values()))}, were gone "
            f"when it started; the --data-root {data_root} given now is that folder, back, so resumed it would rebuild "
            "and score them on other files (the run records no digest of them: the same files cannot be told). To "
            "continue it as it started, move that folder to another name and give that with --data-root (its "
            "recorded place gone again, the old tasks are read from --data-root, as the run read them), with the "
            "files the earlier --data-root held; or start a new run")
    was, now = saved.get("base_samples") or {}, inputs.get("base_samples") or {}
    differ = [n for n in was if n in now and not same_weights(now[n], was[n])]
    if differ:
        raise CheckpointError(
            f"--resume {run_dir}: the base model's weights differ from those the run trained on ({len(differ)} of "
            f"{len(was)} sampled, e.g. {', '.join(differ[:3])}): the weights file or folder its config.json names "
            "(--backbone, --pretrained) was replaced since the checkpoint, which holds only what trains. Put the "
            "original weights back to continue, or start a new run")
    was, now = saved.get("source_sha256"), inputs.get("source_sha256")
    if was and now and was != now:
        raise CheckpointError(
            f"--resume {run_dir}: the adapter this run extends changed since the run's checkpoint (retrained, or "
            "replaced); its frozen tensors and old tasks would come from the new one while the new tasks trained "
            "against the old. Put the adapter back to continue, or start the --extend run again")


def check_moves_checkable(saved: dict[str, Any], moved: dict[str, str], setup: Setup, run_dir: str | Path) -> None:
    """Refuse a folder given in place of a recorded one that is gone (``moved``: option -> folder) when the
    checkpoint has no digest to show that it holds the same inputs (a checkpoint written before runs recorded
    them): the training rows of every file-based task for ``--data-root``, the source adapter for ``--extend``."""
    unchecked = []
    if "data_root" in moved:
        digests = saved.get("data_sha256") or {}
        files = [s.name for s in setup.specs if s.name in setup.train_splits and s.data.source == "files"]
        if any(t not in digests for t in files):
            unchecked.append(f"--data-root {moved['data_root']} (the training rows of {tasks_named(files)})")
    if "extend" in moved and not saved.get("source_sha256"):
        unchecked.append(f"--extend {moved['extend']} (the source adapter)")
    if unchecked:
        raise CheckpointError(
            f"--resume {run_dir}: the run's checkpoint was written before runs recorded what they read, so it "
            f"cannot show that {' and '.join(unchecked)} {agree('hold', len(unchecked))} what the run trained "
            "on; put the recorded folder(s) back where config.json names them to continue, or start a new run")


def save_rank_state(run_dir: str | Path, rank: int, step: int, log_window: dict[str, list[float]],
                    device: torch.device | None = None) -> Path:
    """Add this process's generators (``device``: the one it trains on) and loss window at ``step`` to its rank
    file (keeping the last two steps)."""
    path = rank_file(run_dir, rank)
    states: dict[int, Any] = {}
    if path.is_file():
        try:
            states = {int(s): v for s, v in _read(path)["states"].items() if int(s) < step}
        except (CheckpointError, KeyError, TypeError, ValueError, AttributeError):
            states = {}
    states[step] = {"rng_state": rng_state(device), "log_window": log_window}
    keep = sorted(states)[-_KEEP:]
    doc = {"checkpoint_version": CHECKPOINT_VERSION, "rank": rank, "states": {s: states[s] for s in keep}}
    with atomic_file(path, overwrite=True, what="save_checkpoint") as tmp:
        torch.save(doc, tmp)
    return path


def save_training_checkpoint(run_dir: str | Path, model: MultiTaskModel, optim: Optimization,
                             loader: MultiTaskLoader, progress: Progress, info: DistInfo,
                             inputs: dict[str, Any] | None = None) -> None:
    """Every rank's part of a checkpoint: rank r > 0 its rank file, rank 0 ``checkpoint.pt`` after a barrier,
    once every rank file holds ``step``. Every rank calls it at the same step (periodic saves, the end, and a
    stop: the loop agrees on stopping across ranks before it saves)."""
    if not info.is_main:
        save_rank_state(run_dir, info.rank, progress.step, progress.log_window, info.device)
    barrier(info)
    if info.is_main:
        save_checkpoint(training_state(model, optim, loader, progress, info.world_size, inputs, info.device), run_dir)


def _rank_state(run_dir: str | Path | None, rank: int, step: int) -> dict[str, Any] | None:
    """Rank ``rank``'s ``{"rng_state", "log_window"}`` at ``step`` from its rank file, or None when it has none."""
    if run_dir is None or not rank_file(run_dir, rank).is_file():
        return None
    try:
        states = {int(s): v for s, v in _read(rank_file(run_dir, rank))["states"].items()}
    except (CheckpointError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return states.get(step)


def restore_training_state(state: dict[str, Any], model: MultiTaskModel, optim: Optimization,
                           loader: MultiTaskLoader, *, run_dir: str | Path | None = None, rank: int = 0,
                           seed: int = 0, device: torch.device | None = None) -> Progress:
    """Put a :func:`training_state` back, and this rank's generators (its saved GPU stream onto ``device``, the
    GPU it trains on now); returns the run's :class:`Progress` with this rank's log window (a checkpoint
    written before a field was saved gives its default).

    A version-1 checkpoint restores the torch CPU generator alone (what it saved), on every rank. A rank
    whose state for the checkpoint's step is missing (the run was killed between the rank files and
    ``checkpoint.pt`` of an unsynchronised save) continues with streams seeded from (seed, rank, step)
    and rank 0's loss window, with a warning: the run then no longer matches an uninterrupted one bit
    for bit.
    """
    model.load_trainable_state(state["trainable"])
    optim.load_state_dict(state)
    loader.load_state_dict(state["sampler"])
    step = int(state["step"])
    log_window = state.get("log_window", {})
    if "rng_state" not in state:          # version 1
        torch.set_rng_state(state["rng"])
    elif rank == 0:
        set_rng_state(state["rng_state"], device)
    else:
        mine = _rank_state(run_dir, rank, step)
        if mine is None:
            warn_user(f"rank {rank}: no state for step {step} in {rank_file(run_dir or '.', rank)} (the run "
                          f"stopped between writing it and {CHECKPOINT_NAME}); this rank continues with fresh "
                          "generators, so the resumed run will not repeat an uninterrupted one exactly")
            seed_rank(seed, rank, step)
        else:
            set_rng_state(mine["rng_state"], device)
            log_window = mine["log_window"]
    replaced = {str(t): int(n) for t, n in state.get("replaced_images", {}).items()}
    skips = tuple(int(n) for n in state.get("scaler_skips", (0, 0)))
    return Progress(step, log_window, int(state.get("bad_streak", 0)), replaced, skips, state.get("best", {}))


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporaries a run killed while writing left in ``run_dir`` (a ``.checkpoint.pt.*.tmp`` as large
    as the checkpoint, a ``.adapter.*.tmp/``): nothing reads them, and each kill left another. Returns them."""
    gone = []
    stale = [t for pattern in RUN_OUTPUTS for t in Path(run_dir).glob(f".{pattern}.*.tmp")]
    stale += Path(run_dir).glob("plots/.*.png.*.tmp")   # report._save's temporaries
    for tmp in stale:
        shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
        gone.append(tmp)
    if gone:
        warn_user(f"{run_dir}: removed {len(gone)} unfinished file(s) a killed run left "
                  f"({', '.join(p.name for p in gone)})")
    return gone
