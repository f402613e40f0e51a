"""Run directories: new, resumed, or replaced with --overwrite; never silently reused.

A run directory is chosen (and checked) before anything is built, and claimed -- an old one replaced --
only after the run's setup was built: a run that fails at start-up (an unknown task, a bad backbone or
spec) leaves an existing directory as it was. Without ``--out`` the run takes the first free name of
``runs/TASKS-METHOD-STAMP``, ``...-2``, ``...-3``: two runs started in the same second get one each. Under
torchrun, rank 0 claims the directory and every rank takes its answer (the directory, or the error). ``config.json``
records the run's options with paths made absolute, so ``--resume`` works from any working directory, and under
``resolved`` what the ``auto`` options and those a resume takes anew came to (:func:`record_resolved`). While a run
trains, its rank 0 holds ``RUN/.lock`` (an advisory ``flock``, let go however the process ends): a ``--resume`` or
``--overwrite`` of a run still training is refused, not run beside it (the two wrote one metrics.jsonl, checkpoint and
adapter).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Collection
from dataclasses import asdict, fields
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any

from .distributed import DistInfo, broadcast_from_main
from .io.atomic import atomic_file, holds
from .io.base_record import absolute_base
from .io.layout import RUN_OUTPUTS
from .io.locks import LockHeld, NotALockFile, lock_holder, take_lock
from .log import warn_user
from .options import RESOLVED, TrainOptions, type_problem
from .run_overwrite import replaced_dir, undo_overwrite
from .tasks.spec import looks_like_path
from .training.stopping import stop_signals_ignored
from .whole_files import read_whole

#: Options a resumed run takes from the command line; every other one comes from the run's config.json.
RESUME_OWN = ("resume", "workers", "device")
#: Folders a resumed run takes from the command line when the one config.json records is gone (moved data or
#: adapter); the checkpoint's digests of the training rows and the extended adapter refuse other contents.
RESUME_RELOCATABLE = ("data_root", "extend")

#: The lock file a training run's rank 0 holds in its directory.
RUN_LOCK = ".lock"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it exists, or there is nothing to resume)."""


def hold_run_dir(run: Path, info: DistInfo) -> IO | None:
    """Rank 0: lock ``run/.lock`` for as long as the returned file stays open (``close()`` it when the run ends; the
    system lets go of it however the process ends). A run training in ``run`` now is refused, on every rank. None on
    other ranks, where there is no ``flock`` (not POSIX) and where the file system refuses it (warned). Every rank
    must call it."""
    fh, error = None, None
    if info.is_main:
        try:
            fh = take_lock(run / RUN_LOCK)
        except LockHeld as e:
            error = (f"{run}: a run is training in it now (process {e.holder}); wait for it to finish or stop it "
                     "(Ctrl-C saves a checkpoint), then --resume it, or choose another --out")
        except NotALockFile as e:
            error = f"{run}: {e}"
        except OSError as e:   # a file system without flock (some network and FUSE mounts): trained unlocked
            warn_user(f"{run}: cannot lock {RUN_LOCK} ({e.strerror or e}; its file system may not support flock), "
                      "so a --resume or --overwrite of it is not refused while it trains; start neither until it ends")
    error = broadcast_from_main(error, info)
    if error is not None:
        raise RunDirError(error)
    return fh


def _refuse_training(run: Path, what: str) -> None:
    """``what`` (--resume, --overwrite) of ``run`` refused while a run trains in it (its rank 0 holds the lock)."""
    holder = lock_holder(run / RUN_LOCK)
    if holder is not None:
        raise RunDirError(f"{what} {run}: a run is training in it now (process {holder}); wait for it to finish or "
                          "stop it (Ctrl-C saves a checkpoint), then run again")


def choose_run_dir(opts: TrainOptions) -> Path:
    """The run directory of a new run (checked, not yet touched) or of a resumed one."""
    if opts.resume:
        run = Path(opts.resume)
        if run.exists() and not run.is_dir():
            hint = f": {run.parent}" if (run.parent / "config.json").is_file() else ""
            raise RunDirError(f"--resume {run}: a file, not a folder; give the --out folder of a run (the folder "
                              f"that holds config.json and checkpoint.pt{hint})")
        if not run.is_dir():
            raise RunDirError(f"--resume {run}: no such folder; give the --out folder of a run")
        if not (run / "config.json").is_file():
            raise RunDirError(f"--resume {run}: not a run directory (no config.json); give the --out folder of a run")
        _refuse_training(run, "--resume")
        refuse_linked_outputs(run)
        return run
    if not opts.out:  # a new name: claim_run_dir takes the first free one of NAME, NAME-2, ...
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{_tasks_label(opts.tasks)}-{opts.method}-{stamp}"
    run = Path(opts.out)
    if run.is_symlink() and not run.exists():
        raise RunDirError(f"--out {run}: is a symbolic link to {os.readlink(run)}, which does not exist (or is a "
                          "loop of links); remove the link, or create its target, or choose another --out")
    if run.exists() and not run.is_dir():
        raise RunDirError(f"--out {run}: is a file, not a directory; choose another --out")
    _check_parent(run)
    if opts.overwrite and run.is_symlink():   # renaming it aside would move the link, and the run would land beside it
        raise RunDirError(f"--out {run}: is a symbolic link (to {run.resolve()}); --overwrite replaces a directory, "
                          f"not a link: give its target, --out {run.resolve()}")
    if opts.extend and holds(run, opts.extend):
        raise RunDirError(f"--out {run}: holds the adapter that --extend {opts.extend} extends; choose another --out")
    if opts.overwrite and holds(run, Path.cwd()) and run.is_dir() and any(run.iterdir()):
        raise RunDirError(f"--out {run}: is the current directory or holds it, and --overwrite would delete it "
                          "with everything in it; choose another --out (e.g. a new folder)")
    if opts.overwrite:
        _refuse_unfinished_overwrite(run)
    if opts.overwrite and run.is_dir() and any(run.iterdir()):
        _refuse_training(run, "--overwrite: --out")
        if not (run / "config.json").is_file():
            raise RunDirError(f"--out {run}: is not empty and is not a run directory (no config.json), so --overwrite "
                              "does not replace it; choose another --out (a new or empty folder)")
        if not _is_run_config(run / "config.json"):   # a Hugging Face model folder has a config.json too
            raise RunDirError(f"--out {run}: is not empty and its config.json is not a training run's (it records no "
                              "run options: tasks, method, out), so it is not a run directory and --overwrite does "
                              "not replace it; choose another --out (a new or empty folder)")
        inside = [f"--{k.replace('_', '-')} {v}" for k, v in _inputs(opts) if holds(run, v)]
        if inside:
            raise RunDirError(f"--out {run}: --overwrite would replace the folder that holds {', '.join(inside)}, "
                              "which this run reads; move it out or choose another --out")
    if run.exists() and any(run.iterdir()) and not opts.overwrite:
        if not _is_run_config(run / "config.json"):   # (--overwrite and --resume both refuse a folder of your own)
            raise RunDirError(f"--out {run}: the directory exists, is not empty and is not a run directory (no "
                              "training run's config.json), so neither --overwrite nor --resume takes it; choose "
                              "another --out (a new or empty folder)")
        raise RunDirError(
            f"--out {run}: the directory exists and is not empty; pass --overwrite to replace it, "
            f"--resume {run} to continue it, or choose another --out"
        )
    return run


def refuse_linked_outputs(run: Path, outputs: Collection[str] = RUN_OUTPUTS, flag: str = "--resume",
                          writer: str = "the run", place: str = "the run folder") -> None:
    """Refuse a ``run`` folder holding a link out of it where ``writer`` writes (``outputs``: glob patterns), before
    anything is written: a run folder unpacked from someone's archive (the final ``save_adapter`` would replace the
    folder ``adapter`` leads to, files and all), an ``eval --out`` whose ``predictions.partial`` leads elsewhere."""
    # (not run.glob: a name without a wildcard is matched only where it exists, so a dangling link went unseen)
    fold = str.casefold if _folds_case(run) else str   # (macOS, Windows: a link named ADAPTER is where adapter goes)
    patterns = [fold(p) for p in outputs]
    for entry in sorted(e for e in run.iterdir() if any(fnmatchcase(fold(e.name), p) for p in patterns)):
        if entry.is_symlink() and not entry.exists():   # (the run's writes refused it only then, or wrote elsewhere)
            raise RunDirError(f"{flag} {run}: {entry} is a symbolic link to {os.readlink(entry)}, which does not "
                              f"exist (or is a loop of links); {writer} writes its {entry.name} there: remove the "
                              f"link ({writer} writes its own there)")
        if entry.is_symlink() and not holds(run, entry):
            raise RunDirError(f"{flag} {run}: {entry} is a symbolic link to {os.readlink(entry)}, out of {place}; "
                              f"{writer} writes its {entry.name} there and would replace what the link leads to: "
                              f"remove the link ({writer} writes its own there)")


def _folds_case(run: Path) -> bool:
    """Whether ``run``'s file system takes a name in any case for the same entry (macOS's and Windows' by default):
    an entry of it (a run's ``config.json``, an eval's ``eval.json`` or ``predictions.partial``: the first few with
    letters) is found again under its name in the other case, the same entry. Nothing is written."""
    try:
        with os.scandir(run) as entries:   # (read lazily: at most 64 of a large folder's entries)
            names = [e.name for e in itertools.islice(entries, 64) if e.name.swapcase() != e.name]
    except OSError:
        return False
    for name in names[:8]:
        try:
            if os.path.samestat(os.lstat(run / name), os.lstat(run / name.swapcase())):
                return True
        except OSError:   # (not there in the other case: the names are told apart)
            continue
    return False


def _check_parent(run: Path) -> None:
    """Refuse an --out no folder can be made at (under a file, or in a folder that cannot be written) now, before
    the set-up: claim_run_dir found it only once the base model and data were loaded."""
    parent = next((p for p in run.absolute().parents if p.exists()), None)
    if parent is None or run.exists():
        return
    if not parent.is_dir():
        raise RunDirError(f"--out {run}: {parent} is a file, so no folder can be made under it; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {run}: {parent} cannot be written (read-only, or not yours); choose another --out")


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a training run's ``config.json`` (:func:`write_config`): a JSON object of run options."""
    try:
        doc = json.loads(read_whole(path))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and {"tasks", "method", "out"} <= set(doc)


def _inputs(opts: TrainOptions) -> list[tuple[str, str]]:
    """The local files and folders a run reads: (option name, path) for those that exist."""
    found = [("tasks", t) for t in (x.strip() for x in opts.tasks.split(",")) if looks_like_path(t)]
    found += [(k, getattr(opts, k)) for k in ("pretrained", "data_root", "extend") if getattr(opts, k)]
    backbone_dir = opts.backbone.partition(":")[2]
    if backbone_dir:
        found.append(("backbone", backbone_dir))
    return [(k, v) for k, v in found if Path(v).exists()]


def claim_run_dir(run: Path, opts: TrainOptions, info: DistInfo) -> Path:
    """Make ``run`` the run's empty directory, replacing an old one (--overwrite); returns the directory
    claimed. A resumed run keeps its own; a default name (no --out) taken meanwhile moves on to the next
    free ``NAME-k``. Without --overwrite, an --out directory that another run wrote to (or created) since
    :func:`choose_run_dir` is refused, not shared. Every rank returns (or raises) what rank 0 got."""
    claimed, error, aside = run, None, [False]
    try:
        if not opts.resume and info.is_main:
            try:
                claimed = _claim(run, opts, aside)
            except RunDirError as e:
                error = str(e)
            except OSError as e:   # e.g. a file where a parent folder should be, no permission, a full disk
                error = f"--out {run}: cannot make the run directory ({e}); choose another --out"
                if aside[0] and not run.exists() and replaced_dir(run).is_dir():   # the run set aside: put back
                    os.replace(replaced_dir(run), run)
                    aside[0] = False
                    error += " (the run it would replace is left as it was)"
        got, error = broadcast_from_main((str(claimed), error), info)
        claimed = Path(got)   # (in the try: a stop as the path is made -- Python code, where it lands -- put back too)
    except BaseException:   # SIGTERM (torchrun's, a peer failed) or Ctrl-C once the old run was set aside: put back
        if aside[0]:
            with stop_signals_ignored():
                undo_overwrite(run, opts)
        raise
    if error is not None:
        raise RunDirError(error)
    return claimed


def _claim(run: Path, opts: TrainOptions, aside: list[bool]) -> Path:
    """Make ``run`` (or the next free ``NAME-k``); ``aside[0]`` is set as an --overwrite sets the old run aside."""
    if not opts.out:
        for k in itertools.count(1):
            name = run if k == 1 else run.with_name(f"{run.name}-{k}")
            try:
                name.mkdir(parents=True)
                return name
            except FileExistsError:
                continue
    if opts.overwrite:   # (also when --out is gone or empty: the new run's first checkpoint would delete it)
        _refuse_unfinished_overwrite(run)
    if opts.overwrite and run.exists() and any(run.iterdir()):
        _refuse_training(run, "--overwrite: --out")   # (started since choose_run_dir)
        aside[0] = True
        os.replace(run, replaced_dir(run))   # kept until the new run's first checkpoint: an error before puts it back
    try:   # (once the old run is aside, a folder there, even empty, is another run's)
        run.mkdir(parents=True, exist_ok=not aside[0] and run.is_dir() and not any(run.iterdir()))
    except FileExistsError:
        if aside[0]:   # (a second --overwrite, or a new run that found --out gone): not ours to put the old one over
            aside[0] = False   # (a signal in claim_run_dir's broadcast put it back, deleting the other run's folder)
            raise RunDirError(
                f"--out {run}: another run started in it while this --overwrite was starting, after the run it "
                f"replaces had been moved to {replaced_dir(run)}, where it is kept (an --overwrite run in {run} "
                "deletes it at its first checkpoint): to keep it, move it to a folder of its own now, else delete "
                "it; then choose another --out") from None
        raise RunDirError(f"--out {run}: another run created or wrote to it while this one was starting; "
                          "choose another --out") from None
    return run


def _refuse_unfinished_overwrite(run: Path) -> None:
    """An --overwrite of ``run`` refused while an earlier one's :func:`replaced_dir` is still there."""
    aside = replaced_dir(run)
    if aside.exists() or aside.is_symlink():
        raise RunDirError(f"--out {run}: an earlier --overwrite of it did not finish, and {aside} holds the run it "
                          "was replacing; move that back (or delete it), then run again")


def _tasks_label(tasks: str, limit: int = 120) -> str:
    """``--tasks`` as a folder name: each spec by its name (a spec file by its stem), joined by ``+``; a long
    list is cut and given a short hash, so the name stays under the file system's 255 bytes."""
    label = "+".join(Path(t.strip()).stem if looks_like_path(t.strip()) else t.strip()
                     for t in tasks.split(",") if t.strip())
    if len(label.encode()) <= limit:
        return label
    digest = hashlib.sha256(tasks.encode()).hexdigest()[:8]
    return label.encode()[:limit - 9].decode(errors="ignore") + "-" + digest


def resumed_options(run: Path, given: TrainOptions, explicit: Collection[str] | None = None) -> TrainOptions:
    """The options a run was started with (``run/config.json``), with :data:`RESUME_OWN` from ``given``.

    An option given now that the resumed run would not use is refused: with ``explicit`` (the names the user
    set, from the command line) any of them whose value differs from the run's -- a default value and
    ``--out`` included; without it (an API call) any that differs from both its default and the run's
    value. So are an unreadable config.json and options this version does not know."""
    path = run / "config.json"
    try:
        saved = json.loads(read_whole(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"--resume {run}: cannot read {path} ({e}); it must be the config.json the run wrote") from e
    known = {f.name for f in fields(TrainOptions)}
    if isinstance(saved, dict):
        saved.pop(RESOLVED, None)
    if not isinstance(saved, dict) or set(saved) - known:
        extra = sorted(set(saved) - known) if isinstance(saved, dict) else "not a JSON object"
        raise RunDirError(f"--resume {run}: {path} holds options this version does not know ({extra}); resume it "
                          "with the version that wrote it, or start a new run")
    default = TrainOptions()
    now = config_doc(run, given)  # paths made absolute as the run's own config.json has them
    if explicit is None:
        names = [k for k in known - set(RESUME_OWN) - {"out", "config", "overwrite"}
                 if getattr(given, k) != getattr(default, k)]
    else:
        names = list(set(explicit) - set(RESUME_OWN) - {"config", "out", "overwrite"})
    wrong = [k for k in names if now[k] != saved.get(k, getattr(default, k))]
    moved = [k for k in wrong if k in RESUME_RELOCATABLE and _gone(saved.get(k)) and now[k]]
    missing = [f"--{k.replace('_', '-')} {now[k]}: no such folder (the run's {saved[k]} is gone too)"
               for k in moved if not Path(now[k]).exists()]
    if missing:
        raise RunDirError(f"--resume {run}: {'; '.join(missing)}; give the folder it moved to")
    wrong = [k for k in wrong if k not in moved]
    if explicit is not None:
        if given.out and Path(given.out).resolve() != run.resolve():
            wrong.append("out")
        if "overwrite" in explicit and given.overwrite:
            wrong.append("overwrite")
    ignored = [f"--{k.replace('_', '-')} {getattr(given, k)!r} (the run has {saved.get(k)!r})" for k in sorted(wrong)]
    if ignored:
        folders = ("; --data-root and --extend are taken only in place of a recorded folder that is gone"
                   if set(wrong) & set(RESUME_RELOCATABLE) else "")
        raise RunDirError(f"--resume {run} continues the run with the options it was started with, in its own "
                          f"directory, so these would be ignored: {'; '.join(ignored)}. Drop them, or start a new "
                          f"run with --out{folders}")
    resumed = TrainOptions(**{**saved, **{k: now[k] for k in moved}, **{k: getattr(given, k) for k in RESUME_OWN},
                              "out": str(run)})
    problem = type_problem(resumed)
    if problem:
        raise RunDirError(f"--resume {run}: {path} holds a value of the wrong type ({problem}); it must be the "
                          "config.json the run wrote")
    if _gone(resumed.extend):
        raise RunDirError(f"--resume {run}: the adapter this run extends, {resumed.extend}, is not there any more; "
                          "give the place it moved to with --extend DIR (it must hold the same adapter)")
    return resumed


def _gone(path: Any) -> bool:
    return isinstance(path, str) and bool(path) and not Path(path).exists()


def moved_folders(run: Path, opts: TrainOptions) -> dict[str, str]:
    """The folders (:data:`RESUME_RELOCATABLE`) a resumed run was given in place of ones ``run/config.json``
    records, by option name."""
    saved = json.loads(read_whole(run / "config.json"))
    now = config_doc(run, opts)
    return {k: now[k] for k in RESUME_RELOCATABLE if saved.get(k) != now[k]}


def record_moved_folders(run: Path, opts: TrainOptions) -> dict[str, str]:
    """Write into ``run/config.json`` the folders (:func:`moved_folders`) a resumed run was given in place of
    recorded ones that are gone, so that the next ``--resume`` finds them; returns those changed. Called once
    the checkpoint is restored: a move that fails a later check leaves config.json as it was."""
    path = run / "config.json"
    saved = json.loads(read_whole(path))
    moved = moved_folders(run, opts)
    if moved:
        with atomic_file(path, overwrite=True, what="train") as tmp:
            tmp.write_text(json.dumps({**saved, **moved}, indent=2) + "\n")
    return moved


def config_doc(run: Path, opts: TrainOptions) -> dict[str, Any]:
    """The options as ``run/config.json`` records them: local paths (task spec files, data root, weights, the
    extended adapter, a backbone directory, the ``--config`` file) made absolute, ``out`` the directory claimed."""
    doc = asdict(opts)
    doc["tasks"] = ",".join(_absolute(t) if looks_like_path(t) else t
                            for t in (x.strip() for x in opts.tasks.split(",")))
    for key in ("data_root", "extend", "config"):
        doc[key] = _absolute(doc[key])
    doc["out"] = str(run.resolve())  # the directory claimed (a default name may have gained a -k)
    doc.update(absolute_base({"backbone": opts.backbone, "pretrained": opts.pretrained}))
    return doc


def recorded_options(run: Path, opts: TrainOptions) -> dict[str, Any]:
    """The options a checkpoint records (:func:`config_doc` but what a resume may take anew: :data:`RESUME_OWN`,
    :data:`RESUME_RELOCATABLE` folders, the run directory's own), so that a ``config.json`` edited since is
    refused (:func:`check_options_unchanged`) instead of silently steering the rest of the run."""
    skip = {*RESUME_OWN, *RESUME_RELOCATABLE, "out", "overwrite", "config"}
    return {k: v for k, v in config_doc(run, opts).items() if k not in skip}


def check_options_unchanged(saved: dict[str, Any], run: Path, opts: TrainOptions) -> None:
    """Refuse to resume with options (read from ``config.json``) other than those the checkpoint recorded (a
    checkpoint written before they were recorded is not checked): a learning rate, warm-up or accumulation
    edited in by hand trained the rest of the run on other settings while the optimizer state and sampler
    position were the old ones."""
    recorded = saved.get("options")
    if not isinstance(recorded, dict):
        return
    now = recorded_options(run, opts)
    edited = [f"{k} {now.get(k)!r} (the checkpoint's: {v!r})" for k, v in sorted(recorded.items()) if now.get(k) != v]
    if edited:
        raise RunDirError(f"--resume {run}: {run / 'config.json'} was edited since the run's checkpoint: "
                          f"{'; '.join(edited)}; put the values back to continue the run, or start a new run with "
                          "the new options")


def write_config(run: Path, opts: TrainOptions, resolved: dict[str, Any] | None = None) -> None:
    """``run/config.json`` (:func:`config_doc`), with ``resolved`` as its first :func:`record_resolved` entry."""
    doc = {**config_doc(run, opts), **({RESOLVED: [{"from_step": 0, **resolved}]} if resolved is not None else {})}
    with atomic_file(run / "config.json", overwrite=True, what="train") as tmp:   # a run needs it whole to resume
        tmp.write_text(json.dumps(doc, indent=2) + "\n")


def record_resolved(run: Path, step: int, resolved: dict[str, Any]) -> bool:
    """Add to ``run/config.json``'s ``resolved`` list what a resume at ``step`` trains with (device, processes,
    workers, precision and base dtype, as ``auto`` and the resume's own options came to), unless its last entry
    says the same: each entry holds from its ``from_step`` on. True when it added one."""
    path = run / "config.json"
    doc = json.loads(read_whole(path))
    entries = doc.get(RESOLVED) if isinstance(doc.get(RESOLVED), list) else []
    if entries and {k: v for k, v in entries[-1].items() if k != "from_step"} == resolved:
        return False
    with atomic_file(path, overwrite=True, what="train") as tmp:
        tmp.write_text(json.dumps({**doc, RESOLVED: [*entries, {"from_step": step, **resolved}]}, indent=2) + "\n")
    return True


def _absolute(value: str | None) -> str | None:
    """``value`` (a path) made absolute when it exists."""
    if value and Path(value).exists():
        return str(Path(value).resolve())
    return value
