"""The method benchmark end to end: plan the grid, run it resumably, analyse, write the report.

Order: the zero-shot scores (once); every method and single-task configuration at each grid learning
rate on the first seed (scored on val and test); the other seeds at each configuration's picked rate;
the MTL-LoRA ablations at MTL-LoRA's picked rate, every seed. A killed grid rerun with the same
``--out`` continues where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import torch

from ..backbones import builtin_dir
from ..backbones.base import BackboneError, backbone_class_for, resolve_base_dtype
from ..backbones.hf import hf_dir, hf_model_class
from ..backbones.hf_vlm import HFVLMBackbone
from ..backbones.spec import parse_spec
from ..distributed import pick_device
from ..io.atomic import holds
from ..io.locks import LockHeld, NotALockFile, take_lock
from ..log import warn_user
from ..multitask.setup import check_data_root_read
from ..options import TrainOptions
from ..precision import resolve_precision
from ..tasks import TaskSpec, load_spec
from ..tasks.spec import looks_like_path
from ..training.train import train
from .analysis import analyse
from .grid import (
    REFERENCE_METHOD,
    BenchSettings,
    Config,
    RunSpec,
    ablation_configs,
    count_runs,
    default_adapter,
    method_configs,
    pick_lr,
    reference_config,
    single_task_configs,
    zero_shot_config,
)
from .held_out import check_held_out, check_splits, overlap_warning
from .mixing import mixing_from_adapter
from .params import ParameterCounter
from .plots import write_all
from .report import seeds_text, write_report
from .runner import Runner, Trainer, write_json_atomic
from .specs import eval_subset_specs, joint_shares


class BenchDirError(RuntimeError):
    """The output folder holds a grid with other settings."""


def grid_identity(settings: BenchSettings, specs: list[TaskSpec]) -> dict[str, Any]:
    """What decides a grid's results, for resuming: the settings, each task spec's text (an edited spec
    changes the data or the loss), and the device type and autocast dtype the runs resolve to (a grid
    begun on a CPU in fp32 must not be finished on a GPU in bf16). A task reading files adds its splits' rows
    (``data_sha256``: files added, removed or relabelled under an unchanged spec are other data), and how many of
    its test rows are val rows where some are (``test_in_val``: ``[shared, rows]``); with none, ``data_root`` is None
    (it is read by no run)."""
    device = pick_device(settings.device)
    texts = {}
    for task, spec in zip(settings.tasks, specs):
        text = Path(spec.source_file).read_bytes() if spec.source_file else task.encode()
        texts[spec.name] = hashlib.sha256(text).hexdigest()[:16]
    data, overlap = {}, {}
    for spec in specs:   # (the built-in world's rows follow from its spec, its val and test scenes from their seeds)
        if spec.data.source != "builtin":
            splits = {split: spec.load_split(split, settings.data_root) for split in spec.data.splits}
            if shared := check_held_out(spec, splits, warn=False):
                overlap[spec.name] = [shared, len(splits["test"].examples)]
            data[spec.name] = {split: rows.rows_sha256[:16] for split, rows in splits.items()}
    autocast = resolve_precision(settings.precision, device, loaded=_loads_in(settings, device))
    read = resolved_paths({**settings.identity(), **({} if data else {"data_root": None})})
    return {**read, "spec_sha256": texts, "base_sha256": base_fingerprint(settings),
            **({"data_sha256": data} if data else {}), **({"test_in_val": overlap} if overlap else {}),
            "runtime": {"device": device.type, "autocast": str(autocast)}}


def resolved_paths(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` with its paths absolute and resolved (spec files among ``tasks``, ``data_root``, a ``pretrained``
    file, the folder of ``hf:DIR`` / ``open_clip:DIR``): one spec given as ``specs/a.toml`` in one start and by its
    absolute path in the next is one grid. A relative path of a ``settings.json`` written before is read against the
    current directory."""
    def resolved(p: str) -> str:
        return str(Path(p).expanduser().resolve())

    out = dict(identity)
    if isinstance(out.get("tasks"), list):
        out["tasks"] = [resolved(t) if isinstance(t, str) and looks_like_path(t) else t for t in out["tasks"]]
    if isinstance(out.get("data_root"), str):
        out["data_root"] = resolved(out["data_root"])
    pre = out.get("pretrained")   # (open_clip's pretrained may be a tag, not a file)
    if isinstance(pre, str) and Path(pre).expanduser().exists():
        out["pretrained"] = resolved(pre)
    backbone = out.get("backbone")
    kind, sep, rest = backbone.partition(":") if isinstance(backbone, str) else ("", "", "")
    rest = rest.strip()
    if sep and kind in ("hf", "open_clip") and looks_like_path(rest) and Path(rest).expanduser().is_dir():
        out["backbone"] = f"{kind}:{resolved(rest)}"
    return out


def _loads_in(settings: BenchSettings, device: torch.device) -> torch.dtype | None:
    """The dtype the runs' base weights load in (``--base-dtype auto``) where it decides ``--precision auto``: a
    language model's (fp16 on a GPU without bf16, whose runs train under fp16 autocast); None for the others."""
    try:
        spec = parse_spec(settings.backbone, settings.pretrained)
        cls = backbone_class_for(hf_model_class(hf_dir(spec))) if spec.is_hf_dir else None
    except (ValueError, OSError, ImportError, BackboneError):
        return None   # (the runs refuse such a backbone themselves)
    if cls is None or not issubclass(cls, HFVLMBackbone):
        return None
    return resolve_base_dtype("auto", device, fp16_overflows=cls.fp16_overflows)


_WEIGHTS = (".safetensors", ".bin", ".pth", ".pt")


def base_fingerprint(settings: BenchSettings) -> dict[str, str]:
    """{file: digest} of the base model's weight files (``--pretrained``, else the backbone's folder): weights
    rewritten at the same path (``pretrain_backbone.py`` run again) must not be resumed into one grid. The
    digest reads a file's size and its first and last MiB: quick on a 14 GB file, and any retrained weights
    differ there."""
    pre = Path(settings.pretrained).expanduser() if settings.pretrained else None
    if pre is not None and pre.is_file():
        files = [pre]
    else:
        try:
            spec = parse_spec(settings.backbone, settings.pretrained)
        except (ValueError, OSError):
            return {}
        folder = builtin_dir() if spec.kind == "builtin" else spec.path
        files = sorted(f for f in folder.iterdir() if f.suffix in _WEIGHTS) if folder and folder.is_dir() else []
    out = {}
    for f in files:
        h = hashlib.sha256(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, f.stat().st_size - (1 << 20)))
            h.update(fh.read(1 << 20))
        out[f.name] = h.hexdigest()[:16]
    return out


_LOCK = ".lock"
#: What a grid's folder holds (besides the lock file and its atomic writes' temporaries, ``.<name>.*.tmp``).
_GRID_ENTRIES = ("settings.json", "runs", "specs", "plots", "report.md", "results.json")


def _grid_remnant(out: Path) -> bool:
    """``out`` holds its lock file and nothing but a grid's entries, without ``settings.json``: what an ``--overwrite``
    stopped while emptying the folder leaves (it deletes ``settings.json`` first, the lock file never)."""
    names = [p.name for p in out.iterdir()]
    return _LOCK in names and "settings.json" not in names and all(
        n == _LOCK or n in _GRID_ENTRIES or any(n.startswith(f".{g}.") and n.endswith(".tmp") for g in _GRID_ENTRIES)
        for n in names)


def check_unlocked(out: Path) -> None:
    """Refuse ``out`` while another process runs a grid in it: its folders of unfinished runs would be taken
    for killed runs and deleted under it (and ``--overwrite`` would delete the whole grid)."""
    lock = out / _LOCK
    if lock.is_file():
        with grid_lock(out):   # raises while held; a lock file a killed process left behind is free
            pass


@contextlib.contextmanager
def grid_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (an advisory ``flock``, released when this process ends, however it ends) while the
    grid runs; a second process is refused instead of sharing the folder."""
    try:
        fh = take_lock(out / _LOCK)
    except LockHeld as e:
        raise BenchDirError(f"--out {out}: another benchmark is running in it (process {e.holder}); wait for it to "
                            "finish, or stop it, then rerun to resume the grid") from None
    except NotALockFile as e:
        raise BenchDirError(f"--out {out}: {e}") from None
    except OSError as e:   # e.g. a folder this user cannot write in: the grid could write none of its runs either
        raise BenchDirError(f"--out {out}: its lock file cannot be made ({e.strerror}: {e.filename}); choose an --out "
                            "you can write in") from None
    try:
        yield
    finally:
        if fh is not None:
            fh.close()


def _val_scenes(task_args: dict[str, str]) -> dict[str, int | None]:
    """Each task's validation scenes as its run spec sets them (a built-in-world task; None: the world's
    default size, or a task reading files, whose val split is what the files hold)."""
    out: dict[str, int | None] = {}
    for task, arg in task_args.items():
        spec = load_spec(arg)
        out[task] = spec.data.splits.get("val", {}).get("n") if spec.data.source == "builtin" else None
    return out


def _check_folder(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is not a new or empty folder or one holding a grid (``settings.json``), before a
    file is touched (``--overwrite`` deleted whatever ``--out`` named, the current directory included)."""
    path = out / "settings.json"
    if out.is_symlink() and not out.exists():
        raise BenchDirError(f"--out {out}: is a symbolic link to {os.readlink(out)}, which does not exist (or is a "
                            "loop of links); remove the link or choose another --out")
    if out.is_symlink() and overwrite:
        raise BenchDirError(f"--out {out}: is a symbolic link (to {out.resolve()}); --overwrite replaces a folder, "
                            "not a link: give its target as --out")
    if out.exists() and not out.is_dir():
        raise BenchDirError(f"--out {out}: is a file, not a folder; choose another --out")
    if out.is_dir() and any(p.name != _LOCK for p in out.iterdir()) and not path.is_file() and not (
            overwrite and _grid_remnant(out)):   # (--overwrite finishes the job)
        if _grid_remnant(out):
            raise BenchDirError(f"--out {out}: holds what an --overwrite stopped while deleting a grid left (its lock "
                                "file and runs, no settings.json), which cannot be resumed; pass --overwrite to finish "
                                "emptying it, or choose another --out")
        raise BenchDirError(f"--out {out}: is not empty and holds no benchmark (no settings.json), so it is "
                            "neither resumed nor replaced; choose another --out (a new or empty folder)")
    if overwrite and holds(out, Path.cwd()):
        raise BenchDirError(f"--out {out}: is the current directory or holds it, and --overwrite would delete it; "
                            "choose another --out")


#: Settings whose order decides only the order of the runs and of the report's rows: a grid is resumed with them
#: in another order, and keeps its own (its zero-shot run's folder names its first rate).
_UNORDERED = ("lr_grid", "methods")


def _check_settings(out: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """Make ``out`` this grid's folder (checked by :func:`_check_folder` again; its caller holds the grid's lock): a
    new or empty one, or one holding a grid that is resumed when its settings are these, or emptied with
    ``--overwrite`` (all but the lock file, which must stay the one held). Returns the grid's identity: a resumed
    grid's (:data:`_UNORDERED` settings in its order), else ``identity``."""
    _check_folder(out, overwrite)
    path = out / "settings.json"
    if overwrite and out.exists():
        if path.is_file():   # first: a folder half emptied is no longer a grid to resume (see _grid_remnant)
            path.unlink()
        for entry in out.iterdir():
            if entry.name == _LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            old = e
        if not isinstance(old, dict):   # a bare JSONDecodeError named no file
            raise BenchDirError(f"{path}: the grid's settings are damaged ({old}), so its runs cannot be checked "
                                "against these settings; restore the file, or pass --overwrite to start afresh")
        stored, old, new = old, resolved_paths(old), json.loads(json.dumps(identity))
        if "data_sha256" not in new:   # no task reads files: a --data-root an older start stored was read by no run
            old["data_root"] = None
        for key in _UNORDERED:
            if isinstance(old.get(key), list) and isinstance(new.get(key), list) and sorted(
                    old[key], key=repr) == sorted(new[key], key=repr):
                new[key] = old[key]
        for key in ("base_sha256", "data_sha256", "test_in_val"):   # a grid begun before these were recorded
            if key not in old:
                new.pop(key, None)
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            relative = [k for k in changed if stored.get(k) != old.get(k)]   # (paths an older version stored as typed)
            hint = (f"; its settings.json holds relative paths ({', '.join(relative)}), read against the current "
                    f"folder {Path.cwd()}: start from the folder the grid was started in, which records them "
                    "resolved" if relative else "")
            raise BenchDirError(f"--out {out}: holds a grid with other settings ({', '.join(changed)} differ){hint}; "
                                "rerun with the same options to resume it, choose another --out, or pass --overwrite")
        if stored != old:   # resumed from its own folder: later starts from any folder find the same paths
            write_json_atomic(path, old)
        return old
    write_json_atomic(path, identity)
    return identity


def plan_ranks(settings: BenchSettings, counter: ParameterCounter, n_tasks: int) -> dict[str, dict[str, int]]:
    """Default and parameter-matched rank (and counts) of every method, matched to MTL-LoRA's default count."""
    ref = default_adapter()
    kw = {"n_up": ref["n_up"], "temperature": ref["temperature"], "lambda_type": ref["lambda_type"]}
    target = counter.count(n_tasks, method=REFERENCE_METHOD, r=ref["rank"], **kw)
    out = {}
    for m in settings.methods:
        row = {"default": ref["rank"], "default_params": counter.count(n_tasks, method=m, r=ref["rank"], **kw)}
        if settings.match_params and m != REFERENCE_METHOD:
            r = counter.matching_rank(target, n_tasks, method=m, **kw)
            row.update(matched=r, matched_params=counter.count(n_tasks, method=m, r=r, **kw))
        out[m] = row
    return out


def run_benchmark(settings: BenchSettings, out: str | Path, *, trainer: Trainer = train, overwrite: bool = False,
                  stream: TextIO | None = None, retry_failed: bool = False,
                  pretrained_as: str = "pretrained") -> dict[str, Any]:
    """Run (or resume) the grid in ``out`` and write report.md, results.json and plots/; returns the results
    (with the thread count torch runs on, ``torch.get_num_threads()``: set it before calling). A run that raises
    is recorded as failed and the grid goes on; ``retry_failed`` runs the runs recorded as failed again.
    ``pretrained_as``: what a refusal of ``settings.pretrained`` calls it (the command line's ``--pretrained``)."""
    settings.validate()
    out = Path(out)
    stream = stream if stream is not None else sys.stdout
    specs = [load_spec(task) for task in settings.tasks]
    check_splits(specs)
    check_data_root_read(specs, settings.data_root)   # (every run would refuse it, the first after settings.json)
    counter = ParameterCounter(settings.backbone, settings.pretrained, pretrained_as=pretrained_as)
    ranks = plan_ranks(settings, counter, len(specs))   # (a base model that does not load: refused, nothing written)
    check_unlocked(out)
    identity = grid_identity(settings, specs)
    _check_folder(out, overwrite)   # (before the lock file is made in a folder that is not this grid's)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:   # (a bare "[Errno 20] Not a directory" without the flag or the way out)
        raise BenchDirError(f"--out {out}: the folder cannot be made ({e.strerror}: {e.filename}); choose an --out "
                            "in a folder you can write") from None
    with grid_lock(out):   # held from the settings check on: another runner can neither delete nor relabel the grid
        resumed = not overwrite and (out / "settings.json").is_file()
        kept = _check_settings(out, identity, overwrite)
        settings.lr_grid, settings.methods = list(kept["lr_grid"]), list(kept["methods"])
        overlap = identity.get("test_in_val") or {}
        if not resumed:   # once per grid (its report says it too): the rows are those its start warned of
            for spec in specs:
                if spec.name in overlap:
                    warn_user(overlap_warning(spec, *overlap[spec.name]))
        return _run_grid(settings, out, counter, ranks, trainer, stream, retry_failed, overlap)


def _run_grid(settings: BenchSettings, out: Path, counter: ParameterCounter, ranks: dict[str, dict[str, int]],
              trainer: Trainer, stream: TextIO, retry_failed: bool,
              test_in_val: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """The grid of :func:`run_benchmark` in its checked, locked folder (``test_in_val``: each task's test rows that are
    val rows, as ``[shared, rows]``, where some are)."""
    task_args = eval_subset_specs(settings.tasks, out / "specs", {"val": settings.val_n, "test": settings.test_n})
    tasks = list(task_args)
    methods = method_configs(settings, tasks, {m: v["matched"] for m, v in ranks.items() if "matched" in v})
    reference = reference_config(methods)
    singles = (single_task_configs(tasks, settings.batch_size,
                                   joint_shares(task_args, settings.batch_size, settings.data_root))
               if settings.single_task and len(tasks) > 1 else [])
    ablations = ablation_configs(settings, tasks) if reference else []
    tuned = methods + singles
    configs = tuned + ablations
    params = {c.cid: counter.count(len(c.tasks), **c.attach_kwargs()) for c in configs}
    total = count_runs(settings, tuned, ablations)
    print(f"[bench] {total} runs: {len(methods)} method configurations, {len(singles)} single-task references, "
          f"{len(ablations)} ablations; {settings.steps} steps at batch {settings.batch_size}; learning rates "
          f"{settings.lr_grid}; {seeds_text(settings.seeds)}; output {out}", file=stream, flush=True)
    runner = Runner(out, settings, task_args, trainer, total, stream, retry_failed)
    started = time.perf_counter()

    seeds = list(range(settings.seeds))
    # (every run needs what the zero-shot run sets up: its failure stops the grid)
    zs = runner.run(RunSpec(zero_shot_config(tasks), seeds[0], settings.lr_grid[0], tune=False), record_failure=False)
    tuning = {c.cid: [runner.run(RunSpec(c, seeds[0], lr, tune=True)) for lr in settings.lr_grid] for c in tuned}
    picked = {cid: pick_lr(ok) for cid, recs in tuning.items() if (ok := [r for r in recs if not r.get("failed")])}
    final = {c.cid: [next(r for r in tuning[c.cid] if r["lr"] == picked[c.cid])] for c in tuned if c.cid in picked}
    unpicked = [c for c in tuned if c.cid not in picked]
    for c in unpicked:   # no rate to run the other seeds at
        runner.total -= settings.seeds - 1
        print(f"[bench] {c.label}: the run failed at every learning rate, so its other seeds are not run",
              file=stream, flush=True)
    for seed in seeds[1:]:
        for c in tuned:
            if c.cid in picked:
                final[c.cid].append(runner.run(RunSpec(c, seed, picked[c.cid], tune=False)))
    if reference is not None and reference.cid in picked:
        picked.update({c.cid: picked[reference.cid] for c in ablations})
        for c in ablations:
            final[c.cid] = [runner.run(RunSpec(c, seed, picked[c.cid], tune=False)) for seed in seeds]
    elif ablations:
        runner.total -= len(ablations) * settings.seeds
        print(f"[bench] {reference.label if reference else REFERENCE_METHOD}'s runs failed at every learning rate: "
              "its ablations, run at its rate, are not run", file=stream, flush=True)

    for r in (r for recs in final.values() for r in recs if r.get("diverged")):   # a result: reported, marked
        print(f"[bench] {r['label']}, seed {r['seed']}: diverged at learning rate {r['lr']:g}, the rate picked on "
              f"seed 0 ({r['diverged']}); its scores are over the other seeds", file=stream, flush=True)
    results = analyse(tasks, configs, reference, final, tuning, picked, params, zs["zero_shot"], settings.ablations)
    all_runs = [zs, *(r for recs in tuning.values() for r in recs), *(r for recs in final.values() for r in recs)]
    unique = {r["key"]: r for r in all_runs}
    timed = [r for r in unique.values() if r["group"] != "zero_shot" and not r.get("failed")]
    results.update(
        settings=asdict(settings), threads=torch.get_num_threads(), head_lr=TrainOptions().head_lr,
        ranks=ranks, runs_total=total, runs=sorted(unique.values(), key=lambda r: r["key"]),
        eval={"test": zs["eval_n"], "val_scenes": _val_scenes(task_args)},
        wall_s=time.perf_counter() - started,
        mean_run_s=statistics.fmean(r["wall_s"] for r in timed) if timed else None,
        mean_run_cpu_s=statistics.fmean(r.get("cpu_s", r["wall_s"]) for r in timed) if timed else None,
        task_mixing=_mixing(out, reference, final) if reference else None, test_in_val=test_in_val or {},
    )
    results["plots"] = [p.name for p in write_all(results, out / "plots")]
    path = write_report(out, results)
    failed = len(results["failed"])
    print(f"[bench] done: {path} ({runner.ran} runs trained now, {len(unique) - runner.ran - runner.failed} done "
          f"earlier, {results['wall_s'] / 60:.1f} min)"
          + (f"; {failed} run(s) FAILED (listed in the report; rerun with --retry-failed to run them again)"
             if failed else ""), file=stream, flush=True)
    return results


def _mixing(out: Path, reference: Config, final: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    seeds = {}
    for r in (r for r in final.get(reference.cid, []) if not r.get("diverged") and not r.get("failed")):
        m = mixing_from_adapter(out / r["folder"] / "train" / "adapter")
        if m is not None:
            seeds[str(r["seed"])] = m
    return {"config": reference.cid, "label": reference.label, "seeds": seeds} if seeds else None
