"""Where the built-in backbones live (DESIGN §6) and what it takes to load them.

The built-in backbone (``builtin``) is a small open_clip CLIP in an open_clip local directory
(``open_clip_config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``),
written by ``scripts/pretrain_backbone.py``. The built-in tiny LLaVA (``builtin-llava``) is a Hugging
Face ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` ``save_pretrained`` directory, loaded by the
same code as any ``hf:DIR``. The loaders build them; this module only finds the folders.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from ..families import OPEN_CLIP_CONFIG
from ..whole_files import read_whole
from ..wording import given_as

__all__ = ["BUILTIN_CONFIG", "BUILTIN_LLAVA_NAME", "BUILTIN_NAME", "BUILTIN_WEIGHTS", "builtin_dir", "builtin_files",
           "builtin_llava_dir"]

BUILTIN_NAME = "builtin"
BUILTIN_LLAVA_NAME = "builtin-llava"
BUILTIN_CONFIG = OPEN_CLIP_CONFIG
BUILTIN_WEIGHTS = "model.safetensors"
_SUBDIR = "builtin_clip"
_LLAVA_SUBDIR = "builtin_llava"


def _asset_dir(subdir: str, marker: str) -> Path:
    """``mtl_lora_vl/assets/<subdir>`` (installed wheel) if it holds ``marker``, else ``<repo>/assets/<subdir>``
    (checkout)."""
    candidates = []
    try:
        candidates.append(Path(str(files("mtl_lora_vl") / "assets" / subdir)))
    except (ModuleNotFoundError, TypeError):
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "assets" / subdir)
    for c in candidates:
        if (c / marker).is_file():
            return c
    return candidates[-1]


def builtin_dir() -> Path:
    """Folder of the built-in backbone: ``mtl_lora_vl/assets/builtin_clip`` (installed wheel) if it has a
    config, else ``<repo>/assets/builtin_clip`` (checkout)."""
    return _asset_dir(_SUBDIR, BUILTIN_CONFIG)


def builtin_llava_dir() -> Path:
    """Folder of the built-in tiny LLaVA (a ``save_pretrained`` directory): ``mtl_lora_vl/assets/builtin_llava``
    (installed wheel) if it has a ``config.json``, else ``<repo>/assets/builtin_llava`` (checkout)."""
    return _asset_dir(_LLAVA_SUBDIR, "config.json")


def builtin_files(pretrained: str | None = None, pretrained_as: str = "pretrained") -> tuple[Path, dict, Path]:
    """``(folder, open_clip config, weights file)`` of the built-in backbone; ``pretrained`` replaces the
    weights (a bad one is named as the caller gave it: ``pretrained_as``, e.g. ``--pretrained``, see
    :func:`~mtl_lora_vl.wording.given_as`; a file's key, ``base.pretrained``, is not told to be left out). Missing
    files raise FileNotFoundError saying how to build them."""
    folder = builtin_dir()
    config_path = folder / BUILTIN_CONFIG
    weights = Path(pretrained).expanduser() if pretrained else folder / BUILTIN_WEIGHTS
    if pretrained and not weights.is_file():
        inside = sorted(f.name for f in weights.glob("*.safetensors")) if weights.is_dir() else []
        what = f"a folder (holding {inside}: give the file)" if inside else "a folder" if weights.is_dir() else \
            "no such file"
        # (an adapter's record, base.pretrained, is not left out: its run trained on those weights, not the own)
        own = "" if "." in pretrained_as else f", or leave {pretrained_as} out to use its own weights"
        raise FileNotFoundError(f"{given_as(pretrained_as, pretrained)}: {what}; give the path of a weights file "
                                f"for the built-in backbone (a model.safetensors it wrote){own}")
    missing = next((f for f in (config_path, weights, folder / "tokenizer.json") if not f.is_file()), None)
    if missing is not None:   # (the tokenizer's: else "save it with tokenizer.save_pretrained", which none can here)
        raise FileNotFoundError(
            f"the built-in backbone is missing {missing}. It ships with the package; reinstall it (pip install "
            "--force-reinstall mtl-lora-vl), or in a checkout build it with `python scripts/pretrain_backbone.py` "
            "(about 25 minutes on 2 CPU cores), which writes "
            f"{folder}/{{open_clip_config.json,model.safetensors,tokenizer.json,tokenizer_config.json}}"
        )
    try:
        config = json.loads(read_whole(config_path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); reinstall the package (pip install "
                         "--force-reinstall mtl-lora-vl), or in a checkout re-run `python scripts/pretrain_backbone.py`"
                         ) from e
    return folder, config, weights
