"""Adapter files, interop exports, merged checkpoints and teaching a trained adapter one more task.

Adapter directory (``save_adapter`` / ``load_adapter`` / ``load_pretrained``)::

    adapter/
      adapter_config.json        what the files are (below)
      adapter_model.safetensors  the adapter tensors, under their model names, e.g.
                                 ``visual.transformer.resblocks.0.attn.in_proj.lora_A``
      heads.safetensors          each task head's state dict, keys ``<task>.<param>``
      tasks/<task>.toml          copies of the task specs used for training
      tasks/<task>.state.json    the task kind's vocabulary (VQA answers, class names), when given

``adapter_config.json`` holds ``format`` (``"mtl-lora-vl-adapter"``) and ``format_version``, the
``package_version``, the ``config`` (an :class:`MTLLoRAConfig`), the ``base_model`` identity (``family``,
``class`` as ``module.qualname``, a ``fingerprint`` = sha256 over the sorted adapted projection names and
their base weight shapes, and those ``projections`` themselves), ``base`` (how to rebuild the base model,
e.g. ``{"backbone": "builtin", "pretrained": null}``), ``towers``, ``heads`` (the parameter names of each
task head), ``task_specs`` and ``files``: the sha256 of every file, so a truncated or edited file is
refused. Nothing is unpickled: tensors are safetensors, the rest is JSON and TOML.

Plain per-task LoRA (``export_lora(..., format="plain")``, the default for open_clip and timm)::

    lora/
      lora_config.json           {"format": "mtl-lora-vl-plain-lora", "task", "rank", "scaling": 1.0,
                                  "base_model": {...}, "modules": {proj: {"base_weight", "shape", "tower"}}}
      lora_model.safetensors     <proj>.lora_A (R × d_in), <proj>.lora_B (d_out × R), fp32

For every entry of ``modules`` the task's weights are ``W[base_weight] + lora_B @ lora_A``: the scaling
α/r and, for MTL-LoRA, the task's mixture Σ softmax(w_t/τ)_i B_i Λ_t are folded into ``lora_B``. An
``nn.MultiheadAttention`` ``<attn>`` has one entry ``<attn>.in_proj`` acting on the packed
``<attn>.in_proj_weight`` (d_out = 3E, rows q, k, v; rows of slices left out by ``qkv_slices`` are zero)
and one ``<attn>.out_proj`` on ``<attn>.out_proj.weight``. R is r (n·r for multi_lora / moe_lora).

PEFT LoRA (``format="peft"``, the default for Hugging Face ``CLIPModel`` and ``LlavaForConditionalGeneration``):
a PEFT ``adapter_config.json`` (``r = lora_alpha = R``, so PEFT's scaling is 1, exact ``target_modules``)
and ``adapter_model.safetensors`` with PEFT's key names, loadable by
``peft.PeftModel.from_pretrained(fresh_base_model, path)``.

Merged checkpoint (``save_merged`` and ``scripts/export_merged.py``): the base model's plain state dict
with one task folded in; open_clip as a ``.safetensors`` file for ``open_clip.create_model(NAME,
pretrained=FILE)`` or a local-dir folder, Hugging Face models as a ``save_pretrained`` directory.

New task (``add_task``): grows every bank's task tensors by one task, freezes everything else, and
keeps the existing tasks' rows bit-identical through training (see :meth:`AdapterBank.grow_tasks`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..adapters.attach import AttachError, attach, attach_info, find_family, merged_state_dict, select_targets
from ..adapters.grow import add_task
from ..adapters.layers import ADAPTER_PARAM_NAMES, AdapterBank, LoRALinear
from ..backbones.spec import parse_spec
from ..config import ConfigError, MTLLoRAConfig
from ..families import MERGED_WEIGHTS, merged_format, peft_export

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with the tomli backport
    import tomli as tomllib

if TYPE_CHECKING:
    from ..backbones import Backbone

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterFileError",
    "HEADS_WEIGHTS",
    "Pretrained",
    "add_task",
    "apply_plain_lora",
    "export_lora",
    "load_adapter",
    "load_pretrained",
    "model_identity",
    "read_adapter_config",
    "save_adapter",
    "save_merged",
]

FORMAT = "mtl-lora-vl-adapter"
FORMAT_VERSION = 1
PLAIN_FORMAT = "mtl-lora-vl-plain-lora"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEADS_WEIGHTS = "heads.safetensors"
PLAIN_CONFIG = "lora_config.json"
PLAIN_WEIGHTS = "lora_model.safetensors"
TASKS_DIR = "tasks"


class AdapterFileError(ValueError):
    """An adapter directory is missing, corrupt, or made for another base model; the message says which."""


# ---------------------------------------------------------------------------------------------- helpers


def _version() -> str:
    from .. import __version__

    return __version__


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _adapted_module(model: nn.Module) -> nn.Module:
    """The module that ``attach`` adapted (``model`` itself, or the one inside a wrapper such as DDP)."""
    attach_info(model)  # the standard "no adapters" message
    return next(m for m in model.modules() if getattr(m, "_mtl_lora", None) is not None)


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _fingerprint(projections: dict[str, list[int]]) -> str:
    text = json.dumps(sorted((k, list(v)) for k, v in projections.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _BankPlan:
    tower: str
    d_in: int
    d_out: int
    out_slices: tuple[bool, ...] | None
    base_weight: str  # state-dict key of the base weight this bank updates


def _plan(model: nn.Module, cfg: MTLLoRAConfig) -> dict[str, _BankPlan]:
    """What ``attach(model, cfg)`` would create, per adapter bank, without touching ``model``."""
    plan: dict[str, _BankPlan] = {}
    for name, module, tower, slices in select_targets(model, cfg):
        if isinstance(module, nn.MultiheadAttention):
            E = module.embed_dim
            qkv = tuple(c in cfg.qkv_slices for c in "qkv")
            plan[name + ".in_proj"] = _BankPlan(tower, E, 3 * E, qkv, name + ".in_proj_weight")
            out = module.out_proj
            plan[name + ".out_proj"] = _BankPlan(tower, out.in_features, out.out_features, None,
                                                 name + ".out_proj.weight")
        else:
            plan[name] = _BankPlan(tower, module.in_features, module.out_features, slices, name + ".weight")
    return plan


def _plan_of_attached(inner: nn.Module) -> dict[str, _BankPlan]:
    info = inner._mtl_lora
    plan = {}
    for name, bank in info.layers.items():
        if isinstance(bank, LoRALinear):
            key = name + ".weight"
        else:  # the packed in-projection bank of a LoRAMultiheadAttention
            key = name[: -len(".in_proj")] + ".in_proj_weight"
        plan[name] = _BankPlan(info.towers[name], bank.d_in, bank.d_out_full, bank.out_slices, key)
    return plan


def _expected_tensors(plan: dict[str, _BankPlan], cfg: MTLLoRAConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every adapter tensor ``attach`` creates (banks built on the meta device)."""
    out: dict[str, tuple[int, ...]] = {}
    meta = torch.device("meta")
    for name, p in plan.items():
        bank = AdapterBank(p.d_in, p.d_out, cfg, p.out_slices, device=meta)
        for pname, param in bank.named_parameters(recurse=False):
            out[f"{name}.{pname}"] = tuple(param.shape)
    return out


def model_identity(model: nn.Module) -> dict[str, Any]:
    """The base-model identity recorded in adapter files: family, class, fingerprint, projections."""
    inner = _adapted_module(model)
    plan = _plan_of_attached(inner)
    projections = {n: [p.d_out, p.d_in] for n, p in sorted(plan.items())}
    return {"family": inner._mtl_lora.family, "class": _class_name(inner),
            "fingerprint": _fingerprint(projections), "projections": projections}


def _atomic_dir(path: Path, overwrite: bool, what: str) -> Path:
    """Check ``path`` may be written; return a fresh temporary directory beside it."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{what}: {path} exists and is a file; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{what}: {path} already exists and is not empty; pass overwrite=True "
                              "(--overwrite) to replace it, or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_permissions(root: Path) -> None:
    """mkdtemp / safetensors create private (0700 / 0600) entries; give them the usual umask-based modes."""
    mask = _umask()
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _commit_dir(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` into place; an old ``path`` is removed only once the new one is there."""
    _normal_permissions(tmp)
    old = None
    if path.is_dir():
        if any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "dir")
        else:
            path.rmdir()
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _TmpDir:
    """Context: a temporary directory beside ``path`` that becomes ``path`` on success, else is removed."""

    def __init__(self, path: str | Path, overwrite: bool, what: str):
        self.path, self.overwrite, self.what = Path(path), overwrite, what

    def __enter__(self) -> Path:
        self.tmp = _atomic_dir(self.path, self.overwrite, self.what)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            _commit_dir(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    # Own, contiguous CPU copies: safetensors refuses tensors that share storage (tied head weights).
    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, str(path),
              metadata=metadata)


def _absolute_base(base: dict[str, Any]) -> dict[str, Any]:
    """Make local paths in ``base`` (a pretrained file, an ``open_clip:DIR`` / ``hf:DIR``) absolute."""
    pre = base.get("pretrained")
    if isinstance(pre, str) and Path(pre).expanduser().exists():
        base["pretrained"] = str(Path(pre).expanduser().resolve())
    spec = base.get("backbone")
    if isinstance(spec, str):
        try:
            base["backbone"] = parse_spec(spec).absolute()
        except ValueError:
            pass  # not a backbone string this package loads: keep it as given
    return base


# ---------------------------------------------------------------------------------------------- saving


def save_adapter(
    model: nn.Module,
    path: str | Path,
    heads: dict[str, nn.Module] | None = None,
    task_specs: dict[str, str | Path] | None = None,
    base: dict[str, Any] | None = None,
    kinds: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the adapter directory of ``model`` (layout in the module docstring) atomically; return it.

    ``heads`` maps task -> head module, ``task_specs`` task -> spec TOML file (copied), ``base`` says how
    to rebuild the base model (``{"backbone": spec, "pretrained": file}``, see ``load_pretrained``),
    ``kinds`` task -> task kind whose vocabulary is kept beside the spec. An existing non-empty ``path``
    is replaced only with ``overwrite=True``, and only once the new directory is complete.
    """
    inner = _adapted_module(model)
    info = inner._mtl_lora
    cfg = info.config
    heads, task_specs, kinds = dict(heads or {}), dict(task_specs or {}), dict(kinds or {})
    for what, d in (("heads", heads), ("task_specs", task_specs), ("kinds", kinds)):
        unknown = sorted(set(d) - set(cfg.tasks))
        if unknown:
            raise ValueError(f"save_adapter: {what} names task(s) {unknown} that the adapter does not have; "
                             f"its tasks are {cfg.tasks}")
    for task, spec in task_specs.items():
        if not Path(spec).is_file():
            raise FileNotFoundError(f"save_adapter: task spec of {task!r} not found: {spec}")
        try:
            named = tomllib.loads(Path(spec).read_text(encoding="utf-8")).get("name", task)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"save_adapter: task spec of {task!r} ({spec}) is not valid TOML: {e}") from e
        if named != task:
            raise ValueError(f"save_adapter: task spec {spec} names its task {named!r}, but it is given for "
                             f"task {task!r}; pass it under its own name")
    base = _absolute_base(dict(base or {}))
    try:
        json.dumps(base)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_adapter: base must be JSON-serialisable, e.g. {{'backbone': 'builtin'}}: {e}") from e

    for bank in info.layers.values():
        bank.restore_frozen_rows()
    tensors = {n: p for n, p in inner.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES}
    head_tensors: dict[str, torch.Tensor] = {}
    head_keys: dict[str, list[str]] = {}
    for task, head in heads.items():
        sd = head.state_dict()
        head_keys[task] = sorted(sd)
        head_tensors.update({f"{task}.{k}": v for k, v in sd.items()})

    with _TmpDir(path, overwrite, "save_adapter") as tmp:
        _save_tensors(tensors, tmp / ADAPTER_WEIGHTS, {"format": FORMAT})
        _save_tensors(head_tensors, tmp / HEADS_WEIGHTS, {"format": FORMAT})
        spec_files = {}
        if task_specs or kinds:
            (tmp / TASKS_DIR).mkdir()
        for task, spec in task_specs.items():
            rel = f"{TASKS_DIR}/{task}.toml"
            shutil.copyfile(spec, tmp / rel)
            spec_files[task] = rel
        for task, kind in kinds.items():
            (tmp / TASKS_DIR / f"{task}.state.json").write_text(
                json.dumps({"kind": getattr(kind, "kind", ""), "state": kind.state()}, indent=1) + "\n")
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": _version(),
            "config": cfg.to_dict(),
            "base_model": model_identity(inner),
            "base": base,
            "towers": dict(sorted(info.towers.items())),
            "heads": head_keys,
            "task_specs": spec_files,
            "files": files,
        }
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------------------------- reading


def read_adapter_config(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter directory; ``verify`` checks every file's sha256."""
    path = Path(path)
    cfg_file = path / ADAPTER_CONFIG
    if not path.is_dir():
        raise AdapterFileError(f"{path}: not an adapter directory (save one with mtl_lora_vl.save_adapter)")
    if not cfg_file.is_file():
        raise AdapterFileError(f"{path}: no {ADAPTER_CONFIG}; this is not an adapter directory written by "
                               "mtl_lora_vl.save_adapter")
    try:
        doc = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{cfg_file}: not valid JSON ({e}); the file is damaged, save the adapter again") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        hint = " (that is a PEFT adapter: load it with peft.PeftModel.from_pretrained)" if isinstance(doc, dict) \
            and "peft_type" in doc else ""
        raise AdapterFileError(f"{cfg_file}: format is {got!r}, expected {FORMAT!r}{hint}")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise AdapterFileError(f"{cfg_file}: format_version {doc['format_version']} is newer than this package "
                               f"reads ({FORMAT_VERSION}); upgrade mtl-lora-vl")
    for key in ("config", "base_model", "files"):
        if not isinstance(doc.get(key), dict):
            raise AdapterFileError(f"{cfg_file}: the field {key!r} is missing or not an object")
    if ADAPTER_WEIGHTS not in doc["files"]:
        raise AdapterFileError(f"{cfg_file}: 'files' does not list {ADAPTER_WEIGHTS}")
    for rel in [*doc["files"], *(doc.get("task_specs") or {}).values()]:
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise AdapterFileError(f"{cfg_file}: file entry {rel!r} must be a path inside the adapter directory")
    if verify:
        for rel, digest in doc["files"].items():
            f = path / rel
            if not f.is_file():
                raise AdapterFileError(f"{f}: missing; the adapter directory is incomplete, copy it again")
            if _sha256(f) != digest:
                raise AdapterFileError(
                    f"{f}: sha256 does not match {ADAPTER_CONFIG} (size now {f.stat().st_size} bytes); the file "
                    "is truncated or was modified after saving. Copy the adapter directory again")
    return doc


def _config_of(doc: dict[str, Any], path: Path) -> MTLLoRAConfig:
    try:
        return MTLLoRAConfig.from_dict(doc["config"])
    except (ConfigError, TypeError) as e:
        raise AdapterFileError(f"{path / ADAPTER_CONFIG}: the 'config' is not a valid MTLLoRAConfig: {e}") from e


def _header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) from a safetensors header, reading no tensor data and unpickling nothing."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(sl.get_shape()), str(sl.get_dtype()))
            return out
    except Exception as e:  # safetensors raises SafetensorError / OSError types for damaged headers
        raise AdapterFileError(f"{file}: unreadable safetensors header ({e}); the file is damaged or was edited. "
                               "Copy the adapter directory again") from e


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:
        raise AdapterFileError(f"{file}: unreadable safetensors file ({e}); copy the adapter directory again") from e


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _check_base(base_model: nn.Module, doc: dict[str, Any], cfg: MTLLoRAConfig, path: Path) -> dict[str, _BankPlan]:
    """Family, class and fingerprint of ``base_model`` against the file; returns the bank plan."""
    if getattr(base_model, "_mtl_lora", None) is not None or any(
            getattr(m, "_mtl_lora", None) is not None for m in base_model.modules()):
        raise AdapterFileError(f"load_adapter: this {type(base_model).__name__} already has MTL-LoRA adapters; "
                               "pass a freshly built base model (or use the adapted model as it is)")
    ident = doc["base_model"]
    fam = find_family(base_model)
    fam_name = fam.name if fam else "custom"
    if ident.get("family") != fam_name:
        raise AdapterFileError(f"{path}: the adapter was made for a {ident.get('family')} model "
                               f"({ident.get('class')}), but this base model is a {fam_name} model "
                               f"({_class_name(base_model)}); load it onto the base model it was trained on")
    if ident.get("class") != _class_name(base_model):
        raise AdapterFileError(f"{path}: the adapter was made for class {ident.get('class')}, but this base model "
                               f"is {_class_name(base_model)}; load it onto the base model it was trained on")
    try:
        plan = _plan(base_model, cfg)
    except AttachError as e:
        raise AdapterFileError(f"{path}: the adapter's targets do not fit this base model: {e}") from e
    mine = {n: [p.d_out, p.d_in] for n, p in plan.items()}
    theirs = {n: list(v) for n, v in (ident.get("projections") or {}).items()}
    if _fingerprint(mine) != ident.get("fingerprint") or mine != theirs:
        only_file = sorted(set(theirs) - set(mine))
        only_model = sorted(set(mine) - set(theirs))
        differ = [f"{n}: {tuple(theirs[n])} in the file vs {tuple(mine[n])} here"
                  for n in sorted(set(mine) & set(theirs)) if mine[n] != theirs[n]]
        parts = []
        if only_file:
            parts.append(f"projections only in the file: {_few(only_file)}")
        if only_model:
            parts.append(f"projections only in this model: {_few(only_model)}")
        if differ:
            parts.append(f"base weight shapes (d_out, d_in) differ: {_few(differ, 4)}")
        if not parts:
            parts.append("the recorded fingerprint does not match the recorded projections (edited config)")
        raise AdapterFileError(f"{path}: base model fingerprint mismatch, the adapter was made for another "
                               f"architecture or size of {ident.get('class')}; " + "; ".join(parts))
    return plan


def _check_tensors(header: dict[str, tuple[tuple[int, ...], str]], expected: dict[str, tuple[int, ...]],
                   file: Path) -> None:
    missing = sorted(set(expected) - set(header))
    if missing:
        raise AdapterFileError(f"{file}: missing adapter tensor(s) {_few(missing)}; the file does not match its "
                               f"{ADAPTER_CONFIG}")
    unexpected = sorted(set(header) - set(expected))
    if unexpected:
        raise AdapterFileError(f"{file}: unexpected adapter tensor(s) {_few(unexpected)}, which the adapter's "
                               "config does not create on this model")
    for name, shape in expected.items():
        got, dtype = header[name]
        if got != shape:
            module = name.rpartition(".")[0]
            raise AdapterFileError(f"{file}: shape mismatch in module {module}: {name} is {got} in the file but "
                                   f"the model expects {shape}")
        if dtype not in ("F32", "F16", "BF16", "F64"):
            raise AdapterFileError(f"{file}: {name} has dtype {dtype}; adapter tensors are floating point")


def _check_heads(heads: dict[str, nn.Module], doc: dict[str, Any], header: dict[str, tuple[tuple[int, ...], str]],
                 file: Path) -> None:
    saved = doc.get("heads") or {}
    for task, head in heads.items():
        if task not in saved:
            raise AdapterFileError(f"{file}: has no head for task {task!r} (heads saved: {sorted(saved)})")
        sd = head.state_dict()
        want = {f"{task}.{k}": tuple(v.shape) for k, v in sd.items()}
        have = {f"{task}.{k}" for k in saved[task]}
        missing, unexpected = sorted(set(want) - have), sorted(have - set(want))
        if missing or unexpected:
            raise AdapterFileError(f"{file}: head of task {task!r} does not match the given module: missing "
                                   f"{missing or 'none'}, unexpected {unexpected or 'none'}")
        for k, shape in want.items():
            if k not in header:
                raise AdapterFileError(f"{file}: missing head tensor {k}")
            if header[k][0] != shape:
                raise AdapterFileError(f"{file}: shape mismatch in the head of task {task!r}: {k} is "
                                       f"{header[k][0]} in the file but the head module has {shape}")


def load_adapter(base_model: nn.Module, path: str | Path, heads: dict[str, nn.Module] | None = None) -> nn.Module:
    """Attach the adapter saved in ``path`` to a fresh ``base_model`` and load its tensors; return the model.

    Everything is checked before the model is touched: the files' sha256 and safetensors headers, the
    family, class and projection fingerprint of the base model, every tensor name and shape. ``heads``
    (task -> module) are loaded strictly from ``heads.safetensors``.
    """
    if not isinstance(base_model, nn.Module):
        hint = " (a Backbone: pass backbone.model)" if isinstance(getattr(base_model, "model", None), nn.Module) else ""
        raise TypeError(f"load_adapter: base_model must be an nn.Module, got {type(base_model).__name__}{hint}")
    path = Path(path)
    doc = read_adapter_config(path)
    cfg = _config_of(doc, path)
    heads = dict(heads or {})
    header = _header(path / ADAPTER_WEIGHTS)
    head_file = path / HEADS_WEIGHTS
    head_header = _header(head_file) if head_file.is_file() else {}
    plan = _check_base(base_model, doc, cfg, path)
    _check_tensors(header, _expected_tensors(plan, cfg), path / ADAPTER_WEIGHTS)
    if heads:
        _check_heads(heads, doc, head_header, head_file)
    tensors = _load_tensors(path / ADAPTER_WEIGHTS)
    head_tensors = _load_tensors(head_file) if heads else {}

    attach(base_model, cfg)
    params = dict(base_model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
        for task, head in heads.items():
            n = len(task) + 1
            head.load_state_dict({k[n:]: v for k, v in head_tensors.items() if k.startswith(task + ".")}, strict=True)
    return base_model


# ---------------------------------------------------------------------------------------------- one-call loading


@dataclass
class Pretrained:
    """What ``load_pretrained`` returns; unpacks as ``backbone, heads, config``.

    ``specs`` holds the saved task specs (parsed), ``kinds`` the task kinds rebuilt from them (only with
    ``heads=True``), ``doc`` the parsed ``adapter_config.json``.
    """

    backbone: Backbone
    heads: dict[str, nn.Module]
    config: MTLLoRAConfig
    kinds: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, Any] = field(default_factory=dict)
    doc: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.backbone, self.heads, self.config))


def load_pretrained(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    backbone: str | None = None,
    pretrained: str | None = None,
    data_root: str | Path | None = None,
    heads: bool = True,
) -> Pretrained:
    """Build the base model named in the adapter file, rebuild the task heads, attach and load, in one call.

    The base model comes from ``mtl_lora_vl.backbones.load_backbone(base.backbone, base.pretrained)``
    as recorded by ``save_adapter``; ``backbone`` / ``pretrained`` override those (e.g. the checkpoint
    lives elsewhere on this machine). With ``heads=True`` each task whose spec was saved gets its kind
    rebuilt through the task registry from what it learned in training (``tasks/<t>.state.json``: answer
    vocabulary, class names), so no training data is needed; an adapter saved without that state
    rebuilds it from the training split (``data_root`` for file-based specs). Each head is built by its
    kind, then filled from ``heads.safetensors``.
    """
    from ..backbones import load_backbone

    path = Path(path)
    doc = read_adapter_config(path)
    cfg = _config_of(doc, path)
    base = doc.get("base") or {}
    spec = backbone or base.get("backbone")
    if not spec:
        raise AdapterFileError(f"{path / ADAPTER_CONFIG}: does not say which base model it was trained on "
                               "('base.backbone'); pass backbone='builtin' | 'open_clip:...' | 'hf:DIR', or build "
                               "the base model yourself and call mtl_lora_vl.load_adapter(model, path)")
    weights = pretrained if pretrained is not None else base.get("pretrained")
    try:
        bb = load_backbone(spec, weights, device=device)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise AdapterFileError(f"{path}: cannot build the base model {spec!r} (pretrained={weights!r}) that the "
                               f"adapter was trained on: {e}. Point at it on this machine with backbone=... / "
                               "pretrained=... (--backbone / --pretrained)") from e

    built: dict[str, nn.Module] = {}
    kinds: dict[str, Any] = {}
    specs: dict[str, Any] = {}
    if doc.get("task_specs"):
        from ..tasks import build_kind, load_spec

        for task, rel in doc["task_specs"].items():
            try:
                specs[task] = load_spec(path / rel)
                if heads:
                    state = _saved_kind_state(path / TASKS_DIR / f"{task}.state.json")
                    train = None if state is not None else specs[task].load_split("train", data_root)
                    kinds[task] = build_kind(specs[task], train, bb, state=state)
            except (ValueError, FileNotFoundError, OSError) as e:
                raise AdapterFileError(f"{path}: cannot rebuild task {task!r} from {rel}: {e}. Pass data_root=... "
                                       "for file-based tasks, or heads=False") from e
            if heads:
                if task in (doc.get("heads") or {}):
                    with torch.no_grad():  # on the base model: head shapes do not depend on adapters
                        built[task] = kinds[task].build_head(bb)
    load_adapter(bb.model, path, heads=built)
    for head in built.values():
        head.to(device).eval()
    return Pretrained(bb, built, cfg, kinds, specs, doc)


def _saved_kind_state(state_file: Path) -> dict[str, Any] | None:
    """What the task kind learned from its training data (``kind.state()``), if the adapter kept it."""
    if not state_file.is_file():
        return None
    try:
        return json.loads(state_file.read_text())["state"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AdapterFileError(f"{state_file}: not a task-state file ({e}); save the adapter again") from e


# ---------------------------------------------------------------------------------------------- exports


def _pairs(inner: nn.Module, task: str) -> tuple[dict[str, _BankPlan], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    info = inner._mtl_lora
    t = info.config.task_index(task)
    plan = _plan_of_attached(inner)
    return plan, {name: bank.lora_pair(t) for name, bank in info.layers.items()}


def export_lora(model: nn.Module, task: str, path: str | Path, format: str = "auto",
                overwrite: bool = False) -> Path:
    """Write task ``task`` of ``model`` as one plain LoRA (scaling folded in); return the directory.

    ``format="peft"`` writes a PEFT LoRA directory (default for Hugging Face CLIP and LLaVA; needs every
    adapted projection to be an ``nn.Linear``), ``"plain"`` the layout in the module docstring (default
    for open_clip and timm). Both give the MTL-LoRA model's outputs for that task.
    """
    inner = _adapted_module(model)
    info = inner._mtl_lora
    if format == "auto":
        format = "peft" if peft_export(info.family) else "plain"
    if format not in ("peft", "plain"):
        raise ValueError(f"export_lora: format must be 'auto', 'peft' or 'plain', got {format!r}")
    plan, pairs = _pairs(inner, task)
    if format == "peft":
        mha = sorted(n for n, b in info.layers.items() if not isinstance(b, LoRALinear))
        if mha:
            raise ValueError(f"export_lora: PEFT LoRA cannot express adapters on the packed in-projection of "
                             f"nn.MultiheadAttention ({_few(mha, 3)}); use format='plain' or a merged checkpoint")
    ranks = {b.shape[1] for b, _ in pairs.values()}
    R = max(ranks)
    with _TmpDir(path, overwrite, "export_lora") as tmp:
        if format == "peft":
            tensors = {}
            for name, (B, A) in pairs.items():
                tensors[f"base_model.model.{name}.lora_A.weight"] = A
                tensors[f"base_model.model.{name}.lora_B.weight"] = B
            _save_tensors(tensors, tmp / "adapter_model.safetensors", {"format": "pt"})
            peft_cfg = {
                "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "revision": None,
                "inference_mode": True, "r": R, "lora_alpha": R, "lora_dropout": 0.0, "bias": "none",
                "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
                "target_modules": sorted(pairs), "modules_to_save": None, "layers_to_transform": None,
                "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
            }
            if len(ranks) > 1:  # cannot happen with one config, but keep PEFT's scaling at 1 per module
                peft_cfg["rank_pattern"] = {n: b.shape[1] for n, (b, _) in pairs.items() if b.shape[1] != R}
                peft_cfg["alpha_pattern"] = dict(peft_cfg["rank_pattern"])
            (tmp / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=2) + "\n")
            (tmp / "README.md").write_text(
                f"PEFT LoRA for task {task!r}, exported by mtl-lora-vl {_version()} from an MTL-LoRA adapter "
                f"({info.config.method}, r={info.config.r}). r = lora_alpha = {R}: the scaling is folded into "
                "lora_B.\n\n    model = peft.PeftModel.from_pretrained(base_model, this_directory)\n")
        else:
            tensors = {}
            modules = {}
            for name, (B, A) in pairs.items():
                tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A, B
                modules[name] = {"base_weight": plan[name].base_weight, "shape": [plan[name].d_out, plan[name].d_in],
                                 "tower": plan[name].tower, "rank": int(B.shape[1])}
            _save_tensors(tensors, tmp / PLAIN_WEIGHTS, {"format": PLAIN_FORMAT})
            doc = {"format": PLAIN_FORMAT, "format_version": FORMAT_VERSION, "package_version": _version(),
                   "task": task, "method": info.config.method, "rank": R, "scaling": 1.0,
                   "update": "W[base_weight] += lora_B @ lora_A", "base_model": model_identity(inner),
                   "modules": modules}
            (tmp / PLAIN_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    return Path(path)


def apply_plain_lora(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Fold a plain LoRA directory written by ``export_lora(format="plain")`` into ``base_model``'s weights."""
    path = Path(path)
    try:
        doc = json.loads((path / PLAIN_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"{path / PLAIN_CONFIG}: unreadable ({e})") from e
    if doc.get("format") != PLAIN_FORMAT:
        raise AdapterFileError(f"{path / PLAIN_CONFIG}: format is {doc.get('format')!r}, expected {PLAIN_FORMAT!r}")
    tensors = _load_tensors(path / PLAIN_WEIGHTS)
    params = dict(base_model.named_parameters())
    updates = []
    for name, m in doc["modules"].items():
        key = m["base_weight"]
        if key not in params:
            raise AdapterFileError(f"{path}: base weight {key} (for {name}) is not in this {type(base_model).__name__}")
        B, A = tensors[f"{name}.lora_B"], tensors[f"{name}.lora_A"]
        if tuple(params[key].shape) != (B.shape[0], A.shape[1]):
            raise AdapterFileError(f"{path}: shape mismatch in module {name}: {key} is {tuple(params[key].shape)} "
                                   f"here but the LoRA gives {(B.shape[0], A.shape[1])}")
        updates.append((params[key], B, A))
    with torch.no_grad():
        for w, B, A in updates:
            w.copy_((w.float() + B.to(w.device) @ A.to(w.device)).to(w.dtype))
    return base_model


def save_merged(model: nn.Module, task: str, out: str | Path, source_dir: str | Path | None = None,
                overwrite: bool = False) -> Path:
    """Write ``model``'s base model with task ``task`` merged in, loadable by the base library itself.

    open_clip: ``out`` ending in ``.safetensors`` is one state-dict file for ``open_clip.create_model(NAME,
    pretrained=out)``; any other ``out`` is a local-dir folder (``open_clip_model.safetensors`` plus the
    non-weight files of ``source_dir``, e.g. open_clip_config.json and the tokenizer). Hugging Face
    models: a ``save_pretrained`` directory (plus ``source_dir``'s tokenizer/preprocessor files).
    """
    inner = _adapted_module(model)
    fmt = merged_format(inner._mtl_lora.family, inner)
    sd = merged_state_dict(inner, task)
    out = Path(out)
    if out.suffix == ".safetensors":
        if out.exists() and not overwrite:
            raise FileExistsError(f"save_merged: {out} already exists; pass overwrite=True (--overwrite) or "
                                  "choose another path")
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            _save_tensors(sd, Path(tmp), {"format": "pt", "mtl_lora_vl_task": task})
            _normal_permissions(Path(tmp))
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out
    with _TmpDir(out, overwrite, "save_merged") as tmp:
        if fmt == "hf":
            inner.save_pretrained(str(tmp), state_dict=sd)
        else:
            _save_tensors(sd, tmp / MERGED_WEIGHTS[fmt], {"format": "pt", "mtl_lora_vl_task": task})
        if source_dir is not None:
            for f in Path(source_dir).iterdir():
                weights = f.suffix in (".safetensors", ".bin", ".pth", ".pt") or f.name.endswith(".index.json")
                if f.is_file() and not weights and not (tmp / f.name).exists():
                    shutil.copyfile(f, tmp / f.name)
    return out


# ---------------------------------------------------------------------------------------------- new tasks
