"""The native adapter directory: write it (``save_adapter``), check it and read it back (``load_adapter``).

Layout (every name is a constant of :mod:`.layout`; nothing else spells them)::

    adapter/
      mtl_lora_config.json         what the files are (below)
      mtl_lora_model.safetensors   the adapter tensors, under their model names, e.g.
                                   ``visual.transformer.resblocks.0.attn.in_proj.lora_A``
      heads.safetensors            each task head's state dict, keys ``<task>.<param>``
      tasks/<task>.toml            copies of the task specs used for training
      tasks/<task>.state.json      the task kind's vocabulary (VQA answers, class names), when given

The two main files have names of their own (format version 2), so that no tool takes the directory for
a PEFT adapter; directories of format version 1 (0.1.0), which used PEFT's ``adapter_config.json`` /
``adapter_model.safetensors`` for them, are still read, and a real PEFT directory given to
``load_adapter`` is refused with a message that says what it is (see :mod:`.layout`).

``mtl_lora_config.json`` holds ``format`` (``"mtl-lora-vl-adapter"``) and ``format_version``, the
``package_version``, the ``config`` (an :class:`MTLLoRAConfig`), the ``base_model`` identity (see
:mod:`mtl_lora_vl.io.identity`), ``base`` (how to rebuild the base model, e.g. ``{"backbone": "builtin",
"pretrained": null}``), ``towers``, ``heads`` (the parameter names of each task head), ``task_specs`` and
``files``: the sha256 of every file, so a truncated or edited file is refused. Nothing is unpickled:
tensors are safetensors, the rest is JSON and TOML.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..adapters.attach import attach
from ..adapters.layers import ADAPTER_PARAM_NAMES
from ..config import ConfigError, MTLLoRAConfig, check_task_file_names, task_file_problem
from ..tasks.spec import SpecError, TaskSpec, load_spec
from ..whole_files import FileTooLarge, read_whole
from ..wording import agree, tasks_named
from .adapter_images import check_image_fields, record_images, take_images
from .atomic import atomic_dir, holds
from .base_check import (
    adapted_part,
    check_base,
    check_head_casts,
    check_heads,
    check_tensors,
    newer_package_hint,
    refuse_adapted,
    warn_rounded,
)
from .base_record import absolute_base, base_paths, warn_unknown_base
from .identity import adapted_module, expected_tensors, model_identity
from .layout import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    FORMAT,
    FORMAT_VERSION,
    HEADS_WEIGHTS,
    TASKS_DIR,
    AdapterFileError,
    AdapterLayout,
    adapter_layout,
    check_adapter_path,
    config_path,
    is_adapter_dir,
    is_run_dir,
    kept_inside,
    spec_file,
    state_file,
)
from .tensor_files import load_tensors, read_header, read_metadata, record_sha256, save_tensors, sha256_file

# The file names and AdapterFileError are defined in .layout and importable from here too.
__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADS_WEIGHTS",
    "AdapterFileError",
    "load_adapter",
    "read_adapter_config",
    "read_kind_state",
    "save_adapter",
]


def require_head_modules(heads: dict[str, Any], what: str) -> None:
    """TypeError unless every head is an ``nn.Module`` (task -> module)."""
    bad = sorted(k for k, h in heads.items() if not isinstance(h, nn.Module))
    if bad:
        raise TypeError(f"{what}: heads must be nn.Modules (task -> module); not for {bad}")


#: What each of save_adapter's dict arguments maps, for its message.
_SAVE_MAPS = {"heads": "task -> nn.Module", "task_specs": "task -> spec file or TaskSpec",
              "base": "e.g. {'backbone': 'builtin'}", "kinds": "task -> task kind", "data_roots": "task -> folder"}


def _check_save_arguments(cfg: MTLLoRAConfig, heads: dict[str, Any], task_specs: dict[str, Any],
                          kinds: dict[str, Any]) -> None:
    for what, d in (("heads", heads), ("task_specs", task_specs), ("kinds", kinds)):
        unknown = sorted(set(d) - set(cfg.tasks))
        if unknown:
            raise ValueError(f"save_adapter: {what} names {tasks_named(unknown)} that the adapter does not have; "
                             f"its tasks are {cfg.tasks}")
    require_head_modules(heads, "save_adapter")
    names = {*task_specs, *kinds}   # their files: tasks/<task>.toml, tasks/<task>.state.json
    check_task_file_names(names, "save_adapter", "and a task's spec and vocabulary are saved in files named by it "
                          "(tasks/<task>.toml, tasks/<task>.state.json); save without task_specs= / kinds= for those "
                          "tasks, or rename them")
    for task, spec in task_specs.items():
        if isinstance(spec, TaskSpec):
            if spec.source_text is None:
                raise ValueError(f"save_adapter: task spec of {task!r} was not read from a file, so there is no "
                                 "text to save; pass the spec file's path")
            if spec.name != task:
                raise ValueError(f"save_adapter: task spec {spec.source_file} names its task {spec.name!r}, but it "
                                 f"is given for task {task!r}; pass it under its own name")
            continue
        if not Path(spec).is_file():
            raise FileNotFoundError(f"save_adapter: task spec of {task!r} not found: {spec}")
        try:
            named = tomllib.loads(read_whole(spec, encoding="utf-8-sig")).get("name", task)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"save_adapter: task spec of {task!r} ({spec}) is not valid TOML: {e}") from e
        except FileTooLarge as e:
            raise ValueError(f"save_adapter: task spec of {task!r}: {e}; a task spec is a few KB of TOML: pass the "
                             "spec file") from None
        if named != task:
            raise ValueError(f"save_adapter: task spec {spec} names its task {named!r}, but it is given for "
                             f"task {task!r}; pass it under its own name")
        try:   # a spec the loader refuses would make the saved adapter's heads unloadable
            load_spec(Path(spec), need_train=False)   # as load_pretrained reads it back
        except SpecError as e:
            raise ValueError(f"save_adapter: task spec of {task!r} is not a valid task spec: {e}") from e


def _check_replaceable(path: Path, base: dict[str, Any], roots: dict[str, str]) -> None:
    """Refuse ``overwrite=True`` where replacing ``path`` would delete what the new adapter records (its base
    model's files, a task's data folder) or a training run (its checkpoint)."""
    if is_run_dir(path) and not is_adapter_dir(path):
        raise FileExistsError(f"save_adapter: {path} is a training run directory (its checkpoint would be deleted); "
                              "save the adapter to another folder")
    held = kept_inside(path)
    if held is not None:
        raise FileExistsError(f"save_adapter: {path} holds an adapter or a training run ({held}), which "
                              "overwrite=True would delete; save the adapter to another folder")
    keep = [*base_paths(base), *((f"the data folder of task {t!r}", Path(r)) for t, r in roots.items())]
    for what, kept in keep:
        if kept.exists() and holds(path, kept):
            raise FileExistsError(f"save_adapter: {path} holds {what} {kept}, which the adapter records and "
                                  "overwrite=True would delete; save the adapter to another folder")


def save_adapter(
    model: nn.Module,
    path: str | Path,
    heads: dict[str, nn.Module] | None = None,
    task_specs: dict[str, str | Path | TaskSpec] | None = None,
    base: dict[str, Any] | None = None,
    kinds: dict[str, Any] | None = None,
    overwrite: bool = False,
    data_roots: dict[str, str | Path] | None = None,
) -> Path:
    """Write the adapter directory of ``model`` (layout in the module docstring) atomically; return it.

    ``heads`` maps task -> head module, ``task_specs`` task -> spec TOML file (copied) or a ``TaskSpec`` read
    from one (its text as read is written, whatever the file holds now), ``base`` says how
    to rebuild the base model (``{"backbone": spec, "pretrained": file}``, see ``load_pretrained``),
    ``kinds`` task -> task kind whose vocabulary is kept beside the spec, ``data_roots`` task -> the folder its
    file-based data was read from (recorded absolute: evaluation and ``--extend`` read each task's data from
    its own). An existing non-empty ``path`` is replaced only with ``overwrite=True``, and only once the new
    directory is complete.
    """
    check_adapter_path(path, "save_adapter")
    inner = adapted_module(model)
    info = inner._mtl_lora
    cfg = info.config
    for what, given in (("heads", heads), ("task_specs", task_specs), ("base", base), ("kinds", kinds),
                        ("data_roots", data_roots)):
        if given is not None and not isinstance(given, Mapping):
            raise TypeError(f"save_adapter: {what} must be a dict ({_SAVE_MAPS[what]}), got {type(given).__name__} "
                            f"{given!r:.60}")
    heads, task_specs, kinds = dict(heads or {}), dict(task_specs or {}), dict(kinds or {})
    _check_save_arguments(cfg, heads, task_specs, kinds)
    unknown = sorted(set(data_roots or {}) - set(cfg.tasks))
    if unknown:
        raise ValueError(f"save_adapter: data_roots names {tasks_named(unknown)} that the adapter does not have; its "
                         f"tasks are {cfg.tasks}")
    roots = {t: str(Path(r).expanduser().absolute()) for t, r in (data_roots or {}).items() if r is not None}
    base = absolute_base(dict(base or {}))
    record_images(model, base)
    try:
        json.dumps(base)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_adapter: base must be JSON-serialisable, e.g. {{'backbone': 'builtin'}}: {e}") from e
    warn_unknown_base(base)

    if overwrite:
        _check_replaceable(Path(path), base, roots)

    for bank in info.layers.values():
        bank.restore_frozen_rows()
    tensors = {n: p for n, p in inner.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES}
    head_tensors: dict[str, torch.Tensor] = {}
    head_keys: dict[str, list[str]] = {}
    for task, head in heads.items():
        sd = head.state_dict()
        head_keys[task] = sorted(sd)
        head_tensors.update({f"{task}.{k}": v for k, v in sd.items()})

    with atomic_dir(path, overwrite=overwrite, what="save_adapter") as tmp:
        save_tensors(tensors, tmp / ADAPTER_WEIGHTS, {"format": FORMAT, "config_sha256": record_sha256(cfg.to_dict())})
        save_tensors(head_tensors, tmp / HEADS_WEIGHTS, {"format": FORMAT})
        spec_files = {}
        if task_specs or kinds:
            (tmp / TASKS_DIR).mkdir()
        for task, spec in task_specs.items():
            if isinstance(spec, TaskSpec):
                (tmp / spec_file(task)).write_text(spec.source_text, encoding="utf-8")
            else:
                shutil.copyfile(spec, tmp / spec_file(task))
            spec_files[task] = spec_file(task)
        for task, kind in kinds.items():
            (tmp / state_file(task)).write_text(
                json.dumps({"kind": getattr(kind, "kind", ""), "state": kind.state()}, indent=1) + "\n")
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "config": cfg.to_dict(),
            "base_model": model_identity(inner),
            "base": base,
            "towers": dict(sorted(info.towers.items())),
            "heads": head_keys,
            "task_specs": spec_files,
            **({"data_roots": roots} if roots else {}),
            "files": files,
        }
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------------------------- reading


def read_adapter_config(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The parsed config (``mtl_lora_config.json``; format 1: ``adapter_config.json``) of an adapter
    directory; ``verify`` checks every file's sha256."""
    check_adapter_path(path, "read_adapter_config", hint="; it reads the folder save_adapter wrote, not a model")
    return _read(Path(path), verify)[0]


def _read(path: Path, verify: bool) -> tuple[dict[str, Any], AdapterLayout]:
    layout = adapter_layout(path)
    cfg_file = path / layout.config
    try:
        doc = json.loads(read_whole(cfg_file, encoding="utf-8-sig"))   # -sig: saved again by an editor that adds a BOM
    except FileTooLarge as e:
        raise AdapterFileError(f"{e}; it is not the config save_adapter wrote (a LLaVA-7B adapter's is ~0.2 MB): "
                               "copy the adapter directory again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{cfg_file}: not valid JSON ({e}); the file is damaged, save the adapter again") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise AdapterFileError(f"{cfg_file}: format is {got!r}, expected {FORMAT!r}")
    version = _format_version(doc.get("format_version", 0))
    if version is None:
        raise AdapterFileError(f"{cfg_file}: format_version is {doc['format_version']!r}, expected a whole number "
                               f"such as {FORMAT_VERSION}; the file is damaged or was edited by hand, fix the field "
                               "or save the adapter again")
    if version > FORMAT_VERSION:
        raise AdapterFileError(f"{cfg_file}: format_version {doc['format_version']} is newer than this package "
                               f"reads ({FORMAT_VERSION}); upgrade mtl-lora-vl")
    for key in ("config", "base_model", "files"):
        if not isinstance(doc.get(key), dict):
            raise AdapterFileError(f"{cfg_file}: the field {key!r} is missing or not an object")
    for key in ("base", "heads", "task_specs", "data_roots"):
        if not isinstance(doc.get(key) or {}, dict):
            raise AdapterFileError(f"{cfg_file}: the field {key!r} is not an object (task -> ...); the file was "
                                   "edited by hand: fix the field or save the adapter again")
    base_dtype = (doc.get("base") or {}).get("base_dtype")
    if base_dtype is not None and base_dtype not in ("fp32", "bf16", "fp16"):
        raise AdapterFileError(f"{cfg_file}: base.base_dtype must be 'fp32', 'bf16' or 'fp16' (the base weights' "
                               f"dtype the adapter was trained on), got {base_dtype!r}; fix the field or remove it")
    check_image_fields(doc.get("base") or {}, cfg_file)
    bad_roots = sorted(t for t, r in (doc.get("data_roots") or {}).items() if not (isinstance(r, str) and r))
    if bad_roots:
        raise AdapterFileError(f"{cfg_file}: data_roots of {tasks_named(bad_roots)} must be a folder path (a string), "
                               f"got {[doc['data_roots'][t] for t in bad_roots]}; fix the field (or remove the "
                               "task's entry) or save the adapter again")
    if doc.get("data_roots"):   # one written by hand as ~/x names that folder (save_adapter writes it expanded);
        # (os.path's leaves a ~user it cannot find as written: pathlib's raised, and no reader could load the adapter)
        doc["data_roots"] = {t: os.path.expanduser(r) for t, r in doc["data_roots"].items()}
    tasks_dir = path / TASKS_DIR
    task_files = sorted(f.relative_to(path).as_posix() for f in tasks_dir.rglob("*") if f.is_file()) \
        if tasks_dir.is_dir() else []
    unlisted = [rel for rel in (layout.weights, HEADS_WEIGHTS, *task_files,
                                *(v for v in (doc.get("task_specs") or {}).values() if isinstance(v, str)))
                if rel not in doc["files"] and (rel == layout.weights or (path / rel).is_file())]
    if unlisted:
        raise AdapterFileError(f"{cfg_file}: 'files' does not list {', '.join(unlisted)}, so it cannot be checked; "
                               "the file was edited by hand: put it back or copy the adapter directory again")
    for rel in [*doc["files"], *(doc.get("task_specs") or {}).values()]:
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise AdapterFileError(f"{cfg_file}: file entry {rel!r} must be a path inside the adapter directory")
    bad = sorted(t for t in doc.get("task_specs") or {} if task_file_problem(t))
    if bad:   # tasks/<task>.state.json is read for each: '../x' read a file outside the directory
        problem = agree(task_file_problem(bad[0]) or "", len(bad))
        raise AdapterFileError(f"{cfg_file}: task_specs names {tasks_named(bad)}, which {problem}, so "
                               f"{'they cannot name their' if len(bad) > 1 else 'it cannot name its'} files "
                               "tasks/<task>.toml / .state.json; the file was edited by hand: fix the key or save the "
                               "adapter again")
    if verify:
        for rel, digest in doc["files"].items():
            f = path / rel
            if not f.is_file():
                raise AdapterFileError(f"{f}: missing; the adapter directory is incomplete, copy it again")
            if sha256_file(f) != digest:
                raise AdapterFileError(
                    f"{f}: sha256 does not match {layout.config} (size now {f.stat().st_size} bytes); the file "
                    "is truncated or was modified after saving. Copy the adapter directory again")
        recorded = read_metadata(path / layout.weights).get("config_sha256")
        if recorded is not None and recorded != record_sha256(doc["config"]):
            raise AdapterFileError(
                f"{cfg_file}: its 'config' (tasks and their order, rank, alpha, temperature, ...) is not the one the "
                f"adapter was saved with ({layout.weights} records another); it was edited after saving. Put the "
                "file back as it was, or copy the adapter directory again")
    return doc, layout


def _format_version(value: Any) -> int | None:
    """``format_version`` as an integer (an int, a whole float or a string of digits); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def config_of(doc: dict[str, Any], path: Path) -> MTLLoRAConfig:
    """The :class:`MTLLoRAConfig` recorded in a parsed adapter config (``read_adapter_config``)."""
    try:
        return MTLLoRAConfig.from_dict(doc["config"])
    except (ConfigError, TypeError) as e:
        raise AdapterFileError(f"{config_path(path)}: the 'config' is not a valid MTLLoRAConfig: {e}"
                               f"{newer_package_hint(doc)}") from e


def read_kind_state(path: str | Path, task: str) -> dict[str, Any] | None:
    """What task ``task``'s kind learned from its training data (``kind.state()``), if the adapter kept it."""
    file = Path(path) / state_file(task)
    if not file.is_file():
        return None
    try:
        return json.loads(read_whole(file))["state"]
    except FileTooLarge as e:
        raise AdapterFileError(f"{e}; it is not the task state save_adapter wrote (a 3,129-answer VQA vocabulary's "
                               "is a few MB): copy the adapter directory again") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AdapterFileError(f"{file}: not a task-state file ({e}); save the adapter again") from e


# ---------------------------------------------------------------------------------------------- loading


def load_adapter(base_model: nn.Module, path: str | Path, heads: dict[str, nn.Module] | None = None, *,
                 is_trainable: bool = False, check_base_weights: bool = True) -> nn.Module:
    """Attach the adapter saved in ``path`` to a fresh ``base_model`` and load its tensors; return the model.

    Everything is checked before the model is touched: the files' sha256 and safetensors headers, the
    family, class and projection fingerprint of the base model, a few values of each adapted base weight
    (``check_base_weights=False`` skips only that: for a base deliberately other than the one trained on, e.g.
    a fine-tuned copy), every tensor name and shape. ``heads``
    (task -> module) are loaded strictly from ``heads.safetensors``. Reads both format versions (see the
    module docstring); a PEFT directory (e.g. an ``export_lora`` output) is refused with a message that
    says how to load it instead. An adapter saved from a model whose inner multimodal model was adapted on its own
    (``attach(model.model, cfg)``) goes back onto that inner model of the whole ``base_model`` given, whose image
    reading it is checked against.

    As PEFT's ``load_adapter``: with ``is_trainable=False`` (the default) the model is for inference, its
    adapter tensors and the heads get ``requires_grad=False`` and model and heads are put in eval mode;
    ``is_trainable=True`` leaves the adapters trainable (as ``attach`` made them) and the modes alone,
    to continue training.
    """
    if not isinstance(base_model, nn.Module):
        hint = " (a Backbone: pass backbone.model)" if isinstance(getattr(base_model, "model", None), nn.Module) else ""
        raise TypeError(f"load_adapter: base_model must be an nn.Module, got {type(base_model).__name__}{hint}")
    if isinstance(getattr(base_model, "_orig_mod", None), nn.Module):
        raise TypeError("load_adapter: base_model is a torch.compile wrapper of "
                        f"{type(base_model._orig_mod).__name__}; pass the model itself (compiled._orig_mod) and "
                        "compile after loading")
    check_adapter_path(path, "load_adapter")
    if heads is not None and not isinstance(heads, Mapping):
        raise TypeError(f"load_adapter: heads must map task -> nn.Module, got {type(heads).__name__}")
    if not isinstance(is_trainable, bool):   # (the string "no" is true)
        raise TypeError(f"load_adapter: is_trainable must be True or False, got {is_trainable!r}")
    heads = dict(heads or {})
    require_head_modules(heads, "load_adapter")
    path = Path(path)
    doc, layout = _read(path, verify=True)
    cfg = config_of(doc, path)
    weights = path / layout.weights
    header = read_header(weights)
    head_file = path / HEADS_WEIGHTS
    head_header = read_header(head_file) if head_file.is_file() else {}
    part = adapted_part(base_model, doc)   # (an adapter of a family's inner model: onto the whole's inner model)
    refuse_adapted(base_model, f"load_adapter: this {type(base_model).__name__} already has MTL-LoRA adapters; pass "
                               "a freshly built base model (or use the adapted model as it is)")
    plan, cfg = check_base(part, doc, cfg, path, check_base_weights)
    check_tensors(header, expected_tensors(plan, cfg), weights)
    if heads:
        check_heads(heads, doc, head_header, head_file)
    tensors = load_tensors(weights)
    head_tensors = load_tensors(head_file) if heads else {}
    check_head_casts(heads, head_tensors, head_file)

    attach(part, cfg)
    take_images(base_model, doc.get("base") or {}, path)   # (the whole model's record: its backbone reads it)
    params = dict(part.named_parameters())
    warn_rounded(tensors, params, weights)
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
        for task, head in heads.items():
            n = len(task) + 1
            head.load_state_dict({k[n:]: v for k, v in head_tensors.items() if k.startswith(task + ".")}, strict=True)
    if not is_trainable:
        for name in tensors:
            params[name].requires_grad_(False)
        base_model.eval()
        for head in heads.values():
            head.requires_grad_(False)
            head.eval()
    return base_model

