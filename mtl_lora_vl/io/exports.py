"""One task of a trained adapter for other tools: a PEFT or plain LoRA, or a merged base-model checkpoint.

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
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..adapters.attach import merged_state_dict
from ..adapters.layers import LoRALinear
from ..families import MERGED_WEIGHTS, merged_format, peft_export
from .adapter_files import AdapterFileError, few, load_tensors, save_tensors
from .atomic import atomic_dir, atomic_file
from .identity import adapted_module, model_identity, plan_attached

__all__ = ["PLAIN_CONFIG", "PLAIN_FORMAT", "PLAIN_WEIGHTS", "apply_plain_lora", "export_lora", "save_merged"]

PLAIN_FORMAT = "mtl-lora-vl-plain-lora"
PLAIN_FORMAT_VERSION = 1
PLAIN_CONFIG = "lora_config.json"
PLAIN_WEIGHTS = "lora_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
def _export_format(family: str) -> str:
    """The default ``export_lora`` format of a model family: ``"peft"`` where PEFT loads the base model."""
    return "peft" if peft_export(family) else "plain"


def _merged_weights_name(model: nn.Module, family: str) -> str | None:
    """How ``save_merged`` writes a directory: ``None`` = the model's own ``save_pretrained``, else the
    name of the one safetensors file (open_clip's local-dir name for open_clip)."""
    fmt = merged_format(family, model)
    return None if fmt == "hf" else MERGED_WEIGHTS[fmt]


# ---------------------------------------------------------------------------------------------- LoRA exports


def export_lora(model: nn.Module, task: str, path: str | Path, format: str = "auto",
                overwrite: bool = False) -> Path:
    """Write task ``task`` of ``model`` as one plain LoRA (scaling folded in); return the directory.

    ``format="peft"`` writes a PEFT LoRA directory (default for Hugging Face CLIP and LLaVA; needs every
    adapted projection to be an ``nn.Linear``), ``"plain"`` the layout in the module docstring (default
    for open_clip and timm). Both give the MTL-LoRA model's outputs for that task.
    """
    inner = adapted_module(model)
    info = inner._mtl_lora
    if format == "auto":
        format = _export_format(info.family)
    if format not in ("peft", "plain"):
        raise ValueError(f"export_lora: format must be 'auto', 'peft' or 'plain', got {format!r}")
    t = info.config.task_index(task)
    pairs = {name: bank.lora_pair(t) for name, bank in info.layers.items()}
    if format == "peft":
        mha = sorted(n for n, b in info.layers.items() if not isinstance(b, LoRALinear))
        if mha:
            raise ValueError(f"export_lora: PEFT LoRA cannot express adapters on the packed in-projection of "
                             f"nn.MultiheadAttention ({few(mha, 3)}); use format='plain' or a merged checkpoint")
    with atomic_dir(path, overwrite=overwrite, what="export_lora") as tmp:
        if format == "peft":
            _write_peft(inner, task, pairs, tmp)
        else:
            _write_plain(inner, task, pairs, tmp)
    return Path(path)


def _write_peft(inner: nn.Module, task: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                out: Path) -> None:
    """PEFT's adapter_config.json, adapter_model.safetensors (its key names) and a README into ``out``."""
    cfg = inner._mtl_lora.config
    ranks = {b.shape[1] for b, _ in pairs.values()}
    R = max(ranks)
    tensors = {}
    for name, (B, A) in pairs.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A
        tensors[f"base_model.model.{name}.lora_B.weight"] = B
    save_tensors(tensors, out / PEFT_WEIGHTS, {"format": "pt"})
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
    (out / PEFT_CONFIG).write_text(json.dumps(peft_cfg, indent=2) + "\n")
    (out / "README.md").write_text(
        f"PEFT LoRA for task {task!r}, exported by mtl-lora-vl {__version__} from an MTL-LoRA adapter "
        f"({cfg.method}, r={cfg.r}). r = lora_alpha = {R}: the scaling is folded into "
        "lora_B.\n\n    model = peft.PeftModel.from_pretrained(base_model, this_directory)\n")


def _write_plain(inner: nn.Module, task: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 out: Path) -> None:
    """The plain LoRA layout of the module docstring into ``out``."""
    plan = plan_attached(inner)
    tensors = {}
    modules = {}
    for name, (B, A) in pairs.items():
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A, B
        modules[name] = {"base_weight": plan[name].base_weight, "shape": [plan[name].d_out, plan[name].d_in],
                         "tower": plan[name].tower, "rank": int(B.shape[1])}
    save_tensors(tensors, out / PLAIN_WEIGHTS, {"format": PLAIN_FORMAT})
    doc = {"format": PLAIN_FORMAT, "format_version": PLAIN_FORMAT_VERSION, "package_version": __version__,
           "task": task, "method": inner._mtl_lora.config.method, "rank": max(b.shape[1] for b, _ in pairs.values()),
           "scaling": 1.0, "update": "W[base_weight] += lora_B @ lora_A", "base_model": model_identity(inner),
           "modules": modules}
    (out / PLAIN_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")


def apply_plain_lora(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Fold a plain LoRA directory written by ``export_lora(format="plain")`` into ``base_model``'s weights."""
    path = Path(path)
    try:
        doc = json.loads((path / PLAIN_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"{path / PLAIN_CONFIG}: unreadable ({e})") from e
    if doc.get("format") != PLAIN_FORMAT:
        raise AdapterFileError(f"{path / PLAIN_CONFIG}: format is {doc.get('format')!r}, expected {PLAIN_FORMAT!r}")
    tensors = load_tensors(path / PLAIN_WEIGHTS)
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


# ---------------------------------------------------------------------------------------------- merged


def save_merged(model: nn.Module, task: str, out: str | Path, source_dir: str | Path | None = None,
                overwrite: bool = False) -> Path:
    """Write ``model``'s base model with task ``task`` merged in, loadable by the base library itself.

    open_clip: ``out`` ending in ``.safetensors`` is one state-dict file for ``open_clip.create_model(NAME,
    pretrained=out)``; any other ``out`` is a local-dir folder (``open_clip_model.safetensors`` plus the
    non-weight files of ``source_dir``, e.g. open_clip_config.json and the tokenizer). Hugging Face
    models: a ``save_pretrained`` directory (plus ``source_dir``'s tokenizer/preprocessor files).
    """
    inner = adapted_module(model)
    sd = merged_state_dict(inner, task)
    out = Path(out)
    meta = {"format": "pt", "mtl_lora_vl_task": task}
    if out.suffix == ".safetensors":
        with atomic_file(out, overwrite=overwrite, what="save_merged") as tmp:
            save_tensors(sd, tmp, meta)
        return out
    with atomic_dir(out, overwrite=overwrite, what="save_merged") as tmp:
        weights_name = _merged_weights_name(inner, inner._mtl_lora.family)
        if weights_name is None:
            inner.save_pretrained(str(tmp), state_dict=sd)
        else:
            save_tensors(sd, tmp / weights_name, meta)
        if source_dir is not None:
            for f in Path(source_dir).iterdir():
                weights = f.suffix in (".safetensors", ".bin", ".pth", ".pt") or f.name.endswith(".index.json")
                if f.is_file() and not weights and not (tmp / f.name).exists():
                    shutil.copyfile(f, tmp / f.name)
    return out
