"""safetensors files of adapters and exports: write, read, read a header or the metadata without the tensors,
and the digests (of a file's bytes, of a JSON record by meaning) that ``mtl_lora_config.json`` records."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch

from .layout import AdapterFileError

__all__ = ["load_tensors", "read_header", "read_metadata", "record_sha256", "save_tensors", "sha256_file"]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (recorded per file in the adapter config)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file (own contiguous CPU copies: tied weights cannot share storage)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, str(path),
              metadata=metadata)
    _sort_metadata(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of a safetensors file with its metadata keys sorted: safetensors writes them from a hash
    map whose order changes from process to process, so equal tensors gave files of other bytes and digests (and
    an ``--extend`` run's resume refused its re-saved, unchanged source adapter). The header keeps its length, so
    no tensor moves."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header.get("__metadata__")
        if not meta or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:   # not the compact form safetensors writes: leave the file as it is
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a damaged one raises :class:`AdapterFileError` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:
        raise AdapterFileError(f"{file}: unreadable safetensors file ({e}); copy the adapter directory again") from e


def read_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
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


def record_sha256(record: Any) -> str:
    """SHA-256 of a JSON record in a canonical form -- keys sorted, a whole float written as an integer (16.0 and
    16 are one value: JSON tools rewrite one as the other) -- so that a record read back compares by meaning.
    The adapter's weights carry the digest of its ``config`` record (task order, shape, scaling: the part of
    ``mtl_lora_config.json`` that its own file digests cannot cover), so that a hand edit of it is refused."""
    def canonical(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {str(k): canonical(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [canonical(x) for x in v]
        return v

    return hashlib.sha256(json.dumps(canonical(record), sort_keys=True, default=str).encode()).hexdigest()


def read_metadata(file: Path) -> dict[str, str]:
    """A safetensors file's metadata (``{}`` when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged headers
        raise AdapterFileError(f"{file}: unreadable safetensors header ({e}); copy the adapter directory again") from e


# ---------------------------------------------------------------------------------------------- saving
