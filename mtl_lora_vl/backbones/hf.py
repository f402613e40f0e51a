"""Local Hugging Face model directories (``hf:DIR``): the folder, and which model class it holds.

The class (read from ``config.json``, never by loading weights) is what the family table matches, so
``load_backbone("hf:DIR")`` picks the Backbone class of the directory's family, or refuses with the
table's reason. Besides ``transformers`` directories, timm's hub layout (``config.json`` with
``architecture``) is recognised, so that a timm model gets the table's answer too.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..families import FAMILIES, OPEN_CLIP_CONFIG
from ..log import interactive, quiet
from ..whole_files import read_whole
from .base import BackboneError
from .builtin import BUILTIN_LLAVA_NAME, BUILTIN_NAME
from .cache import hf_hub_cache
from .spec import BackboneSpec

logger = logging.getLogger(__name__)

__all__ = ["hf_dir", "hf_grad_checkpointing", "hf_model_class", "transformers_bars"]


def hf_dir(spec: BackboneSpec) -> Path:
    """The local directory of an ``hf:DIR`` (or ``builtin-llava``) spec, checked to hold a ``config.json`` (the
    built-in LLaVA's: every file it ships, whose loss is told to be fixed by a reinstall)."""
    folder = spec.path
    shipped = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json")
    lost = spec.kind == "builtin_llava" and next((f for f in shipped if not (folder and (folder / f).is_file())), None)
    if lost:
        raise FileNotFoundError(
            f"the built-in tiny LLaVA ({spec.text}) is missing: {folder} has no {lost}. It ships with the "
            "package as a save_pretrained directory (LlavaForConditionalGeneration + LlavaProcessor); reinstall the "
            "package (pip install --force-reinstall mtl-lora-vl), in a checkout rebuild it with `python "
            "scripts/pretrain_llava.py`, or pass a local LLaVA directory with --backbone hf:/path/to/dir"
        )
    if folder is None or not folder.is_dir():
        own = spec.text.removeprefix("hf:")
        if own in (BUILTIN_NAME, BUILTIN_LLAVA_NAME) and spec.text != own:   # (a local folder of that name: read it)
            raise FileNotFoundError(f"{spec.text}: {own!r} is one of the package's own backbones, not a folder; "
                                    f"give it without hf: (--backbone {own})")
        if folder is not None and folder.is_file():   # (config.json or a weights file given for its folder)
            raise FileNotFoundError(f"{spec.text}: {folder} is a file, not a folder; hf: takes the folder that "
                                    f"save_pretrained wrote: --backbone hf:{folder.parent}")
        raise FileNotFoundError(
            f"{spec.text} is not a local directory; hf: takes a folder written by save_pretrained "
            "(config.json + model.safetensors + tokenizer files), or a hub id already in the local Hugging "
            f"Face cache ({hf_hub_cache()}, set by HF_HUB_CACHE / HF_HOME). Other hub model ids would need a "
            "download, which this package never does"
        )
    if not (folder / "config.json").is_file():
        if (folder / OPEN_CLIP_CONFIG).is_file():
            raise FileNotFoundError(f"{folder} is an open_clip model directory ({OPEN_CLIP_CONFIG}, no config.json); "
                                    f"load it with --backbone open_clip:{folder}")
        raise FileNotFoundError(f"{folder} has no config.json; save the model there with save_pretrained")
    return folder


def hf_model_class(folder: Path) -> type:
    """The model class a Hugging Face (or timm hub) directory was saved from, from its ``config.json``."""
    path = folder / "config.json"
    try:
        config = json.loads(read_whole(path))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable or not JSON ({e}); save the model again with save_pretrained") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a model config (a JSON object)")
    if isinstance(config.get("architecture"), str) and "pretrained_cfg" in config:
        return _timm_class(config["architecture"], path)
    import transformers

    names = config.get("architectures") or []
    names = [names] if isinstance(names, str) else [n for n in names if isinstance(n, str)]   # (hand-written: one)
    if not names and config.get("model_type"):   # a generating VLM's class before its bare base model's
        from transformers.models.auto import modeling_auto as auto

        maps = [getattr(auto, m, {}) for m in ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_MAPPING_NAMES")]
        names = [m.get(config["model_type"], "") for m in maps]
    for name in names:
        cls = getattr(transformers, name, None) if name else None
        if isinstance(cls, type):
            if config.get("auto_map"):   # (as transformers without trust_remote_code: said, as one may expect it run)
                logger.warning("%s: its auto_map names code of the model's own, which this package does not run; "
                               "loading transformers' %s, which it also names", path, name)
            return cls
    if config.get("auto_map"):   # trust_remote_code: the model's own Python files, which this package never runs
        raise BackboneError(f"{path} names a model of its own code (auto_map, architectures={names}), which this "
                            "package does not run (no trust_remote_code); the families it loads are "
                            + ", ".join(f.name for f in FAMILIES if f.backbone))
    raise BackboneError(f"{path} names no model class this transformers version ({transformers.__version__}) knows "
                        f"(architectures={names}, model_type={config.get('model_type')!r}); a newer transformers may "
                        "know it (pip install -U transformers), else the config.json is not a save_pretrained one")


@contextlib.contextmanager
def transformers_bars(show: bool) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", save_pretrained's "Writing model shards") as the
    package's, for the calls in the block: pass ``not quiet() and interactive()``, off at ``-q`` and off a terminal.
    Both switches are put back as they were: transformers' turns huggingface_hub's on and off with it, and
    turning it back on cleared the hub's per-group settings (and warned under ``HF_HUB_DISABLE_PROGRESS_BARS``).
    Under ``HF_HUB_DISABLE_PROGRESS_BARS=0`` (bars asked for everywhere, which the hub's switch refuses to turn off)
    they are left on: turning them off warned "Cannot disable progress bars" on every load and export."""
    from transformers.utils import logging as hf_logging

    hub = importlib.import_module("huggingface_hub.utils.tqdm")
    was, hub_was = hf_logging.is_progress_bar_enabled(), dict(hub.progress_bar_states)
    show = show or hub.HF_HUB_DISABLE_PROGRESS_BARS is False
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not show:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hf_logging.enable_progress_bar()
        hub.progress_bar_states.clear()
        hub.progress_bar_states.update(hub_was)


def load_hf_weights(model_cls: type, folder: Path, dtype: torch.dtype,
                    device: str | torch.device = "cpu") -> torch.nn.Module:
    """``model_cls.from_pretrained(folder)`` that refuses a checkpoint whose weights do not all load. transformers
    only reports missing weights and initialises them randomly: a directory written by a transformers version
    that names the modules otherwise (the built-in LLaVA with transformers < 5.10.2: its vision tower) loaded
    as a model with a random part, silently. On an accelerator the weights load straight onto ``device``
    (``device_map``): a copy in host memory first would cost every torchrun rank the whole model's size."""
    from transformers.utils import is_accelerate_available

    _check_weight_files(folder)
    device = torch.device(device)
    # device_map needs accelerate, which is not a dependency: without it, load on the host (the caller moves it)
    placed = {"device_map": {"": device}} if device.type != "cpu" and is_accelerate_available() else {}
    with transformers_bars(not quiet() and interactive()):
        try:
            model, info = model_cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype,
                                                    output_loading_info=True, use_kernels=False, **placed)
        except RuntimeError as e:
            if "mismatched_sizes" not in str(e):
                raise
            # transformers' "You set `ignore_mismatched_sizes` to `False`...": its table above names the weights
            raise BackboneError(f"{folder}: weights in the checkpoint have other shapes than {model_cls.__name__} "
                                "built from its config.json (listed above); the config and the weights are of "
                                "different models: save them together again with save_pretrained") from e
        except (OSError, ValueError):
            raise
        except Exception as e:   # safetensors' own error type (a truncated or corrupt file) is none of those
            raise BackboneError(f"{folder}: the weights of {model_cls.__name__} are unreadable ({type(e).__name__}: "
                                f"{e}); re-create or re-download them") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        import transformers

        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise BackboneError(f"{folder}: {len(missing)} weight(s) of {model_cls.__name__} are not in the checkpoint "
                            f"({shown}); it was probably saved by another transformers version than this "
                            f"{transformers.__version__} (which names the modules differently): upgrade transformers, "
                            "or save the model again with this one")
    return model


def _check_weight_files(folder: Path) -> None:
    """Refuse a directory whose weights are not all there (no weights file, a shard its index lists missing, shards
    without their index), naming the missing piece, before any weight is read. transformers said only "no file
    named model.safetensors" beside a folder of shards, or the path of the first missing shard, without a fix."""
    again = "copy it from where the model came from, or save the model there again with save_pretrained"
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return
        if not (folder / index).is_file():
            continue
        try:
            weight_map = json.loads(read_whole(folder / index))["weight_map"]
            shards = set(weight_map.values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BackboneError(f"{folder}: the shard index {index} is unreadable or has no weight_map ({e}); "
                                f"{again}") from e
        # transformers refuses a shard outside the folder (an absolute path, a ".."), whether it is there or not
        away = next(((k, s) for k, s in weight_map.items() if Path(str(s)).anchor or ".." in Path(str(s)).parts), None)
        if away:
            raise BackboneError(f"{folder}: the shard index {index} names a shard outside the model's folder ("
                                f"weight_map[{away[0]!r}] = {away[1]!r}), which transformers refuses to read; put the "
                                f"shards in {folder} and write their bare file names in {index}")
        for shard in sorted(str(s) for s in shards):
            _refuse_broken_link(folder / shard)
        lost = sorted(str(s) for s in shards if not (folder / str(s)).is_file())
        if lost:
            shown = ", ".join(lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
            raise BackboneError(f"{folder}: {len(lost)} of the {len(shards)} weight shards {index} lists are missing "
                                f"({shown}); {again}")
        return
    for single in ("model.safetensors", "pytorch_model.bin"):
        _refuse_broken_link(folder / single)
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    if shards:
        raise BackboneError(f"{folder} holds weight shards ({shards[0]}, ...) but not their index "
                            f"model.safetensors.index.json, which says which weights each holds; {again}")
    raise BackboneError(f"{folder} has no weights (model.safetensors, model.safetensors.index.json with its shards, or "
                        f"pytorch_model.bin); {again}")


def _refuse_broken_link(path: Path) -> None:
    """Refuse a weights file that is a link to nothing (a Hugging Face cache snapshot whose blob was deleted), naming
    the link and where it points: "has no weights" or "missing" sent the user looking for a file that is there."""
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        shown = target if Path(target).is_absolute() else f"{target} ({os.path.normpath(path.parent / target)})"
        raise BackboneError(f"{path} is a broken link: it points to {shown}, which does not exist; "
                            "re-download the model into the Hugging Face cache (the file was deleted from it), or "
                            "copy the weights file there in place of the link")


def _timm_class(arch: str, path: Path) -> type:
    """The class of timm architecture ``arch``, built on the meta device (no memory, no weights)."""
    try:
        import timm
    except ImportError as e:
        raise BackboneError(f"{path} is a timm model ({arch}) but timm is not installed") from e
    if not timm.is_model(arch):
        raise BackboneError(f"{path} names timm architecture {arch!r}, which this timm version does not have")
    with torch.device("meta"):
        return type(timm.create_model(arch, pretrained=False))


def hf_grad_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """transformers' activation-checkpointing switch, non-reentrant (frozen inputs need no ``requires_grad``
    trick); it acts in training mode only, as in transformers. Uses ``activation_checkpointing_*``
    (transformers >= 5.x) or the older ``gradient_checkpointing_*`` names."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if enabled:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()
