"""Safe image decoding, shared by the readers (cheap checks at load) and the loader workers (pixels).

Every failure is an :class:`ImageError` that names the file and the cause, so a reader can skip and
count it, and a worker can report it, instead of dying on a PIL traceback. Images larger than
:data:`MAX_PIXELS` are refused from their header, before any pixel is decoded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

MAX_PIXELS = 10_000 * 10_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageError(ValueError):
    """An image that cannot be used: missing, empty, corrupt, truncated or too large."""


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(f"image {path}: file not found") from None
    except OSError as e:
        raise ImageError(f"image {path}: cannot be read ({e})") from e
    if not path.is_file():
        raise ImageError(f"image {path}: is not a regular file")
    if st.st_size == 0:
        raise ImageError(f"image {path}: file is empty (0 bytes)")


def _open(path: Path) -> Image.Image:
    """Open lazily (header only) and refuse absurd sizes before decoding."""
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image {path}: refused, too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image {path}: not a readable image ({type(e).__name__}: {e})") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise ImageError(f"image {path}: has an invalid size {w}x{h}")
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageError(f"image {path}: refused, {w}x{h} = {w * h:,} pixels exceeds the limit of "
                         f"{MAX_PIXELS:,} (mtl_lora_vl.data.images.MAX_PIXELS); downscale it first")
    return img


def verify_image(path: str | os.PathLike) -> tuple[int, int]:
    """Cheap check used by readers: header parses, size within the limit, format's own verify passes.

    Does not decode the pixels (a truncated JPEG passes here and fails in :func:`load_image`).
    Returns (width, height).
    """
    path = Path(path)
    img = _open(path)
    try:
        size = img.size
        img.verify()
    except Exception as e:  # PIL raises many types from verify (OSError, SyntaxError, struct.error, ...)
        raise ImageError(f"image {path}: failed verification ({type(e).__name__}: {e})") from e
    finally:
        img.close()
    return size


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """Integer/float single-channel modes (16-bit PNGs, 32-bit TIFFs) scaled to 8 bits, not clipped."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        hi = float(arr.max()) if arr.size else 0.0
        arr = arr * 255.0 if hi <= 1.0 else arr * (255.0 / hi)
    else:
        arr = arr.astype(np.int64)
        hi = int(arr.max()) if arr.size else 0
        if hi > 255:
            arr = arr * 255 // (65535 if hi <= 65535 else hi)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: transparency composited on white, CMYK and palettes converted,
    16-bit and float grayscale rescaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _to_8bit_gray(img).convert("RGB")
    return img.convert("RGB")


def load_image(path_or_scene: Any, size: int | None = None) -> Image.Image:
    """Decode an image file, or render a built-in-world scene, to an RGB PIL image.

    ``size``: for a scene, the rendered side; for a file, the shorter side is resized to ``size``
    (aspect kept; JPEGs are decoded at a reduced scale when possible, which is much faster). ``None``
    keeps the file's own size (scenes then render at their default size).
    Raises :class:`ImageError` naming the file for missing, empty, corrupt or oversized images.
    """
    if hasattr(path_or_scene, "render") and not isinstance(path_or_scene, (str, os.PathLike)):
        img = path_or_scene.render(size) if size is not None else path_or_scene.render()
        return to_rgb(img)
    if not isinstance(path_or_scene, (str, os.PathLike)):
        raise TypeError(f"load_image expects a file path or a scene with render(size), got "
                        f"{type(path_or_scene).__name__}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"load_image: size must be a positive int or None, got {size!r}")
    path = Path(path_or_scene)
    img = _open(path)
    try:
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (size, size))   # decode at 1/2, 1/4 or 1/8 scale, never below `size`
        img.load()
        img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
    except ImageError:
        raise
    except Exception as e:  # truncated or corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        raise ImageError(f"image {path}: cannot be decoded ({type(e).__name__}: {e})") from e
    if size is not None:
        w, h = img.size
        scale = size / min(w, h)
        if scale != 1.0:
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return img


def to_uint8_tensor(img: Any, size: int) -> torch.Tensor:
    """A (3, size, size) uint8 tensor: shorter side resized to ``size``, then centre-cropped.

    ``img`` is a PIL image, a file path or a scene (decoded with :func:`load_image`). Meant for loader
    workers: conversion to float and normalisation happen later, on the device.
    """
    import torchvision.transforms.v2.functional as TF

    if not isinstance(size, int) or size < 1:
        raise ValueError(f"to_uint8_tensor: size must be a positive int, got {size!r}")
    if not isinstance(img, Image.Image):
        img = load_image(img, size)
    img = to_rgb(img)
    if min(img.size) != size:
        img = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    if img.size != (size, size):
        img = TF.center_crop(img, [size, size])
    t = TF.pil_to_tensor(img)
    return t.contiguous()
