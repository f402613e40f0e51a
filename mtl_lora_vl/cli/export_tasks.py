"""What ``mtl-lora-vl export`` does once its options are read (:mod:`.export` parses them): each task of ``--task``
written as merged base-model weights or as a standard LoRA. It imports torch, the backbones and the adapter files'
code, so :mod:`.export` imports it only when the command runs (``export --help`` and a mistyped flag do not wait
for it).
"""

from __future__ import annotations

import difflib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..backbones import parse_spec
from ..backbones.open_clip import registry_config
from ..config import check_task_file_names
from ..families import OPEN_CLIP_CONFIG, merged_format, peft_export
from ..io import AdapterFileError, export_lora, load_pretrained, save_merged
from ..io.adapter_files import config_of, read_adapter_config
from ..io.atomic import check_target
from ..io.base_check import written_family_of
from ..io.base_record import base_paths
from ..io.exports import check_suffix_case, export_format
from ..io.layout import (
    EXPORT_RECORD,
    HEADS_WEIGHTS,
    MERGED_TASK_KEY,
    check_output,
    check_outputs_folder,
    few,
    is_merged_export,
)
from ..log import progress, say
from ..options import ExportOptions
from ..whole_files import read_whole
from ..wording import comma_hint, tasks_named

__all__ = ["export"]

logger = logging.getLogger("mtl_lora_vl.cli.export")   # the command's name in -v's debug lines


def _source_dir(spec: str) -> Path | None:
    """The directory whose non-weight files (config, tokenizer) belong beside a merged export."""
    try:
        source = parse_spec(spec).source_dir
    except ValueError:  # no (or no loadable) backbone string: nothing to copy
        return None
    return source if source is not None and source.is_dir() else None


def _source_dtype(source: Path | None) -> str:
    """The dtype a base directory's weights are stored in, as --base-dtype names it (its config.json's
    ``dtype`` / ``torch_dtype``); fp32 when it does not say."""
    try:
        doc = json.loads(read_whole(source / "config.json")) if source is not None else {}
    except (OSError, ValueError):
        doc = {}
    named = doc.get("dtype") or doc.get("torch_dtype") if isinstance(doc, dict) else None
    return {"bfloat16": "bf16", "float16": "fp16"}.get(str(named), "fp32")


def _check_tasks(tasks: list[str], adapter: str) -> dict[str, Any]:
    """Refuse task names the adapter does not have, before its base model loads; the adapter's parsed config
    (``{}`` when it cannot be read: ``load_pretrained`` then says why)."""
    try:
        doc = read_adapter_config(adapter, verify=False)
    except AdapterFileError:
        return {}
    known = config_of(doc, Path(adapter)).tasks
    unknown = [t for t in tasks if t not in known]
    if unknown:
        close = {t: difflib.get_close_matches(t, known, n=1) for t in unknown}
        hint = "".join(comma_hint(t, "--task", known) or (f" (did you mean {c[0]!r} for {t!r}?)" if c else "")
                       for t, c in close.items())
        raise AdapterFileError(f"--task {', '.join(map(repr, unknown))}: the adapter has no such task; its tasks "
                               f"are {known}{hint}")
    return doc


def _check_out_kind(out: Path, fmt: str, family: str) -> None:
    """Refuse a ``.safetensors`` --out where export writes a directory (LoRA formats, Hugging Face models)."""
    if out.suffix != ".safetensors" or not family:
        return
    if fmt != "merged":
        raise ValueError(f"--out {out}: --format {fmt} writes a LoRA directory; give a folder name (without "
                         ".safetensors)")
    if merged_format(family, None) == "hf":
        raise ValueError(f"--out {out}: a Hugging Face model ({family}) is exported as a save_pretrained directory "
                         "(weights, config and processor, for from_pretrained); give a folder name")


def _check_peft_expressible(doc: dict[str, Any], fmt: str, family: str) -> None:
    """Refuse --format peft for adapters on nn.MultiheadAttention in-projections (``<attn>.in_proj``, in the families
    whose default export is not PEFT: open_clip) before the base loads, as export_lora would after."""
    ident = doc.get("base_model") or {}
    if fmt != "peft" or peft_export(family):
        return
    mha = sorted(n for n in (ident.get("projections") or {}) if n.endswith(".in_proj"))
    if mha:
        raise ValueError(f"--format peft: PEFT LoRA cannot express this adapter's updates of the packed in-projection "
                         f"of nn.MultiheadAttention ({few(mha, 3)}); use "
                         "--format plain (or auto) for a LoRA, or --format merged for a merged checkpoint")


def _open_clip_config(spec: str, model: Any, tmp: Path) -> Path | None:
    """For an ``open_clip:NAME`` base (no folder to copy its config from): a folder holding the
    ``open_clip_config.json`` open_clip's registry has for NAME, so a merged directory loads as a local-dir."""
    try:
        parsed = parse_spec(spec)
    except ValueError:
        return None
    doc = registry_config(parsed.architecture, model) if parsed.architecture else None
    if doc is None:
        return None
    (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    return tmp


def export(opts: ExportOptions) -> list[Path]:
    """Export each task of ``opts.task``; returns the written paths (also printed, one per line)."""
    tasks = [t.strip() for t in (opts.task or "").split(",") if t.strip()]
    if not tasks:
        raise ValueError("--task: give a task name (or several, comma-separated)")
    out = Path(opts.out or "")
    check_suffix_case(out, "--out")
    if len(tasks) > 1 and out.suffix == ".safetensors":
        raise ValueError(f"--out {out}: several tasks are written to OUT/<task>; give a directory")
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise ValueError(f"--task: {', '.join(map(repr, repeated))} given more than once; name each task once")
    doc = _check_tasks(tasks, opts.adapter)
    headed = [t for t in tasks if (doc.get("heads") or {}).get(t)]
    if headed:   # (PEFT's modules_to_save: here the heads live beside the model, not in it)
        logger.warning("%s trained heads (%s) that no export holds: it carries the adapted model only; "
                       "score or serve them with their heads through the adapter (eval --adapter, "
                       "mtl_lora_vl.load_pretrained)", tasks_named(headed, "have"), Path(opts.adapter) / HEADS_WEIGHTS)
    # (an adapter of a family's inner model adapted on its own is exported from that family's whole model)
    family = written_family_of(doc.get("base_model") or {})
    _check_out_kind(out, opts.format, family)
    _check_peft_expressible(doc, opts.format, family)
    if len(tasks) > 1:   # OUT/<task>: a task named '/x' (the Python API allows it) was written to /x
        check_task_file_names(tasks, "--task", "and each task of several is written to OUT/<task>/; export it alone "
                              "with --out DIR")
    targets = {task: out if len(tasks) == 1 else out / task for task in tasks}
    if len(tasks) > 1 and out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is a file; several tasks are written to OUT/<task>, "
                              "give a directory")
    base = doc.get("base") or {}   # the base model the adapter records
    keep = [("the adapter being exported", opts.adapter), *base_paths(base, opts.backbone, opts.pretrained)]
    if len(tasks) > 1:   # OUT holds the task folders: it may hold other files, but not be or hold what is kept
        check_outputs_folder(out, command="export", keep=keep)
    for target in targets.values():  # every target before anything is written: no partial export
        file = opts.format == "merged" and target.suffix == ".safetensors"
        check_output(target, marker=EXPORT_RECORD, command="export", overwrite=opts.overwrite, keep=keep)
        if file and target.is_file() and not is_merged_export(target):
            raise FileExistsError(f"--out {target}: is not a merged checkpoint written by export (its safetensors "
                                  f"metadata has no {MERGED_TASK_KEY}), so --overwrite does not replace it; choose "
                                  "another --out")
        check_target(target, directory=not file, overwrite=opts.overwrite, what=f"--out {out}")
    # the base it names, to read its dtype (load_pretrained below checks the files' sha256 once)
    spec = opts.backbone or base.get("backbone") or ""
    dtype = _source_dtype(_source_dir(spec)) if opts.base_dtype == "source" else opts.base_dtype
    loaded = load_pretrained(opts.adapter, backbone=opts.backbone, pretrained=opts.pretrained, heads=False,
                             base_dtype=dtype, backbone_as="--backbone", pretrained_as="--pretrained")
    model = loaded.backbone.model
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        source = _source_dir(spec) or _open_clip_config(spec, model, Path(scratch))
        for task in progress(tasks, desc="export", unit="task"):
            try:
                written.append(_export_one(opts, model, task, targets[task], source))
            except OSError as e:   # say which task failed and which folders are complete
                done = f"; written (complete): {', '.join(map(str, written))}" if written else ""
                left = tasks[tasks.index(task):]
                msg = (f"task {task!r} to {targets[task]}: {e.strerror or e}{done}; not written: {', '.join(left)} "
                       f"(rerun for them with --task {','.join(left)})")
                raise OSError(*((e.errno, msg) if e.errno is not None else (msg,))) from e
    return written


def _export_one(opts: ExportOptions, model: Any, task: str, target: Path, source: Path | None) -> Path:
    """One task to ``target`` (merged, or a LoRA); prints what was written. A merged processor reads images within
    the area the model records (``load_pretrained`` read the adapter's)."""
    if opts.format == "merged":
        path = save_merged(model, task, target, source_dir=source, overwrite=opts.overwrite)
        what = f"task {task!r} merged into {type(model).__name__}"
    else:
        path = export_lora(model, task, target, format=opts.format, overwrite=opts.overwrite)
        chosen = export_format(model) if opts.format == "auto" else opts.format
        what = f"task {task!r} as a {chosen} LoRA" + (" (--format auto)" if opts.format == "auto" else "")
    logger.debug("exported %s to %s", task, path)
    say(f"wrote {path} ({what})")
    return path
