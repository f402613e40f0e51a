"""One-call loading: rebuild the base model, the task kinds and their heads named in an adapter directory.

This is the only part of ``io/`` that reaches into backbones and tasks: ``load_adapter`` needs a base
model the caller built; ``load_pretrained`` builds it from what ``save_adapter`` recorded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import Backbone, BackboneError, load_backbone
from ..backbones.image_reading import NativeImageReading
from ..config import MTLLoRAConfig
from ..log import warn_user
from ..tasks import build_kind, load_spec
from ..wording import given_as
from .adapter_files import config_of, load_adapter, read_adapter_config, read_kind_state
from .adapter_images import recorded_bounds
from .base_check import adapted_part, check_base_class
from .layout import AdapterFileError, config_path

__all__ = ["Pretrained", "load_pretrained"]


@dataclass
class Pretrained:
    """What ``load_pretrained`` returns; unpacks as ``backbone, heads, config``, and indexes as that tuple
    (``load_pretrained(path)[0]`` is the backbone).

    ``specs`` holds the saved task specs (parsed), ``kinds`` the task kinds rebuilt from them (only with
    ``heads=True``), ``doc`` the parsed adapter config (``mtl_lora_config.json``).
    """

    backbone: Backbone
    heads: dict[str, nn.Module]
    config: MTLLoRAConfig
    kinds: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, Any] = field(default_factory=dict)
    doc: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.backbone, self.heads, self.config))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: Any) -> Any:
        """``result[0]`` / ``[1]`` / ``[2]`` (and slices) as the tuple it unpacks into: backbone, heads, config."""
        try:
            return (self.backbone, self.heads, self.config)[index]
        except IndexError:
            raise IndexError(f"load_pretrained's result holds 3 values (backbone, heads, config), got index {index}; "
                             "read .kinds, .specs and .doc by name") from None
        except TypeError:
            raise TypeError(f"load_pretrained's result is indexed as (backbone, heads, config) by 0, 1 or 2, got "
                            f"{index!r}; read the fields by name: .backbone, .heads, .config, .kinds, .specs, .doc"
                            ) from None


def load_pretrained(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    backbone: str | None = None,
    pretrained: str | None = None,
    data_root: str | Path | None = None,
    heads: bool = True,
    data_roots: Mapping[str, str | Path] | None = None,
    is_trainable: bool = False,
    base_dtype: str = "auto",
    check_base_weights: bool = True,
    backbone_as: str = "backbone",
    pretrained_as: str = "pretrained",
) -> Pretrained:
    """Build the base model named in the adapter file, rebuild the task heads, attach and load, in one call.

    Returns a :class:`Pretrained`: ``backbone, heads, config = load_pretrained(path)`` (the adapted model is
    ``backbone.model``; ``.kinds`` and ``.specs`` hold the rebuilt task kinds and the saved specs).

    The base model comes from ``mtl_lora_vl.backbones.load_backbone(base.backbone, base.pretrained)``
    as recorded by ``save_adapter``; ``backbone`` / ``pretrained`` override those (e.g. the checkpoint
    lives elsewhere on this machine). With ``heads=True`` each task whose spec was saved gets its kind
    rebuilt through the task registry from what it learned in training (``tasks/<t>.state.json``: answer
    vocabulary, class names), so no training data is needed; an adapter saved without that state
    rebuilds it from the training split (of ``data_roots[task]`` for file-based specs, else of ``data_root``, else
    of the folder the adapter records for the task: ``--extend`` and ``eval`` give each task its own folder in
    ``data_roots`` while it still exists, as the head's rows are its classes, not ``--data-root``'s). Each head is
    built by its kind, then filled from ``heads.safetensors``.

    ``base_dtype`` is the base weights' dtype, as ``load_backbone`` takes it (adapters stay fp32);
    ``check_base_weights`` as in ``load_adapter``. ``backbone_as`` / ``pretrained_as``: what messages call the
    overrides (these arguments' names; ``--backbone`` / ``--pretrained`` where a command line gave them,
    :func:`~mtl_lora_vl.wording.given_as`).
    As with ``load_adapter``, the model is loaded for inference unless ``is_trainable=True``: adapter
    tensors and heads frozen (``requires_grad=False``), model and heads in eval mode.
    """
    path = Path(path)
    doc = read_adapter_config(path)
    cfg = config_of(doc, path)
    named = _Named(doc, backbone, pretrained, backbone_as, pretrained_as)
    bb = _base_backbone(path, doc, named, device, base_dtype)
    with _overrides_named(named):
        # a wrong --backbone is named as such, before the tasks are rebuilt (an inner model's adapter: on that part)
        check_base_class(adapted_part(bb.model, doc), doc, path)
    _read_images_as_trained(bb, doc.get("base") or {}, path)   # (on the right family)

    built: dict[str, nn.Module] = {}
    free: dict[str, nn.Module] = {}   # heads without tensors that the directory does not list
    kinds: dict[str, Any] = {}
    specs: dict[str, Any] = {}
    for task, rel in (doc.get("task_specs") or {}).items():
        try:
            specs[task] = load_spec(path / rel, need_train=False)   # as saved: scored, or trained on
        except (ValueError, OSError) as e:
            if heads:
                raise AdapterFileError(f"{path}: cannot read the task spec of {task!r} ({rel}): {e}; load without "
                                       "heads (heads=False)") from e
            warn_user(f"{path}: the task spec of {task!r} ({rel}) cannot be read ({e}); loaded without it (the "
                      "task cannot be evaluated from this adapter)")
            continue
        if heads:
            try:
                state = read_kind_state(path, task)
                root = (data_roots or {}).get(task) or (data_root if data_root is not None
                                                        else (doc.get("data_roots") or {}).get(task))
                train = None if state is not None else specs[task].load_split("train", root)
                kinds[task] = build_kind(specs[task], train, bb, state=state)
            except (ValueError, OSError) as e:   # (only a file not read is fixed by the data folder)
                where = "give the data folder (--data-root, data_root=...), or " if isinstance(e, OSError) else ""
                raise AdapterFileError(f"{path}: cannot rebuild task {task!r} from {rel}: {e}. For file-based "
                                       f"tasks {where}load without heads (heads=False)") from e
        if heads:
            with torch.no_grad():  # on the base model: head shapes do not depend on adapters
                head = kinds[task].build_head(bb)
            if task in (doc.get("heads") or {}):
                built[task] = head
            elif not head.state_dict():   # a generative kind's head holds settings only: the spec rebuilds it,
                free[task] = head          # also where the adapter was saved without heads= (nothing to save)
    unbuilt = sorted(set(doc.get("heads") or {}) - set(built)) if heads else []
    if unbuilt:   # a head is built by its kind, from its saved spec
        warn_user(f"{path}: heads of {unbuilt} are saved but their task specs are not (save_adapter(..., "
                      "task_specs=...)), so they are not rebuilt: those tasks have no head here")
    with _overrides_named(named):
        load_adapter(bb.model, path, heads=built, is_trainable=is_trainable, check_base_weights=check_base_weights)
    built.update(free)
    for head in built.values():
        head.to(device)
        if not is_trainable:
            head.eval()
    return Pretrained(bb, built, cfg, kinds, specs, doc)


@dataclass(frozen=True)
class _Named:
    """The base model an adapter records (``doc['base']``), the overrides given for it and the names they were given
    by (the Python arguments ``backbone`` / ``pretrained``, or the command line's ``--backbone`` / ``--pretrained``):
    what an error about the base model says, read right from either."""

    doc: dict[str, Any]
    backbone: str | None
    pretrained: str | None
    backbone_as: str
    pretrained_as: str

    @property
    def base(self) -> dict[str, Any]:
        return self.doc.get("base") or {}

    def given(self) -> str:
        """The overrides given, as given (``--backbone X and --pretrained Y``; "" for none)."""
        return " and ".join(given_as(name, value) for name, value in ((self.backbone_as, self.backbone),
                                                                       (self.pretrained_as, self.pretrained)) if value)

    def recorded(self) -> str:
        return f"the adapter records backbone {self.base.get('backbone')!r}, pretrained={self.base.get('pretrained')!r}"

    def names(self) -> str:
        """The overrides' names: ``--backbone / --pretrained`` flags, ``backbone= / pretrained=`` arguments."""
        flags = self.backbone_as.startswith("-")
        return " / ".join(name if flags else f"{name}=" for name in (self.backbone_as, self.pretrained_as))

    def fix(self) -> str:
        """How to point at the base model: the flags to give, or the arguments to pass."""
        if self.backbone_as.startswith("-"):
            return f"give {self.names()}"
        return f"pass {self.backbone_as}=... / {self.pretrained_as}=..."


@contextmanager
def _overrides_named(named: _Named) -> Iterator[None]:
    """An error about the base model, where ``backbone`` / ``pretrained`` replaced the recorded one, names them and
    the recorded base: the override is the likely cause, the record the fix."""
    try:
        yield
    except AdapterFileError as e:
        given = named.given()
        if not given or "base model" not in str(e):
            raise   # no override given, or not about the base (a damaged adapter file, ...)
        raise AdapterFileError(f"{e} ({given} given; {named.recorded()}: leave {named.names()} out, or point them "
                               "at that model where it now lives)") from e


def _base_backbone(path: Path, doc: dict[str, Any], named: _Named, device: str | torch.device,
                   base_dtype: str = "auto") -> Backbone:
    """The base model recorded in ``doc['base']`` (or the overrides), built by ``load_backbone``."""
    base = named.base
    spec = named.backbone or base.get("backbone")
    if not spec:
        forms = ("builtin", "open_clip:...", "hf:DIR")
        give = (f"give {named.backbone_as} {' | '.join(forms)}" if named.backbone_as.startswith("-")
                else f"pass {named.backbone_as}={' | '.join(map(repr, forms))}")
        raise AdapterFileError(f"{config_path(path)}: does not say which base model it was trained on "
                               f"('base.backbone'); {give}, or build the base model yourself and call "
                               "mtl_lora_vl.load_adapter(model, path)")
    weights = named.pretrained if named.pretrained is not None else base.get("pretrained")
    if base_dtype == "auto" and base.get("base_dtype"):   # checked when the adapter file was read
        base_dtype = base["base_dtype"]   # the run's explicit --base-dtype: its scores are reproduced on that dtype
    try:   # (its image area once the family is checked: _read_images_as_trained)
        bb = load_backbone(spec, weights, device=device, base_dtype=base_dtype,   # (weights named as given)
                           pretrained_as=named.pretrained_as if named.pretrained is not None else "base.pretrained")
    except (ValueError, FileNotFoundError, OSError) as e:
        given = named.given()
        which = (f"({given} given; {named.recorded()})" if given
                 else "that the adapter was trained on" + (f" (base.pretrained {weights!r})" if weights else ""))
        raise AdapterFileError(f"{path}: cannot build the base model {spec!r} {which}: {e}. Point at it on this "
                               f"machine: {named.fix()}") from e
    return bb


def _read_images_as_trained(bb: Backbone, base: dict[str, Any], path: Path) -> None:
    """Read images within the adapter's image area (``base.image_min_pixels`` / ``base.image_max_pixels``: exactly
    that, Qwen2-VL's ``read_within``; ``image_max_pixels`` alone, an adapter saved before: that area asked for, within
    this processor's ``max_pixels``, ``limit_pixels``) and as
    the adapter's were read (``base.image_reading``): each at its own aspect as the processor reads it
    ("native"), squashed to one square ("square", ``native_aspect(False)``), or as the model's processor does
    ("processor": attached to a bare model; the backbone's default). An adapter that records none was saved before
    images were read at their own aspect: on squares, with a warning. A backbone that reads images one way
    (Qwen2-VL: its native resolution, within its area) has nothing to switch."""
    area, reading, bounds = base.get("image_max_pixels"), base.get("image_reading"), recorded_bounds(base)
    if area:
        limit, within = getattr(bb, "limit_pixels", None), getattr(bb, "read_within", None)
        try:
            if limit is None or within is None:
                raise BackboneError(f"{bb.name} takes {bb.image_size}x{bb.image_size} images")
            if bounds:   # the area read, on any processor
                within(*bounds)
            else:   # (an adapter saved before: the area asked for, within this processor's max_pixels)
                limit(int(area), recorded=True)
        except BackboneError as e:
            raise AdapterFileError(f"{path}: the adapter's images were read within {area} pixels "
                                   f"(base.image_max_pixels), which this base model cannot read them within: {e}. "
                                   "Load the base model the adapter was trained on") from None
    if not isinstance(bb, NativeImageReading):
        return
    if reading == "native" and not bb.resize.keeps_size:
        try:
            bb.native_aspect(True)
        except BackboneError as e:
            raise AdapterFileError(f"{path}: the adapter's images were read at their own aspect (base.image_reading "
                                   f"'native'), which this base model's processor cannot give: {e}. Restore the "
                                   "processor files the adapter was trained with") from None
    elif reading in ("square", None) and bb.resize.keeps_size:
        if reading is None:
            warn_user(f"{path}: the adapter does not record how its images were read; adapters saved before this "
                      f"version read {bb.name}'s images squashed to one square, so they are read so "
                      "(native_aspect(False))")
        bb.native_aspect(False)
