"""Tasks of a trained adapter for other tools: PEFT or plain LoRAs, or a merged base-model checkpoint.

Plain per-task LoRA (``export_lora(..., format="plain")``, the default for open_clip and timm)::

    lora/
      lora_config.json           {"format": "mtl-lora-vl-plain-lora", "task", "rank", "scaling": 1.0,
                                  "base_model": {...}, "modules": {proj: {"base_weight", "shape", "tower"}}}
      lora_model.safetensors     <proj>.lora_A (R × d_in), <proj>.lora_B (d_out × R), fp32 (fp64 for float64 adapters)

For every entry of ``modules`` the task's weights are ``W[base_weight] + lora_B @ lora_A``: the scaling
α/r and, for MTL-LoRA, the task's mixture Σ softmax(w_t/τ)_i B_i Λ_t are folded into ``lora_B``. An
``nn.MultiheadAttention`` ``<attn>`` has one entry ``<attn>.in_proj`` acting on the packed
``<attn>.in_proj_weight`` (d_out = 3E, rows q, k, v; rows of slices left out by ``qkv_slices`` are zero)
and one ``<attn>.out_proj`` on ``<attn>.out_proj.weight``. R is r (n·r for multi_lora / moe_lora).

PEFT LoRA (``format="peft"``, the default for Hugging Face models: CLIP and every VLM family of the table):
a PEFT ``adapter_config.json`` (``r = lora_alpha = R``, so PEFT's scaling is 1, exact ``target_modules``)
and ``adapter_model.safetensors`` with PEFT's key names, loadable by
``peft.PeftModel.from_pretrained(fresh_base_model, path)``. These two file names mean PEFT in this
package: the native adapter directory names its files ``mtl_lora_config.json`` /
``mtl_lora_model.safetensors`` (see :mod:`.adapter_files`).

Several tasks (``export_lora(model, ["vqa", "captioning"], OUT)``): one such directory per task in
``OUT/<task>/`` and a README in ``OUT``, which is what ``PeftModel.save_pretrained(OUT)`` writes for
adapters named by the tasks (PEFT 0.21 writes the adapter called ``"default"`` into ``OUT`` itself and
every other one into ``OUT/<adapter_name>/``; here no adapter is ``"default"``, so every task has its
subfolder and the layout does not depend on the order of the tasks). Load them as named adapters and
serve a mixed batch with PEFT's ``adapter_names=`` (one name per input row), which PEFT accepts in
``PeftModel.forward`` and ``PeftModel.generate`` only: for a ``CLIPModel`` call the model with both
``pixel_values`` and ``input_ids`` (``get_image_features`` passes through without PEFT's routing).
The plain layout goes per task into ``OUT/<task>/`` the same way.

Merged checkpoint (``save_merged`` and ``scripts/export_merged.py``): the base model's plain state dict
with one task folded in; open_clip as a ``.safetensors`` file for ``open_clip.create_model(NAME,
pretrained=FILE)`` or a local-dir folder, Hugging Face models as a ``save_pretrained`` directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..adapters.attach import adapted_module, base_weights, merged_state_dict, parameter_names, whole_model
from ..adapters.fold_dtype import folded, refuse_float8
from ..adapters.layers import LoRALinear
from ..adapters.routing import check_module
from ..backbones import backbone_class
from ..backbones.hf import transformers_bars
from ..config import check_task_file_names
from ..families import MERGED_CONFIG, MERGED_WEIGHTS, family_named, merged_format, peft_export
from ..log import interactive, quiet
from ..whole_files import read_whole
from ..wording import tasks_named
from .adapter_images import area_read, image_note, written_family, written_images
from .atomic import atomic_dir, atomic_file
from .base_check import (
    adapted_part,
    check_base_class,
    check_weight_samples,
    newer_package_hint,
    refuse_adapted,
)
from .identity import model_identity, plan_attached
from .layout import (
    EXPORT_RECORD,
    MERGED_TASK_KEY,
    AdapterFileError,
    adapter_layout,
    check_replace,
    few,
)
from .source_files import hf_writes, loaded_from, refuse_linked_out, source_folder, weights_or_adapter
from .tensor_files import load_tensors, save_tensors

logger = logging.getLogger(__name__)

__all__ = ["PLAIN_CONFIG", "PLAIN_FORMAT", "PLAIN_WEIGHTS", "apply_plain_lora", "export_lora", "save_merged"]

PLAIN_FORMAT = "mtl-lora-vl-plain-lora"
PLAIN_FORMAT_VERSION = 1
PLAIN_CONFIG = "lora_config.json"
PLAIN_WEIGHTS = "lora_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
def export_format(model: nn.Module) -> str:
    """The format ``export_lora(..., format="auto")`` writes for ``model``: ``"peft"`` where PEFT loads the base model
    (the family of the model written, a LLaVA's whose inner model was adapted on its own too), else ``"plain"``."""
    return "peft" if peft_export(written_family(model)[1]) else "plain"


# ---------------------------------------------------------------------------------------------- LoRA exports


def export_lora(model: nn.Module, task: str | Sequence[str], path: str | Path, format: str = "auto",
                overwrite: bool = False) -> Path:
    """Write task(s) of ``model`` as plain LoRAs (scaling and mixture folded in); return the directory.

    ``task`` is one task name: ``path`` is one LoRA directory. Or a list of task names: ``path/<task>/``
    holds each task's LoRA, the layout ``peft.PeftModel.save_pretrained`` writes for adapters named by
    the tasks (PEFT writes a non-"default" adapter to ``path/<name>/``; every task goes in a subfolder,
    ``path`` itself keeps only a README), so that::

        peft_model = PeftModel.from_pretrained(base_model, path / "vqa", adapter_name="vqa")
        peft_model.load_adapter(path / "captioning", adapter_name="captioning")
        peft_model.eval()(**inputs, adapter_names=["vqa", "captioning", ...])   # one task per row

    serves every task, also in one mixed batch, with the MTL-LoRA model's outputs -- for rows of one image each:
    PEFT routes a tower's images as if they were rows, so Qwen2-VL's packed tower, LLaVA-NeXT / OneVision's tiles
    with the tower adapted and rows of several images or none take one task per call (``set_adapter``).
    ``format="peft"`` writes PEFT LoRA (needs every adapted projection to be an ``nn.Linear``), ``"plain"``
    the layout in the module docstring (per-task subfolders the same way). ``"auto"`` is PEFT for the families
    whose ``peft_export`` is set in the family table (``families.py``), plain for the others.
    """
    inner = adapted_module(model)
    info = inner._mtl_lora
    if format == "auto":
        format = export_format(model)
    if format not in ("peft", "plain"):
        raise ValueError(f"export_lora: format must be 'auto', 'peft' or 'plain', got {format!r}")
    several = not isinstance(task, str)
    tasks = _task_list(task) if several else [task]
    index = {t: info.config.task_index(t) for t in tasks}
    if format == "peft":
        mha = sorted(n for n, b in info.layers.items() if not isinstance(b, LoRALinear))
        if mha:
            raise ValueError(f"export_lora: PEFT LoRA cannot express adapters on the packed in-projection of "
                             f"nn.MultiheadAttention ({few(mha, 3)}); use format='plain' (--format plain) or a merged "
                             "checkpoint")
    write = _write_peft if format == "peft" else _write_plain
    # PEFT loads onto a fresh whole model: a LoRA named relative to a LLaVA's inner model matched its modules by
    # suffix but none of its weights (PEFT left the update out with a warning)
    owner, prefix = whole_model(model) if format == "peft" else (inner, "")
    if overwrite:
        check_replace(path, what="export_lora", keep=_base_files(inner))
    with atomic_dir(path, overwrite=overwrite, what="export_lora") as tmp:
        for t in tasks:
            out = tmp / t if several else tmp
            out.mkdir(exist_ok=True)
            rank = write(owner, t, {prefix + name: bank.lora_pair(index[t]) for name, bank in info.layers.items()},
                         out)
            if several:   # each OUT/<task> is an export of its own too (the command's --overwrite replaces it)
                _write_record(out, t, format)
        _write_record(tmp, tasks if several else task, format)
        note = image_note(model)
        if several:
            (tmp / "README.md").write_text(_multi_readme(inner, tasks, format, written_family(model)[1]) + note)
        elif format == "peft":
            (tmp / "README.md").write_text(_peft_readme(inner, task, rank) + note)
    if note:   # (a merged export's processor is edited so: fit_processor_files)
        logger.warning("%s: %s", path, note.strip())
    return Path(path)


def _write_record(folder: Path, task: str | Sequence[str], format: str) -> None:
    """The export record: what the folder holds, and the mark that lets ``--overwrite`` replace it."""
    doc = {"written_by": f"mtl-lora-vl {__version__}", "format": format,
           "tasks": [task] if isinstance(task, str) else list(task)}
    (folder / EXPORT_RECORD).write_text(json.dumps(doc, indent=2) + "\n")


def _task_list(tasks: Sequence[str]) -> list[str]:
    """The task names of a multi-task export, checked as folder names (``path/<task>/``)."""
    if not isinstance(tasks, Sequence) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise TypeError(f"export_lora: task must be a task name or a non-empty list of task names, got {tasks!r}")
    dup = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if dup:
        raise ValueError(f"export_lora: {tasks_named(dup)} named more than once")
    check_task_file_names(tasks, "export_lora", "and each task of several is written to path/<task>/; export it "
                          "alone with export_lora(model, task, path), or rename the task")
    return list(tasks)


def _peft_readme(inner: nn.Module, task: str, R: int) -> str:
    cfg = inner._mtl_lora.config
    return (f"PEFT LoRA for task {task!r}, exported by mtl-lora-vl {__version__} from an MTL-LoRA adapter "
            f"({cfg.method}, r={cfg.r}). r = lora_alpha = {R}: the scaling is folded into "
            "lora_B.\n\n    model = peft.PeftModel.from_pretrained(base_model, this_directory)\n")


def _multi_readme(inner: nn.Module, tasks: list[str], format: str, family: str) -> str:
    """``family``: the written model's (a LLaVA-NeXT's whose inner model was adapted on its own reads tiles too)."""
    cfg = inner._mtl_lora.config
    head = (f"Tasks {', '.join(tasks)} of an MTL-LoRA adapter ({cfg.method}, r={cfg.r}), exported by mtl-lora-vl "
            f"{__version__}: one LoRA per task in <task>/, scaling and task mixture folded into lora_B.\n\n")
    if format == "plain":
        return head + ("Each folder is the plain LoRA layout (lora_config.json, lora_model.safetensors):\n\n"
                       f"    mtl_lora_vl.io.apply_plain_lora(base_model, {tasks[0]!r})\n")
    a, b = tasks[0], tasks[1] if len(tasks) > 1 else tasks[0]
    load = ("This is the layout peft.PeftModel.save_pretrained writes for adapters named by the tasks:\n\n"
            f"    model = peft.PeftModel.from_pretrained(base_model, {a!r}, adapter_name={a!r})\n"
            + "".join(f"    model.load_adapter({t!r}, adapter_name={t!r})\n" for t in tasks[1:])
            + "    model.eval()\n")
    info = inner._mtl_lora
    fam = family_named(family)
    why = ("packs every image's patches into one sequence" if any(b.packed_rows for b in info.layers.values()) else
           "reads each image as several tiles"
           if fam is not None and fam.image_views and "image" in info.towers.values()
           else None)
    if why:   # PEFT wants a name per input row in every adapted layer
        return head + load + (f"    model.set_adapter({a!r})   # one task per call: PEFT's adapter_names cannot route "
                              f"a vision tower that {why}\n")
    return head + load + (
        f"    out = model(**inputs, adapter_names=[{a!r}, {b!r}, ...])   # one task per input row (rows of one "
        "image each: PEFT takes a row's images for rows)\n"
        f"    model.set_adapter({a!r})                                  # or one task for every row (rows of "
        "several images, NLVR2's pairs, too)\n")


def _write_peft(inner: nn.Module, task: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                out: Path) -> int:
    """PEFT's adapter_config.json and adapter_model.safetensors (its key names) into ``out``; returns the rank."""
    ranks = {b.shape[1] for b, _ in pairs.values()}
    R = max(ranks)
    tensors = {}
    for name, (B, A) in pairs.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A
        tensors[f"base_model.model.{name}.lora_B.weight"] = B
    save_tensors(tensors, out / PEFT_WEIGHTS, {"format": "pt"})
    peft_cfg = {
        # where the base came from, as PEFT records it (AutoPeftModel loads the base from there)
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": _name_or_path(inner), "revision": None,
        "inference_mode": True, "r": R, "lora_alpha": R, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "target_modules": _peft_targets(inner, sorted(pairs)), "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    if len(ranks) > 1:  # cannot happen with one config, but keep PEFT's scaling at 1 per module
        peft_cfg["rank_pattern"] = {n: b.shape[1] for n, (b, _) in pairs.items() if b.shape[1] != R}
        peft_cfg["alpha_pattern"] = dict(peft_cfg["rank_pattern"])
    (out / PEFT_CONFIG).write_text(json.dumps(peft_cfg, indent=2) + "\n")
    return R


def _peft_targets(inner: nn.Module, names: list[str]) -> list[str] | str:
    """PEFT's ``target_modules`` for exactly the modules ``names``: the list, or where PEFT would also take another
    module (it takes every name ending in ``.<target>``: open_clip's ``visual.transformer.resblocks.0.mlp.c_fc`` for
    the text tower's ``transformer.resblocks.0.mlp.c_fc``), a regular expression it matches whole names against."""
    suffixes, chosen = tuple("." + n for n in names), set(names)
    if not any(n.endswith(suffixes) for n, _ in inner.named_modules() if n not in chosen):
        return names
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


def _write_plain(inner: nn.Module, task: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 out: Path) -> int:
    """The plain LoRA layout of the module docstring into ``out``; returns the rank."""
    plan = plan_attached(inner)
    tensors = {}
    modules = {}
    for name, (B, A) in pairs.items():
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A, B
        modules[name] = {"base_weight": plan[name].base_weight, "shape": [plan[name].d_out, plan[name].d_in],
                         "tower": plan[name].tower, "rank": int(B.shape[1])}
    save_tensors(tensors, out / PLAIN_WEIGHTS, {"format": PLAIN_FORMAT})
    rank = max(b.shape[1] for b, _ in pairs.values())
    doc = {"format": PLAIN_FORMAT, "format_version": PLAIN_FORMAT_VERSION, "package_version": __version__,
           "task": task, "method": inner._mtl_lora.config.method, "rank": rank,
           "scaling": 1.0, "update": "W[base_weight] += lora_B @ lora_A", "base_model": model_identity(inner),
           "modules": modules}
    (out / PLAIN_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    return rank


def apply_plain_lora(base_model: nn.Module, path: str | Path, check_base_weights: bool = True) -> nn.Module:
    """Fold a plain LoRA directory written by ``export_lora(format="plain")`` into ``base_model``'s weights.

    The base model's class and (``check_base_weights``) the sampled weights the file records are checked
    first, and every update is computed before any weight is written, so a refused file changes nothing.
    """
    path = Path(path)
    check_module(base_model, "apply_plain_lora")
    refuse_adapted(base_model, f"apply_plain_lora: this model already has MTL-LoRA adapters, and the update would be "
                               f"counted twice when routed to its task; fold {path} into a fresh base model (or use "
                               "mtl_lora_vl.merge on this one)")
    cfg_file = path / PLAIN_CONFIG
    if path.is_dir() and not cfg_file.is_file():
        _not_plain(path)
    try:
        doc = json.loads(read_whole(cfg_file))
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"{cfg_file}: unreadable ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != PLAIN_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise AdapterFileError(f"{cfg_file}: format is {got!r}, expected {PLAIN_FORMAT!r}")
    version = doc.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > PLAIN_FORMAT_VERSION:
        raise AdapterFileError(f"{cfg_file}: format_version {version!r} is not one this package reads "
                               f"({PLAIN_FORMAT_VERSION}){newer_package_hint(doc) or '; export the adapter again'}")
    modules = doc.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(m, dict) and "base_weight" in m for m in modules.values()):
        raise AdapterFileError(f"{cfg_file}: 'modules' must map each module to {{'base_weight': ...}}; "
                               "export the adapter again with export_lora(format='plain')")
    part = base_model   # (an export of a family's inner model adapted on its own: folded into the whole's inner one)
    if isinstance(doc.get("base_model"), dict):   # files record the base they were exported from
        part = adapted_part(base_model, doc)
        check_base_class(part, doc, cfg_file)
    params = dict(part.named_parameters(remove_duplicate=False))   # (a float8 base: said so, not as other weights)
    refuse_float8({m["base_weight"]: params[m["base_weight"]] for m in modules.values() if m["base_weight"] in params},
                  "apply_plain_lora")
    if isinstance(doc.get("base_model"), dict):
        if check_base_weights:
            check_weight_samples(part, doc, cfg_file)
    tensors = load_tensors(path / PLAIN_WEIGHTS)
    missing = [f"{name}.{t}" for name in modules for t in ("lora_A", "lora_B") if f"{name}.{t}" not in tensors]
    if missing:
        raise AdapterFileError(f"{path / PLAIN_WEIGHTS}: lacks tensor(s) {few(missing)} that {PLAIN_CONFIG} lists; the "
                               "directory is incomplete: export the adapter again")
    names = parameter_names(base_model)   # (the whole model's: a weight tied outside the part is shared too)
    updates = []
    for name, m in modules.items():
        key = m["base_weight"]
        if key not in params:
            raise AdapterFileError(f"{path}: base weight {key} (for {name}) is not in this {type(part).__name__}")
        w = params[key]
        # one module reachable under several names holds one weight: only another module's use of it is a tie
        if len({id(base_model.get_submodule(n.rpartition(".")[0])) for n in names[id(w)]}) > 1:
            raise AdapterFileError(f"{path}: base weight {key} (for {name}) is shared with "
                                   f"{', '.join(n for n in names[id(w)] if n != key)} (tied weights): folding the "
                                   "update in would change that layer too; load the adapter routed instead")
        B, A = tensors[f"{name}.lora_B"], tensors[f"{name}.lora_A"]
        if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0] or tuple(w.shape) != (B.shape[0], A.shape[1]):
            raise AdapterFileError(f"{path}: shape mismatch in module {name}: {key} is {tuple(w.shape)} here but "
                                   f"lora_B {tuple(B.shape)} @ lora_A {tuple(A.shape)} does not give it")
        updates.append((w, B, A))
    with torch.no_grad():
        float64: dict[torch.device, bool] = {}   # (this fold's: a device is asked once)
        new = [folded(w, _product(w, B, A, float64)) for w, B, A in updates]
        for (w, _, _), value in zip(updates, new):
            w.copy_(value)
    return base_model


def _product(w: torch.Tensor, B: torch.Tensor, A: torch.Tensor, float64: dict[torch.device, bool]) -> torch.Tensor:
    """``B @ A`` on ``w``'s device, multiplied in the widest of fp32, ``w``'s dtype and the file's (as merge
    multiplies: fp64 for a float64 adapter on an fp32 base too); on a device that computes no float64 (see
    :func:`_holds_float64`; ``float64`` holds what the fold found so far) in fp32, the pair cast on the host first."""
    acc = torch.promote_types(torch.promote_types(w.dtype, B.dtype), torch.float32)
    if acc == torch.float64 and not _holds_float64(w.device, float64):
        acc = torch.float32
    return B.to(dtype=acc).to(w.device) @ A.to(dtype=acc).to(w.device)


def _holds_float64(device: torch.device, known: dict[torch.device, bool]) -> bool:
    """Whether ``device`` computes in float64, found by moving a 1 x 1 float64 matrix there and squaring it, once per
    device in ``known`` (the caller's, for one call: nothing is kept across calls). Devices without float64 fail
    that: Apple's MPS refuses the move (TypeError), Intel's Arc A-series GPUs under XPU (no fp64 units, where the
    Data Center Max and Arc B-series have them) the kernel ("Required aspect fp64 is not supported on the device"),
    DirectML on such GPUs too (RuntimeError); a device whose answer is wrong counts as one without. Any other error
    (:func:`_no_float64_error`: a pending CUDA error such as a device-side assert, out of memory) is raised: the fold
    is not done in fp32 over it."""
    if device not in known:
        try:
            one = torch.ones(1, 1, dtype=torch.float64).to(device)
            known[device] = bool((one @ one).item() == 1.0)
        except (TypeError, RuntimeError) as e:
            if not _no_float64_error(e):
                raise
            known[device] = False
    return known[device]


def _no_float64_error(error: Exception) -> bool:
    """Whether ``error`` says its device has no float64: it names the dtype (double, fp64, float64) and says it is not
    supported or implemented there -- MPS' "Cannot convert a MPS Tensor to float64 dtype as the MPS framework
    doesn't support float64", XPU's "Required aspect fp64 is not supported on the device", DirectML's "The GPU device
    does not support Double (Float64) operations!", a backend's '"mm" not implemented for 'Double''."""
    text = str(error).lower()
    return (any(word in text for word in ("double", "fp64", "float64"))
            and any(word in text for word in ("support", "not implemented")))


# ---------------------------------------------------------------------------------------------- merged


def _name_or_path(model: nn.Module) -> str | None:
    """A Hugging Face model's ``name_or_path``: a hub id as it is, the directory it was loaded from made absolute
    (AutoPeftModel reads it in whatever folder it runs in); None for others."""
    name = getattr(model, "name_or_path", None)
    if not isinstance(name, str) or not name:
        return None
    return os.path.abspath(name) if Path(name).is_dir() else name


def _base_files(model: nn.Module) -> list[tuple[str, Path | None]]:
    """What an export's ``overwrite=True`` must not delete: the folder the base model was loaded from."""
    return [("the base model's own folder", loaded_from(model))]


def check_suffix_case(out: Path, what: str) -> None:
    """Refuse ``FILE.SAFETENSORS`` (any other case): only ``.safetensors`` names a merged file, so it became a folder
    of that name, which ``open_clip.create_model(NAME, pretrained=out)`` cannot read."""
    if out.suffix.lower() == ".safetensors" and out.suffix != ".safetensors":
        raise ValueError(f"{what}: {out}: a merged file is written for a name ending in .safetensors (lower case), "
                         f"and any other name is a folder; give {out.with_suffix('.safetensors')} for one file, or a "
                         "folder name")


def save_merged(model: nn.Module, task: str, out: str | Path, source_dir: str | Path | None = None,
                overwrite: bool = False, image_max_pixels: int | None = None) -> Path:
    """Write ``model``'s base model with task ``task`` merged in, loadable by the base library itself.

    open_clip: ``out`` ending in ``.safetensors`` is one state-dict file for ``open_clip.create_model(NAME,
    pretrained=out)``; any other ``out`` is a local-dir folder (``open_clip_model.safetensors`` plus the
    non-weight files of ``source_dir``, e.g. open_clip_config.json and the tokenizer). Hugging Face
    models: a ``save_pretrained`` directory plus the tokenizer/processor files of ``source_dir`` (default: the
    local directory the model was loaded from), so a merged LLaVA loads with its processor, edited to read images
    as the package's backbone does (``fit_processor_files``: Gemma 3's pan-and-scan off, Qwen2-VL's
    ``min_pixels`` / ``max_pixels`` exactly the area the model's images were read within, an adapter's
    ``base.image_min_pixels`` / ``base.image_max_pixels``, whatever the source processor allows; where that is not
    known, an adapter saved before, or ``image_max_pixels`` is given, the processor's ``max_pixels`` capped at that
    area asked for); a ``.safetensors`` ``out`` is refused, as by the ``export`` command.
    """
    out = Path(out)
    check_suffix_case(out, "save_merged")
    inner = adapted_module(model)
    whole, family = written_family(model)   # the outer model where its inner model was adapted (its LM head too)
    record = written_images(model)[0]
    fmt = merged_format(family, whole)
    if out.suffix != ".safetensors":   # a folder gets source_dir's files: its links checked before the minutes of work
        if fmt == "hf" and source_dir is None:   # where the model was loaded from (tokenizer, processor files)
            source_dir = source_folder(whole, out)
        own = {EXPORT_RECORD, *(hf_writes(whole) if fmt == "hf" else ())}   # written here, not copied: links harmless
        for f in Path(source_dir).iterdir() if source_dir is not None else ():
            if f.is_file() and not weights_or_adapter(f) and f.name not in own:
                refuse_linked_out(source_dir, f)
    refuse_float8(base_weights(inner), "save_merged")
    sd = merged_state_dict(inner, task, root=whole)
    if overwrite:
        check_replace(out, what="save_merged", keep=[*_base_files(whole), ("source_dir", source_dir)])
    meta = {"format": "pt", MERGED_TASK_KEY: task}
    if out.suffix == ".safetensors" and fmt == "hf":   # a bare state dict that no from_pretrained reads
        raise ValueError(f"save_merged: {out}: a Hugging Face model is written as a save_pretrained directory "
                         "(weights, config and processor, for from_pretrained); give out= a folder name, without "
                         ".safetensors")
    if out.suffix == ".safetensors":
        with atomic_file(out, overwrite=overwrite, what="save_merged") as tmp:
            save_tensors(sd, tmp, meta)
        return out
    weights_name = None if fmt == "hf" else MERGED_WEIGHTS[fmt]   # None: the model's own save_pretrained
    config = MERGED_CONFIG.get(fmt)
    if config and not (source_dir and (Path(source_dir) / config).is_file()):
        raise ValueError(f"save_merged: an {fmt} local-dir {out} needs {config}; pass source_dir= a folder holding "
                         f"it (the base model's), or out=FILE.safetensors for open_clip.create_model(NAME, "
                         "pretrained=FILE)")
    with atomic_dir(out, overwrite=overwrite, what="save_merged") as tmp:
        _write_record(tmp, task, "merged")
        if weights_name is None:   # (transformers' "Writing model shards" bar as the package's bars: on a terminal)
            with transformers_bars(not quiet() and interactive()):
                whole.save_pretrained(str(tmp), state_dict=sd)
        else:
            save_tensors(sd, tmp / weights_name, meta)
        if source_dir is not None:
            for f in Path(source_dir).iterdir():
                if f.is_file() and not weights_or_adapter(f) and not (tmp / f.name).exists():
                    refuse_linked_out(source_dir, f)   # (one save_pretrained might have written: checked only now)
                    shutil.copyfile(f, tmp / f.name)
            fam = family_named(family)   # (the whole model's: its inner model adapted, the family still fits)
            fit = getattr(backbone_class(fam.backbone), "fit_processor_files", None) if fam and fam.backbone else None
            if fit is not None:   # the processor reads images as the package's backbone trained them
                asked = (None, image_max_pixels) if image_max_pixels else None   # (the area asked: capped as then)
                low, high = asked or record.bounds or (None, area_read(record))
                fit(tmp, high, record.reading, min_pixels=low, shown_as=Path(out))
    return out


def _not_plain(path: Path) -> None:
    """Raise an AdapterFileError saying what ``path``, a folder without lora_config.json, is instead."""
    subs = sorted(p.name for p in path.iterdir() if (p / PLAIN_CONFIG).is_file())
    if subs:
        raise AdapterFileError(f"{path}: no {PLAIN_CONFIG}; it holds plain LoRAs in subfolders ({few(subs)}), as "
                               "export_lora(model, [tasks], path, format='plain') writes them; pass one, e.g. "
                               f"apply_plain_lora(base_model, {str(path / subs[0])!r})")
    try:
        adapter_layout(path)
    except AdapterFileError as e:
        raise AdapterFileError(f"{path}: no {PLAIN_CONFIG}, so not a plain LoRA. {e}") from None
    raise AdapterFileError(f"{path}: no {PLAIN_CONFIG}, so not a plain LoRA: it is an MTL-LoRA adapter directory; load "
                           "it with mtl_lora_vl.load_adapter(base_model, path), or write one task as a plain LoRA with "
                           "mtl_lora_vl.export_lora(model, task, out, format='plain')")
