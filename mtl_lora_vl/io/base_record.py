"""An adapter's ``base`` record (how to rebuild the base model: ``{"backbone": SPEC, "pretrained": FILE}``): its local
paths made absolute as ``save_adapter`` and a run directory write it, the spec ``load_pretrained`` could not build
warned of at save time, and the local files it names (which writing an output must not replace)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backbones.spec import parse_spec
from ..log import warn_user

__all__ = ["absolute_base", "base_paths", "warn_unknown_base"]


def absolute_base(base: dict[str, Any]) -> dict[str, Any]:
    """Make local paths in ``base`` (a pretrained file, an ``open_clip:DIR`` / ``hf:DIR``) absolute.

    With :func:`base_paths`, the places here that parse backbone spec strings (see
    ``mtl_lora_vl.backbones.load_backbone``).
    """
    pre = base.get("pretrained")
    if isinstance(pre, str) and Path(pre).expanduser().exists():
        base["pretrained"] = str(Path(pre).expanduser().resolve())
    spec = base.get("backbone")
    if isinstance(spec, str):
        try:
            base["backbone"] = parse_spec(spec).absolute()
        except (ValueError, OSError):   # (open_clip:DIR of a folder not there: FileNotFoundError, as base_paths)
            pass  # not a backbone string this package parses, or its folder is not here: keep it as the caller wrote it
    return base


def warn_unknown_base(base: dict[str, Any]) -> None:
    """Warn where ``base['backbone']`` is no spec ``load_pretrained`` can build (``'builtn'``, a folder without its
    prefix; it was caught only on loading): saved as written. A known prefix's spec may load elsewhere: unwarned."""
    spec = base.get("backbone")
    if spec is None or (isinstance(spec, str) and spec.strip().startswith(("open_clip:", "hf:"))):
        return
    try:
        parse_spec(spec)
    except (ValueError, OSError) as e:
        why = str(e).split("; accepted forms")[0]
        warn_user(f"save_adapter: base['backbone'] = {spec!r} is no backbone load_pretrained can build ({why}); it "
                  "is saved as written, and loading it will need backbone=...; save again with a spec such as "
                  "'builtin', 'builtin-llava', 'open_clip:NAME', 'open_clip:/path/to/dir' or 'hf:/path/to/dir'")


def base_paths(base: dict[str, Any], backbone: str | None = None,
               pretrained: str | None = None) -> list[tuple[str, Path]]:
    """The local files the base model ``base`` (an adapter config's) is read from (``backbone`` /
    ``pretrained`` override it), as (what, path) pairs: what writing an output must not replace."""
    out = []
    spec, pre = backbone or base.get("backbone"), pretrained or base.get("pretrained")
    if isinstance(spec, str):
        try:
            source = parse_spec(spec).source_dir
        except (ValueError, OSError):   # not a spec this package parses, or its folder is gone: nothing to keep
            source = None
        if source is not None:
            out.append(("the base model's folder", Path(source)))
    if isinstance(pre, str) and Path(pre).expanduser().exists():
        out.append(("the base weights", Path(pre).expanduser()))
    return out
