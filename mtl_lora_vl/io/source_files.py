"""What a merged folder takes from its source folder (the base model's): where that folder is (the model's own, or its
hub id's snapshot in the local cache), which files are copied, which the model's own ``save_pretrained`` writes
instead, and the refusal of a copied file that links out of the folder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..backbones.cache import cached_hub_snapshot, cached_hub_snapshots, hub_caches, is_hub_id
from ..log import warn_user
from .atomic import linked_out_of
from .layout import ADAPTER_CONFIG, LEGACY_ADAPTER_CONFIG

__all__ = ["hf_writes", "hub_snapshot", "loaded_from", "refuse_linked_out", "source_folder", "weights_or_adapter"]


def loaded_from(model: nn.Module) -> Path | None:
    """The local directory a Hugging Face model was ``from_pretrained`` from, if any."""
    name = getattr(model, "name_or_path", "") or ""
    return Path(name) if name and Path(name).is_dir() else None


def hub_snapshot(model: nn.Module) -> Path | None:
    """The snapshot in the local hub caches (:func:`~..backbones.cache.hub_caches`, in order) that a model loaded by
    hub id was loaded from, where that is known without doubt: in the first cache whose snapshot of the id -- the
    commit its config records (``_commit_hash``), else its one snapshot there, else ``main``'s (what
    ``from_pretrained(id)`` loads, as :func:`source_folder` takes it) -- holds the model's weights
    (:func:`_weights_match`); a cache whose snapshot holds others is passed over for the next. None otherwise: a
    model loaded from a folder or built from a config, an id not cached, no commit recorded and several snapshots
    but no ``main`` in a cache (which one was loaded is not known), no snapshot known to hold the model's weights
    (other values, or none read and compared: no safetensors file, a broken link). Nothing is warned or refused:
    what a note may rest on (no network)."""
    name = getattr(model, "name_or_path", "") or ""
    if not is_hub_id(name) or loaded_from(model) is not None:
        return None
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    for cache in hub_caches():
        if commit:
            snapshot = cached_hub_snapshot(name, commit, cache)
        else:
            snapshots = cached_hub_snapshots(name, cache)
            if not snapshots:
                continue
            snapshot = next(iter(snapshots)) if len(snapshots) == 1 else cached_hub_snapshot(name, cache=cache)
            if snapshot is None:
                return None   # (several and no main: which one the model was loaded at is not known)
        if snapshot is not None and _weights_match(model, snapshot):
            return snapshot
    return None


def source_folder(model: nn.Module, out: str | Path) -> Path | None:
    """The folder whose processor and tokenizer files a merged Hugging Face folder ``out`` of ``model`` takes when no
    ``source_dir`` is given: the local directory it was loaded from, else the snapshot of its hub id in the local hub
    cache it was loaded from (:func:`~..backbones.cache.hub_caches`: the revision it was loaded at, or its only
    snapshot there; no network), warned where that snapshot's weights are not the model's (:func:`_other_weights`:
    a model loaded with ``cache_dir=`` another cache, which it does not record, or at another revision). None for a
    model built from a config (no files to take). A model loaded from a folder or hub id that cannot be found, or
    whose cached snapshot holds nothing to copy (the model alone was downloaded, not its processor), is refused: the
    merged folder would hold no processor files and fail only when loaded; so is a hub id with several snapshots
    cached and no ``main`` (:func:`_loaded_snapshot`)."""
    name = getattr(model, "name_or_path", "") or ""
    folder = loaded_from(model)
    if not name or folder is not None:
        return folder
    caches = hub_caches()
    snapshot = _loaded_snapshot(model, name, out, caches)
    if snapshot is not None and _has_processor_files(snapshot):
        differing = _other_weights(model, snapshot)
        if differing:
            warn_user(f"save_merged: {out}: the model was loaded from the hub id {name!r}, whose snapshot {snapshot} "
                      f"in the local hub cache holds other values of its weight {differing!r}: the model was loaded "
                      "from another cache (from_pretrained(..., cache_dir=DIR), which it does not record) or at "
                      "another revision, or its weights were changed since. Its processor and tokenizer files are "
                      f"taken from that snapshot; if they are not the model's, {_SOURCE_ADVICE.format(name=name)}")
        return snapshot
    if snapshot is not None:   # (from_pretrained of the model alone downloads no processor file)
        where = f"a hub id whose snapshot in the local hub cache ({snapshot}) holds only the model's config and weights"
    elif is_hub_id(name) and (others := _other_revisions(model, name, caches)):
        where = others
    elif is_hub_id(name):
        where = f"a hub id whose files are not in the local hub cache ({' or '.join(map(str, caches))})"
    else:
        where = "a folder that is not there any more"
    raise ValueError(f"save_merged: {out}: the model was loaded from {name!r}, {where}, so the processor and "
                     "tokenizer files cannot be copied beside its weights and the merged folder would not load with "
                     "its processor; pass source_dir= a folder holding them (the base model's, e.g. "
                     f"huggingface_hub.snapshot_download({name!r}) where it is a hub id; with cache_dir=DIR, "
                     "local_files_only=True for a model loaded from_pretrained with cache_dir=DIR)")


_SOURCE_ADVICE = ("pass source_dir= the snapshot of the revision the model was loaded at, in the cache it was loaded "
                  "from, e.g. huggingface_hub.snapshot_download({name!r}, revision=REVISION, cache_dir=DIR, "
                  "local_files_only=True)")


def _other_revisions(model: nn.Module, name: str, caches: list[Path]) -> str | None:
    """Where ``model`` records the commit it was loaded at (``config._commit_hash``: transformers 5.10.2 to 5.17 and 4
    set it) and the first of ``caches`` holding snapshots of hub id ``name`` holds none of that commit: what to say of
    it (the commit, that cache and its snapshots with their refs), else None."""
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    cache = next((c for c in caches if cached_hub_snapshots(name, c)), None) if commit else None
    if cache is None:
        return None
    listed = "; ".join(f"{s.name}" + (f" ({', '.join(refs)})" if refs else "")
                       for s, refs in cached_hub_snapshots(name, cache).items())
    return (f"a hub id loaded at the commit {commit} (its config's _commit_hash), of which the local hub cache "
            f"({cache}) holds no snapshot, only others: {listed} (the model was loaded from another cache, "
            "from_pretrained(..., cache_dir=DIR), or that revision was removed since)")


def _loaded_snapshot(model: nn.Module, name: str, out: str | Path, caches: list[Path]) -> Path | None:
    """The snapshot of hub id ``name`` in the local hub ``caches`` which ``model`` was loaded from: the commit its
    config records (``_commit_hash``, which transformers 4 and 5.10.2 to 5.17 set; 5.18 and later record none), else,
    in each cache holding the id in turn, its one snapshot there, else ``main``'s, what ``from_pretrained(name)``
    loads: the first of these holding the model's weights (:func:`_weights_match`; as :func:`hub_snapshot` walks the
    caches), else the first cache's (:func:`_told`: warned or refused as there). A cache holding several and no
    ``main`` ends the walk: which one the model was loaded at is not known. None when none is there."""
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if commit:   # (that revision only: another's processor may differ)
        return next((s for s in (cached_hub_snapshot(name, commit, c) for c in caches) if s is not None), None)
    first = None
    for cache in caches:
        snapshots = cached_hub_snapshots(name, cache)
        if not snapshots:
            continue
        chosen = next(iter(snapshots)) if len(snapshots) == 1 else cached_hub_snapshot(name, cache=cache)
        first = first or (cache, snapshots, chosen)
        if chosen is None:
            break
        if _weights_match(model, chosen):
            return _told(name, out, cache, snapshots, chosen)
    return None if first is None else _told(name, out, *first)


def _told(name: str, out: str | Path, cache: Path, snapshots: dict[Path, list[str]], chosen: Path | None) -> Path:
    """``chosen``, the snapshot of ``name`` that ``cache`` gives (its one, or ``main``'s of ``snapshots``), taken:
    ``main``'s among several is warned of, naming the others (an old revision stays cached after the hub's moves on,
    and a model loaded at another is told to give ``source_dir``); several and no ``main`` are refused, naming
    each."""
    if len(snapshots) <= 1 or (chosen is not None and not _has_processor_files(chosen)):
        return chosen   # (one; or main holding no processor file: refused by the caller, no warning of its files)
    listed = "; ".join(f"{s}" + (f" ({', '.join(refs)})" if refs else "") for s, refs in snapshots.items())
    advice = _SOURCE_ADVICE.format(name=name)
    if chosen is not None:
        warn_user(f"save_merged: {out}: the model was loaded from the hub id {name!r} and records no revision "
                  "(transformers keeps none on a loaded model); its processor and tokenizer files are taken from "
                  f"the 'main' snapshot {chosen}, what from_pretrained({name!r}) loads, of the {len(snapshots)} the "
                  f"local hub cache holds: {listed}. If it was loaded at another revision, {advice}")
        return chosen
    raise ValueError(f"save_merged: {out}: the model was loaded from the hub id {name!r} and records no revision "
                     f"(transformers keeps none on a loaded model), but the local hub cache ({cache}) holds "
                     f"{len(snapshots)} snapshots of it and no 'main', whose processor and tokenizer files may "
                     f"differ: {listed}. Which one it was loaded at cannot be known; {advice}")


class _Compared(NamedTuple):
    """What :func:`_compare_weights` found: the first weight of other values (None: none), how many were compared
    alike, and whether a safetensors file could not be read (a broken link, a file cut short)."""

    differing: str | None
    same: int
    unreadable: bool


def _other_weights(model: nn.Module, snapshot: Path) -> str | None:
    """The name of a weight of ``model`` whose values in ``snapshot``'s safetensors files are others
    (:func:`_compare_weights`), else None: the same values, or none to compare."""
    return _compare_weights(model, snapshot).differing


def _weights_match(model: nn.Module, snapshot: Path) -> bool:
    """Whether ``snapshot``'s safetensors files are known to hold ``model``'s weights: each file read, some weight
    compared and none differing (:func:`_compare_weights`). No readable safetensors file, a broken link among them,
    or nothing comparable (weights transformers converts on loading, a quantized model's, ``.bin`` files only):
    not known, False."""
    found = _compare_weights(model, snapshot)
    return found.differing is None and found.same > 0 and not found.unreadable


def _compare_weights(model: nn.Module, snapshot: Path, most: int = 256) -> _Compared:
    """``model``'s weights against those of ``snapshot``'s safetensors files under their name and shape (the name
    ``from_pretrained`` loads each under: :func:`_loaded_name`; the first row of each is compared, at most ``most``
    weights: read from the files' headers and those rows alone; :func:`_same_values`), stopping at the first of other
    values. Not compared: weights whose values transformers converts on loading, a quantized or offloaded model's,
    a float8 file's dequantized on loading; a file that cannot be read is marked so and passed over."""
    state = model.state_dict()
    loaded_name = _loaded_name(model, state)
    files = sorted(snapshot.glob("*.safetensors"))
    compared, unreadable = 0, any(not f.is_file() for f in files)   # (a broken link: its blob not there)
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    name = loaded_name(key)
                    own = state.get(name) if name is not None else None
                    if own is None or own.is_meta or not own.is_floating_point():
                        continue
                    part = sf.get_slice(key)
                    if tuple(part.get_shape()) != tuple(own.shape):
                        continue
                    theirs = part[:1] if own.dim() else sf.get_tensor(key)
                    same = _same_values(theirs, own.detach()[:1].cpu() if own.dim() else own.detach().cpu())
                    if same is None:
                        continue
                    if not same:
                        return _Compared(name, compared, unreadable)
                    compared += 1
                    if compared >= most:
                        return _Compared(None, compared, unreadable)
        except (OSError, RuntimeError, ValueError, SafetensorError):   # (a file not readable: nothing to judge by)
            unreadable = True
    return _Compared(None, compared, unreadable)


def _same_values(theirs: torch.Tensor, own: torch.Tensor) -> bool | None:
    """Whether a file's values ``theirs`` are those a model loaded from it holds (``own``), or None where that cannot
    be judged: not floats, or an 8-bit float on one side only (a float8 file dequantized on loading, its scales in
    other tensors; a model quantized to float8 from a wider file). Of one dtype the bits are compared (a loaded copy
    holds the same); else the file's values cast to the model's dtype, as ``from_pretrained`` casts them, and compared
    exactly with NaN equal to NaN (``torch.equal`` holds NaN unequal to itself: a weight with a NaN in its first row
    was warned of as not the model's)."""
    if not (theirs.is_floating_point() and own.is_floating_point()):
        return None
    if theirs.dtype == own.dtype:
        return torch.equal(_bits(theirs), _bits(own))
    if min(theirs.dtype.itemsize, own.dtype.itemsize) == 1:
        return None
    return torch.allclose(theirs.to(own.dtype), own, rtol=0.0, atol=0.0, equal_nan=True)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes (a float of any width, also a 0-dim one) as one flat uint8 tensor."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _loaded_name(model: nn.Module, state: dict[str, torch.Tensor]) -> Callable[[str], str | None]:
    """The name a checkpoint's weight is loaded under in ``model``, as ``from_pretrained`` renames it (transformers'
    conversion mapping, as its ``convert_and_load_state_dict_in_model`` applies it: LLaVA-style models' files, also
    those transformers 5 writes, hold ``language_model.model.*`` for the model's ``model.language_model.*``; a base
    model's prefix added or dropped), or None for a weight whose values it converts (fused, split, permuted: not
    comparable). The name as written where that mapping cannot be read (a model not of transformers)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
    except Exception:  # noqa: BLE001 - not a transformers model, or internals of another version: names as written
        return lambda key: key
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None

    def name(key: str) -> str | None:
        try:
            renamed, converted = rename_source_key(key, renamings, converters, prefix, state)
            if renamed not in state and key in state:   # (as transformers does: the prefix alone, else as written)
                renamed, converted = rename_source_key(key, [], [], prefix, state)
        except Exception:  # noqa: BLE001 - another version's internals: the name as written
            return key
        return None if converted is not None else renamed

    return name


def _has_processor_files(snapshot: Path) -> bool:
    """Whether ``snapshot`` holds a file not the model's own (:func:`_model_file`): a processor's, a tokenizer's."""
    return any(f.is_file() and not _model_file(f) for f in snapshot.iterdir())


def _model_file(f: Path) -> bool:
    """A file ``from_pretrained`` of the model alone downloads (its config, generation config, code, weights): a
    snapshot holding only these has no processor or tokenizer file to give a merged folder."""
    return weights_or_adapter(f) or f.suffix == ".py" or f.name in ("config.json", "generation_config.json")


def hf_writes(model: nn.Module) -> tuple[str, ...]:
    """The files ``model.save_pretrained`` writes besides its weights: config.json, a generation_config.json only if
    it generates, and for a model or config of its own code (registered for an auto class: ``trust_remote_code``)
    the Python files that code is in."""
    generates = getattr(model, "can_generate", lambda: False)()
    code = [name for obj in (model, getattr(model, "config", None)) for name in _code_files(obj)]
    return ("config.json", *(("generation_config.json",) if generates else ()), *code)


def _code_files(obj: object) -> list[str]:
    """The names of the files transformers' ``custom_object_save`` copies for ``obj``, a model or config of a class
    registered for an auto class: its module's file and those it imports relatively; none for another."""
    module = sys.modules.get(type(obj).__module__) if getattr(obj, "_auto_class", None) is not None else None
    file = getattr(module, "__file__", None)
    if not file or type(obj).__module__ == "__main__":
        return []
    from transformers.dynamic_module_utils import get_relative_import_files

    return [Path(file).name, *(Path(f).name for f in get_relative_import_files(file))]


def refuse_linked_out(folder: str | Path, f: Path) -> None:
    """Refuse to copy ``f``, a link out of the source folder: a downloaded folder's link could put a private file
    (a key, a token) into the merged folder, which is then shared."""
    target = linked_out_of(folder, f)
    if target is not None:
        raise ValueError(f"save_merged: {f} is a symbolic link to {target}, outside the source folder {folder}, and "
                         "only the folder's own files are copied into a merged folder; put the file itself there in "
                         "place of the link, or remove the link")


#: Weights files' suffixes, in any framework's format: PyTorch's, and Flax's (flax_model.msgpack), TensorFlow's and
#: Keras' (tf_model.h5, saved_model.pb, model.ckpt), ONNX's, llama.cpp's (.gguf, .ggml), TF Lite's, Core ML's, NumPy's
#: (big_vision .npz). A merged folder holds its own weights: the base's in another format, beside them, are the base
#: model without the task (what a user of that framework would load).
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".msgpack", ".h5", ".hdf5", ".keras", ".pb", ".ckpt",
                    ".onnx", ".onnx_data", ".gguf", ".ggml", ".tflite", ".mlmodel", ".npz")


def weights_or_adapter(f: Path) -> bool:
    """A weights file (:data:`WEIGHTS_SUFFIXES`, a sharded index, an ONNX model's external data, a TensorFlow
    checkpoint's index and data), or an adapter's config: not copied into a merged directory (an adapter_config.json
    there makes ``from_pretrained`` load it as a PEFT adapter, whose weights are not there)."""
    name = f.name.lower()
    weights = (name.endswith(WEIGHTS_SUFFIXES) or name.endswith((".index.json", ".onnx.data"))
               or ".ckpt." in name)   # (model.ckpt.index, model.ckpt.data-00000-of-00001)
    return weights or f.name in (LEGACY_ADAPTER_CONFIG, ADAPTER_CONFIG)
