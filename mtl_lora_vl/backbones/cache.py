"""Models already in the local Hugging Face or open_clip cache, found without any network access.

- ``hf:ORG/NAME``: the hub id's snapshot in the Hugging Face hub cache, in the layout ``huggingface_hub``
  writes (``models--ORG--NAME/refs/main`` names the commit of ``snapshots/<commit>/``). The cache is
  ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read when asked, so a
  changed environment counts); a cache holding no ``main`` of the id gives its one snapshot (a tag's, a commit's),
  and refuses several. The snapshot is then loaded like a local directory, i.e.
  ``from_pretrained(snapshot, local_files_only=True)``.
- ``open_clip:NAME --pretrained TAG``: the weights file that open_clip's pretrained table
  (``open_clip.pretrained.get_pretrained_cfg``) names for (NAME, TAG), where open_clip 3.x downloads it:
  an ``hf_hub`` entry (``ORG/REPO/`` or ``ORG/REPO/FILE``) goes to the Hugging Face hub cache, with
  ``open_clip_model.safetensors`` preferred over ``open_clip_pytorch_model.bin`` (its
  ``download_pretrained_from_hf``); a ``url`` entry to ``~/.cache/clip/<file name>``
  (``download_pretrained_from_url``). The tag's preprocessing (mean, std, ...) comes back with it.

Nothing here downloads: a name that is not cached gives ``None``, and the loader fails with its message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["cached_hub_snapshot", "cached_hub_snapshots", "cached_open_clip_weights", "clip_url_cache", "hf_hub_cache",
           "hub_caches", "hub_id_snapshot", "local_folder"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_OPEN_CLIP_BIN = "open_clip_pytorch_model.bin"  # open_clip's HF_WEIGHTS_NAME
_OPEN_CLIP_SAFE = "open_clip_model.safetensors"  # open_clip's HF_SAFE_WEIGHTS_NAME


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment as ``huggingface_hub`` does (``~`` and
    ``$VAR`` in it expanded: ``HF_HOME='$SCRATCH/hf'`` from an env file that no shell expanded; a variable set empty
    counts as set, as its ``os.getenv(NAME, default)`` reads it: ``HF_HOME=`` is ``./hub``, where it downloads)."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if key in env:
            return _expanded(env[key])
    if "HF_HOME" in env:
        return _expanded(env["HF_HOME"]) / "hub"
    base = _expanded(env["XDG_CACHE_HOME"]) if "XDG_CACHE_HOME" in env else Path("~/.cache").expanduser()
    return base / "huggingface" / "hub"


def _expanded(path: str) -> Path:
    """``path`` with ``~`` and environment variables expanded, as ``huggingface_hub.constants`` expands its own."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


def hub_caches() -> list[Path]:
    """The hub caches a model ``from_pretrained`` by hub id came from, where it was given no ``cache_dir``: the one
    ``huggingface_hub`` downloads to and reads (``huggingface_hub.constants.HF_HUB_CACHE``: read from the environment
    when it was imported, or set on it since), then the one the environment names now (:func:`hf_hub_cache`: an
    ``HF_HOME`` set after that import), when it is another. A model given ``cache_dir=`` came from that folder,
    which it does not record (transformers keeps neither it nor the files' paths)."""
    caches = []
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    if constants is not None and getattr(constants, "HF_HUB_CACHE", None):
        caches.append(Path(constants.HF_HUB_CACHE))
    now = hf_hub_cache()
    return caches + ([now] if now not in caches else [])


def clip_url_cache() -> Path:
    """Where open_clip's ``download_pretrained_from_url`` keeps URL downloads (its default ``cache_dir``)."""
    return Path("~/.cache/clip").expanduser()


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is shaped like a hub id (``NAME`` or ``ORG/NAME``)."""
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text


def cached_hub_snapshot(repo_id: str, revision: str = "main", cache: Path | None = None) -> Path | None:
    """The local snapshot folder of model ``repo_id`` in the hub cache (``cache``, else :func:`hf_hub_cache`), or
    None when it is not there."""
    if not is_hub_id(repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=str(cache or hf_hub_cache()),
                                 local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or not a valid id: not found
        return None
    folder = Path(path)
    return folder if folder.is_dir() else None


def cached_hub_snapshots(repo_id: str, cache: Path | None = None) -> dict[Path, list[str]]:
    """Every snapshot folder of model ``repo_id`` in the local hub cache (``cache``, else :func:`hf_hub_cache`:
    ``models--ORG--NAME/snapshots/<commit>``), each with the refs that name its commit (``main``, a tag, ``pr/1``),
    sorted by folder; empty when none is there."""
    repo = _repo_folder(repo_id, cache)
    if repo is None:
        return {}
    snapshots = repo / "snapshots"
    found = {f: [] for f in sorted(snapshots.iterdir()) if f.is_dir()} if snapshots.is_dir() else {}
    refs = repo / "refs"
    for ref in sorted(refs.rglob("*")) if refs.is_dir() else ():
        target = snapshots / ref.read_text().strip() if ref.is_file() else None
        if target in found:
            found[target].append(ref.relative_to(refs).as_posix())
    return found


def _repo_folder(repo_id: str, cache: Path | None = None) -> Path | None:
    """The folder of model ``repo_id`` in the hub cache (``cache``, else :func:`hf_hub_cache`), named as
    ``huggingface_hub`` names it (``file_download.repo_folder_name``: ``models--ORG--NAME``); None for an id it refuses
    (longer than 96 characters, ending in ``.`` or ``.git``: never cached) or without ``huggingface_hub``."""
    if not is_hub_id(repo_id):
        return None
    try:
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:
        return None
    try:
        return (cache or hf_hub_cache()) / repo_folder_name(repo_id=repo_id, repo_type="model")
    except ValueError:   # (HFValidationError: an id the hub refuses)
        return None


def hub_id_snapshot(repo_id: str) -> Path | None:
    """The snapshot of model ``repo_id`` in the local hub cache that the id alone names: ``main``'s, else, where the
    cache has no ``main`` of it, its one snapshot there (``snapshot_download(id, revision="v1")`` writes
    ``refs/v1`` alone); None when none is there. Several snapshots and no ``main`` are refused, naming each with its
    refs: which one is meant cannot be known."""
    snapshot = cached_hub_snapshot(repo_id)
    if snapshot is not None or not is_hub_id(repo_id):
        return snapshot
    if (repo := _repo_folder(repo_id)) is not None and (repo / "refs" / "main").is_file():
        return None   # (main names a commit not cached: not another revision in its place)
    snapshots = cached_hub_snapshots(repo_id)
    if len(snapshots) <= 1:
        return next(iter(snapshots), None)
    listed = "; ".join(f"{s}" + (f" ({', '.join(refs)})" if refs else "") for s, refs in snapshots.items())
    raise ValueError(f"{repo_id!r}: the local hub cache ({hf_hub_cache()}) holds no 'main' revision of it but "
                     f"{len(snapshots)} other snapshots, which may differ: {listed}. Name the folder of the one "
                     f"meant in place of {repo_id!r}")


def local_folder(name: str, cached: bool = True) -> Path | None:
    """The folder ``name`` names: a local directory, else (``cached``) the snapshot of hub id ``name`` in the local
    cache (:func:`hub_id_snapshot`); None when neither is there."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    return hub_id_snapshot(name) if cached else None


def _hub_file(repo_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_hub_cache()))
    except Exception:  # noqa: BLE001 - an id the hub client refuses is simply not cached
        return None
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _safe_alternatives(filename: str) -> list[str]:
    """The safetensors files open_clip looks for before ``filename`` (its ``_get_safe_alternatives``)."""
    if filename == _OPEN_CLIP_BIN:
        return [_OPEN_CLIP_SAFE]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


def cached_open_clip_weights(name: str, tag: str) -> tuple[Path, dict[str, Any]] | None:
    """(weights file, the tag's pretrained config) for open_clip ``name`` + pretrained ``tag`` when cached."""
    try:
        from open_clip.pretrained import get_pretrained_cfg
    except ImportError:
        return None
    cfg = dict(get_pretrained_cfg(name, tag) or {})
    if not cfg:
        return None
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"]), cfg
    hub = cfg.get("hf_hub") or ""
    if hub:
        repo_id, filename = os.path.split(hub)
        filename = filename or _OPEN_CLIP_BIN
        for candidate in [*_safe_alternatives(filename), filename]:
            hit = _hub_file(repo_id, candidate)
            if hit is not None:
                return hit, cfg
    url = cfg.get("url") or ""
    if url:
        target = clip_url_cache() / os.path.basename(url)
        if target.is_file():
            return target, cfg
    return None
