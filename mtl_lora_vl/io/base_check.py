"""Checking an adapter file against the base model it is loaded onto, before anything is touched.

The family and class, the projection fingerprint (with adapters saved under a family's older default targets
loaded on the projections they were saved with), a few sampled values of each adapted base weight, the
tensor names and shapes, and the heads. Every failure is an :class:`AdapterFileError` naming the file, what
differs and what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, NoReturn

import torch
from packaging.version import InvalidVersion, Version
from torch import nn

from .._version import __version__
from ..adapters.attach import AttachError
from ..config import TOWERS, MTLLoRAConfig
from ..families import INNER_MODELS, find_family, inner_family
from .identity import (
    BankPlan,
    class_name,
    fingerprint,
    plan_targets,
    projections_of,
    same_weights,
    weight_sample,
)
from .layout import ADAPTER_CONFIG, AdapterFileError, config_path, few

logger = logging.getLogger(__name__)


def adapted_part(base_model: nn.Module, doc: dict[str, Any]) -> nn.Module:
    """The module of ``base_model`` the adapter in ``doc`` goes onto: the family's inner multimodal model
    (``model.model``) where the adapter was saved from a model whose inner model was adapted on its own (recorded as
    family "custom" of that inner class) and ``base_model`` is a whole model of that family; else ``base_model``."""
    ident = doc["base_model"]
    fam = find_family(base_model)
    if fam is None or ident.get("family") != "custom" or ident.get("class") == class_name(base_model):
        return base_model
    parts = _inner_parts(base_model, str(ident.get("class")), fam)
    return parts[0][1] if len(parts) == 1 else base_model   # (none or several: check_base_class names the mismatch)


def _inner_parts(base_model: nn.Module, recorded: str, fam: Any) -> list[tuple[str, nn.Module]]:
    """The submodules of ``base_model`` of class ``recorded`` that are family ``fam``'s inner multimodal model."""
    return [(n, m) for n, m in base_model.named_modules() if n and class_name(m) == recorded
            and inner_family(m) is fam]


def check_base_class(base_model: nn.Module, doc: dict[str, Any], path: Path) -> None:
    """The family and class of ``base_model`` against the adapter file's (before anything is built on it)."""
    ident = doc["base_model"]
    fam = find_family(base_model)
    fam_name = fam.name if fam else "custom"
    inner = _inner_refusal(base_model, ident, path) if ident.get("family") == "custom" else None
    if inner and (ident.get("family") != fam_name or ident.get("class") != class_name(base_model)):
        raise AdapterFileError(inner)
    if ident.get("family") != fam_name:
        raise AdapterFileError(f"{path}: the adapter was made for a model of family {ident.get('family')} "
                               f"({ident.get('class')}), but this base model is of family {fam_name} "
                               f"({class_name(base_model)}); load it onto the base model it was trained on")
    if ident.get("class") != class_name(base_model) and not _same_script_class(str(ident.get("class")), base_model):
        raise AdapterFileError(f"{path}: the adapter was made for class {ident.get('class')}, but this base model "
                               f"is {class_name(base_model)}; load it onto the base model it was trained on")


def written_family_of(ident: dict[str, Any]) -> str:
    """The family of the model an adapter whose ``base_model`` record is ``ident`` is exported from: the recorded
    one, or for an adapter of a family's inner multimodal model adapted on its own (family "custom" of that class)
    that family, whose whole model ``load_pretrained`` puts it back on."""
    family = str(ident.get("family") or "")
    return (_inner_origin(str(ident.get("class"))) or family) if family == "custom" else family


def _inner_origin(recorded: str) -> str | None:
    """The family whose inner multimodal model class ``recorded`` (``module.qualname``) is, else None."""
    module, _, name = recorded.rpartition(".")
    return next((fam for ref, fam in INNER_MODELS if ref.rpartition(".")[2] == name
                 and (module == ref.rpartition(".")[0] or module.startswith(ref.rpartition(".")[0] + "."))), None)


def _inner_refusal(base_model: nn.Module, ident: dict[str, Any], path: Path) -> str | None:
    """Why an adapter saved from a family's inner multimodal model adapted on its own (family "custom" of that
    class) does not fit ``base_model``, and what to pass; None for an adapter of another custom model."""
    recorded = str(ident.get("class"))
    of = _inner_origin(recorded)
    if of is None:
        return None
    short = recorded.rpartition(".")[2]
    saved = (f"{path}: the adapter was saved from the inner multimodal model ({short}) of a {of} model, adapted on its "
             "own (attach(model.model, ...)), so it is recorded as family custom of that class")
    fam, here = find_family(base_model), type(base_model).__name__
    parts = [n for n, _ in _inner_parts(base_model, recorded, fam)]
    if fam is not None and fam.name == of and len(parts) > 1:
        return (f"{saved}; this {here} holds {len(parts)} {short} modules ({few(parts)}), so which one it goes on is "
                f"not known: pass the one it was saved from (e.g. load_adapter(model.{parts[0]}, path))")
    wrapped = getattr(base_model, "module", None)
    if fam is None and isinstance(wrapped, nn.Module):
        return (f"{saved}; this base model is a {here} wrapping a {type(wrapped).__name__}: pass the model inside "
                f"it (load_adapter(wrapper.module, path))")
    return (f"{saved}; this base model is {class_name(base_model)} (family {fam.name if fam else 'custom'}): load it "
            f"onto a {of} model of the checkpoint it was trained on (the whole model, load_adapter(backbone.model, "
            "path), puts it on its inner model), or onto that inner model")


def _same_script_class(recorded: str, base_model: nn.Module) -> bool:
    """Whether ``recorded`` is ``base_model``'s class seen from another module: a class of the script that ran
    (``__main__.Net``) imported from that script's module elsewhere (``train.Net``), or the reverse. Its
    projections and sampled weights are still checked."""
    cls = type(base_model)
    if cls.__module__ == "__main__":
        return recorded.endswith(f".{cls.__qualname__}")
    return recorded == f"__main__.{cls.__qualname__}"


def refuse_adapted(model: nn.Module, message: str) -> None:
    """AdapterFileError(``message``) when ``model`` (or a module inside it) already has MTL-LoRA adapters."""
    if any(getattr(m, "_mtl_lora", None) is not None for m in model.modules()):
        raise AdapterFileError(message)


def check_base(base_model: nn.Module, doc: dict[str, Any], cfg: MTLLoRAConfig, path: Path,
                check_weights: bool = True) -> tuple[dict[str, BankPlan], MTLLoRAConfig]:
    """Family, class, fingerprint and (``check_weights``) sampled weights of ``base_model`` against the file;
    returns the bank plan and the config to attach with (see :func:`_saved_projections`)."""
    refuse_adapted(base_model, f"load_adapter: this {type(base_model).__name__} already has MTL-LoRA adapters; "
                               "pass a freshly built base model (or use the adapted model as it is)")
    check_base_class(base_model, doc, path)
    ident = doc["base_model"]
    try:
        plan = plan_targets(base_model, cfg)
    except AttachError as e:
        raise AdapterFileError(f"{path}: the adapter's targets do not fit this base model: {e}") from e
    mine = projections_of(plan)
    recorded = ident.get("projections") or {}
    if not isinstance(recorded, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(d, int) for d in v) for v in recorded.values()):
        raise AdapterFileError(f"{path}: base_model.projections in {ADAPTER_CONFIG} is not a mapping of projection "
                               "name to [d_out, d_in] (an edited file); copy the adapter directory again")
    theirs = {n: list(v) for n, v in recorded.items()}
    for fallback in (_saved_projections, _saved_before_separate_qkv):
        if mine != theirs and fingerprint(theirs) == ident.get("fingerprint") and _same_parameters(base_model, ident):
            saved = fallback(base_model, cfg, theirs)
            if saved is not None:
                cfg, plan, mine = saved
    if fingerprint(mine) != ident.get("fingerprint") or mine != theirs:
        only_file = sorted(set(theirs) - set(mine))
        only_model = sorted(set(mine) - set(theirs))
        differ = [f"{n}: {tuple(theirs[n])} in the file vs {tuple(mine[n])} here"
                  for n in sorted(set(mine) & set(theirs)) if mine[n] != theirs[n]]
        parts = []
        if only_file:
            parts.append(f"projections only in the file: {few(only_file)}")
        if only_model:
            parts.append(f"projections only in this model: {few(only_model)}")
        if differ:
            parts.append(f"base weight shapes (d_out, d_in) differ: {few(differ, 4)}")
        if not parts:
            parts.append("the recorded fingerprint does not match the recorded projections (edited config)")
        raise AdapterFileError(f"{path}: base model fingerprint mismatch, the adapter was made for another "
                               f"architecture or size of {ident.get('class')}; " + "; ".join(parts))
    if check_weights:
        check_weight_samples(base_model, doc, path)
    return plan, cfg


def _same_parameters(base_model: nn.Module, ident: dict[str, Any]) -> bool:
    """Whether ``base_model`` has the parameters the file's ``weight_samples`` name (every base parameter; files
    written before 2026-12-06 left out the adapted layers' biases, so biases are left out of the comparison): the
    fallbacks below read an older version's choice of projections on the *same* architecture, never on a model with
    more layers. True where the file records no samples (written before they were)."""
    samples = ident.get("weight_samples")
    if not isinstance(samples, dict) or not samples:
        return True
    mine = {n for n, p in base_model.named_parameters() if p.numel() and not n.endswith("bias")}
    names = {n for n in samples if not n.endswith("bias")}
    if names <= {f"{p}.weight" for p in ident.get("projections") or {}}:   # a file from before 2026-12-04 sampled
        return names <= mine                                                # the adapted weights only
    return mine == names


def _saved_projections(base_model: nn.Module, cfg: MTLLoRAConfig, theirs: dict[str, list[int]]
                       ) -> tuple[MTLLoRAConfig, dict[str, BankPlan], dict[str, list[int]]] | None:
    """An adapter saved under ``targets="default"`` whose projections this version's defaults resolve
    differently on the same model (a family's defaults changed: LLaVA's unread vision layers left out, Phi-3's
    packed projections taken in): its own projections as explicit targets, when each is an ``nn.Linear`` of
    the model that the family's defaults place in a tower; None otherwise (the mismatch is then reported)."""
    fam = find_family(base_model)
    if cfg.targets != "default" or fam is None or fam.packed_qkv:
        return None
    modules = dict(base_model.named_modules())
    targets: dict[str, list[str]] = {}
    for name in theirs:
        tower = next((t for t in TOWERS for p in fam.targets.get(t, ()) if re.search(p, name)), None)
        if not isinstance(modules.get(name), nn.Linear) or tower is None:
            return None
        targets.setdefault(tower, []).append(f"^{re.escape(name)}$")
    explicit = dataclasses.replace(cfg, targets=targets)
    plan = plan_targets(base_model, explicit)
    mine = projections_of(plan)
    if mine != theirs:
        return None
    logger.info("the adapter was saved when the %s family's default targets chose other projections; it is "
                "loaded on the %d projections it was saved with", fam.name, len(mine))
    return explicit, plan, mine


def _saved_before_separate_qkv(base_model: nn.Module, cfg: MTLLoRAConfig, theirs: dict[str, list[int]]
                               ) -> tuple[MTLLoRAConfig, dict[str, BankPlan], dict[str, list[int]]] | None:
    """An adapter saved before ``qkv_slices`` selected separate ``q_proj`` / ``k_proj`` / ``v_proj`` layers (it
    adapted all three whatever it said): loaded on the projections it was saved with, as ``qkv_slices="qkv"``,
    when no projection of the model is packed (there the setting still selects slices)."""
    if cfg.qkv_slices == "qkv":
        return None
    old = dataclasses.replace(cfg, qkv_slices="qkv")
    plan = plan_targets(base_model, old)
    mine = projections_of(plan)
    if mine != theirs or any(p.out_slices is not None for p in plan.values()):
        return None
    logger.warning("the adapter says qkv_slices=%r but was saved before that setting applied to separate q/k/v "
                   "layers, so all three are adapted; it is loaded as saved (qkv_slices='qkv')", cfg.qkv_slices)
    return old, plan, mine


def check_weight_samples(base_model: nn.Module, doc: dict[str, Any], path: Path) -> None:
    """The sampled base weights recorded in an adapter (or plain LoRA) file against ``base_model``'s."""
    recorded = doc["base_model"].get("weight_samples") or {}  # absent in files written before it was recorded
    if not isinstance(recorded, dict) or not all(
            isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
            for v in recorded.values()):
        raise AdapterFileError(f"{path}: base_model.weight_samples is not an object of value lists; the file was "
                               "edited by hand: put it back or save the adapter again")
    params = dict(base_model.named_parameters(remove_duplicate=False))
    shapes = doc["base_model"].get("weight_shapes") or {}   # absent in files written before it was recorded
    resized = [(k, list(params[k].shape), v) for k, v in sorted(shapes.items()) if k in params and isinstance(v, list)
               and list(params[k].shape) != v]
    if resized:
        k, mine, theirs = resized[0]
        _refuse_base(path, doc, f"a base of another size: {len(resized)} base weight(s) have other shapes (e.g. "
                                f"{k}: {tuple(mine)} here, {tuple(theirs)} when it was saved: another image size, "
                                "vocabulary or context length)", "onto this size anyway (its adapted layers fit)")
    off = [(k, weight_sample(params[k]), v) for k, v in sorted(recorded.items()) if k in params]
    short = [k for k, mine, theirs in off if len(mine) != len(theirs)]
    if short:   # the same weights give as many values: a shortened list is an edit, not other weights
        raise AdapterFileError(f"{path}: base_model.weight_samples[{short[0]!r}] holds {len(recorded[short[0]])} "
                               f"values where the sample has {len(weight_sample(params[short[0]]))}; the file was "
                               "edited by hand: put it back or save the adapter again")
    off = [(k, mine, theirs) for k, mine, theirs in off if not same_weights(mine, theirs)]
    if off:
        k, mine, theirs = off[0]
        _refuse_base(path, doc, f"other weights of this architecture: {len(off)} of {len(recorded)} sampled base "
                                f"weights differ (e.g. {k}: {mine[:2]} here, {theirs[:2]} when it was saved)", "anyway")


def _refuse_base(path: Path, doc: dict[str, Any], trained_on: str, anyway: str) -> NoReturn:
    """The refusal of an adapter trained on another base: what differs, the recorded base, and the switch."""
    base = doc.get("base") or {}
    raise AdapterFileError(
        f"{path}: the adapter was trained on {trained_on}. Load it onto the checkpoint it was trained on (recorded: "
        f"backbone={base.get('backbone')!r}, pretrained={base.get('pretrained')!r}); to load it {anyway}, pass "
        "check_base_weights=False to the Python function that loads it (the commands have no such switch)")


def newer_package_hint(doc: dict[str, Any]) -> str:
    """"; written by mtl-lora-vl X, newer than this Y: upgrade mtl-lora-vl" when the file says so, else ""."""
    written = str(doc.get("package_version") or "")
    try:
        newer = Version(written) > Version(__version__)
    except InvalidVersion:
        return ""
    return f"; the file was written by mtl-lora-vl {written}, newer than this {__version__}: upgrade mtl-lora-vl" \
        if newer else ""


_FLOATS = ("F32", "F16", "BF16", "F64")   # safetensors' names of the float dtypes a tensor loads from


def check_tensors(header: dict[str, tuple[tuple[int, ...], str]], expected: dict[str, tuple[int, ...]],
                   file: Path) -> None:
    """The adapter tensors in ``file``'s safetensors ``header`` (name -> (shape, dtype)) are exactly ``expected``
    (name -> shape), floating point: read from the header alone, before any tensor is loaded or the model is
    touched, so a file that does not fit is one clear error, not a half-loaded model. Any float dtype loads, cast to
    the parameters ``attach`` makes (the file's digest covers its bytes, dtype included, not what they should be):
    fp16 / bf16 exactly; fp64 into fp32 ones rounded, which :func:`warn_rounded` says."""
    missing = sorted(set(expected) - set(header))
    if missing:
        raise AdapterFileError(f"{file}: missing adapter tensor(s) {few(missing)}; the file does not match its "
                               f"{config_path(file.parent).name}")
    unexpected = sorted(set(header) - set(expected))
    if unexpected:
        raise AdapterFileError(f"{file}: unexpected adapter tensor(s) {few(unexpected)}, which the adapter's "
                               "config does not create on this model")
    for name, shape in expected.items():
        got, dtype = header[name]
        if got != shape:
            module = name.rpartition(".")[0]
            raise AdapterFileError(f"{file}: shape mismatch in module {module}: {name} is {got} in the file but "
                                   f"the model expects {shape}")
        if dtype not in _FLOATS:
            raise AdapterFileError(f"{file}: {name} has dtype {dtype}; adapter tensors are floating point")


def warn_rounded(tensors: dict[str, torch.Tensor], params: dict[str, nn.Parameter], file: Path) -> None:
    """Warn where float64 adapter tensors of ``file`` load into narrower parameters (``attach`` makes fp32 ones on
    any base but a float64 one, whose adapters are float64: there they load exactly)."""
    wide = sorted(n for n, t in tensors.items() if t.dtype == torch.float64 and params[n].dtype != torch.float64)
    if wide:
        logger.warning("%s: %d adapter tensor(s) are float64 (%s): they load into the fp32 parameters attach makes "
                       "on a base that is not float64, rounded to fp32 (load the adapter of a .double() model into a "
                       "float64 base for its float64 values)", file, len(wide), few(wide, 3))


def check_heads(heads: dict[str, nn.Module], doc: dict[str, Any], header: dict[str, tuple[tuple[int, ...], str]],
                 file: Path) -> None:
    """Every module in ``heads`` (task -> module) has a head saved in the adapter (``doc``'s ``heads``) with its
    state_dict's names, and the shapes in ``file``'s ``header``: checked before loading, so the strict
    ``load_state_dict`` that follows cannot fail halfway with PyTorch's message naming no file or task."""
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
            if (header[k][1] in _FLOATS) != sd[k[len(task) + 1:]].is_floating_point():   # (copy_ casts silently)
                raise AdapterFileError(f"{file}: dtype mismatch in the head of task {task!r}: {k} is {header[k][1]} in "
                                       f"the file but {sd[k[len(task) + 1:]].dtype} in the head module; the file was "
                                       "edited or is not this adapter's: copy the adapter directory again")


def check_head_casts(heads: dict[str, nn.Module], tensors: dict[str, torch.Tensor], file: Path) -> None:
    """An integer or bool head buffer stored in ``file`` as another integer / bool dtype (``tensors``: its tensors)
    loads when every value survives the cast (int64 0 / 1 into bool, int64 into int32 within its range), and is
    refused by name otherwise: ``load_state_dict`` casts silently (int64 2**40 into int32 0, 2 into bool True).
    Values are compared as Python numbers: a cast back wraps too (uint8 200 is int8 -56, and -56 uint8 200)."""
    for task, head in heads.items():
        for k, v in head.state_dict().items():
            t = tensors.get(f"{task}.{k}")
            if t is None or v.is_floating_point() or t.dtype == v.dtype:
                continue
            stored, cast = t.flatten().tolist(), t.to(v.dtype).flatten().tolist()   # (True == 1, as the cast is)
            lost = next((a for a, b in zip(stored, cast) if a != b), None)
            if lost is not None:
                raise AdapterFileError(f"{file}: dtype mismatch in the head of task {task!r}: {task}.{k} is {t.dtype} "
                                       f"in the file, and {v.dtype} in the head module does not hold its value "
                                       f"{lost!r}; the file was edited or is not this adapter's: copy the adapter "
                                       "directory again")

