"""Zero-shot vs adapted: score every task twice and write eval.json, report.md and plots/.

The zero-shot score is the task's zero-shot rule on the base model (adapters switched off with
``disabled``); the adapted score is the task's head on the model routed to that task. Without an adapter
(:func:`evaluate_base`), a base model -- a merged export, another checkpoint, a built-in backbone -- is
scored by the zero-shot rule alone, as ``train`` scores it before training.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.scopes import disabled, route
from ..backbones import load_backbone
from ..data.records import Split
from ..distributed import DistInfo, barrier, check_workers, cleanup, init_distributed, sharded_evaluation
from ..io import load_pretrained
from ..io.adapter_files import config_of, read_adapter_config
from ..io.atomic import atomic_dir, atomic_file, check_target
from ..io.base_record import base_paths
from ..io.layout import check_output
from ..log import main_rank_logging, progress
from ..multitask import MultiTaskModel, Setup
from ..multitask.setup import check_data_root_read, own_folders, task_kinds
from ..precision import base_weights_dtype, check_base_precision, resolve_precision
from ..rundir import RunDirError, refuse_linked_outputs
from ..tasks import resolve_tasks
from ..tasks.spec import TaskSpec
from ..whole_files import read_whole
from .adapter_tasks import check_task_item, saved_task_roots, scoring_spec, warn_trained_rows, warn_trained_rows_read
from .predictions import PARTIAL, PredictionFiles, StagedFiles, check_recordable, merge_passes, stopped_predictions
from .report import details_table, markdown_table, scored_line, selected_line, source_line, title, write_plots
from .scored import adapter_base, scored_base

logger = logging.getLogger(__name__)


def _split_for(spec: TaskSpec, wanted: str, warn: bool = True) -> str | None:
    """The split of ``spec`` to score for ``wanted``: itself, else (test wanted) val. None for val wanted and
    missing: validation scores choose checkpoints and settings, so they never come from the test split."""
    if wanted in spec.data.splits:
        return wanted
    if wanted == "val":
        if warn:
            logger.warning("task %s has no val split: not scored on val (add a [data.val] table to its spec)",
                           spec.name)
        return None
    if warn and spec.eval_split in spec.data.splits:
        logger.warning("task %s has no %s split: scored on %s instead (the report's split column says so)",
                       spec.name, wanted, spec.eval_split)
    return spec.eval_split


def _data_split(spec: TaskSpec, split: str) -> dict[str, Any]:
    """``{"data_split": ...}``: the ``split`` option split table ``split`` of ``spec`` gives its reader (``[data]``'s
    where the table gives none), as the spec gives it; ``{}`` where it gives none (the built-in world, most formats)."""
    if spec.data.source != "files":
        return {}
    given = {**spec.data.options, **spec.data.splits.get(split, {})}.get("split")
    return {"data_split": given} if given is not None else {}


def read_eval_splits(setup: Setup, splits: list[str], data_root: str | None) -> None:
    """Read (and keep in ``setup``) every split the run will score, before it trains: a missing file or a bad
    option in a val or test split is reported at start-up, not after hours of training."""
    for spec in setup.specs:
        names = {_split_for(spec, wanted, warn=False) for wanted in splits} - {None}
        for name in sorted(names):   # (test falls back to val: each split checked once)
            setup.kinds[spec.name].check_eval_split(setup.split_data(spec, name, data_root), spec)


def _score(setup: Setup, name: str, data: Split, *, adapted: bool, device: torch.device | str, dtype: torch.dtype,
           batch_size: int, workers: int, records: list[dict[str, Any]] | None = None) -> dict:
    """Task ``name``'s metrics on ``data``: the routed model and its head (``adapted``), else the zero-shot rule on
    the base model -- the adapted model with its adapters disabled, or a setup's model without adapters as it is."""
    kind, model = setup.kinds[name], setup.model
    if model is None and adapted:
        raise ValueError(f"task {name!r}: the set-up has no adapters or heads, so it has no adapted score")
    scope = (route(model.model, name) if adapted else disabled(model.model)) if model is not None else nullcontext()
    with scope:
        return kind.evaluate(setup.backbone, model.heads[name] if adapted else None, data, batch_size=batch_size,
                             device=device, dtype=dtype, num_workers=workers, records=records)


def evaluate_adapted(setup: Setup, *, split: str, data_root: str | None, device: torch.device | str,
                     dtype: torch.dtype, batch_size: int, workers: int = 0,
                     scored: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """The adapted model's metrics per task on ``split`` (used for evaluation during training). ``scored``: an
    :func:`evaluate_setup` result of the same model, whose tasks scored on the same split are taken, not scored
    again (``--eval-split val --eval-val``)."""
    out = {}
    for spec in progress(setup.specs, desc="evaluate (adapted)", unit="task"):
        split_name = _split_for(spec, split)
        if split_name is None:
            continue
        done = (scored or {}).get("tasks", {}).get(spec.name)
        if done is not None and done["split"] == split_name:
            out[spec.name] = done["details"]["adapted"]
            continue
        data = setup.split_data(spec, split_name, data_root)
        out[spec.name] = _score(setup, spec.name, data, adapted=True, device=device, dtype=dtype,
                                batch_size=batch_size, workers=workers)
    return out


def evaluate_setup(setup: Setup, *, split: str, data_root: str | None, device: torch.device | str,
                   dtype: torch.dtype, batch_size: int, workers: int = 0, zero_shot: bool = True,
                   adapted: bool = True,
                   predictions: Callable[[str, list[dict[str, Any]]], Any] | None = None) -> dict[str, Any]:
    """``{"tasks": {name: {"metric", "zero_shot", "adapted", "change", "split", "n", "metrics", "details"}},
    "split": split, "config": ...}`` (a task's own ``split`` differs when it has no ``split``: see ``_split_for``)
    (``n``: the examples scored; ``metrics``: the spec's metrics, which the report's second table shows beside
    the headline; ``data_split``, where the spec's split table gives its reader a ``split`` option: that option as
    the spec gives it, what was read, ``"train[80%:]"`` for ``split`` ``"test"``); with ``zero_shot=False`` the
    base model is not scored and ``zero_shot`` / ``change`` are None;
    with ``adapted=False`` (a base model without adapters) only the zero-shot pass runs, ``adapted`` / ``change``
    are None and there is no ``config``. A task with nothing to score (no val split, for val) is listed under
    ``"not_scored"`` (``{name: {"metric", "kind", "reason"}}``; ``eval`` of an adapter adds ``"data_spec"`` to either
    entry of a task scored on another spec file's data), so the report shows it was asked for.
    ``predictions``: called with each task and its rows (:func:`~mtl_lora_vl.evaluation.predictions.merge_passes`),
    from the same passes, as soon as the task is scored (a
    :class:`~mtl_lora_vl.evaluation.predictions.PredictionFiles` writes its file), then the rows are dropped."""
    if not (zero_shot or adapted):
        raise ValueError("evaluate_setup: zero_shot=False and adapted=False leave nothing to score")
    if isinstance(predictions, PredictionFiles):   # before scoring: a task named '/tmp/x' would write /tmp/x.jsonl
        predictions.check_tasks(spec.name for spec in setup.specs)
    passes = int(zero_shot) + int(adapted)
    tasks: dict[str, Any] = {}
    not_scored: dict[str, Any] = {}
    bar = progress(desc="evaluate", total=passes * len(setup.specs), unit="pass")
    for spec in setup.specs:
        name, kind = spec.name, setup.kinds[spec.name]
        split_name = _split_for(spec, split)
        if split_name is None:
            bar.update(passes)
            not_scored[name] = {"metric": kind.headline(spec), "kind": spec.kind, "reason": f"no {split} split"}
            continue
        data = setup.split_data(spec, split_name, data_root)
        rows: dict[str, list] | None = {"adapted": [], "zero_shot": []} if predictions is not None else None
        bar.set_postfix_str(f"{name}: zero-shot")
        zs = _score(setup, name, data, adapted=False, device=device, dtype=dtype, batch_size=batch_size,
                    workers=workers, records=None if rows is None else rows["zero_shot"]) if zero_shot else None
        bar.update(int(zero_shot))
        bar.set_postfix_str(f"{name}: adapted")
        ad = _score(setup, name, data, adapted=True, device=device, dtype=dtype, batch_size=batch_size,
                    workers=workers, records=None if rows is None else rows["adapted"]) if adapted else None
        if rows is not None:   # written now, not held through the next tasks (~2.5 KB a row)
            predictions(name, merge_passes(rows))
            rows = None
        bar.update(int(adapted))
        metric = kind.headline(spec)
        missing = [p for p, d in (("zero-shot", zs), ("adapted", ad)) if d is not None and metric not in d]
        if missing:   # (a kind whose headline needs what the data lacks: nlvr's consistency without groups)
            raise ValueError(f"task {name!r}: its headline metric {metric!r} (the first its spec's metrics lists that "
                             f"can head) was not computed by the {missing[0]} pass on {split_name} (it gave "
                             f"{sorted(k for k in (zs or ad) if not k.startswith('n'))}); list another metric first")
        # n: what was scored (a generative kind may score only the first [generative] eval_limit examples)
        scored = ad if ad is not None else zs
        n = int(scored.get("n", scored.get("n_images", len(data.examples))))
        logger.debug("%s (%s, %d examples): %s zero-shot %s, adapted %s", name, split_name, n, metric,
                     "skipped" if zs is None else f"{zs[metric]:.4f}", "-" if ad is None else f"{ad[metric]:.4f}")
        tasks[name] = {"metric": metric, "zero_shot": zs[metric] if zs else None,
                       "adapted": ad[metric] if ad is not None else None,
                       "change": ad[metric] - zs[metric] if zs and ad is not None else None, "kind": spec.kind,
                       "split": split_name, **_data_split(spec, split_name), "n": n, "metrics": list(spec.metrics),
                       "details": {"zero_shot": zs, "adapted": ad}}
    bar.close()
    if not tasks:
        raise ValueError(f"no task has a {split} split to score; give each spec a [data.{split}] table or score "
                         "another split")
    result: dict[str, Any] = {"tasks": tasks, "split": split, **({"not_scored": not_scored} if not_scored else {})}
    if setup.config is not None:   # a base model scored without adapters has no adapter configuration
        result["config"] = setup.config.to_dict()
    return result


def write_outputs(run_dir: str | Path, result: dict[str, Any], adapted_model: nn.Module | None) -> str:
    """eval.json, report.md and plots/ in ``run_dir``; returns the printed table. ``adapted_model`` None: a base
    model scored zero-shot only (no task-mixing plot; the report says zero-shot)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(result)
    details = details_table(result)
    if details:
        table += "\n\n" + details
    for line in (source_line(result), scored_line(result), selected_line(result)):
        if line:
            table += "\n\n" + line
    plots = write_plots(run_dir, result, adapted_model)
    lines = [f"# {title(result)}", "", table, ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    with atomic_file(run_dir / "report.md", overwrite=True, what="report") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_file(run_dir / "eval.json", overwrite=True, what="eval.json") as tmp:   # last: it marks a finished
        tmp.write_text(json.dumps(result, indent=2) + "\n")                             # evaluation (bench, eval --out)
    return table


def _check_out(out: Path, overwrite: bool, keep: list[tuple[str, Any]], predictions: bool = False) -> None:
    """What writing the results to ``out`` would refuse, checked before the scoring, not after it: ``keep`` are
    (what, path) pairs ``out`` must not hold or replace; with ``predictions``, a link out of ``out`` where the task
    files are staged while scoring (out/predictions.partial)."""
    try:
        check_target(out, directory=True, overwrite=True, what="--out")
    except OSError as e:
        raise RunDirError(str(e)) from None
    if predictions and out.is_dir():
        refuse_linked_outputs(out, (PARTIAL,), "--out", "eval --predictions", "the --out folder")
    try:  # every rank checks before anyone writes
        if not stopped_predictions(out, overwrite):
            check_output(out, marker="eval.json", command="eval", overwrite=overwrite, keep=keep)
    except FileExistsError as e:
        raise RunDirError(str(e)) from None
    parent = next(p for p in (out.absolute().parent, *out.absolute().parents) if p.exists())
    if not os.access(parent, os.W_OK):
        raise RunDirError(f"--out {out}: {parent} cannot be written (read-only, or not yours), and the results are "
                          "written beside --out and renamed into place; choose another --out")


def _check_default_out(out: Path, adapter: Path) -> None:
    """Refuse the default ``--out`` (``ADAPTER/../eval-<split>``) where it holds another adapter's evaluation: adapters
    saved side by side share it, and the fix a taken --out is told (--overwrite) deleted the other's results. One of
    this adapter's name recorded elsewhere is this adapter's, moved or copied with the folder."""
    try:
        earlier = json.loads(read_whole(out / "eval.json")).get("adapter")
    except (OSError, ValueError, AttributeError):
        return
    # a run folder moved or copied with its eval-<split> records this adapter at its old path: of the same name
    if isinstance(earlier, str) and Path(earlier).resolve() != adapter.resolve() \
            and Path(earlier).name not in (adapter.absolute().name, adapter.resolve().name):
        raise RunDirError(f"--out (default {out}): holds the evaluation of another adapter, {earlier}, which sits in "
                          f"the same folder; give this one its own --out DIR (--overwrite would delete the other's)")


def evaluate_adapter(adapter: str | Path | None, tasks: str | None = None, backbone: str | None = None,
                     pretrained: str | None = None, data_root: str | None = None, split: str = "test",
                     device: str = "auto", precision: str = "auto", batch_size: int = 256, workers: int = 0,
                     out: str | Path | None = None, overwrite: bool = False, base_dtype: str = "auto",
                     image_max_pixels: int | None = None, image_reading: str | None = None,
                     predictions: bool = False) -> str:
    """``evaluate_vl.py``: load an adapter directory onto a fresh base model, score zero-shot vs adapted,
    write the outputs to ``out``; returns the table. Needs nothing but the adapter directory (and
    ``data_root`` for file-based tasks); ``base_dtype`` as ``load_backbone`` takes it. Under torchrun every rank scores
    its shard of each split and rank 0 writes the outputs (the other ranks return an empty string); the scores equal one
    process's.
    ``adapter`` None: the base model ``backbone`` scored zero-shot on ``tasks`` (:func:`evaluate_base`), read with
    ``image_max_pixels`` / ``image_reading`` as ``load_backbone`` takes them; an adapter records its own.
    ``predictions``: also write each task's per-row predictions to ``out/predictions/<task>.jsonl``
    (:mod:`~mtl_lora_vl.evaluation.predictions`)."""
    if not adapter:   # (None, or "" from an unset shell variable: not the current directory)
        return evaluate_base(tasks, backbone=backbone, pretrained=pretrained, data_root=data_root, split=split,
                             device=device, precision=precision, batch_size=batch_size, workers=workers, out=out,
                             overwrite=overwrite, base_dtype=base_dtype, image_max_pixels=image_max_pixels,
                             image_reading=image_reading, predictions=predictions)
    if image_max_pixels is not None:
        raise ValueError(f"--image-max-pixels {image_max_pixels}: the adapter records the image area its tasks were "
                         "trained at, and eval reads it from there; leave the option out (it scores a base model "
                         "without --adapter)")
    adapter = Path(adapter)
    doc = read_adapter_config(adapter, verify=False)   # a wrong --adapter is named before any check of --out
    for item in (t.strip() for t in (tasks or "").split(",")):   # a misspelt task: before the base model loads
        if item:
            check_task_item(item, config_of(doc, adapter).tasks, adapter)
    recorded = (doc.get("base") or {}).get("image_reading")
    if image_reading is not None and image_reading != recorded:
        raise ValueError(f"--image-reading {image_reading}: the adapter records how its tasks' images were read "
                         f"(base.image_reading {recorded!r}), and eval reads them so; leave the option out (it sets "
                         "the reading of a base model scored without --adapter)")
    if not out:
        out = adapter.resolve().parent / f"eval-{split}"
        _check_default_out(out, adapter)
    out = Path(out)
    specs = [Path(t.strip()) for t in (tasks or "").split(",") if t.strip().endswith(".toml")]
    _check_out(out, overwrite, [("the adapter being evaluated", adapter), ("the data (--data-root)", data_root),
                                *base_paths(doc.get("base") or {}, backbone, pretrained),
                                *(("a task spec (--tasks)", f) for f in specs)], predictions)
    info = init_distributed(device)
    try:
        return _evaluate_adapter(adapter, doc, tasks, backbone, pretrained, data_root, split, info, precision,
                                 batch_size, workers, out, base_dtype, predictions)
    finally:
        cleanup(info)


def _evaluate_adapter(adapter: Path, doc: dict, tasks: str | None, backbone: str | None, pretrained: str | None,
                      data_root: str | None, split: str, info: DistInfo, precision: str, batch_size: int,
                      workers: int, out: Path, base_dtype: str = "auto", predictions: bool = False) -> str:
    check_workers(workers, info)
    dev = info.device
    items = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else []
    if tasks is not None and not items:   # said before the base model loads ('' is not "all": that is no --tasks)
        adapter_tasks = config_of(doc, adapter).tasks
        raise ValueError(f"--tasks {tasks!r} names no task; give some of the adapter's tasks {list(adapter_tasks)}")
    with main_rank_logging(info.is_main):   # every rank reads the same adapter and data: said once
        own = own_folders(doc, data_root)   # state rebuilt where trained (doc: the config evaluate_adapter read)
        lp = load_pretrained(adapter, dev, backbone=backbone, pretrained=pretrained, data_root=data_root,
                             data_roots=own, base_dtype=base_dtype,
                             backbone_as="--backbone", pretrained_as="--pretrained")
        items = items or list(lp.config.tasks)
        specs = [scoring_spec(item, lp, adapter) for item in items]
        names = [s.name for s in specs]
        if len(set(names)) < len(names):
            raise ValueError(f"--tasks {tasks}: a task is named twice ({names}); name each once")
        missing = [t for t in names if t not in lp.kinds or t not in lp.heads]
        if missing:
            raise ValueError(f"{adapter}: no saved task spec or head for {missing}; save the adapter with "
                             "task_specs= and heads= to evaluate it")
        kinds = {t: lp.kinds[t] for t in names}
        model = MultiTaskModel(lp.backbone, kinds, nn.ModuleDict({t: lp.heads[t] for t in names}))
        setup = Setup(lp.backbone, specs, kinds, model, lp.config,
                      data_roots=saved_task_roots(lp, specs, data_root))
        scored = {s.name: _split_for(s, split, warn=False) for s in specs}
        left = warn_trained_rows(lp, specs, scored, {s.name: setup.data_root(s.name, data_root) for s in specs})
        read_eval_splits(setup, [split], data_root)   # the kinds' checks of the data they will score
        warn_trained_rows_read(lp, specs, scored, left, {   # (read: the lengths its slices were counted on)
            s.name: setup.split_data(s, str(scored[s.name]), data_root).split_lengths for s in specs if s.name in left})
        if predictions:
            check_recordable(setup.kinds)
        loaded = base_weights_dtype(lp.backbone.model)
        dtype = resolve_precision(precision, dev, base_dtype, loaded)
        check_base_precision(precision, dtype, loaded, lp.backbone.casts_inputs)
    rows = StagedFiles(out) if predictions and info.is_main else None   # (rank 0 writes them)
    try:
        with sharded_evaluation(info), main_rank_logging(info.is_main):   # every rank warns alike: rank 0 says it
            result = evaluate_setup(setup, split=split, data_root=data_root, device=dev, dtype=dtype,
                                    batch_size=batch_size, workers=workers, predictions=rows)
        result["adapter"] = str(Path(adapter).absolute())
        result["base"] = adapter_base(lp.doc.get("base") or {}, backbone, pretrained, base_dtype, precision, loaded,
                                      dtype)
        for spec in specs:   # scored on another spec's data, or not scored for what that data lacks: says which
            entry = result["tasks"].get(spec.name) or result.get("not_scored", {}).get(spec.name)
            if entry is not None and spec is not lp.specs.get(spec.name):
                entry["data_spec"] = str(spec.source_file)
        _record_roots(result, setup, specs, data_root)
        return _write(out, result, lp.backbone.model, info, rows)
    finally:
        if rows is not None:
            rows.close()


def _record_roots(result: dict[str, Any], setup: Setup, specs: list[TaskSpec], data_root: str | None) -> None:
    """Each scored file-based task's ``data_root`` in ``result``: the folder its files were read from (its own
    recorded one, or --data-root)."""
    for spec in specs:
        if spec.name not in result["tasks"]:
            continue
        root = setup.data_root(spec.name, data_root) if spec.data.source == "files" else None
        if root is not None:
            result["tasks"][spec.name]["data_root"] = str(Path(root).expanduser().absolute())


def _write(out: Path, result: dict[str, Any], adapted_model: nn.Module | None, info: DistInfo,
           predictions: PredictionFiles | None = None) -> str:
    """Rank 0 writes the outputs to ``out`` (and returns the table; the other ranks ""), then every rank waits;
    ``predictions``: the task files written while scoring, moved to ``out/predictions/``."""
    table = ""
    if info.is_main:  # a new directory replaces an old one whole (--overwrite): no stale plot stays behind
        try:
            with atomic_dir(out, overwrite=True, what="--out") as tmp:
                table = write_outputs(tmp, result, adapted_model)
                if predictions is not None:   # (the files stay in out/predictions.partial if the outputs fail)
                    predictions.move_to(tmp / "predictions")
        except OSError:
            logger.warning("the results could not be written to %s; the scores were:\n%s", out, markdown_table(result))
            raise
        logger.info("wrote eval.json, report.md%s and plots/ to %s",   # (the default --out is nowhere printed)
                    ", predictions/" if predictions is not None else "", out)
    barrier(info)
    return table


def evaluate_base(tasks: str | None, backbone: str | None = None, pretrained: str | None = None,
                  data_root: str | None = None, split: str = "test", device: str = "auto", precision: str = "auto",
                  batch_size: int = 256, workers: int = 0, out: str | Path | None = None, overwrite: bool = False,
                  base_dtype: str = "auto", image_max_pixels: int | None = None,
                  image_reading: str | None = None, predictions: bool = False) -> str:
    """``evaluate_vl.py`` without ``--adapter``: score a base model (``backbone``, as train takes it; default the
    built-in CLIP) zero-shot on ``tasks`` (built-in names or spec files, read as train reads them), without
    training, and write eval.json, report.md and plots/ to ``out``; returns the table. The kinds are built on
    their training split as train builds them (their vocabulary: class names, answer lists), so the scores are
    the ``zero_shot`` ones train reports for the same tasks, data and backbone. Distributed as
    :func:`evaluate_adapter`."""
    if tasks is None or not tasks.replace(",", "").strip():
        raise ValueError(f"--tasks {tasks!r}: scoring without --adapter needs the tasks to score; give --tasks "
                         "vqa,retrieval (built-in task names or spec files), or --adapter RUN_DIR/adapter to score "
                         "a trained adapter on its own tasks")
    if not out:   # no adapter to put the results beside; a timestamped default could differ across ranks
        raise ValueError("--out is required without --adapter (there is no adapter folder to write eval-<split> "
                         "beside); give --out DIR for eval.json, report.md and plots/")
    specs = resolve_tasks(tasks)   # an unknown task or a bad spec is named before any check of --out
    check_data_root_read(specs, data_root)
    backbone = backbone or "builtin"
    out = Path(out)
    _check_out(out, overwrite, [("the data (--data-root)", data_root), *base_paths({}, backbone, pretrained),
                                *(("a task spec (--tasks)", s.source_file) for s in specs if s.source_file)],
               predictions)
    info = init_distributed(device)
    try:
        return _evaluate_base(specs, backbone, pretrained, data_root, split, info, precision, batch_size, workers,
                              out, base_dtype, image_max_pixels, image_reading, predictions)
    finally:
        cleanup(info)


def _evaluate_base(specs: list[TaskSpec], backbone: str, pretrained: str | None, data_root: str | None, split: str,
                   info: DistInfo, precision: str, batch_size: int, workers: int, out: Path, base_dtype: str,
                   image_max_pixels: int | None = None, image_reading: str | None = None,
                   predictions: bool = False) -> str:
    check_workers(workers, info)
    dev = info.device
    with main_rank_logging(info.is_main):   # every rank reads the same model and data: said once
        bb = load_backbone(backbone, pretrained, dev, base_dtype=base_dtype, image_max_pixels=image_max_pixels,
                           image_reading=image_reading, pretrained_as="--pretrained")
        bb.model.requires_grad_(False)   # frozen, as attach leaves a trained run's base: its dtype is what loaded
        kinds = task_kinds(specs, bb, data_root)[1]   # as train builds them, on their training splits
        setup = Setup(bb, specs, kinds, None, None)   # no adapters or heads: the zero-shot rule needs none
        read_eval_splits(setup, [split], data_root)   # the kinds' checks of the data they will score
        if predictions:
            check_recordable(setup.kinds)
        loaded = base_weights_dtype(bb.model)
        dtype = resolve_precision(precision, dev, base_dtype, loaded)
        check_base_precision(precision, dtype, loaded, bb.casts_inputs)
    rows = StagedFiles(out) if predictions and info.is_main else None   # (rank 0 writes them)
    try:
        with sharded_evaluation(info), main_rank_logging(info.is_main):
            result = evaluate_setup(setup, split=split, data_root=data_root, device=dev, dtype=dtype,
                                    batch_size=batch_size, workers=workers, adapted=False, predictions=rows)
        result["backbone"] = {**scored_base(backbone, pretrained, base_dtype, loaded),
                              **({"image_max_pixels": image_max_pixels} if image_max_pixels else {}),
                              **({"image_reading": image_reading} if image_reading else {})}
        _record_roots(result, setup, specs, data_root)
        return _write(out, result, None, info, rows)
    finally:
        if rows is not None:
            rows.close()

