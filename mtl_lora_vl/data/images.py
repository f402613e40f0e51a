"""Safe image decoding, shared by the readers (checks at load) and the loader workers (pixels).

An image source is a file path, the encoded bytes of an image (``bytes``, or a Hugging Face
``{"bytes": ..., "path": ...}`` dict), a reference with a ``fetch()`` method returning either (rows of
a ``datasets`` table, see :mod:`mtl_lora_vl.data.hf_datasets`), a PIL image, or a built-in-world scene
with ``render(size)``.

Every failure is an :class:`ImageError` that names the file (or row) and the cause, so a reader can
skip and count it, and a worker can replace and report it, instead of dying on a PIL traceback.
Images larger than :data:`MAX_PIXELS` are refused from their header, before any pixel is decoded.
Every file PIL opens is closed again (``with Image.open(...)``), on success and on failure.

The read-time check (:func:`verify_image`) has two levels:

* ``decode=False`` (the readers' default, ``verify = true``): header, size limit, the format's own
  ``verify()`` (for PNG a walk over every chunk with its CRC), and a look at the file's last bytes
  for the format's end marker (JPEG ``FF D9``, GIF ``;``, WebP's RIFF length). A file whose end does
  not look right -- truncated, or carrying trailing data -- and any other format (BMP, TIFF, ...) is
  then fully decoded to decide. About 0.2 ms for a 640x480 JPEG, as much as the header check alone;
  it catches truncated files.
* ``decode=True`` (``verify = "decode"``): every image is decoded (JPEGs at 1/8 scale, which still
  reads all of the compressed data). About 3 ms for a 640x480 JPEG (``scripts/bench_image_check.py``);
  it also catches corruption inside the file that breaks the decoder.

Corruption that the decoder itself tolerates (garbage bytes in the middle of a JPEG decode to wrong
pixels, with a libjpeg warning PIL does not surface) cannot be detected by any of these.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .resize import ImageResize, resize_to_square

MAX_PIXELS = 10_000 * 10_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                    ".pbm", ".pnm")
#: The formats Pillow may decode, whatever a file's name: the image formats above. Pillow picks a decoder
#: from the content, and some (EPS, PDF) hand untrusted data to Ghostscript.
DECODED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM")   # (MPO opens as JPEG)
_TAIL_BYTES = 64


class ImageError(ValueError):
    """An image that cannot be used: missing, empty, corrupt, truncated or too large."""


class ImageShapeError(ImageError):
    """An image that decodes but whose shape the model's resize refuses (an aspect ratio too extreme): checking
    the file finds nothing wrong with it; cropping it is the fix."""


# ---------------------------------------------------------------------------------------------- sources


def is_scene(source: Any) -> bool:
    """A built-in-world scene (renders itself), as opposed to a file, bytes or a reference."""
    return hasattr(source, "render") and not isinstance(source, (str, os.PathLike, Image.Image))


def image_key(source: Any) -> str | None:
    """A name that identifies the file or row behind ``source`` (``None`` for scenes, bytes, PIL images); for
    several images (a tuple), their names joined by " + " (``None`` unless each has one)."""
    if isinstance(source, tuple):
        keys = [image_key(part) for part in source]
        return None if not keys or None in keys else " + ".join(keys)   # type: ignore[arg-type]
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if hasattr(source, "fetch"):
        return str(source)
    return None


def _resolve(source: Any) -> tuple[Path | bytes, str]:
    """``(path or encoded bytes, name for messages)`` of a file / bytes / dict / ``fetch()`` source."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source), str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return data, f"<{len(data)}-byte in-memory image>"
    if isinstance(source, dict) and ("bytes" in source or "path" in source):
        if source.get("bytes") is not None:
            return _resolve(source["bytes"])
        if source.get("path"):
            return _resolve(source["path"])
        raise ImageError(f"image {source!r}: has neither bytes nor a path")
    if hasattr(source, "fetch"):
        try:
            got = source.fetch()
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(f"image {source}: cannot be read ({type(e).__name__}: {e})") from e
        target, inner = _resolve(got)
        return target, (str(source) if isinstance(target, bytes) else f"{source} ({inner})")
    raise TypeError(f"expected an image file path, encoded image bytes, an object with fetch(), a PIL "
                    f"image or a scene with render(size), got {type(source).__name__}")


def _source_name(source: Any) -> str:
    """A name for messages, without reading the source (a ``fetch()`` reference is not fetched again)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)}-byte in-memory image>"
    if isinstance(source, dict):
        return str(source.get("path") or f"<{len(source.get('bytes') or b'')}-byte in-memory image>")
    return str(source)


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


@contextmanager
def _opened(target: Path | bytes, name: str) -> Iterator[Image.Image]:
    """Open lazily (header only), refuse absurd sizes before decoding, and always close."""
    if isinstance(target, Path):
        _check_file(target)
        fp: Path | io.BytesIO = target
    else:
        if not target:
            raise ImageError(f"image {name}: is empty (0 bytes)")
        fp = io.BytesIO(target)
    try:
        with warnings.catch_warnings():  # PIL's own limit (89.5 MP) warns: MAX_PIXELS below decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=DECODED_FORMATS)
    except Image.DecompressionBombError as e:  # beyond twice PIL's limit, PIL refuses whatever MAX_PIXELS says
        raise ImageError(f"image {name}: refused, too large to decode safely ({e}); downscale it first (or raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS, and mtl_lora_vl.data.images.MAX_PIXELS, {MAX_PIXELS:,}, where "
                         "the image is over that too)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image {name}: not a readable image ({type(e).__name__}: {e})") from e
    with img:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError(f"image {name}: has an invalid size {w}x{h}")
        if w * h > MAX_PIXELS:
            raise ImageError(f"image {name}: refused, {w}x{h} = {w * h:,} pixels exceeds the limit of "
                             f"{MAX_PIXELS:,} (mtl_lora_vl.data.images.MAX_PIXELS); downscale it first")
        yield img


# ---------------------------------------------------------------------------------------------- checks


def _head_tail(target: Path | bytes) -> tuple[bytes, bytes, int]:
    if isinstance(target, bytes):
        return target[:16], target[-_TAIL_BYTES:], len(target)
    with open(target, "rb") as f:
        head = f.read(16)
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _TAIL_BYTES))
        return head, f.read(), size


def _looks_complete(target: Path | bytes, fmt: str | None) -> bool:
    """Whether the file ends the way its format ends (cheap); ``False`` means "decode to decide"."""
    if fmt == "PNG":
        return True  # PNG verify() already read every chunk up to IEND and checked its CRC
    if fmt not in ("JPEG", "MPO", "GIF", "WEBP"):
        return False
    head, tail, size = _head_tail(target)
    if fmt in ("JPEG", "MPO"):
        return tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")
    if fmt == "GIF":
        return tail.rstrip(b"\x00").endswith(b";")
    # WebP: "RIFF" <little-endian length of what follows> "WEBP"
    return head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 <= size


def _decode_check(target: Path | bytes, name: str) -> None:
    with _opened(target, name) as img:
        try:
            if img.format == "JPEG":
                w, h = img.size
                img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))  # still reads all compressed data
            img.load()
        except Exception as e:  # truncated or corrupt data surfaces as OSError, SyntaxError, ValueError, ...
            raise ImageError(f"image {name}: cannot be decoded ({type(e).__name__}: {e})") from e


def verify_image(source: Any, *, decode: bool = False) -> tuple[int, int]:
    """The readers' check of one image (see the module docstring for the two levels); returns (w, h).

    ``source`` is a file path, encoded bytes, a ``{"bytes", "path"}`` dict or a ``fetch()`` reference.
    Raises :class:`ImageError` naming the file for missing, empty, truncated, corrupt or oversized images.
    """
    target, name = _resolve(source)
    with _opened(target, name) as img:
        size, fmt = img.size, img.format
        try:
            img.verify()
        except Exception as e:  # PIL raises many types from verify (OSError, SyntaxError, struct.error, ...)
            raise ImageError(f"image {name}: failed verification ({type(e).__name__}: {e})") from e
    if decode or not _looks_complete(target, fmt):
        _decode_check(target, name)
    return size


# ---------------------------------------------------------------------------------------------- decoding


_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def upright_size(source: Any) -> tuple[int, int]:
    """``(h, w)`` of an image as the loader reads it (turned upright by its EXIF orientation), from its header alone."""
    target, name = _resolve(source)
    with _opened(target, name) as img:
        w, h = img.size
        try:
            turned = int(img.getexif().get(0x0112, 1)) in (5, 6, 7, 8)   # the quarter turns swap the sides
        except Exception:  # noqa: BLE001 - unreadable EXIF: read as stored, as _upright does
            turned = False
    return (w, h) if turned else (h, w)


def _upright(img: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation (as ``ImageOps.exif_transpose``, which also rewrites the EXIF
    block and so failed on valid photos with a slightly malformed tag); as stored when the tag cannot be read."""
    try:
        turn = _ORIENTATION.get(int(img.getexif().get(0x0112, 1)))
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels are still good
        turn = None
    out = img.transpose(turn) if turn is not None else img.copy()
    out.format = img.format   # (16-bit grayscale is scaled by what the format stores)
    return out


def _to_8bit_gray(img: Image.Image, clear: int | None = None, sixteen: bool | None = None) -> Image.Image:
    """Integer/float single-channel modes (16-bit PNGs, 32-bit TIFFs) scaled to 8 bits by the levels their values fall
    in, not clipped (but for a resize's ringing a little past a level); pixels of the level ``clear`` (a 16-bit PNG's
    tRNS) white, as transparency is composited elsewhere. ``sixteen``: a mode I file decoded from 16-bit samples."""
    raw = arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        finite = np.isfinite(arr)   # (the level is the finite pixels': +inf is white, -inf and NaN black)
        hi = float(arr[finite].max()) if finite.any() else 0.0
        # the smallest of the levels 0-1, 0-255 (Pillow's own for "F": convert("F") of an 8-bit image) and 0-65535 (of
        # a 16-bit one) that holds the brightest pixel, so a dark image stays dark; beyond them, that pixel. A level
        # holds half its top more: a resize rings past it at sharp edges (Pillow's bicubic: 1.14 on a 0-1 image), and
        # the ringing is clipped; no integer (convert("F") of an 8-bit image) falls in (1, 1.5]
        arr = arr * (255.0 / next((top for top in (1.0, 255.0, 65535.0) if hi <= 1.5 * top), hi))
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    else:
        arr = arr.astype(np.int64)
        hi = int(arr.max()) if arr.size else 0
        sixteen = sixteen or img.mode.startswith("I;16") or (img.mode == "I" and img.format in ("PNG", "PPM"))
        # a 16-bit file is scaled by its depth, however dark it is; else 0-255 holds half its top more (a resize's
        # ringing, clipped), as the float levels do
        if sixteen or hi > 382:
            arr = arr * 255 // (65535 if hi <= 65535 else hi)
    if clear is not None:
        arr = np.where(raw == clear, 255, arr)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, alpha: str = "white", sixteen: bool | None = None) -> Image.Image:
    """Convert any PIL mode to RGB: transparency composited on white, CMYK and palettes converted,
    16-bit and float grayscale rescaled to 8 bits. ``sixteen``: whether an RGB image was read from 16-bit samples
    (:func:`_rgb16`, asked before it is loaded); None: where its tRNS colour says so (a sample over 255). For a mode I
    image, whether its file's samples are 16-bit (a signed 16-bit TIFF)."""
    if img.mode == "La":   # (premultiplied: Pillow converts it to LA only)
        img = img.convert("LA")
    if alpha == "drop" and img.mode in ("RGBA", "LA", "PA", "RGBa", "P", "L", "RGB", "1"):
        return img.convert("RGB")   # open_clip's _convert_to_rgb: transparent pixels keep their stored colour
    clear = img.info.get("transparency")
    if sixteen is None:
        sixteen = isinstance(clear, tuple) and max(clear, default=0) > 255
    if img.mode == "RGB" and isinstance(clear, tuple) and sixteen:
        # a 16-bit PNG's tRNS colour: Pillow keeps a sample's high byte but compared the colour's low bytes, so the
        # transparent colour stayed and another went white; compared by high bytes (a copy: the caller's is kept)
        img = img.copy()
        img.info["transparency"] = tuple(int(v) >> 8 for v in clear)
    if "transparency" in img.info and img.mode in ("P", "L", "RGB", "1"):   # a tRNS chunk: one colour is transparent
        img = img.convert("RGBA")
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        clear = img.info.get("transparency") if alpha != "drop" else None
        return _to_8bit_gray(img, clear if isinstance(clear, int) else None, sixteen).convert("RGB")
    return img.convert("RGB")


#: ``info`` key of a PIL image given as a source: what :func:`_rgb16` read before it was loaded (kept for a next read)
_RGB16 = "mtl_lora_vl.rgb16"


def _rgb16(img: Image.Image) -> bool | None:
    """Whether ``img``, not loaded yet, decodes 16-bit RGB samples (a 16-bit PNG: rawmode ``RGB;16B``); once loaded,
    what an earlier read noted in its ``info`` (see :func:`_pil_rgb`), else None (Pillow keeps no sign of it). A tRNS
    colour of such a file under 256 in every sample, (1, 1, 1), reads as an 8-bit one. A mode I file: whether its
    samples are 16-bit (a signed 16-bit TIFF, rawmode ``I;16S``: not mode I;16), not loaded yet; once loaded, the
    note, else a TIFF's tags (one loaded before it was given, as ``datasets`` decodes an image)."""
    tile = getattr(img, "tile", None)   # (Pillow 13 keeps it on files only: an in-memory image has none)
    if img.mode not in ("RGB", "I"):
        return None
    if not tile:
        if _RGB16 in img.info or img.mode != "I":
            return img.info.get(_RGB16)
        bits = getattr(img, "tag_v2", {}).get(258)   # BitsPerSample of a TiffImageFile, kept when it is loaded
        return None if bits is None else max((bits,) if isinstance(bits, int) else bits, default=0) == 16
    modes = [t[3][0] if isinstance(t[3], tuple) else t[3] for t in tile if len(t) > 3]
    return any(isinstance(m, str) and m.startswith(f"{img.mode};16") for m in modes)


def _resize_short_side(img: Image.Image, size: int | None, name: str) -> Image.Image:
    if size is None:
        return img
    w, h = img.size
    scale = size / min(w, h)
    if scale == 1.0:
        return img
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    _check_resized(name, img.size, new)
    return img.resize(new, Image.Resampling.BICUBIC)


def _check_resized(name: str, size: tuple[int, int], new: tuple[int, int]) -> None:
    """Refuse a resize whose result exceeds MAX_PIXELS: a very thin image's short side scaled up to the
    model's side makes the long side huge (1 x 30,000 px at 224: 1.5 gigapixels) before the crop."""
    if new[0] * new[1] > MAX_PIXELS:
        raise ImageShapeError(f"image {name}: {size[0]}x{size[1]} pixels would be resized to {new[0]}x{new[1]} (before "
                              f"any centre crop), over {MAX_PIXELS:,} (mtl_lora_vl.data.images.MAX_PIXELS): its aspect "
                              f"ratio is too extreme, or the model's image budget too large; crop or shrink it first")


def _decoded(source: Any, draft: int | None, alpha: str = "white") -> Image.Image:
    """Decode a file / bytes / reference to an RGB PIL image at its own size; a JPEG at a reduced scale
    (1/2, 1/4, 1/8: much faster) that divides both sides and keeps both at least ``draft`` long."""
    try:
        target, name = _resolve(source)
    except TypeError as e:
        raise TypeError(f"load_image: {e}") from None
    with _opened(target, name) as img:
        try:
            if draft is not None and img.format == "JPEG":
                # only a scale that divides both sides: a partial last block made the reduced image ceil-sized, a
                # little larger than the picture it shows, and the resize then misplaced every pixel
                w, h = img.size
                s = next((s for s in (8, 4, 2) if w % s == 0 and h % s == 0 and min(w, h) // s >= draft), 1)
                if s > 1:
                    img.draft("RGB", (w // s, h // s))
            sixteen = _rgb16(img)
            img.load()
            return to_rgb(_upright(img), alpha, sixteen)   # a new image: independent of the closed file
        except Exception as e:  # truncated or corrupt data surfaces as OSError, SyntaxError, ValueError, ...
            raise ImageError(f"image {name}: cannot be decoded ({type(e).__name__}: {e})") from e


def note_depth(source: Any) -> bool | None:
    """:func:`_rgb16` of a PIL image given as a source, noted in its ``info`` where it has a transparent colour or is
    mode I (its levels): loaded (read, or pickled: a loader worker's copy), it keeps no sign of its file's depth, and a
    next read reads the note (the loader notes its rows' images before any is pickled). A frame not of 16-bit samples
    (another page of a TIFF, after ``seek``) drops an earlier frame's note. Anything else: None, left as it is."""
    if not isinstance(source, Image.Image):
        return None
    sixteen = _rgb16(source)
    if sixteen and (source.mode == "I" or isinstance(source.info.get("transparency"), tuple)):
        source.info[_RGB16] = sixteen
    elif getattr(source, "tile", None):   # (the frame's own file answer: not loaded yet)
        source.info.pop(_RGB16, None)
    return sixteen


def _pil_rgb(img: Image.Image, alpha: str = "white") -> Image.Image:
    """A PIL image given as the source, in RGB: one opened lazily (``Image.open``) reads its file here, so a broken
    file is an :class:`ImageError` naming it (a row replaced or named), not PIL's bare ``OSError``."""
    name = getattr(img, "filename", "") or "<PIL image>"
    try:
        sixteen = note_depth(img)
        img.load()   # (to_rgb returns an RGB image as it is: unread)
        return to_rgb(img, alpha, sixteen)
    except Exception as e:  # truncated or corrupt data, a closed file, a mode that does not convert
        raise ImageError(f"image {name}: cannot be decoded ({type(e).__name__}: {e})") from e


def load_image(source: Any, size: int | None = None) -> Image.Image:
    """Decode an image (file, bytes, reference or PIL image), or render a scene, to an RGB PIL image.

    ``size``: for a scene, the rendered side; otherwise the shorter side is resized to ``size`` (aspect
    kept; JPEGs are decoded at a reduced scale when possible, which is much faster). ``None`` keeps the
    image's own size (scenes then render at their default size).
    Raises :class:`ImageError` naming the file for missing, empty, corrupt or oversized images.
    """
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"load_image: size must be a positive int or None, got {size!r}")
    if is_scene(source):
        return to_rgb(source.render(size) if size is not None else source.render())
    if isinstance(source, Image.Image):
        return _resize_short_side(_pil_rgb(source), size, "<PIL image>")
    return _resize_short_side(_decoded(source, size), size, _source_name(source))


def stack_uint8(images: Sequence[Any], size: int) -> torch.Tensor:
    """An ``(N, 3, size, size)`` uint8 tensor of many images (:func:`to_uint8_tensor` each; scenes render at
    ``size``): a whole split kept in memory, as the built-in backbones' pretraining scripts keep theirs."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i, img in enumerate(images):
        out[i] = to_uint8_tensor(img, size)
    return out


def to_uint8_tensor(img: Any, resize: ImageResize | int, several: bool = False) -> torch.Tensor:
    """A (3, S, S) uint8 tensor of ``img`` (anything :func:`load_image` takes), resized as ``resize`` says
    (an int ``S``: shorter side to ``S``, centre crop, bicubic; a ``native`` resize: (3, H, W) at the image's own
    aspect). A scene renders at ``S`` directly.

    Meant for loader workers: conversion to float and normalisation happen later, on the device. Several images
    (a tuple: one example's pair) give a ``(k, 3, S, S)`` stack (``anyres``: a tuple of strips; ``several``: an
    image of such a row, which OneVision reads otherwise).
    """
    import torchvision.transforms.v2.functional as TF

    resize = ImageResize.of(resize)
    if isinstance(img, tuple):
        if resize.anyres is not None:   # each strip carries its own size: a tuple, not a stack
            return tuple(to_uint8_tensor(part, resize, several=len(img) > 1) for part in img)
        if resize.native:
            raise ValueError(f"to_uint8_tensor: {len(img)} images (one example's) make no one stack under a native "
                             "resize, which keeps each image's own size; convert each alone, as the loader does "
                             "(tuple(to_uint8_tensor(part, resize) for part in img), with their sizes), or read "
                             "images on one square (--image-reading square, backbone.native_aspect(False), where the "
                             "backbone has it)")
        return torch.stack([to_uint8_tensor(part, resize) for part in img])
    name = "<PIL image>"
    if isinstance(img, Image.Image):
        img = _pil_rgb(img, resize.alpha)
    elif is_scene(img):
        img = load_image(img, resize.size)
    else:
        name = _source_name(img)
        img = _decoded(img, resize.draft_side, resize.alpha)
    if img.size[0] < 1 or img.size[1] < 1:
        raise ImageError(f"image {name}: has an invalid size {img.size[0]}x{img.size[1]}")
    try:
        new = resize.resized_size(*img.size)
    except ValueError as e:   # an aspect the model's processor refuses (native resize)
        raise ImageShapeError(f"image {name}: {e} (the model's image processor refuses it; crop it first)") from None
    _check_resized(name, img.size, new)
    if resize.anyres is not None:   # the processor's views, at the image's own aspect (anyres tiles, Idefics3 crops)
        return resize.anyres.strip(to_rgb(img, resize.alpha), several)
    out = resize_to_square(to_rgb(img, resize.alpha), resize)
    return _rgb_tensor(out) if out.mode == "RGB" else TF.pil_to_tensor(out).contiguous()


def _rgb_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image's ``(3, H, W)`` uint8 tensor, what ``pil_to_tensor(img).contiguous()`` gives, from its bytes
    (without NumPy's array interface: about half the host time a row)."""
    w, h = img.size
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).contiguous()
