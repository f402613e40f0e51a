"""What an adapter directory is called and what a directory is: the one place that names the files.

A native adapter directory (written by ``save_adapter``, layout in :mod:`.adapter_files`) has files with
names of their own since format version 2: ``mtl_lora_config.json`` and ``mtl_lora_model.safetensors``,
so that no tool takes it for a PEFT adapter (PEFT reads ``adapter_config.json`` /
``adapter_model.safetensors``; in this package those names mean PEFT files, as ``export_lora`` writes
them). Format version 1 (mtl-lora-vl 0.1.0, see ``tests/fixtures/compat_v0_1_0``) used PEFT's names for
the native files; :func:`adapter_layout` tells the two apart by content and says what a directory that
is not an adapter is instead: a PEFT adapter, a multi-task PEFT export, a training run directory. From
what a directory is follows which ones a command's ``--out`` may replace (:func:`check_output`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..whole_files import FileTooLarge, read_whole
from ..wording import few
from .atomic import holds

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CHECKPOINT_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADS_WEIGHTS",
    "LEGACY_ADAPTER_CONFIG",
    "LEGACY_ADAPTER_WEIGHTS",
    "MERGED_TASK_KEY",
    "RUN_OUTPUTS",
    "AdapterFileError",
    "AdapterLayout",
    "EXPORT_RECORD",
    "adapter_layout",
    "check_adapter_path",
    "check_output",
    "is_run_dir",
    "config_path",
    "few",
    "find_adapter_dir",
    "is_adapter_dir",
    "spec_file",
    "state_file",
]

# ---------------------------------------------------------------------------------------------- file names
# The one place that names the files of an adapter directory. Format version 2 gives the native files
# names of their own; version 1 (0.1.0) used PEFT's names, which readers still accept (adapter_layout).

FORMAT = "mtl-lora-vl-adapter"
FORMAT_VERSION = 2
ADAPTER_CONFIG = "mtl_lora_config.json"
ADAPTER_WEIGHTS = "mtl_lora_model.safetensors"
LEGACY_ADAPTER_CONFIG = "adapter_config.json"        # format version 1; PEFT's name
LEGACY_ADAPTER_WEIGHTS = "adapter_model.safetensors"  # format version 1; PEFT's name
HEADS_WEIGHTS = "heads.safetensors"
TASKS_DIR = "tasks"
RUN_ADAPTER_DIR = "adapter"  # where a training run keeps its adapter (RUN_DIR/adapter)
CHECKPOINT_NAME = "checkpoint.pt"   # a training run's checkpoint (RUN_DIR/checkpoint.pt; other ranks' beside it)
#: What a training run writes at the top of its folder (glob patterns): its temporaries are ``.<name>.*.tmp``, and a
#: resumed run writes each again (through a link, to the link's target).
RUN_OUTPUTS = (CHECKPOINT_NAME, "checkpoint-rank*.pt", RUN_ADAPTER_DIR, "config.json", "metrics.jsonl", "eval.json",
               "report.md", "predictions", "plots")
EXPORT_RECORD = "mtl_lora_export.json"  # in every exported folder: what it holds; marks it as an export
MERGED_TASK_KEY = "mtl_lora_vl_task"    # in a merged .safetensors export's metadata: its task; marks it as one


def spec_file(task: str) -> str:
    """Path of a task's spec copy, relative to the adapter directory."""
    return f"{TASKS_DIR}/{task}.toml"


def state_file(task: str) -> str:
    """Path of a task kind's saved state (its vocabulary), relative to the adapter directory."""
    return f"{TASKS_DIR}/{task}.state.json"


class AdapterFileError(ValueError):
    """An adapter directory is missing, corrupt, or made for another base model; the message says which."""


@dataclass(frozen=True)
class AdapterLayout:
    """The file names of a native adapter directory: ``config`` (JSON) and ``weights`` (the adapter tensors)."""

    config: str
    weights: str
    format_version: int


NATIVE_LAYOUT = AdapterLayout(ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT_VERSION)
LEGACY_LAYOUT = AdapterLayout(LEGACY_ADAPTER_CONFIG, LEGACY_ADAPTER_WEIGHTS, 1)


def _peft_dirs(path: Path) -> list[str]:
    """Names of the subfolders of ``path`` that hold a PEFT adapter (a multi-task ``export_lora``)."""
    out = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            if "peft_type" in json.loads(read_whole(sub / LEGACY_ADAPTER_CONFIG)):
                out.append(sub.name)
        except (OSError, ValueError, TypeError):
            continue
    return out


def _exports(path: Path) -> str:
    """What ``path`` holds as ``export`` wrote it (its :data:`EXPORT_RECORD`, or its task subfolders'): e.g.
    ``"merged, task 'vqa'"``; empty where it holds no export."""
    said = []
    for folder in [path] if (path / EXPORT_RECORD).is_file() else sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            doc = json.loads(read_whole(folder / EXPORT_RECORD))
            tasks = [str(t) for t in doc["tasks"]]
            said.append(f"{doc['format']}, task{'s' * (len(tasks) > 1)} {', '.join(map(repr, tasks))}"
                        + ("" if folder == path else f" in {folder.name}/"))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return "; ".join(said[:3]) + ("; ..." if len(said) > 3 else "")


def _not_native(path: Path, peft_type: str | None = None) -> str:
    """Why ``path`` is not a native adapter directory, and what it is instead (PEFT export, run directory)."""
    native = (f"mtl_lora_vl.load_adapter reads the native directory that save_adapter / "
              f"MTLLoRAModel.save_pretrained write ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}), which keeps every "
              "task's adapters and heads; a PEFT LoRA holds one task with its mixture folded into lora_B")
    if peft_type is not None:
        return (f"{path}: this is a PEFT adapter directory ({LEGACY_ADAPTER_CONFIG} with peft_type "
                f"{peft_type!r}), e.g. one task written by mtl_lora_vl.export_lora; load it with "
                f"peft.PeftModel.from_pretrained(base_model, {str(path)!r}). " + native)
    if is_adapter_dir(path / RUN_ADAPTER_DIR):
        return (f"{path}: no {ADAPTER_CONFIG}; this looks like a training run directory, its adapter is "
                f"{path / RUN_ADAPTER_DIR}")
    if is_run_dir(path):   # a run that has not finished
        return (f"{path}: a training run directory without its {RUN_ADAPTER_DIR}/, which a run writes when it "
                f"finishes; finish it first with `train_vl.py --resume {path}`, then use it (or "
                f"{path / RUN_ADAPTER_DIR})")
    peft = _peft_dirs(path)
    if peft:
        return (f"{path}: no {ADAPTER_CONFIG}; it holds PEFT adapters in subfolders ({few(peft)}), as "
                f"mtl_lora_vl.export_lora(model, [tasks], path) writes them; load one with "
                "peft.PeftModel.from_pretrained(base_model, path/<task>, adapter_name=<task>). " + native)
    exported = _exports(path)
    if exported:
        return (f"{path}: no {ADAPTER_CONFIG}; this is an export written by `mtl-lora-vl export` ({exported}), "
                "not an adapter directory: an export holds no task heads and no other tasks' adapters. Give the "
                "adapter it was exported from (a run's RUN_DIR/adapter); a merged model is scored zero-shot as a "
                "base model (eval --backbone open_clip:DIR or hf:DIR, without --adapter)")
    if (path / ADAPTER_WEIGHTS).is_file():
        return (f"{path}: {ADAPTER_CONFIG} is missing beside {ADAPTER_WEIGHTS}, so the adapter directory is "
                "incomplete (the weights cannot be read without it); copy the whole directory again")
    return (f"{path}: no {ADAPTER_CONFIG} (nor a format-1 {LEGACY_ADAPTER_CONFIG}); this is not an adapter "
            "directory written by mtl_lora_vl.save_adapter")


def _detect(path: Path) -> AdapterLayout | str | None:
    """The layout of a native adapter directory, the ``peft_type`` of a PEFT one, or None."""
    if (path / ADAPTER_CONFIG).is_file():
        return NATIVE_LAYOUT
    legacy = path / LEGACY_ADAPTER_CONFIG
    if not legacy.is_file():
        return None
    try:
        doc = json.loads(read_whole(legacy))
    except (json.JSONDecodeError, UnicodeDecodeError, FileTooLarge):
        return LEGACY_LAYOUT  # damaged: reading it says so
    if isinstance(doc, dict) and "peft_type" in doc and doc.get("format") != FORMAT:
        return str(doc["peft_type"])
    return LEGACY_LAYOUT


def check_adapter_path(path: object, call: str, name: str = "path", hint: str = "") -> None:
    """Refuse an adapter-directory argument ``name`` of ``call`` that is not a path (None, a model, bytes), which
    pathlib would refuse naming neither ('expected str, bytes or os.PathLike object')."""
    if not isinstance(path, (str, os.PathLike)):
        got = "None" if path is None else f"a {type(path).__name__}"
        raise TypeError(f"{call}: {name} must be the adapter directory's path (a str or pathlib.Path), got {got}{hint}")


def adapter_layout(path: str | Path) -> AdapterLayout:
    """Which file names the native adapter directory ``path`` uses (format 2, or format 1 of 0.1.0).

    Raises :class:`AdapterFileError` saying what ``path`` is instead: missing, a PEFT adapter directory
    (``adapter_config.json`` with a ``peft_type``), a multi-task PEFT export, a training run directory.
    """
    path = Path(path)
    if not path.exists() and path.name == RUN_ADAPTER_DIR and is_run_dir(path.parent):   # stopped, or still training
        raise AdapterFileError(f"{path}: does not exist yet: {path.parent} is a training run that has not finished (it "
                               f"writes {RUN_ADAPTER_DIR}/ when it does); finish it first with `train_vl.py --resume "
                               f"{path.parent}`, then use {path}")
    if not path.exists():
        raise AdapterFileError(f"{path}: does not exist (moved or renamed?); give the adapter directory's path")
    if not path.is_dir():
        raise AdapterFileError(f"{path}: not an adapter directory (save one with mtl_lora_vl.save_adapter)")
    found = _detect(path)
    if isinstance(found, AdapterLayout):
        return found
    raise AdapterFileError(_not_native(path, found))


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` is a native adapter directory (either format version); reads only the config."""
    return Path(path).is_dir() and isinstance(_detect(Path(path)), AdapterLayout)


def find_adapter_dir(path: str | Path) -> Path:
    """``path`` itself when it is an adapter directory, else its ``adapter/`` (a run directory), else ``path``."""
    path = Path(path)
    if not is_adapter_dir(path) and is_adapter_dir(path / RUN_ADAPTER_DIR):
        return path / RUN_ADAPTER_DIR
    return path


def config_path(path: str | Path) -> Path:
    """The config file of adapter directory ``path`` (for messages; the format-2 name when neither exists)."""
    path = Path(path)
    legacy = path / LEGACY_ADAPTER_CONFIG
    return legacy if legacy.is_file() and not (path / ADAPTER_CONFIG).is_file() else path / ADAPTER_CONFIG


def is_run_dir(path: str | Path) -> bool:
    """A training run directory: its ``adapter/``, or (a run not finished) ``config.json`` + ``checkpoint.pt``."""
    path = Path(path)
    return is_adapter_dir(path / RUN_ADAPTER_DIR) or ((path / "config.json").is_file()
                                                      and (path / "checkpoint.pt").is_file())


def _kept_kind(path: Path) -> str | None:
    """What ``path`` is when it is a folder no command's ``--overwrite`` replaces: an adapter or a run."""
    if is_adapter_dir(path):
        return "an MTL-LoRA adapter directory"
    if is_run_dir(path):
        return "a training run directory"
    return None


def kept_inside(folder: Path) -> Path | None:
    """The first folder inside ``folder`` that no ``overwrite=True`` deletes (an adapter or a run), or None."""
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.rglob("*")) if p.is_dir() and _kept_kind(p)), None)


def is_merged_export(path: Path) -> bool:
    """Whether ``path`` is a merged checkpoint file that ``save_merged`` wrote (its metadata names the task,
    :data:`MERGED_TASK_KEY`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return MERGED_TASK_KEY in (f.metadata() or {})
    except (OSError, SafetensorError):   # not a safetensors file at all
        return False


def _earlier_export(path: Path) -> bool:
    """Whether ``path`` is an earlier export: a folder holding :data:`EXPORT_RECORD`, or a merged ``.safetensors``
    file (:func:`is_merged_export`)."""
    return (path / EXPORT_RECORD).is_file() if path.is_dir() else is_merged_export(path)


def check_replace(out: str | Path, *, what: str, keep: Iterable[tuple[str, str | Path | None]] = ()) -> None:
    """Refuse an API call's ``overwrite=True`` where replacing ``out`` would delete an adapter or a training run (or
    part of one), or what ``keep`` names (the base model's own files): ``FileExistsError`` naming both and the fix.
    (The commands' ``--out`` goes through :func:`check_output`, which also wants an earlier output's marker.)"""
    out = Path(out)
    if not out.exists():
        return
    real = out.resolve()   # (ADAPTER/../x is beside the adapter, LINK/x inside what LINK leads to)
    for folder in (real, *real.parents):
        kind = _kept_kind(folder) if folder.is_dir() else None
        if kind and (folder == real or not _earlier_export(out)):   # an earlier export kept inside one is replaced
            where = "is" if folder == real else f"lies inside {folder}, which is"
            raise FileExistsError(f"{what}: {out} {where} {kind}, which overwrite=True never replaces; write to "
                                  "another path")
    inner = kept_inside(out)   # an adapter or a run inside out is deleted with it
    if inner is not None:
        raise FileExistsError(f"{what}: {out} holds {_kept_kind(inner)} {inner}, which overwrite=True never "
                              "deletes; write to another path")
    for name, path in keep:
        if path and Path(path).exists() and (holds(out, path) or (out.is_file() and holds(path, out))):
            raise FileExistsError(f"{what}: replacing {out} would delete {name} {path}; write to another path")


def check_outputs_folder(out: str | Path, *, command: str,
                         keep: Iterable[tuple[str, str | Path | None]] = ()) -> None:
    """Refuse a folder that ``command`` fills with one output per item (``OUT/<task>``) where that writes into
    what ``keep`` names or into an adapter or training run directory: OUT may not be one, nor lie inside one
    (it may hold them: each ``OUT/<item>`` is checked on its own with :func:`check_output`)."""
    out = Path(out)
    for name, path in keep:
        if path and Path(path).exists() and holds(path, out):
            raise FileExistsError(f"--out {out}: is or lies inside {name} {path}, which {command} does not write "
                                  "into; choose another --out")
    real = out.resolve()   # (ADAPTER/../x is beside the adapter, LINK/x inside what LINK leads to)
    for folder in (real, *real.parents):
        kind = _kept_kind(folder) if folder.is_dir() else None
        if kind:
            raise FileExistsError(f"--out {out}: {'is' if folder == real else f'lies inside {folder}, which is'} "
                                  f"{kind}; {command} does not write into one; choose another --out")


def check_output(out: str | Path, *, marker: str, command: str, overwrite: bool,
                 keep: Iterable[tuple[str, str | Path | None]] = ()) -> None:
    """Refuse an output path that writing ``command``'s results would replace but must not.

    ``keep`` names (what, path) pairs the output may neither hold nor be a file inside: the adapter being
    read, the data, the base model's files; nor may it lie inside an adapter directory. A non-empty folder is
    replaced only when it holds ``marker`` (an earlier output of ``command``; an adapter or a training run directory
    never is), and then only with ``overwrite``. An existing file is left to the caller, which knows its format. Raises
    ``FileExistsError`` naming the path and the fix.
    """
    out = Path(out)
    for name, path in keep:
        if not path or not Path(path).exists():
            continue
        if holds(out, path):
            raise FileExistsError(f"--out {out}: holds {name} {path}, which writing the results there would "
                                  "delete; choose another --out")
        if out.is_file() and holds(path, out):
            raise FileExistsError(f"--out {out}: is a file of {name} {path}, which writing the results would "
                                  "replace; choose another --out")
    adapter = next((p for p in out.resolve().parents if is_adapter_dir(p)), None)   # (ADAPTER/../x is beside it)
    if adapter is not None:   # the adapter saved again (overwrite=True) replaces its whole folder, results and all
        raise FileExistsError(f"--out {out}: lies inside the adapter directory {adapter}, which {command} does not "
                              "write into (saving the adapter again replaces the whole folder, and the results with "
                              "it); choose another --out (beside the adapter, e.g. in its run directory)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    kind = _kept_kind(out)
    if kind:
        raise FileExistsError(f"--out {out}: is {kind}, which {command} never replaces (--overwrite replaces only "
                              f"an earlier output of {command}, a folder holding {marker}); choose another --out")
    if not (out / marker).is_file():
        raise FileExistsError(f"--out {out}: is not empty and holds no {marker}, so it is not an earlier output of "
                              f"{command} and --overwrite does not replace it; choose a new or empty folder (or "
                              "delete this one yourself if you meant to)")
    if not overwrite:
        raise FileExistsError(f"--out {out}: holds an earlier output of {command}; pass --overwrite to replace it "
                              "(all of it) with the results, or choose another --out")
